package benchsum

import (
	"bytes"
	"math"
	"os"
	"strings"
	"testing"
)

func TestParseAndSummarize(t *testing.T) {
	f, err := os.Open("testdata/bench.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	run := &Run{}
	if err := Parse(f, run); err != nil {
		t.Fatal(err)
	}
	if len(run.Results) != 5 || run.CPU != "Oxide Virtual Turin-like Processor" {
		t.Fatalf("parsed %d results, cpu %q", len(run.Results), run.CPU)
	}
	r := run.Results[0]
	if r.Pkg != "github.com/kvhygiene/kvh/forensic" || r.Name != "BenchmarkAppendDurable/producers=256/mac=true" || r.Procs != 2 || r.N != 100000 || r.Metrics["x-seed"] != 11.48 {
		t.Fatalf("first result %+v", r)
	}
	if run.Results[1].Procs != 1 || run.Results[1].Name != "BenchmarkVerify/mac=true" {
		t.Fatalf("a benchmark without -N suffix ran at GOMAXPROCS 1: %+v", run.Results[1])
	}
	lines := Summarize(run, Figures)
	get := func(what string, procs int) []Line {
		var out []Line
		for _, l := range lines {
			if strings.HasPrefix(l.What, what) && (procs == 0 || l.Procs == procs) {
				out = append(out, l)
			}
		}
		if len(out) == 0 {
			t.Fatalf("no line for %q", what)
		}
		return out
	}
	cases := []struct {
		what    string
		procs   int
		verdict string
		value   float64
		ratio   float64
	}{
		{"durable trail append, 256", 0, "PASS", 310000, 11.48},
		{"trail verify per core, HMAC", 0, "FAIL", 800000, 0.2667},
		{"trail verify, HMAC, 2 cores vs 1", 0, "info", 1500000, 1.875},
		{"seed-format verify", 0, "FAIL", 37129, 4.013},
		{"agent ingest, interposer", 0, "not measured", math.NaN(), math.NaN()},
		{"witness ring buffer", 0, "not measured (skip: needs root)", math.NaN(), math.NaN()},
		{"ledger lifecycle", 0, "not measured", math.NaN(), math.NaN()},
	}
	for _, c := range cases {
		l := get(c.what, c.procs)[0]
		if l.Verdict != c.verdict || !same(l.Value, c.value) || !same(l.RatioV, c.ratio) {
			t.Errorf("%s: verdict %q value %v ratio %v, want %q %v %v", c.what, l.Verdict, l.Value, l.RatioV, c.verdict, c.value, c.ratio)
		}
	}
	// One row per matching unit: off passes, full's alloc overhead fails.
	alloc := get("interposer overhead per alloc", 0)
	if len(alloc) != 2 || alloc[0].Unit != "full-alloc-overhead-ns" || alloc[0].Verdict != "FAIL" || alloc[1].Verdict != "PASS" {
		t.Errorf("interposer alloc rows: %+v", alloc)
	}
	var b bytes.Buffer
	Markdown(&b, run, lines, "test run")
	md := b.String()
	for _, want := range []string{"| ✅ PASS | durable trail append, 256 producers", "11.5×", "27,000 seed-records/s", "⚪ not measured (skip: needs root) | witness ring buffer", "❌ FAIL | trail verify per core", ">= 1,000,000 records/s/core"} {
		if !strings.Contains(md, want) {
			t.Errorf("summary lacks %q:\n%s", want, md)
		}
	}
	if n := strings.Count(md, "PASS |"); n != 4 {
		t.Errorf("%d PASS rows, want 4 (a figure not measured never passes):\n%s", n, md)
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	err := Parse(strings.NewReader("pkg: x\nBenchmarkX-2 10 5 ns/op 7\n"), &Run{})
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("malformed metrics: %v", err)
	}
	err = Parse(strings.NewReader("BenchmarkX-2 10 five ns/op\n"), &Run{})
	if err == nil || !strings.Contains(err.Error(), `"five"`) {
		t.Fatalf("a metric that is not a number: %v", err)
	}
}

func same(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) < 1e-3*math.Max(1, math.Abs(b))
}
