package deploy

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// prometheusOwn are series Prometheus itself makes for every target.
var prometheusOwn = map[string]bool{"up": true}

// requiredAlerts: for each concern issue 12 names, the series an alert on
// it must read.
var requiredAlerts = map[string]string{
	"violations":            "kvh_violations_total",
	"uncovered processes":   "kvh_uncovered_processes",
	"trail unhealthy":       "kvh_trail_healthy",
	"scrub-on-free off":     "kvh_posture_scrub_on_free",
	"witness down":          "kvh_witness_enabled",
	"interposer drops":      "kvh_interposer_dropped_events_total",
	"agent not answering":   "up",
	"actions that failed":   "kvh_enforcer_errors_total",
	"violations not queued": "kvh_violations_overflow_total",
}

// promMetrics parses a PromQL expression with Prometheus's own parser and
// returns the metric names it selects, and the job matchers it uses.
func promMetrics(expr string) (names []string, jobs []string, err error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, nil, err
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
			if m.Name == "job" && m.Type == labels.MatchEqual {
				jobs = append(jobs, m.Value)
			}
		}
		names = append(names, name)
		return nil
	})
	return names, jobs, nil
}

func TestAlertsUseRealMetrics(t *testing.T) {
	golden := goldenMetrics(t)
	for _, o := range overlays {
		r := render(t, o)
		read := map[string]bool{}
		alerts := map[string]bool{}
		for _, g := range r.rule.Spec.Groups {
			for _, rule := range g.Rules {
				if rule.Alert == "" {
					t.Errorf("%s: group %s has a recording rule %q: nothing records kvh series", o, g.Name, rule.Record)
					continue
				}
				if alerts[rule.Alert] {
					t.Errorf("%s: alert %s twice", o, rule.Alert)
				}
				alerts[rule.Alert] = true
				names, jobs, err := promMetrics(rule.Expr.String())
				if err != nil {
					t.Errorf("%s: alert %s: %q does not parse: %v", o, rule.Alert, rule.Expr.String(), err)
					continue
				}
				for _, n := range names {
					if !golden[n] && !prometheusOwn[n] {
						t.Errorf("%s: alert %s reads %s, which the agent does not export (cmd/kvh-agent/testdata/metrics.prom)", o, rule.Alert, n)
					}
					read[n] = true
				}
				for _, j := range jobs {
					if want := r.svc.Name; r.sm.Spec.JobLabel == "" && j != want {
						t.Errorf("%s: alert %s matches job %q; the ServiceMonitor's job is the Service's name %q", o, rule.Alert, j, want)
					}
				}
				if s := rule.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("%s: alert %s severity %q", o, rule.Alert, s)
				}
				if rule.Annotations["summary"] == "" || rule.Annotations["description"] == "" {
					t.Errorf("%s: alert %s needs a summary and a description", o, rule.Alert)
				}
			}
		}
		for concern, metric := range requiredAlerts {
			if !read[metric] {
				t.Errorf("%s: no alert on %s (%s)", o, concern, metric)
			}
		}
	}
}

// grafanaVars are the dashboard's template variables, and what stands in
// for each when an expression is parsed.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$node", ".*")

var labelValues = regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Panels  []panel `json:"panels"` // a collapsed row's
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func TestDashboardUsesRealMetrics(t *testing.T) {
	golden := goldenMetrics(t)
	for _, o := range overlays {
		r := render(t, o)
		var dash *dashboard
		for name, cm := range r.configMaps {
			if cm.Labels["grafana_dashboard"] != "1" {
				continue
			}
			if dash != nil {
				t.Fatalf("%s: two dashboard ConfigMaps", o)
			}
			if !strings.HasSuffix(name, "-dashboard") {
				t.Errorf("%s: dashboard ConfigMap %q carries a hash suffix: Grafana's sidecar would keep every old copy", o, name)
			}
			if len(cm.Data) != 1 {
				t.Fatalf("%s: dashboard ConfigMap %s has %d files, want one", o, name, len(cm.Data))
			}
			for file, text := range cm.Data {
				if !strings.HasSuffix(file, ".json") {
					t.Errorf("%s: dashboard file %s is not .json", o, file)
				}
				dec := json.NewDecoder(strings.NewReader(text))
				dash = &dashboard{}
				if err := dec.Decode(dash); err != nil {
					t.Fatalf("%s: dashboard %s: %v", o, file, err)
				}
			}
		}
		if dash == nil {
			t.Fatalf("%s: no ConfigMap labelled grafana_dashboard: \"1\"", o)
		}
		if dash.UID == "" || dash.Title == "" {
			t.Errorf("%s: the dashboard needs a uid and a title", o)
		}
		exprs := 0
		var check func(ps []panel)
		check = func(ps []panel) {
			for _, p := range ps {
				check(p.Panels)
				if p.Type != "row" && len(p.Targets) == 0 {
					t.Errorf("%s: panel %q has no query", o, p.Title)
				}
				for _, tg := range p.Targets {
					exprs++
					e := grafanaVars.Replace(tg.Expr)
					if strings.Contains(e, "$") {
						t.Errorf("%s: panel %q: %q uses a variable the dashboard does not define", o, p.Title, tg.Expr)
						continue
					}
					names, _, err := promMetrics(e)
					if err != nil {
						t.Errorf("%s: panel %q: %q does not parse: %v", o, p.Title, tg.Expr, err)
						continue
					}
					for _, n := range names {
						if !golden[n] {
							t.Errorf("%s: panel %q reads %s, which the agent does not export", o, p.Title, n)
						}
					}
				}
			}
		}
		check(dash.Panels)
		if exprs < 10 {
			t.Errorf("%s: the dashboard has %d queries", o, exprs)
		}
		for _, v := range dash.Templating.List {
			if v.Type != "query" {
				continue
			}
			q, _ := v.Query.(map[string]any)
			m := labelValues.FindStringSubmatch(func() string { s, _ := q["query"].(string); return s }())
			if m == nil || !golden[m[1]] || m[2] != "node" {
				t.Errorf("%s: template variable %s: query %v is not label_values(<an agent metric>, node)", o, v.Name, v.Query)
			}
		}
	}
}

// TestMetricCheckCanFail: the checks above catch a misspelled metric.
func TestMetricCheckCanFail(t *testing.T) {
	golden := goldenMetrics(t)
	names, _, err := promMetrics(`sum by (node) (rate(kvh_violation_total{node=~".*"}[5m])) > 0`)
	if err != nil || len(names) != 1 || golden[names[0]] {
		t.Fatalf("a misspelled metric passed: %v %v", names, err)
	}
	if _, _, err := promMetrics(`sum by (node (kvh_trail_healthy)`); err == nil {
		t.Fatal("an expression that does not parse passed")
	}
}
