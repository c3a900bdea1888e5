package ingest_test

import (
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A client that reports and closes its end at once, before the server has
// written it the floor: the write fails (EPIPE), and what the client sent
// is still queued and must be read. Before, the failed write kicked the
// connection as a client that "did not read the agent's messages", and its
// records were lost unread.
func TestRecordsOfAClosedPeerAreRead(t *testing.T) {
	m := ingest.NewMetrics(prometheus.NewRegistry())
	h := newHarness(t, policy.Default(), ingest.Config{Metrics: m})
	const n = 6 // under the per-process connection cap: the clients are all this process
	for i := range n {
		c := dial(t, h.sock)
		p := uint64(0x10000 + i*0x1000)
		send(t, c, wire.Record{Type: wire.Hello},
			wire.Record{Type: wire.Alloc, Ptr: p, Bytes: 4096},
			wire.Record{Type: wire.Free, Ptr: p, Bytes: 4096, Zeroed: 4096, Flags: wire.FlagVerified, Verify: wire.VerifyFull})
		c.Close()
	}
	var got float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = testutil.ToFloat64(m.Hygiene); got == 2*n {
			return
		}
	}
	t.Fatalf("%v of the %d allocations and frees that %d closed clients sent were read", got, 2*n, n)
}
