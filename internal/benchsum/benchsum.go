// Package benchsum turns the output of go test -bench into the one-page
// summary make bench writes (build/bench.md): each figure, its target, the
// reference measured in the same run and the ratio to it, and a verdict. A
// figure the run did not produce is "not measured", never a pass.
package benchsum

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Result is one benchmark line.
type Result struct {
	Pkg     string
	Name    string // without the -GOMAXPROCS suffix
	Procs   int
	N       int64
	Metrics map[string]float64 // unit -> value
}

// Run is everything parsed from one or more go test -bench outputs.
type Run struct {
	Results []Result
	CPU     string            // the "cpu:" line
	Skipped map[string]string // "pkg Name" -> why, for --- SKIP and --- FAIL
}

var (
	procsSuffix = regexp.MustCompile(`-(\d+)$`)
	logPrefix   = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)
)

// Parse reads go test -bench output. A benchmark line whose metrics are not
// value/unit pairs is an error naming the line.
func Parse(r io.Reader, run *Run) error {
	if run.Skipped == nil {
		run.Skipped = map[string]string{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	pkg := ""
	var pending string // a --- SKIP/FAIL whose reason is on the next lines
	for ln := 1; sc.Scan(); ln++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "pkg: "):
			pkg = strings.TrimSpace(line[5:])
		case strings.HasPrefix(line, "cpu: "):
			run.CPU = strings.TrimSpace(line[5:])
		case strings.HasPrefix(line, "--- SKIP: "), strings.HasPrefix(line, "--- FAIL: "):
			f := strings.Fields(line)
			name := procsSuffix.ReplaceAllString(f[2], "")
			pending = pkg + " " + name
			run.Skipped[pending] = strings.ToLower(strings.Trim(f[1], ":"))
		case pending != "" && strings.HasPrefix(line, "    "):
			why := strings.TrimSpace(line)
			if m := logPrefix.FindString(why); m != "" {
				why = strings.TrimSpace(why[len(m):])
			}
			if why != "" && !strings.Contains(run.Skipped[pending], ":") {
				run.Skipped[pending] += ": " + why
			}
		case strings.HasPrefix(line, "Benchmark"):
			pending = ""
			f := strings.Fields(line)
			if len(f) < 2 {
				continue // the name printed before a benchmark's log lines
			}
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				continue // a log line that starts with the name
			}
			if len(f)%2 != 0 {
				return fmt.Errorf("line %d: benchmark metrics are not value/unit pairs: %q", ln, line)
			}
			res := Result{Pkg: pkg, Name: f[0], Procs: 1, N: n, Metrics: map[string]float64{}}
			if m := procsSuffix.FindStringSubmatch(f[0]); m != nil {
				res.Procs, _ = strconv.Atoi(m[1])
				res.Name = strings.TrimSuffix(f[0], m[0])
			}
			for i := 2; i < len(f); i += 2 {
				v, err := strconv.ParseFloat(f[i], 64)
				if err != nil {
					return fmt.Errorf("line %d: metric %q is not a number: %q", ln, f[i+1], f[i])
				}
				res.Metrics[f[i+1]] = v
			}
			run.Results = append(run.Results, res)
		default:
			pending = ""
		}
	}
	return sc.Err()
}

// Figure is one row of the summary: where its value comes from and what it
// must be.
type Figure struct {
	What   string
	Pkg    string // import path suffix, e.g. "/forensic"
	Bench  string // regexp over the benchmark name (anchored)
	Procs  int    // 0: every GOMAXPROCS the run used, one row each
	Units  []string
	UnitRe string // instead of Units: every unit matching this (anchored), one row each
	Ref    string // unit of the reference measured in the same run (optional)
	// RefProcs takes the reference from the same benchmark run at this
	// GOMAXPROCS (how a figure scales with cores).
	RefProcs int
	Ratio    string // unit of the ratio to the reference (optional; else value/ref)
	Op       string // ">=", "<=", "==", or "" for a figure shown without a target
	Target   float64
	OnRate   bool // the target applies to the ratio, not the value
	Note     string
}

// Line is a Figure as measured.
type Line struct {
	Figure
	Bench    string
	Procs    int
	Unit     string
	Value    float64
	RefValue float64
	RatioV   float64
	Verdict  string // PASS, FAIL, info, not measured, skipped: …
}

// Summarize matches figures to results. Every figure yields at least one
// line; without a matching result it is "not measured".
func Summarize(run *Run, figs []Figure) []Line {
	var out []Line
	for _, f := range figs {
		re := regexp.MustCompile(`^(?:` + f.Bench + `)$`)
		found := false
		for _, r := range run.Results {
			if !strings.HasSuffix(r.Pkg, f.Pkg) || !re.MatchString(r.Name) || (f.Procs != 0 && r.Procs != f.Procs) {
				continue
			}
			for _, unit := range f.units(r) {
				found = true
				l := Line{Figure: f, Bench: r.Name, Procs: r.Procs, Unit: unit, Value: r.Metrics[unit], RefValue: math.NaN(), RatioV: math.NaN()}
				refFrom := r
				if f.RefProcs != 0 {
					refFrom = Result{}
					for _, o := range run.Results {
						if o.Pkg == r.Pkg && o.Name == r.Name && o.Procs == f.RefProcs {
							refFrom = o
						}
					}
				}
				if f.Ref != "" {
					if v, ok := refFrom.Metrics[f.Ref]; ok {
						l.RefValue = v
					}
				}
				if f.Ratio != "" {
					if v, ok := r.Metrics[f.Ratio]; ok {
						l.RatioV = v
					}
				} else if !math.IsNaN(l.RefValue) && l.RefValue != 0 {
					l.RatioV = l.Value / l.RefValue
				}
				l.Verdict = verdict(f, l)
				out = append(out, l)
			}
		}
		if !found {
			l := Line{Figure: f, Value: math.NaN(), RefValue: math.NaN(), RatioV: math.NaN(), Verdict: "not measured"}
			for k, why := range run.Skipped {
				pkg, name, _ := strings.Cut(k, " ")
				if strings.HasSuffix(pkg, f.Pkg) && (re.MatchString(name) || strings.HasPrefix(f.Bench, name+"/")) {
					l.Verdict = "not measured (" + why + ")"
				}
			}
			out = append(out, l)
		}
	}
	return out
}

// units lists the units of r that f reports, in a stable order.
func (f Figure) units(r Result) []string {
	if f.UnitRe == "" {
		for _, u := range f.Units {
			if _, ok := r.Metrics[u]; ok {
				return []string{u}
			}
		}
		return nil
	}
	re := regexp.MustCompile(`^(?:` + f.UnitRe + `)$`)
	var out []string
	for u := range r.Metrics {
		if re.MatchString(u) {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out
}

func verdict(f Figure, l Line) string {
	if f.Op == "" {
		return "info"
	}
	v := l.Value
	if f.OnRate {
		v = l.RatioV
	}
	if math.IsNaN(v) {
		return "not measured"
	}
	ok := false
	switch f.Op {
	case ">=":
		ok = v >= f.Target
	case "<=":
		ok = v <= f.Target
	case "==":
		ok = v == f.Target
	}
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// Markdown writes the summary table.
func Markdown(w io.Writer, run *Run, lines []Line, header string) {
	fmt.Fprintf(w, "# kvh benchmarks\n\n%s\n\n", header)
	if run.CPU != "" {
		fmt.Fprintf(w, "CPU: %s\n\n", run.CPU)
	}
	pass, fail, missing := 0, 0, 0
	for _, l := range lines {
		switch {
		case l.Verdict == "PASS":
			pass++
		case l.Verdict == "FAIL":
			fail++
		case strings.HasPrefix(l.Verdict, "not measured"):
			missing++
		}
	}
	fmt.Fprintf(w, "**%d pass, %d fail, %d not measured** (of %d figures with a target or shown for information)\n\n", pass, fail, missing, len(lines))
	fmt.Fprintln(w, "| | figure | benchmark | measured | target | reference (same run) | ratio |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, l := range lines {
		mark := map[string]string{"PASS": "✅ PASS", "FAIL": "❌ FAIL", "info": "ℹ️"}[l.Verdict]
		if mark == "" {
			mark = "⚪ " + l.Verdict
		}
		bench := "—"
		if l.Bench != "" {
			bench = fmt.Sprintf("`%s` %s", strings.TrimPrefix(l.Bench, "Benchmark"), pkgShort(l.Pkg))
			if l.Procs > 1 || l.Figure.Procs == 0 {
				bench += fmt.Sprintf(" (%d CPU)", l.Procs)
			}
		}
		measured := "—"
		if !math.IsNaN(l.Value) {
			measured = num(l.Value) + " " + l.Unit
		}
		target := "—"
		if l.Op != "" {
			target = l.Op + " " + num(l.Target)
			if l.OnRate {
				target += " (ratio)"
			} else if l.Unit != "" {
				target += " " + l.Unit
			} else if len(l.Units) > 0 {
				target += " " + l.Units[0]
			}
		}
		ref := "—"
		if !math.IsNaN(l.RefValue) {
			ref = num(l.RefValue) + " " + l.Ref
		}
		ratio := "—"
		if !math.IsNaN(l.RatioV) {
			ratio = num(l.RatioV) + "×"
		}
		what := l.What
		if l.Note != "" {
			what += " — " + l.Note
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", mark, what, bench, measured, target, ref, ratio)
	}
}

func pkgShort(p string) string {
	if p == "" {
		return ""
	}
	return "./" + strings.TrimPrefix(strings.TrimPrefix(p, "github.com/kvhygiene/kvh"), "/")
}

// num prints a figure with three significant digits and thousands apart.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == math.Trunc(v) && a < 1e15:
		return group(strconv.FormatFloat(v, 'f', 0, 64))
	case a >= 1000:
		return group(strconv.FormatFloat(v, 'f', 0, 64))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func group(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
