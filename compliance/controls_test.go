package compliance

import (
	"bufio"
	"os"
	"regexp"
	"strings"
	"testing"
)

func load(t *testing.T) *File {
	t.Helper()
	f, err := Load("controls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The list, in its order: SC-4 first.
var required = []string{
	"NIST SP 800-53 Rev. 5 SC-4", "NIST SP 800-53 Rev. 5 AU-9", "NIST SP 800-53 Rev. 5 AU-9(3)",
	"NIST SP 800-53 Rev. 5 AU-10", "NIST SP 800-53 Rev. 5 AU-11", "NIST SP 800-53 Rev. 5 SI-4",
	"SOC 2 (2017 Trust Services Criteria) CC6.1", "SOC 2 (2017 Trust Services Criteria) CC7.2",
	"ISO/IEC 27001:2022 A.8.10", "ISO/IEC 27001:2022 A.8.15", "PCI DSS v4.0 10.3",
	"HIPAA Security Rule 164.312(b)", "HIPAA Security Rule 164.312(c)(1)",
}

func TestControlsCoverTheAuditorsList(t *testing.T) {
	f := load(t)
	var got []string
	for _, c := range f.Controls {
		got = append(got, c.Framework+" "+c.ID)
	}
	if strings.Join(got, "\n") != strings.Join(required, "\n") {
		t.Errorf("controls.yaml lists\n  %s\nwant, in this order,\n  %s", strings.Join(got, "\n  "), strings.Join(required, "\n  "))
	}
}

// metricSeries reads a golden exposition: the metric families it declares
// and its sample lines.
func metricSeries(t *testing.T, paths ...string) (families map[string]bool, samples []string) {
	t.Helper()
	families = map[string]bool{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
				families[strings.Fields(rest)[0]] = true
			} else if !strings.HasPrefix(line, "#") && line != "" {
				samples = append(samples, line)
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return families, samples
}

var selector = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?$`)

// Every metric a control names is one the agent registers: the agent's
// series are pinned in cmd/kvh-agent/testdata/metrics.prom, the ledger's in
// tracer/testdata/collector.prom (both golden files are checked against the
// real registries by their packages' tests). A {label="value"} selector
// must match a series there too.
func TestControlsNameRegisteredMetrics(t *testing.T) {
	families, samples := metricSeries(t, "../cmd/kvh-agent/testdata/metrics.prom", "../tracer/testdata/collector.prom")
	if len(families) < 20 {
		t.Fatalf("only %d metric families in the golden files: are they the right ones?", len(families))
	}
	for _, c := range load(t).Controls {
		for _, m := range c.Evidence.Metrics {
			sm := selector.FindStringSubmatch(m)
			if sm == nil {
				t.Errorf("%s: %q is not a metric name or selector", c.ID, m)
				continue
			}
			if !families[sm[1]] {
				t.Errorf("%s: metric %s is not registered by the agent or the ledger", c.ID, sm[1])
				continue
			}
			if sm[3] == "" {
				continue
			}
			found := false
			for _, s := range samples {
				if !strings.HasPrefix(s, sm[1]+"{") {
					continue
				}
				all := true
				for _, pair := range strings.Split(sm[3], ",") {
					if !strings.Contains(s, strings.TrimSpace(pair)) {
						all = false
					}
				}
				if all {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("%s: no series %s in the golden expositions", c.ID, m)
			}
		}
	}
}

// Each control has a rule that can come out every way it claims to: a
// fail_if condition that holds fails it, a require condition that does not
// hold leaves it not evidenced.
func TestEvaluate(t *testing.T) {
	c := Control{ID: "X", Rule: Rule{
		FailIf:  []Condition{{Fact: "violations.free_without_sanitize", Op: ">", Value: 0, Why: "leak"}},
		Require: []Condition{{Fact: "sanitize.steps", Op: ">", Value: 0, Why: "nothing sanitized"}, {Fact: "posture.witness_off", Op: "==", Value: 0, Why: "witness off"}},
	}}
	for _, tc := range []struct {
		name  string
		facts map[string]float64
		want  Status
		why   string
	}{
		{"pass", map[string]float64{"sanitize.steps": 3}, Pass, "sanitize.steps is 3 (needs > 0)"},
		{"fail wins over missing evidence", map[string]float64{"violations.free_without_sanitize": 1}, Fail, "violations.free_without_sanitize is 1: leak"},
		{"not evidenced", map[string]float64{"sanitize.steps": 0}, NotEvidenced, "sanitize.steps is 0: nothing sanitized"},
		{"second requirement", map[string]float64{"sanitize.steps": 1, "posture.witness_off": 2}, NotEvidenced, "posture.witness_off is 2: witness off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Evaluate(c, tc.facts)
			if r.Status != tc.want || len(r.Because) == 0 || r.Because[0] != tc.why {
				t.Errorf("got %s %q, want %s %q", r.Status, r.Because, tc.want, tc.why)
			}
		})
	}
	for _, op := range Ops {
		for _, v := range []float64{0, 1, 2} {
			want := map[string]bool{"==": v == 1, "!=": v != 1, ">": v > 1, ">=": v >= 1, "<": v < 1, "<=": v <= 1}[op]
			if got := (Condition{Op: op, Value: 1}).holds(v); got != want {
				t.Errorf("%g %s 1: %v", v, op, got)
			}
		}
	}
}

func TestParseRefuses(t *testing.T) {
	const good = `version: 1
controls:
  - id: SC-4
    framework: F
    title: T
    kvh_does: d
    how_to_check: h
    not_covered: [n]
    evidence: {events: [attest], metrics: [kvh_frees_total], commands: ["kvh-verify log TRAIL"]}
    rule:
      require: [{fact: sanitize.steps, op: ">", value: 0, why: w}]
`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("the good file: %v", err)
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"unknown event", "events: [attest]", "events: [attest, zeroized]", `trail event "zeroized"`},
		{"unknown fact", "fact: sanitize.steps", "fact: sanitize.stepz", `fact "sanitize.stepz"`},
		{"unknown key", "title: T", "title: T\n    titel: T", "titel"},
		{"bad operator", `op: ">"`, `op: "=>"`, `operator "=>"`},
		{"no why", "why: w", "why: ''", "why is required"},
		{"no rule", "rule:\n      require: [{fact: sanitize.steps, op: \">\", value: 0, why: w}]", "rule: {}", "at least one condition"},
		{"no not_covered", "not_covered: [n]", "not_covered: []", "not_covered"},
		{"version", "version: 1", "version: 2", "version 2"},
		{"duplicate", "controls:\n", "controls:\n  - {id: SC-4, framework: F, title: T, kvh_does: d, how_to_check: h, not_covered: [n], rule: {require: [{fact: sanitize.steps, op: '>', value: 0, why: w}]}}\n", "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(good, tc.from, tc.to, 1)
			if bad == good {
				t.Fatalf("%q not in the good file", tc.from)
			}
			_, err := Parse([]byte(bad))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(strings.Repeat("#", MaxFileBytes+1))); err == nil {
		t.Error("an oversized file was parsed")
	}
}

// The human mapping names every control the machine-readable one does.
func TestReadmeNamesEveryControl(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range load(t).Controls {
		if !strings.Contains(string(b), c.ID) {
			t.Errorf("README.md does not mention %s %s", c.Framework, c.ID)
		}
	}
}
