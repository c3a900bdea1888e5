package action

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
)

// Trail records violations and actions; Append returns once the record is
// durable. *forensic.Log satisfies it.
type Trail interface {
	Append(body any) (uint64, error)
}

// Denier tells a process's interposer to refuse new allocations.
type Denier interface {
	Deny(h *proc.Handle) error
}

// Config is what an Enforcer needs.
type Config struct {
	Trail  Trail                // required
	Policy func() policy.Config // required: the current policy
	Log    hclog.Logger
	// Denier carries out deny; nil makes every deny fail (and say so).
	Denier Denier
	// Identify names the tenant of a violation whose detector did not, from
	// the violator's handle; it must check that the process is alive after
	// reading /proc, so that what it read was that process's.
	Identify func(h *proc.Handle) string
	// Connected returns the pidfd of pid's connected process, or nil; a
	// violation without a Process is resolved through it, else by opening
	// the pid and refusing a process that started after the violation.
	Connected func(pid int) *proc.Handle
	// ProcRoot and CgroupRoot locate /proc and the cgroup v2 mount.
	ProcRoot, CgroupRoot string
	// ActionTimeout bounds one action (default 5s).
	ActionTimeout time.Duration
	Metrics       *Metrics // required
}

// Metrics are the enforcer's series.
type Metrics struct {
	Violations *prometheus.CounterVec
	Overflow   *prometheus.CounterVec
	Actions    *prometheus.CounterVec
	Errors     *prometheus.CounterVec
	Queued     prometheus.GaugeFunc
}

// NewMetrics registers the enforcer's series on reg, with every violation
// kind and action pre-initialised so the first violation shows in increase().
// queued reports the violation queue's length.
func NewMetrics(reg prometheus.Registerer, queued func() float64) *Metrics {
	m := &Metrics{
		Violations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "violations_total", Help: "Hygiene violations recorded, by kind."}, []string{"kind"}),
		Overflow:   prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "violations_overflow_total", Help: "Violations the queue could not hold (counted and recorded as a sum, not acted on), by kind."}, []string{"kind"}),
		Actions:    prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "actions_total", Help: "Actions taken on violators, by action."}, []string{"action"}),
		Errors:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "enforcer_errors_total", Help: "Violations not recorded (stage record) or actions that failed or timed out (stage action)."}, []string{"stage"}),
		Queued:     prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "violations_queued", Help: "Violations waiting for the enforcer."}, queued),
	}
	reg.MustRegister(m.Violations, m.Overflow, m.Actions, m.Errors, m.Queued)
	for _, k := range violation.Kinds() {
		m.Violations.WithLabelValues(string(k))
		m.Overflow.WithLabelValues(string(k))
	}
	for _, a := range []string{policy.ActionObserve, policy.ActionDeny, policy.ActionFreeze, policy.ActionKill} {
		m.Actions.WithLabelValues(a)
	}
	m.Errors.WithLabelValues("record")
	m.Errors.WithLabelValues("action")
	return m
}

// Enforcer applies the policy's action to violations.
type Enforcer struct {
	cfg   Config
	acted map[string]bool // "pid@start/action" already applied (Run's goroutine only)
}

// New checks cfg and returns an Enforcer.
func New(cfg Config) (*Enforcer, error) {
	if cfg.Trail == nil || cfg.Policy == nil || cfg.Metrics == nil {
		return nil, errors.New("action: trail, policy and metrics are required")
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = 5 * time.Second
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	return &Enforcer{cfg: cfg, acted: map[string]bool{}}, nil
}

// Run takes violations from q until q is closed and drained (or ctx ends),
// and handles each in order. It is the only goroutine that may act on a
// process.
func (e *Enforcer) Run(ctx context.Context, q *violation.Queue) {
	for {
		vs, over, ok := q.Next(ctx)
		if !ok {
			return
		}
		for _, k := range violation.Kinds() { // fixed order: the trail is reproducible
			if n := over[k]; n > 0 {
				e.overflow(k, n)
			}
		}
		for _, v := range vs {
			e.handle(v)
		}
	}
}

func (e *Enforcer) overflow(k violation.Kind, n uint64) {
	e.cfg.Metrics.Overflow.WithLabelValues(string(k)).Add(float64(n))
	e.cfg.Log.Error("violation queue full: violations counted, not acted on", "kind", k, "count", n)
	if _, err := e.cfg.Trail.Append(trailevent.ViolationsOverflow{Ev: trailevent.EvViolationsOverflow, Kind: string(k), Count: n}); err != nil {
		e.cfg.Metrics.Errors.WithLabelValues("record").Inc()
		e.cfg.Log.Error("recording violation overflow", "error", err)
	}
}

// handle records v, then applies the tenant's action and records that. It
// returns the action the policy named. Nothing is applied to a violation
// that could not be recorded.
func (e *Enforcer) handle(v violation.Violation) string {
	if v.At.IsZero() {
		v.At = time.Now()
	}
	if v.Kind.NodeLevel() {
		return e.record(v)
	}
	// The violator first, by a pidfd, then its tenant through that handle: a
	// pid read again in /proc may name a process that took it since.
	h, herr := e.resolve(v)
	if v.Tenant == "" && e.cfg.Identify != nil && herr == nil {
		v.Tenant = e.cfg.Identify(h)
	}
	act := e.cfg.Policy().For(v.Tenant).OnViolation
	log := e.cfg.Log.With("kind", v.Kind, "pid", v.PID, "tenant", v.Tenant)
	if _, err := e.cfg.Trail.Append(trailevent.Violation{Ev: trailevent.EvViolation, Kind: string(v.Kind), PID: v.PID, Tenant: v.Tenant, Detail: v.Detail, Source: v.Source, Action: act}); err != nil {
		e.cfg.Metrics.Errors.WithLabelValues("record").Inc()
		log.Error("violation not recorded; no action taken", "error", err, "detail", v.Detail)
		return act
	}
	e.cfg.Metrics.Violations.WithLabelValues(string(v.Kind)).Inc()
	log.Warn("hygiene violation", "detail", v.Detail, "source", v.Source, "action", act)
	if act == policy.ActionObserve {
		e.cfg.Metrics.Actions.WithLabelValues(act).Inc()
		return act
	}
	err := herr
	var result string
	if err == nil {
		key := h.Key() + "/" + act // the process, not the pid: a pid is reused
		if e.acted[key] && act != policy.ActionDeny {
			return act
		}
		if len(e.acted) >= maxActed {
			clear(e.acted)
		}
		e.acted[key] = true
		result, err = e.applyWithin(act, h)
	}
	if err != nil {
		result = "error: " + err.Error()
		e.cfg.Metrics.Errors.WithLabelValues("action").Inc()
		log.Error("action failed", "action", act, "error", err)
	}
	if _, err := e.cfg.Trail.Append(trailevent.Action{Ev: trailevent.EvAction, Action: act, PID: v.PID, Tenant: v.Tenant, Kind: string(v.Kind), Result: result}); err != nil {
		e.cfg.Metrics.Errors.WithLabelValues("record").Inc()
		log.Error("action taken but not recorded", "action", act, "result", result, "error", err)
	}
	e.cfg.Metrics.Actions.WithLabelValues(act).Inc()
	return act
}

// record records a node-level violation with the action observe: it is
// no process's doing, so no tenant's policy applies and no one is acted on.
func (e *Enforcer) record(v violation.Violation) string {
	act := policy.ActionObserve
	log := e.cfg.Log.With("kind", v.Kind)
	if _, err := e.cfg.Trail.Append(trailevent.Violation{Ev: trailevent.EvViolation, Kind: string(v.Kind), Detail: v.Detail, Source: v.Source, Action: act}); err != nil {
		e.cfg.Metrics.Errors.WithLabelValues("record").Inc()
		log.Error("violation not recorded", "error", err, "detail", v.Detail)
		return act
	}
	e.cfg.Metrics.Violations.WithLabelValues(string(v.Kind)).Inc()
	e.cfg.Metrics.Actions.WithLabelValues(act).Inc()
	log.Warn("node violation", "detail", v.Detail, "source", v.Source)
	return act
}

// maxActed bounds the remembered actions (forgotten wholesale past it: a
// process acted on again is harmless, freeze and kill being idempotent).
const maxActed = 1 << 16

// resolve returns the violator as a pidfd handle: the detector's, the
// connected process's, or the pid opened now and refused if its holder
// started after the violation was seen (the pid was reused).
func (e *Enforcer) resolve(v violation.Violation) (*proc.Handle, error) {
	if v.PID <= 1 {
		return nil, fmt.Errorf("refusing to act on pid %d", v.PID)
	}
	if v.Process != nil {
		return v.Process, nil
	}
	if e.cfg.Connected != nil {
		// The connected process is the violator only if it started before
		// the violation; one that started after took the pid since.
		if h := e.cfg.Connected(v.PID); h != nil && !h.StartedAfter(v.At) {
			return h, nil
		}
	}
	return proc.OpenSeenAt(v.PID, v.At, e.cfg.ProcRoot)
}

// applyWithin applies act, giving up after ActionTimeout (the action's
// goroutine finishes on its own; a deny write has its own deadline).
func (e *Enforcer) applyWithin(act string, h *proc.Handle) (string, error) {
	type outcome struct {
		result string
		err    error
	}
	done := make(chan outcome, 1)
	go func() {
		r, err := e.apply(act, h)
		done <- outcome{r, err}
	}()
	t := time.NewTimer(e.cfg.ActionTimeout)
	defer t.Stop()
	select {
	case o := <-done:
		return o.result, o.err
	case <-t.C:
		return "", fmt.Errorf("timed out after %v", e.cfg.ActionTimeout)
	}
}
