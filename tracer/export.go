package tracer

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/kvhygiene/kvh/internal/atomicfile"
	"github.com/kvhygiene/kvh/seedcompat"
)

// Snapshot returns the seed's 13 metrics. Unlike the seed, a buffer whose
// verification failed (coverage 0) counts in min and avg coverage, and
// durations keep sub-millisecond resolution.
func (l *Ledger) Snapshot() seedcompat.Snapshot {
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
	var snap seedcompat.Snapshot
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

// Export writes the seed-compatible exports atomically: the JSON file with
// the seed's 13 keys (read by kvh-verify gate) and, when promPath is set, the
// node_exporter textfile with its kv_hygiene_* series.
func (l *Ledger) Export(jsonPath, promPath string) error {
	s := l.Snapshot()
	if jsonPath != "" {
		if err := writeExport(jsonPath, s.JSON()); err != nil {
			return fmt.Errorf("exporting %s: %w", jsonPath, err)
		}
	}
	if promPath != "" {
		if err := writeExport(promPath, s.Textfile()); err != nil {
			return fmt.Errorf("exporting %s: %w", promPath, err)
		}
	}
	return nil
}

// writeExport replaces an export file, creating its directory; exports are
// mode 0644 because node_exporter and users' gates read them.
func writeExport(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}
