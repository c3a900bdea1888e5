package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kvhygiene/kvh/internal/atomicfile"
	"github.com/kvhygiene/kvh/seedcompat"
)

func cmdGate(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("gate", stdout, stderr)
	t := seedcompat.DefaultThresholds()
	fs.Float64Var(&t.CoverageMin, "coverage-min", t.CoverageMin, "minimum min_coverage_pct")
	fs.Int64Var(&t.UnsanitizedMax, "unsanitized-max", t.UnsanitizedMax, "maximum unsanitized_regions_count")
	fs.Int64Var(&t.QuarantineMax, "quarantine-max", t.QuarantineMax, "maximum quarantine_count")
	reuse := fs.Float64("reuse-rate-max", 0, "maximum reuse_rate (unchecked unless given)")
	p95 := fs.Float64("sanitize-p95-ms-max", 0, "maximum sanitize_duration_p95_ms (unchecked unless given)")
	out := fs.String("out", "forensics/verdict.json", "write the verdict here (empty: don't)")
	if code, stop := fs.parse(args); stop {
		return code
	}
	if fs.NArg() != 1 {
		return fs.usageError("exactly one metrics JSON file is required, %d given", fs.NArg())
	}
	if fs.Changed("reuse-rate-max") {
		t.ReuseRateMax = reuse
	}
	if fs.Changed("sanitize-p95-ms-max") {
		t.SanitizeP95MsMax = p95
	}
	if err := t.Validate(); err != nil {
		return fs.usageError("%v", err)
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return errorf(stderr, "gate: reading metrics: %v", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, seedcompat.MaxGateInput+1))
	f.Close()
	if err != nil {
		return errorf(stderr, "gate: reading metrics: %v", err)
	}
	v, err := seedcompat.Gate(data, t)
	if err != nil {
		return errorf(stderr, "gate: %s: %v", fs.Arg(0), err)
	}
	if *out != "" {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			return errorf(stderr, "gate: writing verdict: %v", err)
		}
		if err := atomicfile.Write(*out, b, 0o644); err != nil {
			return errorf(stderr, "gate: writing verdict: %v", err)
		}
	}
	b, _ := json.Marshal(v)
	fmt.Fprintln(stdout, string(b))
	if !v.Pass {
		for _, f := range v.Failures {
			fmt.Fprintf(stderr, "kvh-verify gate: FAILED: %s\n", f)
		}
		return exitFail
	}
	return exitOK
}
