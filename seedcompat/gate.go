package seedcompat

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
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
// defaulting to a passing value, and malformed input is an error.
func Gate(input []byte, t Thresholds) (*Verdict, error) {
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
	num := func(key string) (float64, *Failure) {
		e, ok := v.Vals[key]
		if !ok {
			return 0, &Failure{Metric: key, Actual: nil, Error: "missing"}
		}
		if e.Kind != 'n' {
			return 0, &Failure{Metric: key, Actual: e.Text, Error: "not a number"}
		}
		switch e.Text {
		case "NaN", "Infinity", "-Infinity":
			return 0, &Failure{Metric: key, Actual: e.Text, Error: "not a finite number"}
		case "true", "false", "null":
			return 0, &Failure{Metric: key, Actual: e.Text, Error: "not a number"}
		}
		f, err := strconv.ParseFloat(e.Text, 64)
		if err != nil || math.IsInf(f, 0) {
			return 0, &Failure{Metric: key, Actual: e.Text, Error: "not a finite number"}
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
