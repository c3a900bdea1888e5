package seedcompat

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func ptr(f float64) *float64 { return &f }

// The seed's eviction_checker cases, with its bugs fixed where noted.
func TestGateSeedCases(t *testing.T) {
	cases := []struct {
		name   string
		in     string
		t      Thresholds
		pass   bool
		failed []string
	}{
		{"defaults pass", `{"min_coverage_pct":100.0,"unsanitized_regions_count":0,"quarantine_count":0}`, DefaultThresholds(), true, nil},
		{"coverage below", `{"min_coverage_pct":99.0,"unsanitized_regions_count":0,"quarantine_count":0}`, DefaultThresholds(), false, []string{"coverage_pct"}},
		{"reuse unchecked unless set", `{"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":0,"reuse_rate":5}`, DefaultThresholds(), true, nil},
		{"reuse checked", `{"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":0,"reuse_rate":5}`, Thresholds{CoverageMin: 99.9, ReuseRateMax: ptr(1)}, false, []string{"reuse_rate"}},
		{"p95 checked", `{"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":0,"sanitize_duration_p95_ms":3}`, Thresholds{CoverageMin: 99.9, SanitizeP95MsMax: ptr(2)}, false, []string{"sanitize_duration_p95_ms"}},
		// Fixed: the seed lets NaN through (nan < x is False).
		{"NaN fails", `{"min_coverage_pct":NaN,"unsanitized_regions_count":0,"quarantine_count":0}`, DefaultThresholds(), false, []string{"coverage_pct"}},
		// Fixed: a missing key no longer defaults to a passing value.
		{"missing unsanitized fails", `{"min_coverage_pct":100}`, DefaultThresholds(), false, []string{"unsanitized_regions_count", "quarantine_count"}},
		{"string value fails", `{"min_coverage_pct":"100","unsanitized_regions_count":0,"quarantine_count":0}`, DefaultThresholds(), false, []string{"coverage_pct"}},
		{"verdict file re-gated", `{"pass":true,"metrics":{"min_coverage_pct":0.0,"unsanitized_regions_count":0,"quarantine_count":0}}`, DefaultThresholds(), false, []string{"coverage_pct"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Gate([]byte(tc.in), tc.t)
			if err != nil {
				t.Fatal(err)
			}
			if v.Pass != tc.pass {
				t.Fatalf("pass=%v failures=%+v", v.Pass, v.Failures)
			}
			var got []string
			for _, f := range v.Failures {
				got = append(got, f.Metric)
			}
			if strings.Join(got, ",") != strings.Join(tc.failed, ",") {
				t.Errorf("failures %v, want %v", got, tc.failed)
			}
			if !json.Valid(v.Metrics) {
				t.Errorf("metrics echo is not strict JSON: %s", v.Metrics)
			}
		})
	}
	if _, err := Gate([]byte(`[1]`), DefaultThresholds()); err == nil {
		t.Error("array accepted")
	}
}

// Values no exporter can produce fail the gate whatever the thresholds, and
// the failure names the key: a negative count passes "at most 0", and a
// coverage of 150% passes "at least 99.9".
func TestGateAbsurdValuesFail(t *testing.T) {
	const ok = `"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":0`
	all := Thresholds{CoverageMin: 99.9, ReuseRateMax: ptr(1), SanitizeP95MsMax: ptr(10)}
	cases := []struct {
		name   string
		in     string
		t      Thresholds
		metric string // the failure's metric
		key    string // named in its error
	}{
		{"negative unsanitized", `{"min_coverage_pct":100,"unsanitized_regions_count":-1,"quarantine_count":0}`, DefaultThresholds(), "unsanitized_regions_count", "unsanitized_regions_count"},
		{"negative quarantine", `{"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":-3}`, DefaultThresholds(), "quarantine_count", "quarantine_count"},
		{"coverage above 100", `{"min_coverage_pct":150,"unsanitized_regions_count":0,"quarantine_count":0}`, DefaultThresholds(), "coverage_pct", "min_coverage_pct"},
		{"coverage below 0", `{"min_coverage_pct":-5,"unsanitized_regions_count":0,"quarantine_count":0}`, Thresholds{CoverageMin: 0}, "coverage_pct", "min_coverage_pct"},
		{"negative buffers", `{` + ok + `,"total_buffers":-1}`, DefaultThresholds(), "total_buffers", "total_buffers"},
		{"negative active buffers", `{` + ok + `,"active_buffers":-2}`, DefaultThresholds(), "active_buffers", "active_buffers"},
		{"negative allocations", `{` + ok + `,"allocations":-7}`, DefaultThresholds(), "allocations", "allocations"},
		{"negative frees", `{` + ok + `,"freed_total":-1}`, DefaultThresholds(), "freed_total", "freed_total"},
		{"negative reuses", `{` + ok + `,"reuse_total":-1}`, DefaultThresholds(), "reuse_total", "reuse_total"},
		{"fractional count", `{` + ok + `,"allocations":2.5}`, DefaultThresholds(), "allocations", "allocations"},
		{"count not a number", `{` + ok + `,"freed_total":"3"}`, DefaultThresholds(), "freed_total", "freed_total"},
		{"NaN average coverage", `{` + ok + `,"avg_coverage_pct":NaN}`, DefaultThresholds(), "avg_coverage_pct", "avg_coverage_pct"},
		{"average coverage above 100", `{` + ok + `,"avg_coverage_pct":100.5}`, DefaultThresholds(), "avg_coverage_pct", "avg_coverage_pct"},
		{"threshold above 100", `{` + ok + `,"threshold_pct":1000}`, DefaultThresholds(), "threshold_pct", "threshold_pct"},
		{"NaN p50", `{` + ok + `,"sanitize_duration_p50_ms":NaN}`, DefaultThresholds(), "sanitize_duration_p50_ms", "sanitize_duration_p50_ms"},
		{"negative p95, unchecked", `{` + ok + `,"sanitize_duration_p95_ms":-1}`, DefaultThresholds(), "sanitize_duration_p95_ms", "sanitize_duration_p95_ms"},
		{"negative p95, checked", `{` + ok + `,"sanitize_duration_p95_ms":-1,"reuse_rate":0}`, all, "sanitize_duration_p95_ms", "sanitize_duration_p95_ms"},
		{"negative reuse rate, checked", `{` + ok + `,"reuse_rate":-0.5,"sanitize_duration_p95_ms":1}`, all, "reuse_rate", "reuse_rate"},
		{"infinite reuse rate", `{` + ok + `,"reuse_rate":Infinity}`, DefaultThresholds(), "reuse_rate", "reuse_rate"},
		{"re-gated verdict", `{"pass":true,"metrics":{` + ok + `,"total_buffers":-1}}`, DefaultThresholds(), "total_buffers", "total_buffers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Gate([]byte(tc.in), tc.t)
			if err != nil {
				t.Fatal(err)
			}
			if v.Pass || len(v.Failures) != 1 {
				t.Fatalf("pass=%v failures=%+v, want one failure", v.Pass, v.Failures)
			}
			f := v.Failures[0]
			if f.Metric != tc.metric || !strings.Contains(f.Error, tc.key) || !strings.Contains(f.String(), tc.key) {
				t.Errorf("failure %+v (%s), want metric %s naming %s", f, f, tc.metric, tc.key)
			}
		})
	}
	// The seed's own snapshot, every key in range, still passes.
	s := Snapshot{TotalBuffers: 3, MinCoveragePct: 100, AvgCoveragePct: 100, ThresholdPct: 99.9, SanitizeDurationP50Ms: 0.1,
		SanitizeDurationP95Ms: 0.4, Allocations: 3, FreedTotal: 3, ReuseTotal: 1, ReuseRate: 1.0 / 3}
	if v, err := Gate(s.JSON(), all); err != nil || !v.Pass {
		t.Errorf("a sane snapshot failed: %v %+v", err, v)
	}
}

// Thresholds that cannot be met or cannot fail are refused: NaN compares
// false with everything, so "--coverage-min NaN" would pass any coverage.
func TestGateRefusesAbsurdThresholds(t *testing.T) {
	in := []byte(`{"min_coverage_pct":100,"unsanitized_regions_count":0,"quarantine_count":0}`)
	for _, th := range []Thresholds{
		{CoverageMin: math.NaN()},
		{CoverageMin: 101},
		{CoverageMin: -1},
		{CoverageMin: math.Inf(-1)},
		{CoverageMin: 99.9, UnsanitizedMax: -1},
		{CoverageMin: 99.9, QuarantineMax: -1},
		{CoverageMin: 99.9, ReuseRateMax: ptr(math.NaN())},
		{CoverageMin: 99.9, ReuseRateMax: ptr(-1)},
		{CoverageMin: 99.9, SanitizeP95MsMax: ptr(math.Inf(1))},
		{CoverageMin: 99.9, SanitizeP95MsMax: ptr(-2)},
	} {
		if _, err := Gate(in, th); err == nil {
			t.Errorf("thresholds %+v accepted", th)
		}
	}
}

func TestSnapshotJSONRoundTripsThroughGate(t *testing.T) {
	s := Snapshot{TotalBuffers: 2, MinCoveragePct: 100, AvgCoveragePct: 100, ThresholdPct: 99.9, Allocations: 2, FreedTotal: 2}
	v, err := Gate(s.JSON(), DefaultThresholds())
	if err != nil || !v.Pass {
		t.Fatalf("%v %+v", err, v)
	}
	s.MinCoveragePct = 0 // a buffer whose verify failed counts (the seed ignored 0%)
	if v, _ := Gate(s.JSON(), DefaultThresholds()); v.Pass {
		t.Fatal("0% coverage passed")
	}
}

func TestTextfileGolden(t *testing.T) {
	s := Snapshot{TotalBuffers: 3, ActiveBuffers: 1, UnsanitizedRegions: 1, QuarantineCount: 0, MinCoveragePct: 100,
		AvgCoveragePct: 100, ThresholdPct: 99.9, SanitizeDurationP50Ms: 0.0125, SanitizeDurationP95Ms: 0.5,
		Allocations: 3, FreedTotal: 2, ReuseTotal: 1, ReuseRate: 1.0 / 3}
	got := s.Textfile()
	golden := filepath.Join("testdata", "seed.prom")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("textfile differs from %s:\n%s", golden, got)
	}
}

func FuzzGate(f *testing.F) {
	f.Add([]byte(`{"min_coverage_pct":100.0,"unsanitized_regions_count":0,"quarantine_count":0}`))
	f.Add([]byte(`{"metrics":{"min_coverage_pct":-Infinity}}`))
	f.Add([]byte(`{"a":[1,2,{"b":"\u0000"}],"min_coverage_pct":1e999}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := Gate(in, Thresholds{CoverageMin: 99.9, ReuseRateMax: ptr(1), SanitizeP95MsMax: ptr(1)})
		if err != nil {
			return
		}
		if !json.Valid(v.Metrics) {
			t.Fatalf("metrics echo not JSON: %q", v.Metrics)
		}
		if _, err := json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	})
}
