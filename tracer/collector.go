package tracer

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descBuffers     = prometheus.NewDesc("kvh_ledger_buffers", "Live buffers by state.", []string{"state"}, nil)
	descAllocs      = prometheus.NewDesc("kvh_ledger_allocations_total", "Buffers allocated or registered.", nil, nil)
	descFrees       = prometheus.NewDesc("kvh_ledger_frees_total", "Free attempts by result: ok, released (after quarantine), refused (quarantined for insufficient coverage), double (ignored).", []string{"result"}, nil)
	descReuses      = prometheus.NewDesc("kvh_ledger_reuses_total", "Reuse attempts.", nil, nil)
	descQuarantines = prometheus.NewDesc("kvh_ledger_quarantines_total", "Buffers quarantined, by reason.", []string{"reason"}, nil)
	descViolations  = prometheus.NewDesc("kvh_ledger_violations_total", "Hygiene policy violations, by kind.", []string{"kind"}, nil)
	descRetired     = prometheus.NewDesc("kvh_ledger_retired_total", "Remote buffers retired unfreed because their process exited (memory went back to the driver with it).", nil, nil)
	descAnomalies   = prometheus.NewDesc("kvh_ledger_anomalies_total", "Sanitize duration or size anomalies flagged.", nil, nil)
	descDuration    = prometheus.NewDesc("kvh_ledger_sanitize_duration_seconds", "Duration of each sanitize or attested zeroize.", nil, nil)
	descCoverage    = prometheus.NewDesc("kvh_ledger_coverage_ratio", "Coverage of each sanitize or attestation (verified-zero bytes / bytes).", nil, nil)
	descThreshold   = prometheus.NewDesc("kvh_ledger_coverage_threshold_ratio", "Coverage a buffer needs before it may be freed.", nil, nil)
)

// Describe implements prometheus.Collector.
func (l *Ledger) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuffers, descAllocs, descFrees, descReuses, descQuarantines, descViolations, descRetired, descAnomalies, descDuration, descCoverage, descThreshold} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (l *Ledger) Collect(ch chan<- prometheus.Metric) {
	a := &l.agg
	a.mu.Lock()
	defer a.mu.Unlock()
	for s := Allocated; s < numStates; s++ {
		if s == Freed {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descBuffers, prometheus.GaugeValue, float64(a.states[s]), s.String())
	}
	ch <- prometheus.MustNewConstMetric(descAllocs, prometheus.CounterValue, float64(a.allocations))
	ch <- prometheus.MustNewConstMetric(descFrees, prometheus.CounterValue, float64(a.freed-a.released), "ok")
	ch <- prometheus.MustNewConstMetric(descFrees, prometheus.CounterValue, float64(a.released), "released")
	ch <- prometheus.MustNewConstMetric(descFrees, prometheus.CounterValue, float64(a.refused), "refused")
	ch <- prometheus.MustNewConstMetric(descFrees, prometheus.CounterValue, float64(a.doubleFrees), "double")
	ch <- prometheus.MustNewConstMetric(descReuses, prometheus.CounterValue, float64(a.reuses))
	for _, r := range sortedKeys(a.quarantines) {
		ch <- prometheus.MustNewConstMetric(descQuarantines, prometheus.CounterValue, float64(a.quarantines[r]), r)
	}
	for _, k := range sortedKeys(a.violations) {
		ch <- prometheus.MustNewConstMetric(descViolations, prometheus.CounterValue, float64(a.violations[k]), k)
	}
	ch <- prometheus.MustNewConstMetric(descRetired, prometheus.CounterValue, float64(a.orphans))
	ch <- prometheus.MustNewConstMetric(descAnomalies, prometheus.CounterValue, float64(a.anomalies))
	ch <- prometheus.MustNewConstHistogram(descDuration, a.dur.n, a.dur.sum/1e9, cumulative(durationBuckets, a.durCounts))
	var covN uint64
	for _, c := range a.covCounts {
		covN += c
	}
	ch <- prometheus.MustNewConstHistogram(descCoverage, covN, a.covTotal, cumulative(coverageBuckets, a.covCounts))
	ch <- prometheus.MustNewConstMetric(descThreshold, prometheus.GaugeValue, l.Policy().CoverageThreshold/100)
}

func cumulative(bounds []float64, counts []uint64) map[float64]uint64 {
	m := make(map[float64]uint64, len(bounds))
	var c uint64
	for i, b := range bounds {
		c += counts[i]
		m[b] = c
	}
	return m
}

func sortedKeys(m map[string]int64) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
