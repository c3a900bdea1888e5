package tracer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/violation"
)

// Every violation the ledger detects reaches the sink, typed, with the
// buffer's owner, after its quarantine is in the trail.
func TestViolationsReachTheSink(t *testing.T) {
	q := violation.NewQueue(0) // the default size: one process may hold 1/16 of it
	clk := &fakeClock{t: time.Unix(1000, 0)}
	ttl := 1.0
	l, tr := newLedger(t, func(p *policy.Config) { p.TTLSec = &ttl; p.MaxReuse = 1 },
		func(o *Options) { o.Violations = q; o.Now = clk.now })
	tags := Tags{Tenant: "acme", PID: 4242}

	h1, _ := l.Allocate(tags, 64, AllocOptions{})
	must(t, l.MarkInUse(h1))
	if err := l.Free(h1); !errors.Is(err, ErrFreeWithoutSanitize) {
		t.Fatalf("free unsanitized: %v", err)
	}
	h2, _ := l.Allocate(tags, 64, AllocOptions{})
	if err := l.Reuse(h2, nil); !errors.Is(err, ErrPolicyViolation) {
		t.Fatalf("reuse unsanitized: %v", err)
	}
	h3, _ := l.Allocate(tags, 64, AllocOptions{})
	must(t, l.MarkInUse(h3))
	_, err := l.Sanitize(h3)
	must(t, err)
	must(t, l.Reuse(h3, nil))
	must(t, l.MarkInUse(h3))
	_, err = l.Sanitize(h3)
	must(t, err)
	if err := l.Reuse(h3, nil); !errors.Is(err, ErrPolicyViolation) {
		t.Fatalf("second reuse with max_reuse 1: %v", err)
	}
	h4, _ := l.Allocate(tags, 64, AllocOptions{})
	must(t, l.MarkInUse(h4))
	clk.advance(2 * time.Second)
	if n := l.Sweep(); n != 1 {
		t.Fatalf("sweep expired %d", n)
	}

	vs, over, ok := q.Next(context.Background())
	if !ok || len(over) != 0 {
		t.Fatalf("queue: %v %v", ok, over)
	}
	want := []violation.Kind{violation.FreeWithoutSanitize, violation.ReuseWithoutSanitize, violation.ReuseLimit, violation.TTLExpired}
	if len(vs) != len(want) {
		t.Fatalf("violations %+v, want kinds %v", vs, want)
	}
	for i, v := range vs {
		if v.Kind != want[i] || v.PID != 4242 || v.Tenant != "acme" || v.Source != "ledger" || v.Detail == "" {
			t.Errorf("violation %d = %+v, want kind %s of pid 4242, tenant acme", i, v, want[i])
		}
	}
	if n := tr.count("quarantine"); n != 4 {
		t.Fatalf("%d quarantine records, want one per violation", n)
	}
}
