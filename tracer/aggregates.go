package tracer

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvhygiene/kvh/metrics"
)

// Prometheus bucket bounds for sanitize durations (seconds) and coverage (ratio).
var (
	durationBuckets = []float64{1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}
	coverageBuckets = []float64{0, 0.5, 0.9, 0.99, 0.999, 1}
)

// maxTenants bounds per-tenant anomaly state.
const maxTenants = 4096

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

type tenantStats struct {
	dur, size welford
	lastFlag  time.Time
}

func (a *aggregates) init() {
	a.quarantines = map[string]int64{}
	a.violations = map[string]int64{}
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

func (a *aggregates) sanitized(d time.Duration) {
	a.mu.Lock()
	a.dur.add(d.Nanoseconds())
	s := d.Seconds()
	for i, ub := range durationBuckets {
		if s <= ub {
			a.durCounts[i]++
			break
		}
	}
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

// coverageObserved records the coverage of one sanitize or attestation.
func (a *aggregates) coverageObserved(pct float64) {
	a.mu.Lock()
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

// anomaly updates the tenant's running statistics and records an anomaly
// when a sanitize duration or buffer size is more than anomaly_z standard
// deviations from the tenant's mean (after 30 samples; at most one record
// per tenant per second). b.mu is held.
func (l *Ledger) anomaly(b *buffer, d time.Duration) {
	z := l.Policy().AnomalyZ
	a := &l.agg
	now := l.now()
	a.mu.Lock()
	ts := a.tenants[b.tags.Tenant]
	if ts == nil {
		if len(a.tenants) >= maxTenants {
			a.mu.Unlock()
			return
		}
		ts = &tenantStats{}
		a.tenants[b.tags.Tenant] = ts
	}
	var flags []record
	check := func(w *welford, metric string, x float64) {
		if w.n >= 30 {
			if sd := w.std(); sd > 0 {
				if zz := math.Abs(x-w.mean) / sd; zz > z && now.Sub(ts.lastFlag) >= time.Second {
					ts.lastFlag = now
					flags = append(flags, record{Ev: "anomaly", H: b.h, Tenant: b.tags.Tenant, Metric: metric, Value: x, Mean: w.mean, Std: sd, Z: zz})
				}
			}
		}
		w.add(x)
	}
	check(&ts.dur, "sanitize_duration_us", float64(d.Microseconds()))
	check(&ts.size, "buffer_bytes", float64(b.size))
	a.anomalies += int64(len(flags))
	a.mu.Unlock()
	for _, r := range flags {
		if _, err := l.trail.Append(r); err != nil {
			l.log.Error("recording anomaly", "error", err)
		}
	}
}

// Snapshot returns the seed's 13 metrics. Unlike the seed, a buffer whose
// verification failed (coverage 0) counts in min and avg coverage, and
// durations keep sub-millisecond resolution.
func (l *Ledger) Snapshot() metrics.Snapshot {
	// Live buffers' coverage first (without the aggregates lock).
	// Lock order is buffer, then shard (retire takes them so): collect the
	// shard's buffers first, then visit each without holding the shard.
	liveMin, liveSum, liveN := math.Inf(1), 0.0, int64(0)
	var bs []*buffer
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.RLock()
		bs = bs[:0]
		for _, b := range s.m {
			bs = append(bs, b)
		}
		s.mu.RUnlock()
		for _, b := range bs {
			b.mu.Lock()
			if b.covered && b.state != Freed {
				liveMin = math.Min(liveMin, b.coverage)
				liveSum += b.coverage
				liveN++
			}
			b.mu.Unlock()
		}
	}
	a := &l.agg
	a.mu.Lock()
	defer a.mu.Unlock()
	var snap metrics.Snapshot
	snap.TotalBuffers = a.allocations
	snap.ActiveBuffers = a.states[Allocated] + a.states[Bound] + a.states[InUse] + a.states[Sanitizing] + a.states[Sanitized]
	snap.UnsanitizedRegions = a.states[Allocated] + a.states[Bound] + a.states[InUse] + a.states[Sanitizing]
	snap.QuarantineCount = a.states[Quarantined]
	if n := a.covN + liveN; n > 0 {
		snap.MinCoveragePct = math.Min(a.covMin, liveMin)
		snap.AvgCoveragePct = (a.covSum + liveSum) / float64(n)
	}
	snap.ThresholdPct = l.Policy().CoverageThreshold
	snap.SanitizeDurationP50Ms = a.dur.quantile(0.5) / 1e6
	snap.SanitizeDurationP95Ms = a.dur.quantile(0.95) / 1e6
	snap.Allocations = a.allocations
	snap.FreedTotal = a.freed
	snap.ReuseTotal = a.reuses
	if a.allocations > 0 {
		snap.ReuseRate = float64(a.reuses) / float64(a.allocations)
	}
	return snap
}

func sortedKeys(m map[string]int64) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// Export writes the seed-compatible exports atomically: the JSON file with
// the seed's 13 keys (read by kvh-verify gate) and, when promPath is set, the
// node_exporter textfile with its kv_hygiene_* series.
func (l *Ledger) Export(jsonPath, promPath string) error {
	s := l.Snapshot()
	if jsonPath != "" {
		if err := metrics.WriteFileAtomic(jsonPath, s.JSON(), 0o644); err != nil {
			return fmt.Errorf("exporting %s: %w", jsonPath, err)
		}
	}
	if promPath != "" {
		if err := metrics.WriteFileAtomic(promPath, s.Textfile(), 0o644); err != nil {
			return fmt.Errorf("exporting %s: %w", promPath, err)
		}
	}
	return nil
}
