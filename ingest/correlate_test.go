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
