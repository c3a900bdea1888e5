package seedcompat

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/internal/pyjson"
)

// Thresholds are the seed eviction checker's flags; a nil max is not checked.
type Thresholds struct {
	CoverageMin      float64  `json:"coverage_pct_min"`
	UnsanitizedMax   int64    `json:"unsanitized_regions_max"`
	QuarantineMax    int64    `json:"quarantine_count_max"`
	ReuseRateMax     *float64 `json:"reuse_rate_max"`
	SanitizeP95MsMax *float64 `json:"sanitize_p95_ms_max"`
}

// DefaultThresholds are the seed's defaults.
func DefaultThresholds() Thresholds {
	return Thresholds{CoverageMin: 99.9}
}

// Failure is one threshold the metrics did not meet.
type Failure struct {
	Metric      string `json:"metric"`
	Actual      any    `json:"actual"`
	ExpectedMin any    `json:"expected_min,omitempty"`
	ExpectedMax any    `json:"expected_max,omitempty"`
	Error       string `json:"error,omitempty"`
}

// String says what failed in a line, naming the metrics file's key.
func (f Failure) String() string {
	switch {
	case f.Error != "" && strings.HasPrefix(f.Error, f.Metric+" "):
		return f.Error
	case f.Error != "":
		return fmt.Sprintf("%s: %s", f.Metric, f.Error)
	case f.ExpectedMin != nil:
		return fmt.Sprintf("%s: %v is below the minimum %v", f.Metric, f.Actual, f.ExpectedMin)
	default:
		return fmt.Sprintf("%s: %v is above the maximum %v", f.Metric, f.Actual, f.ExpectedMax)
	}
}

// Validate refuses thresholds that cannot work: NaN compares false with
// everything, so a NaN minimum or maximum would pass any value.
func (t Thresholds) Validate() error {
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	if !finite(t.CoverageMin) || t.CoverageMin < 0 || t.CoverageMin > 100 {
		return fmt.Errorf("coverage minimum %v is not a percentage in [0, 100]", t.CoverageMin)
	}
	if t.UnsanitizedMax < 0 {
		return fmt.Errorf("unsanitized regions maximum %d is negative", t.UnsanitizedMax)
	}
	if t.QuarantineMax < 0 {
		return fmt.Errorf("quarantine maximum %d is negative", t.QuarantineMax)
	}
	if p := t.ReuseRateMax; p != nil && (!finite(*p) || *p < 0) {
		return fmt.Errorf("reuse rate maximum %v is not a finite number >= 0", *p)
	}
	if p := t.SanitizeP95MsMax; p != nil && (!finite(*p) || *p < 0) {
		return fmt.Errorf("sanitize p95 maximum %v is not a finite number >= 0", *p)
	}
	return nil
}

// ranges are the values the seed's keys can hold at all. A value outside
// them comes from a broken exporter or an edited file, and fails the gate
// whatever the thresholds: a count of -1 is "at most 0", and a coverage of
// 150% "at least 99.9". Keys that are absent are not required (only the
// gated ones are).
var ranges = []struct {
	key      string
	min, max float64
	whole    bool
}{
	{"total_buffers", 0, math.Inf(1), true},
	{"active_buffers", 0, math.Inf(1), true},
	{"unsanitized_regions_count", 0, math.Inf(1), true},
	{"quarantine_count", 0, math.Inf(1), true},
	{"min_coverage_pct", 0, 100, false},
	{"avg_coverage_pct", 0, 100, false},
	{"threshold_pct", 0, 100, false},
	{"sanitize_duration_p50_ms", 0, math.Inf(1), false},
	{"sanitize_duration_p95_ms", 0, math.Inf(1), false},
	{"allocations", 0, math.Inf(1), true},
	{"freed_total", 0, math.Inf(1), true},
	{"reuse_total", 0, math.Inf(1), true},
	{"reuse_rate", 0, math.Inf(1), false},
}

// outOfRange says why x cannot be key's value, or "" when it can.
func outOfRange(key string, x float64) string {
	for _, r := range ranges {
		if r.key != key {
			continue
		}
		switch {
		case r.whole && x < 0:
			return fmt.Sprintf("%s is %v: a count cannot be negative", key, x)
		case r.whole && x != math.Trunc(x):
			return fmt.Sprintf("%s is %v: a count is a whole number", key, x)
		case x < r.min || x > r.max:
			if math.IsInf(r.max, 1) {
				return fmt.Sprintf("%s is %v: it cannot be negative", key, x)
			}
			return fmt.Sprintf("%s is %v: outside [%v, %v]", key, x, r.min, r.max)
		}
	}
	return ""
}

// Verdict is the seed's verdict JSON.
type Verdict struct {
	Pass       bool            `json:"pass"`
	Failures   []Failure       `json:"failures"`
	Metrics    json.RawMessage `json:"metrics"`
	Thresholds Thresholds      `json:"thresholds"`
	TS         float64         `json:"ts"`
	Schema     int             `json:"schema"`
}

// MaxGateInput caps the metrics file the gate reads.
const MaxGateInput = 1 << 20

// Gate judges a metrics JSON document (the seed's 13 keys, or any object
// holding at least the gated ones) against t. Unlike the seed, NaN and
// infinities fail, a missing or non-numeric gated key fails instead of
// defaulting to a passing value, any of the 13 keys outside what it can hold
// (a negative count, a coverage outside [0, 100]) fails naming the key, and
// malformed input or thresholds that cannot work are an error.
func Gate(input []byte, t Thresholds) (*Verdict, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if len(input) > MaxGateInput {
		return nil, fmt.Errorf("metrics file is larger than %d bytes", MaxGateInput)
	}
	v, err := pyjson.Parse(input)
	if err != nil {
		return nil, fmt.Errorf("metrics file is not JSON: %w", err)
	}
	if v.Kind != 'o' {
		return nil, errors.New("metrics file is not a JSON object")
	}
	if m, ok := v.Vals["metrics"]; ok && m.Kind == 'o' && v.Vals["min_coverage_pct"] == nil {
		v = m // a previous verdict file: gate its metrics again
	}
	vd := &Verdict{Failures: []Failure{}, Thresholds: t, Schema: 1, Metrics: strictJSON(v)}
	vd.TS = float64(time.Now().UnixNano()) / 1e9
	checked := map[string]bool{}
	num := func(key string) (float64, *Failure) {
		checked[key] = true
		e, ok := v.Vals[key]
		if !ok {
			return 0, &Failure{Metric: key, Actual: nil, Error: key + " is missing"}
		}
		if e.Kind != 'n' {
			return 0, &Failure{Metric: key, Actual: e.Text, Error: key + " is not a number"}
		}
		switch e.Text {
		case "NaN", "Infinity", "-Infinity":
			return 0, &Failure{Metric: key, Actual: e.Text, Error: key + " is not a finite number"}
		case "true", "false", "null":
			return 0, &Failure{Metric: key, Actual: e.Text, Error: key + " is not a number"}
		}
		f, err := strconv.ParseFloat(e.Text, 64)
		if err != nil || math.IsInf(f, 0) {
			return 0, &Failure{Metric: key, Actual: e.Text, Error: key + " is not a finite number"}
		}
		if why := outOfRange(key, f); why != "" {
			return 0, &Failure{Metric: key, Actual: f, Error: why}
		}
		return f, nil
	}
	check := func(key, name string, limit float64, isMin bool, lim any) {
		x, bad := num(key)
		if bad != nil {
			bad.Metric = name
			if isMin {
				bad.ExpectedMin = lim
			} else {
				bad.ExpectedMax = lim
			}
			vd.Failures = append(vd.Failures, *bad)
			return
		}
		if isMin && x < limit {
			vd.Failures = append(vd.Failures, Failure{Metric: name, Actual: x, ExpectedMin: lim})
		}
		if !isMin && x > limit {
			vd.Failures = append(vd.Failures, Failure{Metric: name, Actual: x, ExpectedMax: lim})
		}
	}
	check("min_coverage_pct", "coverage_pct", t.CoverageMin, true, t.CoverageMin)
	check("unsanitized_regions_count", "unsanitized_regions_count", float64(t.UnsanitizedMax), false, t.UnsanitizedMax)
	check("quarantine_count", "quarantine_count", float64(t.QuarantineMax), false, t.QuarantineMax)
	if t.ReuseRateMax != nil {
		check("reuse_rate", "reuse_rate", *t.ReuseRateMax, false, *t.ReuseRateMax)
	}
	if t.SanitizeP95MsMax != nil {
		check("sanitize_duration_p95_ms", "sanitize_duration_p95_ms", *t.SanitizeP95MsMax, false, *t.SanitizeP95MsMax)
	}
	// Keys no threshold reads are judged by their ranges alone.
	for _, r := range ranges {
		if _, ok := v.Vals[r.key]; !ok || checked[r.key] {
			continue
		}
		if _, bad := num(r.key); bad != nil {
			vd.Failures = append(vd.Failures, *bad)
		}
	}
	vd.Pass = len(vd.Failures) == 0
	return vd, nil
}

// strictJSON re-renders a Python-flavoured value as strict JSON (non-finite
// numbers as strings) so the verdict file parses everywhere.
func strictJSON(v *pyjson.Value) json.RawMessage {
	var b []byte
	var walk func(v *pyjson.Value)
	walk = func(v *pyjson.Value) {
		switch v.Kind {
		case 'o':
			b = append(b, '{')
			for i, k := range v.Keys {
				if i > 0 {
					b = append(b, ',')
				}
				kb, _ := json.Marshal(k)
				b = append(append(b, kb...), ':')
				walk(v.Vals[k])
			}
			b = append(b, '}')
		case 'a':
			b = append(b, '[')
			for i, e := range v.Arr {
				if i > 0 {
					b = append(b, ',')
				}
				walk(e)
			}
			b = append(b, ']')
		case 's':
			sb, _ := json.Marshal(v.Text)
			b = append(b, sb...)
		default:
			switch v.Text {
			case "NaN", "Infinity", "-Infinity":
				b = append(b, '"')
				b = append(b, v.Text...)
				b = append(b, '"')
			default:
				b = append(b, v.Text...)
			}
		}
	}
	walk(v)
	return b
}
