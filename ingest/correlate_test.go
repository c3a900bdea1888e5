package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
)

func TestCorrelator(t *testing.T) {
	q := violation.NewQueue(0)
	covered := map[int]bool{10: true}
	c, err := NewCorrelator(CorrelatorConfig{Window: time.Second, Covered: func(pid int) bool { return covered[pid] }, Violations: q}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(100, 0)
	// pid 10 is covered: one attested free, one not.
	c.Witness(Witnessed{PID: 10, Ptr: 0xa, Fn: "cuMemFree_v2", Free: true, At: t0})
	c.Attested(10, 0xa, t0)
	c.Witness(Witnessed{PID: 10, Ptr: 0xb, Fn: "cuMemFree_v2", Free: true, At: t0})
	// pid 20 never connected.
	c.Witness(Witnessed{PID: 20, Ptr: 0xc, Fn: "cuMemAlloc_v2", At: t0})
	c.Check(t0.Add(500 * time.Millisecond)) // inside the window: nothing settles
	if q.Len() != 0 {
		t.Fatalf("%d violations inside the window", q.Len())
	}
	c.Check(t0.Add(2 * time.Second))
	vs, _, _ := q.Next(context.Background())
	if len(vs) != 2 {
		t.Fatalf("violations %+v", vs)
	}
	got := map[violation.Kind]int{}
	for _, v := range vs {
		got[v.Kind] = v.PID
		if v.Source != "witness" {
			t.Errorf("source %q", v.Source)
		}
	}
	if got[violation.UnattestedFree] != 10 || got[violation.UncoveredProcess] != 20 {
		t.Fatalf("violations %+v", vs)
	}
	// An uncovered process is reported once.
	c.Witness(Witnessed{PID: 20, Ptr: 0xd, Fn: "cuMemAlloc_v2", At: t0.Add(3 * time.Second)})
	c.Check(t0.Add(10 * time.Second))
	if q.Len() != 0 {
		t.Fatalf("uncovered process reported twice")
	}
	if _, err := NewCorrelator(CorrelatorConfig{}, prometheus.NewRegistry()); err == nil {
		t.Fatal("a correlator without a window, coverage check and sink was built")
	}
}

// The agent's backlog and its drops are not the tenant's: a witnessed free
// waits while the process's account shows records not yet received, and a
// free whose attestation the interposer counted dropped is an evidence
// gap. One free more than the drops is a violation; so is a backlog that
// never drains (after maxDefer windows).
func TestCorrelatorBacklogAndDrops(t *testing.T) {
	q := violation.NewQueue(0)
	var emitted, received, dropped uint64 = 100, 50, 0
	c, err := NewCorrelator(CorrelatorConfig{Window: time.Second, Covered: func(int) bool { return true }, Violations: q,
		Progress: func(pid int) (uint64, uint64, uint64, bool) { return emitted, received, dropped, pid == 10 }}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(100, 0)
	c.Witness(Witnessed{PID: 10, Ptr: 0xa, Fn: "cuMemFree_v2", Free: true, At: t0})
	c.Check(t0.Add(2 * time.Second)) // 50 records still in the agent's backlog: wait
	if q.Len() != 0 {
		t.Fatal("judged a free while its attestation could still be in the backlog")
	}
	emitted, received = 200, 100 // more emitted since; what was due at the first look is what counts
	c.Attested(10, 0xa, t0.Add(2500*time.Millisecond))
	c.Check(t0.Add(3 * time.Second))
	if q.Len() != 0 || len(c.pending) != 0 {
		t.Fatalf("the free attested late was not matched: %d violations, %d pending", q.Len(), len(c.pending))
	}
	// Two frees without attestation, one drop: one forgiven, one violation.
	emitted, received, dropped = 300, 299, 1
	c.Witness(Witnessed{PID: 10, Ptr: 0xb, Fn: "cuMemFree_v2", Free: true, At: t0.Add(4 * time.Second)})
	c.Witness(Witnessed{PID: 10, Ptr: 0xc, Fn: "cuMemFree_v2", Free: true, At: t0.Add(4 * time.Second)})
	c.Check(t0.Add(6 * time.Second))
	vs, _, _ := q.Next(context.Background())
	if len(vs) != 1 || vs[0].Kind != violation.UnattestedFree {
		t.Fatalf("violations %+v, want one unattested_free", vs)
	}
	// A backlog that never drains is judged after maxDefer windows.
	emitted, received, dropped = 1000, 0, 1
	c.Witness(Witnessed{PID: 10, Ptr: 0xd, Fn: "cuMemFree_v2", Free: true, At: t0.Add(7 * time.Second)})
	c.Check(t0.Add(9 * time.Second))
	if q.Len() != 0 {
		t.Fatal("judged inside the deferral")
	}
	c.Check(t0.Add(7*time.Second + maxDefer*time.Second))
	if vs, _, _ := q.Next(context.Background()); len(vs) != 1 {
		t.Fatalf("a claimed backlog deferred the verdict for ever: %+v", vs)
	}
}
