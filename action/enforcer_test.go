package action

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/internal/proc/proctest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type memTrail struct {
	mu   sync.Mutex
	recs []any
	fail error
}

func (m *memTrail) Append(b any) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return 0, m.fail
	}
	m.recs = append(m.recs, b)
	return uint64(len(m.recs)), nil
}

func (m *memTrail) all() []any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]any(nil), m.recs...)
}

type blockingDenier struct{ release chan struct{} }

func (d blockingDenier) Deny(*proc.Handle) error { <-d.release; return nil }

func newEnforcer(t *testing.T, act string, cfg Config) (*Enforcer, *memTrail, *Metrics) {
	t.Helper()
	tr := &memTrail{}
	pol := policy.Default()
	pol.OnViolation = act
	cfg.Trail, cfg.Policy = tr, func() policy.Config { return pol }
	cfg.Metrics = NewMetrics(prometheus.NewRegistry(), func() float64 { return 0 })
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, tr, cfg.Metrics
}

func TestMetricsPreinitialised(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry(), func() float64 { return 0 })
	if n := testutil.CollectAndCount(m.Violations); n != len(violation.Kinds()) {
		t.Fatalf("violations_total has %d series before any violation, want one per kind (%d)", n, len(violation.Kinds()))
	}
	if n := testutil.CollectAndCount(m.Actions); n != 4 {
		t.Fatalf("actions_total has %d series, want 4", n)
	}
}

// The violation is recorded before the action, the action after, and the
// process is really killed.
func TestKillRecordsThenActs(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	e, tr, m := newEnforcer(t, policy.ActionKill, Config{Identify: func(*proc.Handle) string { return "tenant-x" }})
	if act := e.handle(violation.Violation{Kind: violation.TTLExpired, PID: cmd.Process.Pid, Source: "ledger"}); act != policy.ActionKill {
		t.Fatalf("action %s", act)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("process not killed")
	}
	recs := tr.all()
	if len(recs) != 2 {
		t.Fatalf("records %v", recs)
	}
	v, ok := recs[0].(trailevent.Violation)
	if !ok || v.Kind != "ttl_expired" || v.Tenant != "tenant-x" || v.Action != "kill" || v.Source != "ledger" {
		t.Fatalf("first record %#v", recs[0])
	}
	a, ok := recs[1].(trailevent.Action)
	if !ok || a.Result != "SIGKILL" {
		t.Fatalf("second record %#v", recs[1])
	}
	if testutil.ToFloat64(m.Violations.WithLabelValues("ttl_expired")) != 1 || testutil.ToFloat64(m.Actions.WithLabelValues("kill")) != 1 {
		t.Fatal("metrics not counted")
	}
	// The process is gone: a later violation is recorded, and so is why
	// nothing was done.
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: cmd.Process.Pid})
	recs = tr.all()
	if a, ok := recs[len(recs)-1].(trailevent.Action); len(recs) != 4 || !ok || !strings.Contains(a.Result, "gone") {
		t.Fatalf("second violation: %#v", recs)
	}
}

// Freeze and kill are applied once per process.
func TestFreezeOnce(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	e, tr, _ := newEnforcer(t, policy.ActionFreeze, Config{CgroupRoot: t.TempDir()})
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: cmd.Process.Pid})
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: cmd.Process.Pid})
	recs := tr.all()
	if len(recs) != 3 {
		t.Fatalf("records %#v, want violation, action, violation", recs)
	}
	if a, ok := recs[1].(trailevent.Action); !ok || a.Result != "SIGSTOP" {
		t.Fatalf("action %#v", recs[1])
	}
}

func TestUnrecordedViolationIsNotActedOn(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	e, tr, m := newEnforcer(t, policy.ActionKill, Config{})
	tr.fail = errors.New("disk full")
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: cmd.Process.Pid})
	time.Sleep(100 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("process was acted on without a record: %v", err)
	}
	if testutil.ToFloat64(m.Errors.WithLabelValues("record")) != 1 {
		t.Fatal("record error not counted")
	}
}

// A stalled action (a denier that never returns) delays the enforcer by at
// most ActionTimeout; detectors keep emitting without blocking, and the
// violation and the timed-out action are recorded.
func TestStalledActionTimesOut(t *testing.T) {
	d := blockingDenier{release: make(chan struct{})}
	defer close(d.release)
	e, tr, m := newEnforcer(t, policy.ActionDeny, Config{Denier: d, ActionTimeout: 200 * time.Millisecond})
	q := violation.NewQueue(8)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { e.Run(ctx, q); close(done) }()
	start := time.Now()
	self, err := proc.OpenSeenAt(os.Getpid(), time.Now(), "/proc")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ { // more than the queue holds, while the first action stalls
		q.Emit(violation.Violation{Kind: violation.QuarantinedBuffer, PID: self.PID, Tenant: "t", Process: self})
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("Emit blocked for %v behind a stalled action", el)
	}
	q.Close()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("enforcer stuck behind stalled actions")
	}
	var viol, timedOut, over uint64
	for _, r := range tr.all() {
		switch r := r.(type) {
		case trailevent.Violation:
			viol++
		case trailevent.Action:
			if r.Result == "error: timed out after 200ms" {
				timedOut++
			}
		case trailevent.ViolationsOverflow:
			over += r.Count
		}
	}
	if viol == 0 || timedOut != viol || viol+over != 20 {
		t.Fatalf("violations %d, timed-out actions %d, overflow %d: want every violation recorded or counted (20) and each action timed out", viol, timedOut, over)
	}
	if got := testutil.ToFloat64(m.Errors.WithLabelValues("action")); got != float64(timedOut) {
		t.Fatalf("action errors %v, want %d", got, timedOut)
	}
}

func TestRefusesLowPIDs(t *testing.T) {
	e, tr, _ := newEnforcer(t, policy.ActionKill, Config{})
	e.handle(violation.Violation{Kind: violation.UncoveredProcess, PID: 1})
	a, ok := tr.all()[1].(trailevent.Action)
	if !ok || a.Result != "error: refusing to act on pid 1" {
		t.Fatalf("%#v", tr.all())
	}
}

// A violation seen for a pid now held by a process that started after it
// (the violator exited and the pid was reused) is never acted on; a later
// violation by the new holder is, though the old one was already killed.
func TestPIDReuseNeverHitsAnotherProcess(t *testing.T) {
	proctest.NeedRoot(t)
	e, tr, _ := newEnforcer(t, policy.ActionKill, Config{})
	a := exec.Command("sleep", "60")
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	pid := a.Process.Pid
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: pid, At: time.Now()})
	a.Wait() // killed by the enforcer, and reaped
	seen := time.Now()
	time.Sleep(20 * time.Millisecond)
	b := proctest.StartAt(t, pid, nil)
	// A late violation of the old process (seen before b started).
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: pid, At: seen})
	time.Sleep(50 * time.Millisecond)
	if err := b.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process that reused pid %d was killed for another's violation", pid)
	}
	recs := tr.all()
	if a, ok := recs[len(recs)-1].(trailevent.Action); !ok || !strings.Contains(a.Result, "process is gone") {
		t.Fatalf("last record %#v, want an action that says the process is gone", recs[len(recs)-1])
	}
	// Now b itself violates: it is acted on, though pid/kill was done before.
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: pid, At: time.Now()})
	done := make(chan error, 1)
	go func() { done <- b.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a new violator on a reused pid was not acted on")
	}
}

// A node-level violation (shipping_backlog) is recorded and acts on no one,
// whatever the policy says: a tenant is not killed for the node's network.
func TestNodeViolationIsOnlyRecorded(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	e, tr, m := newEnforcer(t, policy.ActionKill, Config{Identify: func(*proc.Handle) string { return "tenant-x" }})
	// Even a pid given by mistake is not acted on.
	if act := e.handle(violation.Violation{Kind: violation.ShippingBacklog, PID: cmd.Process.Pid, Source: "ship", Detail: "waited 20m"}); act != policy.ActionObserve {
		t.Fatalf("action %s, want observe", act)
	}
	recs := tr.all()
	if len(recs) != 1 {
		t.Fatalf("records %#v, want the violation only", recs)
	}
	v, ok := recs[0].(trailevent.Violation)
	if !ok || v.Kind != "shipping_backlog" || v.Action != policy.ActionObserve || v.PID != 0 || v.Tenant != "" || v.Detail != "waited 20m" {
		t.Fatalf("record %#v", recs[0])
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process was acted on: %v", err)
	}
	if testutil.ToFloat64(m.Violations.WithLabelValues("shipping_backlog")) != 1 || testutil.ToFloat64(m.Actions.WithLabelValues("kill")) != 0 {
		t.Fatal("metrics")
	}
}
