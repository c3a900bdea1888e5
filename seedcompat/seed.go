package seedcompat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Snapshot is the seed's get_metrics() result, key for key and in its order.
type Snapshot struct {
	TotalBuffers          int64   `json:"total_buffers"`
	ActiveBuffers         int64   `json:"active_buffers"`
	UnsanitizedRegions    int64   `json:"unsanitized_regions_count"`
	QuarantineCount       int64   `json:"quarantine_count"`
	MinCoveragePct        float64 `json:"min_coverage_pct"`
	AvgCoveragePct        float64 `json:"avg_coverage_pct"`
	ThresholdPct          float64 `json:"threshold_pct"`
	SanitizeDurationP50Ms float64 `json:"sanitize_duration_p50_ms"`
	SanitizeDurationP95Ms float64 `json:"sanitize_duration_p95_ms"`
	Allocations           int64   `json:"allocations"`
	FreedTotal            int64   `json:"freed_total"`
	ReuseTotal            int64   `json:"reuse_total"`
	ReuseRate             float64 `json:"reuse_rate"`
}

// JSON renders the snapshot as the seed's export_metrics did (indent 2).
// Non-finite values, which the seed wrote as bare NaN or Infinity (not
// JSON), are written as 0.
func (s Snapshot) JSON() []byte {
	c := s
	for _, f := range []*float64{&c.MinCoveragePct, &c.AvgCoveragePct, &c.ThresholdPct, &c.SanitizeDurationP50Ms, &c.SanitizeDurationP95Ms, &c.ReuseRate} {
		if math.IsNaN(*f) || math.IsInf(*f, 0) {
			*f = 0
		}
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	return b
}

type series struct {
	name, typ, help string
	value           string
}

// Textfile renders the seed's 13 kv_hygiene_* series for node_exporter.
func (s Snapshot) Textfile() []byte {
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	f := pyFloat
	all := []series{
		{"kv_hygiene_unsanitized_regions", "gauge", "Count of buffers not yet sanitized", i(s.UnsanitizedRegions)},
		{"kv_hygiene_quarantine_count", "gauge", "Count of buffers quarantined due to policy violations", i(s.QuarantineCount)},
		{"kv_hygiene_min_coverage_pct", "gauge", "Minimum observed sanitization coverage percent across buffers", f(s.MinCoveragePct)},
		{"kv_hygiene_avg_coverage_pct", "gauge", "Average sanitization coverage percent across buffers", f(s.AvgCoveragePct)},
		{"kv_hygiene_threshold_pct", "gauge", "Required minimum sanitization coverage percent", f(s.ThresholdPct)},
		{"kv_hygiene_sanitize_duration_p50_ms", "gauge", "P50 sanitize duration in milliseconds", f(s.SanitizeDurationP50Ms)},
		{"kv_hygiene_sanitize_duration_p95_ms", "gauge", "P95 sanitize duration in milliseconds", f(s.SanitizeDurationP95Ms)},
		{"kv_hygiene_active_buffers", "gauge", "Number of active (not freed/quarantined) buffers", i(s.ActiveBuffers)},
		{"kv_hygiene_total_buffers", "gauge", "Total buffers observed", i(s.TotalBuffers)},
		{"kv_hygiene_allocations_total", "counter", "Total number of allocations", i(s.Allocations)},
		{"kv_hygiene_freed_total", "counter", "Total number of frees", i(s.FreedTotal)},
		{"kv_hygiene_reuse_total", "counter", "Total number of reuse events", i(s.ReuseTotal)},
		{"kv_hygiene_reuse_rate", "gauge", "Reuse events per allocation", f(s.ReuseRate)},
	}
	var b bytes.Buffer
	for _, x := range all {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", x.name, x.help, x.name, x.typ, x.name, x.value)
	}
	return b.Bytes()
}

// pyFloat formats like Python's str(float): shortest repr, ".0" on integers.
func pyFloat(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	s := strconv.FormatFloat(v, 'g', -1, 64)
	if a := math.Abs(v); a != 0 && (a < 1e-4 || a >= 1e16) {
		return s
	}
	s = strconv.FormatFloat(v, 'f', -1, 64)
	if !bytes.ContainsAny([]byte(s), ".") {
		s += ".0"
	}
	return s
}
