package ingest_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// A failed zeroize or verify is a violation even when the agent never saw
// the allocation (its record was lost, or libkvh reports graph memory it
// could not see allocated): before, an unknown pointer made it a silent
// passthrough. A passthrough or a clean free of an unknown pointer is not.
func TestFailureOfAnUnknownAllocationIsAViolation(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := forensic.GenerateKeys(dir, "kvh-test"); err != nil {
		t.Fatal(err)
	}
	signer, err := forensic.LoadSigner(filepath.Join(dir, forensic.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	trail, err := forensic.Open(filepath.Join(dir, "trail"), forensic.Options{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	defer trail.Close()
	q := violation.NewQueue(0)
	led, err := tracer.New(tracer.Options{Trail: trail, AsyncTrail: true, Policy: policy.Default(), Violations: q})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "kvh.sock")
	ln, err := ingest.Listen(sock, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ingest.New(ln, ingest.Config{Ledger: led, Trail: trail, Violations: q, Peers: ingest.NewPeers(), Metrics: ingest.NewMetrics(prometheus.NewRegistry()), Policy: led.Policy})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()

	c := dial(t, sock)
	send(t, c, wire.Record{Type: wire.Hello},
		wire.Record{Type: wire.Free, Ptr: 0x7000, Bytes: 4096, Result: wire.ResPassthrough},
		wire.Record{Type: wire.Free, Ptr: 0x8000, Bytes: 4096, Zeroed: 4096, Flags: wire.FlagVerified, Verify: wire.VerifyFull},
		wire.Record{Type: wire.Free, Ptr: 0x9000, Bytes: 4096, Result: wire.ResZeroizeFailed, Fn: 9},
		wire.Record{Type: wire.Quarantine, Ptr: 0xa000, Bytes: 4096, Result: wire.ResVerifyFailed, Fn: 4})
	got := map[violation.Kind]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for len(got) < 2 {
		vs, _, ok := q.Next(ctx)
		if !ok {
			t.Fatalf("violations: %v", got)
		}
		for _, v := range vs {
			got[v.Kind] = v.Detail
		}
	}
	if d := got[violation.FreeWithoutSanitize]; !strings.Contains(d, "zeroize failed") || !strings.Contains(d, "0x9000") {
		t.Fatalf("free_without_sanitize: %q (all: %v)", d, got)
	}
	if d := got[violation.QuarantinedBuffer]; !strings.Contains(d, "verify failed") || !strings.Contains(d, "0xa000") {
		t.Fatalf("quarantined_buffer: %q (all: %v)", d, got)
	}
	if len(got) != 2 {
		t.Fatalf("a passthrough or a clean free of an unknown pointer became a violation: %v", got)
	}
}
