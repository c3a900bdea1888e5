package tracer

import (
	"github.com/kvhygiene/kvh/violation"
	"math"
	"strings"
	"sync"
	"time"
)

// Prometheus bucket bounds for sanitize durations (seconds) and coverage (ratio).
var (
	durationBuckets = []float64{1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}
	coverageBuckets = []float64{0, 0.5, 0.9, 0.99, 0.999, 1}
)

type aggregates struct {
	mu          sync.Mutex
	states      [numStates]int64
	allocations int64
	freed       int64
	released    int64
	reuses      int64
	doubleFrees int64
	refused     int64
	anomalies   int64
	orphans     int64
	quarantines map[string]int64
	violations  map[string]int64
	// coverage of retired buffers that were sanitized: exact min and sum
	covMin float64
	covSum float64
	covN   int64
	// every sanitize or attestation
	dur       hist
	durCounts []uint64
	covCounts []uint64
	covTotal  float64
	tenants   map[string]*tenantStats
}

// ledgerKinds are the violations the ledger itself detects.
var ledgerKinds = []violation.Kind{violation.FreeWithoutSanitize, violation.ReuseWithoutSanitize, violation.ReuseLimit, violation.TTLExpired}

func (a *aggregates) init() {
	a.quarantines = map[string]int64{}
	a.violations = map[string]int64{}
	for _, k := range ledgerKinds { // pre-initialised: the first violation shows in increase()
		a.violations[string(k)] = 0
	}
	a.durCounts = make([]uint64, len(durationBuckets))
	a.covCounts = make([]uint64, len(coverageBuckets))
	a.tenants = map[string]*tenantStats{}
	a.covMin = math.Inf(1)
}

func (a *aggregates) move(from, to State) {
	a.mu.Lock()
	if from != 0 {
		a.states[from]--
	}
	if to != Freed {
		a.states[to]++
	}
	a.mu.Unlock()
}

func (a *aggregates) allocated(b *buffer) {
	a.mu.Lock()
	a.allocations++
	a.states[Allocated]++
	a.mu.Unlock()
}

func (a *aggregates) reused() {
	a.mu.Lock()
	a.reuses++
	a.mu.Unlock()
}

func (a *aggregates) doubleFree() {
	a.mu.Lock()
	a.doubleFrees++
	a.mu.Unlock()
}

func (a *aggregates) retiredOrphan() {
	a.mu.Lock()
	a.orphans++
	a.mu.Unlock()
}

func (a *aggregates) freeRefused() {
	a.mu.Lock()
	a.refused++
	a.mu.Unlock()
}

func (a *aggregates) release() {
	a.mu.Lock()
	a.released++
	a.mu.Unlock()
}

// reasonClass turns a quarantine reason into a bounded label value.
func reasonClass(r string) string {
	switch {
	case strings.HasPrefix(r, "coverage "):
		return "coverage_below_threshold"
	case r == "free without sanitize", r == "ttl_expired", r == "reuse_limit_exceeded", r == "reuse_without_sanitize":
		return strings.ReplaceAll(r, " ", "_")
	}
	return "other"
}

func (a *aggregates) quarantined(reason string) {
	a.mu.Lock()
	a.quarantines[reasonClass(reason)]++
	a.mu.Unlock()
}

func (a *aggregates) violation(kind string) {
	a.mu.Lock()
	a.violations[kind]++
	a.mu.Unlock()
}

// retired folds a freed buffer into the aggregates.
func (a *aggregates) retired(b *buffer, from State) {
	a.mu.Lock()
	a.freed++
	if b.covered {
		a.covMin = math.Min(a.covMin, b.coverage)
		a.covSum += b.coverage
		a.covN++
	}
	a.mu.Unlock()
}

// summarised folds routine events that are not in the ledger one by one
// into the aggregates: allocations, frees (each attested with the coverage
// and duration in frees), and buffers retired with their process.
func (a *aggregates) summarised(allocs int64, frees []SummarisedFree, retired int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.allocations += allocs
	a.states[Allocated] += allocs - int64(len(frees)) - retired
	a.orphans += retired
	a.freed += int64(len(frees))
	for _, f := range frees {
		a.covMin = math.Min(a.covMin, f.Coverage)
		a.covSum += f.Coverage
		a.covN++
		r := f.Coverage / 100
		a.covTotal += r
		for i, ub := range coverageBuckets {
			if r <= ub {
				a.covCounts[i]++
				break
			}
		}
		a.dur.add(f.Duration.Nanoseconds())
		s := f.Duration.Seconds()
		for i, ub := range durationBuckets {
			if s <= ub {
				a.durCounts[i]++
				break
			}
		}
	}
}

// sanitizeObserved records the coverage (percent) and duration of one
// sanitize or attestation, under one lock (it was two per lifecycle).
func (a *aggregates) sanitizeObserved(pct float64, d time.Duration) {
	a.mu.Lock()
	a.dur.add(d.Nanoseconds())
	s := d.Seconds()
	for i, ub := range durationBuckets {
		if s <= ub {
			a.durCounts[i]++
			break
		}
	}
	r := pct / 100
	a.covTotal += r
	for i, ub := range coverageBuckets {
		if r <= ub {
			a.covCounts[i]++
			break
		}
	}
	a.mu.Unlock()
}
