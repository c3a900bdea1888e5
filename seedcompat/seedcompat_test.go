package seedcompat

import (
	"encoding/json"
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
