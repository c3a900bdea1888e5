package ingest

import (
	"fmt"
	"sync"
	"time"

	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
)

// Witnessed is a call the eBPF witness saw in the driver library.
type Witnessed struct {
	PID  int
	Ptr  uint64
	Fn   string
	Free bool
	At   time.Time
}

// CorrelatorConfig is what a Correlator needs.
type CorrelatorConfig struct {
	// Window is how long a witnessed free waits for its attestation.
	Window time.Duration
	// Covered reports whether a process has or had an interposer connection.
	Covered func(pid int) bool
	// Violations takes unattested_free and uncovered_process.
	Violations violation.Sink
	// Progress, when set, returns a process's event account now: records
	// its interposer emitted, those the agent received, those it counted
	// as dropped (its counters page); ok is false when none is known. A
	// witnessed free is judged only once the agent has received (or the
	// interposer has counted dropped) everything the process emitted by the
	// time the window passed — a backlog in the agent delays the judgement,
	// up to maxDefer windows, instead of making the tenant a violator — and
	// a free with no attestation is forgiven while the process has drops
	// not yet used to forgive one: its attestation was dropped because the
	// agent was slow, an evidence gap, not the tenant's violation. The
	// tenant writes those counts: dropped must be only the part of its
	// claim its rate cap covers (Server.Progress charges it).
	Progress func(pid int) (emitted, received, dropped uint64, ok bool)
}

// maxDefer bounds, in windows, how long a backlog can delay judging a free
// (a client could claim a huge emitted count).
const maxDefer = 15

type progress struct {
	emitted, received, dropped uint64
	ok                         bool
}

// pendingFree is a witnessed free awaiting its attestation.
type pendingFree struct {
	Witnessed
	need uint64 // records the process had emitted when the window passed (0: not yet read)
}

// Correlator joins witnessed frees with interposer attestations: a free the
// witness saw with no attestation from the same process for the same
// pointer within the window is an unattested_free; a process the witness
// sees using the driver that never had an interposer connection is an
// uncovered_process. It is a detector: it emits violations and never acts.
// Safe for concurrent use.
type Correlator struct {
	cfg            CorrelatorConfig
	matched, unatt prometheus.Counter
	gap            prometheus.Counter
	uncoveredG     prometheus.Gauge
	mu             sync.Mutex
	attested       map[[2]uint64][]time.Time // (pid, ptr) -> attestations not yet matched (addresses are reused)
	pending        []pendingFree
	uncovered      map[int]time.Time // pid -> first seen without a connection
	flagged        map[int]bool      // uncovered pids already reported
	lastFlag       map[int]time.Time // pid -> last unattested_free violation
	suppressed     map[int]int       // unattested frees since lastFlag
	forgiven       map[int]forgiven  // pid -> unattested frees put down to its interposer's drops
}

type forgiven struct {
	n  uint64
	at time.Time
}

// NewCorrelator registers the correlator's series on reg.
func NewCorrelator(cfg CorrelatorConfig, reg prometheus.Registerer) (*Correlator, error) {
	if cfg.Window <= 0 || cfg.Covered == nil || cfg.Violations == nil {
		return nil, fmt.Errorf("ingest: correlator needs a window, a coverage check and a violation sink")
	}
	c := &Correlator{cfg: cfg,
		matched:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_matched_frees_total", Help: "Witnessed frees with an interposer attestation."}),
		unatt:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_unattested_frees_total", Help: "Witnessed frees with no attestation within the window."}),
		uncoveredG: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "uncovered_processes", Help: "Processes seen using the GPU without the interposer."}),
		attested:   map[[2]uint64][]time.Time{},
		uncovered:  map[int]time.Time{},
		flagged:    map[int]bool{},
		lastFlag:   map[int]time.Time{},
		suppressed: map[int]int{},
		forgiven:   map[int]forgiven{},
		gap:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_dropped_attestations_total", Help: "Witnessed frees with no attestation that the process's interposer counted as dropped (the agent was slow): an evidence gap, not a violation."}),
	}
	if err := registerAll(reg, c.matched, c.unatt, c.uncoveredG, c.gap); err != nil {
		return nil, err
	}
	return c, nil
}

func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Attested notes an interposer attestation (the server calls it).
func (c *Correlator) Attested(pid int, ptr uint64, at time.Time) {
	c.mu.Lock()
	key := [2]uint64{uint64(pid), ptr}
	c.attested[key] = append(c.attested[key], at)
	c.mu.Unlock()
}

// Witness takes one witnessed call.
func (c *Correlator) Witness(ev Witnessed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, seen := c.uncovered[ev.PID]; !seen && !c.flagged[ev.PID] {
		c.uncovered[ev.PID] = ev.At
	}
	// Only frees at the point the interposer zeroizes are joined; a release
	// of a VMM handle follows an unmap that was.
	if ev.Free && ev.Fn != "cuMemRelease" {
		c.pending = append(c.pending, pendingFree{Witnessed: ev})
	}
}

// Check settles everything older than the window; the agent calls it on a
// ticker. Violations go to the sink after the correlator's lock is released.
func (c *Correlator) Check(now time.Time) {
	// The account of every process with a free due, read before the lock
	// (reading a counters page is a syscall).
	progs := map[int]progress{}
	if c.cfg.Progress != nil {
		c.mu.Lock()
		var due []int
		for _, ev := range c.pending {
			if now.Sub(ev.At) >= c.cfg.Window {
				due = append(due, ev.PID)
			}
		}
		c.mu.Unlock()
		for _, pid := range due {
			if _, ok := progs[pid]; !ok {
				var p progress
				p.emitted, p.received, p.dropped, p.ok = c.cfg.Progress(pid)
				progs[pid] = p
			}
		}
	}
	c.mu.Lock()
	var vs []violation.Violation
	keep := c.pending[:0]
	for _, ev := range c.pending {
		if now.Sub(ev.At) < c.cfg.Window {
			keep = append(keep, ev)
			continue
		}
		key := [2]uint64{uint64(ev.PID), ev.Ptr}
		if ats := c.attested[key]; len(ats) > 0 {
			if len(ats) == 1 {
				delete(c.attested, key)
			} else {
				c.attested[key] = ats[1:]
			}
			c.matched.Inc()
			continue
		}
		pr := progs[ev.PID]
		if pr.ok && now.Sub(ev.At) < maxDefer*c.cfg.Window {
			if ev.need == 0 {
				ev.need = max(pr.emitted, 1)
			}
			if pr.received+pr.dropped < ev.need { // its attestation may be in the agent's backlog
				keep = append(keep, ev)
				continue
			}
		}
		if f := c.forgiven[ev.PID]; pr.dropped > f.n {
			c.forgiven[ev.PID] = forgiven{f.n + 1, now}
			c.gap.Inc()
			continue
		}
		c.unatt.Inc()
		if last, ok := c.lastFlag[ev.PID]; ok && now.Sub(last) < 10*time.Second {
			c.suppressed[ev.PID]++
			continue
		}
		c.lastFlag[ev.PID] = now
		detail := fmt.Sprintf("%s(%#x) with no zeroize attestation within %v", ev.Fn, ev.Ptr, c.cfg.Window)
		if n := c.suppressed[ev.PID]; n > 0 {
			detail += fmt.Sprintf(" (and %d more since the last report)", n)
			c.suppressed[ev.PID] = 0
		}
		// Dated when the witness saw it, not when it settled: the enforcer
		// refuses a process that took the pid after that.
		vs = append(vs, violation.Violation{Kind: violation.UnattestedFree, PID: ev.PID, Detail: detail, Source: "witness", At: ev.At})
	}
	c.pending = keep
	type candidate struct {
		pid   int
		first time.Time
	}
	var candidates []candidate
	for pid, first := range c.uncovered {
		if now.Sub(first) >= c.cfg.Window {
			delete(c.uncovered, pid)
			candidates = append(candidates, candidate{pid, first})
		}
	}
	// Throttling state of pids not reported for a while goes (a pid is
	// reused, and the map would otherwise hold every pid ever reported).
	for pid, last := range c.lastFlag {
		if now.Sub(last) >= 10*time.Second && c.suppressed[pid] == 0 {
			delete(c.lastFlag, pid)
			delete(c.suppressed, pid)
		}
	}
	// The drops already used to forgive a free are kept as long as the
	// process's account is known: its dropped count is a running total, so
	// forgetting them would let the same drops excuse more frees.
	var quiet []int
	for pid, f := range c.forgiven {
		if now.Sub(f.at) >= 10*time.Second {
			quiet = append(quiet, pid)
		}
	}
	// Attestations the witness never matched (a library it does not probe)
	// are kept a few windows, not forever.
	for k, ats := range c.attested {
		if now.Sub(ats[len(ats)-1]) > 3*c.cfg.Window {
			delete(c.attested, k)
		}
	}
	c.mu.Unlock()
	for _, pid := range quiet {
		if c.cfg.Progress != nil {
			if _, _, _, known := c.cfg.Progress(pid); known {
				continue
			}
		}
		c.mu.Lock()
		if f, ok := c.forgiven[pid]; ok && now.Sub(f.at) >= 10*time.Second {
			delete(c.forgiven, pid)
		}
		c.mu.Unlock()
	}
	for _, cd := range candidates {
		if c.cfg.Covered(cd.pid) {
			continue
		}
		c.mu.Lock()
		c.flagged[cd.pid] = true
		c.mu.Unlock()
		c.uncoveredG.Inc()
		vs = append(vs, violation.Violation{Kind: violation.UncoveredProcess, PID: cd.pid, Detail: "calls the CUDA driver without the kvh interposer", Source: "witness", At: cd.first})
	}
	for _, v := range vs {
		c.cfg.Violations.Emit(v)
	}
}
