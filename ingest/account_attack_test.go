package ingest_test

// Attacks by a hostile tenant on its own event account: the counters page
// libkvh passes with its HELLO is a shared memfd mapped writable in the
// tenant's address space, so every count in it is the tenant's claim. The
// witness correlator forgives an unattested free while the process has
// drops not yet used to forgive one; a tenant that writes a huge dropped
// (or emitted) count into its page must not buy forgiveness for every
// free it makes behind libkvh's back, and must not escape its rate cap.

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// forgedPage is a sealed counters page claiming c.
func forgedPage(t *testing.T, c wire.Counters) int {
	t.Helper()
	fd, err := unix.MemfdCreate("kvh-account", unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Pwrite(fd, c.Encode(), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		t.Fatal(err)
	}
	return fd
}

// Attack: the page's dropped count was taken as it stood. The tenant
// (this test process) connects with a page claiming 2^40 drops, never
// sends a DROPS record, and frees 2,000 buffers the witness sees with no
// attestation: every one was forgiven as "dropped by the interposer", an
// evidence gap, and no event_rate_limit violation was ever raised, since
// only drops reported on the wire were charged to max_event_rate. Now the
// page's drops are charged to the rate cap when read: past it they are a
// violation and forgive nothing beyond what the cap allowed.
func TestAttackForgedPageDropsForgiveUnattestedFrees(t *testing.T) {
	pol := policy.Default()
	pol.MaxEventRate = 100
	h := newHarness(t, pol, ingest.Config{})
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	page := forgedPage(t, wire.Counters{Emitted: 1 << 40, Dropped: 1 << 40})
	if _, _, err := c.WriteMsgUnix(wire.Record{Type: wire.Hello, PID: uint32(os.Getpid())}.Encode(), unix.UnixRights(page), nil); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); err != nil { // the floor: the agent has accepted it
		t.Fatal(err)
	}
	pid := os.Getpid()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if emitted, _, _, ok := h.srv.Progress(pid); ok && emitted == 1<<40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent never took the connection's counters page")
		}
	}
	q := violation.NewQueue(0)
	corr, err := ingest.NewCorrelator(ingest.CorrelatorConfig{Window: time.Second, Covered: func(int) bool { return true }, Violations: q,
		Progress: h.srv.Progress}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	const frees = 2000
	for i := 0; i < frees; i++ {
		corr.Witness(ingest.Witnessed{PID: pid, Ptr: uint64(0x100000 + i*0x1000), Fn: "cuMemFree_v2", Free: true, At: t0})
	}
	corr.Check(t0.Add(2 * time.Second))
	corr.Check(t0.Add(20 * time.Second)) // past the deferral a claimed backlog buys (maxDefer windows)
	if q.Len() == 0 {
		t.Errorf("%d frees the witness saw with no attestation were all forgiven: the forged page claims 2^40 drops", frees)
	} else if vs, _, _ := q.Next(context.Background()); vs[0].Kind != violation.UnattestedFree {
		t.Errorf("got %+v, want unattested_free", vs)
	}
	over := false
	for _, v := range h.sink.all() {
		if v.Kind == violation.EventRateLimit && v.PID == pid {
			over = true
		}
	}
	if !over {
		t.Error("a page claiming 2^40 drops at a cap of 100 events/s raised no event_rate_limit violation")
	}
}

// Attack: a forged counters page whose dropped count is 2^64-1 wrapped
// received + dropped in closeAccount (6 + 2^64-1 = 5), so a process that
// emitted 6 records, all received, closed its account as one record lost
// (a loss the agent reports as its own) with no excess, where its counts
// do not add up. Now a sum past 2^64 is excess, saturated.
func TestAttackForgedPageDropsWrapTheAccount(t *testing.T) {
	h := newDeferredHarness(t, policy.Default(), ingest.Config{})
	h.start()
	runBurst(t, h.sock, "KVH_N=1", "KVH_K=6", "KVH_PAGE=1", "KVH_WAIT=1", "KVH_DROPPED=18446744073709551615")
	waitHygiene(t, h.m, 6)
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(h.m.Accounts) < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the process's account was never closed")
		}
	}
	if lost := testutil.ToFloat64(h.m.Lost); lost != 0 {
		t.Fatalf("6 records emitted and received, a forged dropped count of 2^64-1: %g counted lost", lost)
	}
	n := 0
	for deadline := time.Now().Add(5 * time.Second); n == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		n = accountsWithExcess(t, h.trail) // the metric counts the record before it is appended
	}
	if n != 1 {
		t.Fatalf("%d process_account records with excess, want 1", n)
	}
}

// accountsWithExcess counts the process_account records on trail whose
// counts did not add up.
func accountsWithExcess(t *testing.T, trail *forensic.Log) int {
	t.Helper()
	if err := trail.Sync(); err != nil {
		t.Fatal(err)
	}
	return countEvents(t, trail.Dir(), func(name string, ev any) bool {
		a, ok := ev.(*trailevent.ProcessAccount)
		if !ok {
			if v, isVal := ev.(trailevent.ProcessAccount); isVal {
				a, ok = &v, true
			}
		}
		return ok && a.Excess > 0
	})
}
