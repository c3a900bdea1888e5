package ingest_test

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/action"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// stuckDenier is a deny that never completes (a client that never reads,
// a wedged kernel call).
type stuckDenier struct{ calls atomic.Int64 }

func (d *stuckDenier) Deny(*proc.Handle) error { d.calls.Add(1); select {} }

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UnixConn, recs ...wire.Record) {
	t.Helper()
	for _, r := range recs {
		if _, err := c.Write(r.Encode()); err != nil {
			t.Fatal(err)
		}
	}
}

func countEvents(t *testing.T, dir string, pred func(name string, ev any) bool) int {
	t.Helper()
	n := 0
	if err := trailevent.Read(dir, func(_ uint64, name string, ev any) error {
		if pred(name, ev) {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// A stalled action holds up nothing but the enforcer: ingest from another
// client, the ledger and its TTL sweeper carry on, and every violation and
// its timed-out action are recorded.
func TestStalledActionStallsNothingElse(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := forensic.GenerateKeys(dir, "kvh-test"); err != nil {
		t.Fatal(err)
	}
	signer, err := forensic.LoadSigner(filepath.Join(dir, forensic.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	trailDir := filepath.Join(dir, "trail")
	trail, err := forensic.Open(trailDir, forensic.Options{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	pol.OnViolation = policy.ActionDeny
	ttl := 0.2
	pol.TTLSec, pol.TTLFrom = &ttl, policy.TTLFromAllocation
	q := violation.NewQueue(0)
	led, err := tracer.New(tracer.Options{Trail: trail, AsyncTrail: true, Policy: pol, Violations: q})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	sock := filepath.Join(dir, "kvh.sock")
	ln, err := ingest.Listen(sock, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ingest.New(ln, ingest.Config{Ledger: led, Trail: trail, Violations: q, Peers: ingest.NewPeers(), Metrics: ingest.NewMetrics(reg), Policy: led.Policy})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	denier := &stuckDenier{}
	const timeout = 400 * time.Millisecond
	enf, err := action.New(action.Config{Trail: trail, Policy: led.Policy, Denier: denier, ActionTimeout: timeout, Metrics: action.NewMetrics(reg, func() float64 { return float64(q.Len()) })})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	enfDone := make(chan struct{})
	go func() { enf.Run(context.Background(), q); close(enfDone) }()
	go led.Run(ctx, 20*time.Millisecond)

	// Client A: five quarantined buffers, each a violation whose deny stalls.
	a := dial(t, sock)
	send(t, a, wire.Record{Type: wire.Hello})
	const violations = 5
	for i := uint64(1); i <= violations; i++ {
		send(t, a, wire.Record{Type: wire.Alloc, Ptr: 0x1000 * i, Bytes: 4096, MemKind: wire.MemDevice},
			wire.Record{Type: wire.Quarantine, Ptr: 0x1000 * i, Bytes: 4096, Result: wire.ResVerifyFailed})
	}
	for denier.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	stalledAt := time.Now()

	// Client B, while the enforcer is stalled: 200 clean lifecycles, and one
	// buffer it never frees, which the sweeper must expire.
	b := dial(t, sock)
	send(t, b, wire.Record{Type: wire.Hello}, wire.Record{Type: wire.Alloc, Ptr: 0xdead000, Bytes: 64, MemKind: wire.MemDevice})
	for i := uint64(1); i <= 200; i++ {
		p := 0x100000 + i*0x1000
		send(t, b, wire.Record{Type: wire.Alloc, Ptr: p, Bytes: 256, MemKind: wire.MemDevice},
			wire.Record{Type: wire.Free, Ptr: p, Bytes: 256, Zeroed: 256, Flags: wire.FlagVerified, Verify: wire.VerifyFull})
	}
	var frees, expired int
	for deadline := time.Now().Add(violations * timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err := trail.Sync(); err != nil {
			t.Fatal(err)
		}
		frees = countEvents(t, trailDir, func(n string, _ any) bool { return n == trailevent.EvFree })
		expired = countEvents(t, trailDir, func(n string, ev any) bool {
			bu, ok := ev.(*trailevent.Buffer)
			return ok && n == trailevent.EvQuarantine && bu.Reason == string(violation.TTLExpired)
		})
		if frees == 200 && expired == 1 {
			break
		}
	}
	if frees != 200 || expired != 1 {
		t.Fatalf("while an action stalled: %d of 200 frees judged, %d of 1 TTL expiry swept", frees, expired)
	}
	if el := time.Since(stalledAt); el >= violations*timeout {
		t.Fatalf("other work finished only after %v, when the stalled actions would have ended", el)
	}
	actionsSoFar := countEvents(t, trailDir, func(n string, _ any) bool { return n == trailevent.EvAction })
	if actionsSoFar >= violations {
		t.Fatalf("the enforcer had finished (%d actions) before the other work: the test proves nothing", actionsSoFar)
	}

	cancel()
	srv.Close()
	q.Close()
	<-enfDone
	if err := trail.Sync(); err != nil {
		t.Fatal(err)
	}
	recorded := countEvents(t, trailDir, func(n string, ev any) bool {
		v, ok := ev.(*trailevent.Violation)
		return ok && v.Kind == string(violation.QuarantinedBuffer)
	})
	timedOut := countEvents(t, trailDir, func(n string, ev any) bool {
		a, ok := ev.(*trailevent.Action)
		return ok && a.Kind == string(violation.QuarantinedBuffer) && a.Result == "error: timed out after 400ms"
	})
	if recorded != violations || timedOut != violations {
		t.Fatalf("%d violations and %d timed-out actions recorded, want %d each", recorded, timedOut, violations)
	}
	if err := trail.Close(); err != nil {
		t.Fatal(err)
	}
}
