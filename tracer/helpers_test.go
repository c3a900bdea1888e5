package tracer

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/zeroize"
)

// memTrail keeps records in memory; fail makes Append refuse.
type memTrail struct {
	mu   sync.Mutex
	recs []map[string]any
	fail bool
}

func (m *memTrail) Append(body any) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return 0, errors.New("disk full")
	}
	b, _ := json.Marshal(body)
	var r map[string]any
	json.Unmarshal(b, &r)
	m.recs = append(m.recs, r)
	return uint64(len(m.recs)), nil
}

func (m *memTrail) events() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		out = append(out, r["ev"].(string))
	}
	return out
}

func (m *memTrail) count(ev string) int {
	n := 0
	for _, e := range m.events() {
		if e == ev {
			n++
		}
	}
	return n
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newLedger(t testing.TB, mut func(*policy.Config), opts ...func(*Options)) (*Ledger, *memTrail) {
	t.Helper()
	tr := &memTrail{}
	p := policy.Default()
	if mut != nil {
		mut(&p)
	}
	o := Options{Trail: tr, Policy: p}
	for _, f := range opts {
		f(&o)
	}
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l, tr
}

func withFaults(f *zeroize.Faults) func(*Options) { return func(o *Options) { o.Faults = f } }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// lifecycle runs allocate → in_use (write) → sanitize → free on a local buffer.
func lifecycle(t testing.TB, l *Ledger, tenant string, size int) Handle {
	t.Helper()
	h, err := l.Allocate(Tags{Tenant: tenant, Request: "r"}, size, AllocOptions{})
	must(t, err)
	must(t, l.MarkInUse(h))
	buf, err := l.Buffer(h)
	must(t, err)
	for i := range buf {
		buf[i] = 0xEE
	}
	_, err = l.Sanitize(h)
	must(t, err)
	must(t, l.Free(h))
	return h
}

// countTrail discards records (for memory and throughput tests).
type countTrail struct{}

func (countTrail) Append(any) (uint64, error) { return 0, nil }
