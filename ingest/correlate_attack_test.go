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
