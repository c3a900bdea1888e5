package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
)

// Attack: the correlator's violations were dated when it settled them, a
// window after the witness saw the free, so the enforcer's pid-reuse check
// ("refused if the holder started after the violation") accepted any
// process that took the violator's pid during that window.
func TestAttackWitnessViolationsDatedWhenSeen(t *testing.T) {
	q := violation.NewQueue(0)
	c, err := NewCorrelator(CorrelatorConfig{Window: 2 * time.Second, Covered: func(pid int) bool { return pid == 10 }, Violations: q}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	c.Witness(Witnessed{PID: 10, Ptr: 0xb, Fn: "cuMemFree_v2", Free: true, At: t0})
	c.Witness(Witnessed{PID: 20, Ptr: 0xc, Fn: "cuMemAlloc_v2", At: t0})
	c.Check(t0.Add(3 * time.Second))
	vs, _, _ := q.Next(context.Background())
	if len(vs) != 2 {
		t.Fatalf("violations %+v", vs)
	}
	for _, v := range vs {
		if !v.At.Equal(t0) {
			t.Errorf("%s dated %v, %v after the witness saw it", v.Kind, v.At, v.At.Sub(t0))
		}
	}
}

// Attack: one drop forgave an unattested free every ten seconds for ever.
// The count of drops already used to forgive a free was forgotten after
// ten quiet seconds, while the process's dropped count (a running total)
// stayed: a process that dropped one event once could free a buffer behind
// libkvh's back every eleven seconds, each one excused as an evidence gap.
func TestAttackOneDropForgivesForEver(t *testing.T) {
	q := violation.NewQueue(0)
	c, err := NewCorrelator(CorrelatorConfig{Window: time.Second, Covered: func(int) bool { return true }, Violations: q,
		Progress: func(pid int) (uint64, uint64, uint64, bool) { return 100, 99, 1, pid == 10 }}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(100, 0)
	for i := 0; i < 3; i++ {
		at := t0.Add(time.Duration(i) * 11 * time.Second)
		c.Witness(Witnessed{PID: 10, Ptr: uint64(0xa0 + i), Fn: "cuMemFree_v2", Free: true, At: at})
		c.Check(at.Add(2 * time.Second))
	}
	if n := q.Len(); n != 2 {
		t.Fatalf("three unattested frees 11 s apart with one drop: %d violations, want 2 (one forgiven)", n)
	}
	vs, _, _ := q.Next(context.Background())
	if vs[0].Kind != violation.UnattestedFree {
		t.Fatalf("got %+v", vs)
	}
}
