package compliance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"go.yaml.in/yaml/v3"
)

// Version is the controls file format this package reads.
const Version = 1

// MaxFileBytes caps a controls file: it is read whole.
const MaxFileBytes = 1 << 20

// File is a controls file.
type File struct {
	Version  int       `yaml:"version" json:"version"`
	Controls []Control `yaml:"controls" json:"controls"`
}

// Control is one control of one framework, mapped to kvh's evidence.
type Control struct {
	ID        string `yaml:"id" json:"id"`               // e.g. "SC-4"
	Framework string `yaml:"framework" json:"framework"` // e.g. "NIST SP 800-53 Rev. 5"
	Title     string `yaml:"title" json:"title"`
	// KvhDoes says what kvh does towards the control.
	KvhDoes  string   `yaml:"kvh_does" json:"kvh_does"`
	Evidence Evidence `yaml:"evidence" json:"evidence"`
	// HowToCheck says how an auditor checks the evidence.
	HowToCheck string `yaml:"how_to_check" json:"how_to_check"`
	// NotCovered lists what kvh does not do for this control.
	NotCovered []string `yaml:"not_covered" json:"not_covered"`
	Rule       Rule     `yaml:"rule" json:"rule"`
}

// Evidence names what shows the control working: trail event kinds (the
// "ev" of trailevent.Kinds), metric names (with an optional {label="…"}
// selector) and kvh-verify command lines.
type Evidence struct {
	Events   []string `yaml:"events" json:"events"`
	Metrics  []string `yaml:"metrics" json:"metrics"`
	Commands []string `yaml:"commands" json:"commands"`
}

// Rule decides a control from a trail's facts: Fail when any FailIf
// condition holds; otherwise Pass when every Require condition holds, and
// NotEvidenced when one does not (the trail does not show the control
// working, which is not the same as showing it broken).
type Rule struct {
	FailIf  []Condition `yaml:"fail_if" json:"fail_if"`
	Require []Condition `yaml:"require" json:"require"`
}

// Condition compares one fact with a number.
type Condition struct {
	Fact  string  `yaml:"fact" json:"fact"`
	Op    string  `yaml:"op" json:"op"` // one of Ops
	Value float64 `yaml:"value" json:"value"`
	// Why says, in the report, what it means when a fail_if condition holds
	// or a require condition does not.
	Why string `yaml:"why" json:"why"`
}

// Ops are the comparisons a Condition may use.
var Ops = []string{"==", "!=", ">", ">=", "<", "<="}

func (c Condition) holds(v float64) bool {
	switch c.Op {
	case "==":
		return v == c.Value
	case "!=":
		return v != c.Value
	case ">":
		return v > c.Value
	case ">=":
		return v >= c.Value
	case "<":
		return v < c.Value
	case "<=":
		return v <= c.Value
	}
	return false
}

func (c Condition) String() string { return fmt.Sprintf("%s %s %g", c.Fact, c.Op, c.Value) }

// Status is a control's outcome on one trail.
type Status string

// The outcomes.
const (
	Pass         Status = "pass"
	Fail         Status = "fail"
	NotEvidenced Status = "not evidenced"
)

// Result is one control evaluated on one trail.
type Result struct {
	Control
	Status Status `json:"status"`
	// Because lists, for Fail, the fail_if conditions that held; for
	// NotEvidenced, the require conditions that did not; for Pass, every
	// require condition (what the pass rests on). Each names the fact, its
	// value and the condition's why.
	Because []string `json:"because"`
}

// Evaluate decides c from facts (name → value, from the report). A fact
// missing from facts counts as 0.
func Evaluate(c Control, facts map[string]float64) Result {
	r := Result{Control: c, Status: Pass}
	for _, cond := range c.Rule.FailIf {
		if v := facts[cond.Fact]; cond.holds(v) {
			r.Status = Fail
			r.Because = append(r.Because, explain(cond, v))
		}
	}
	if r.Status == Fail {
		return r
	}
	var missing, met []string
	for _, cond := range c.Rule.Require {
		v := facts[cond.Fact]
		if cond.holds(v) {
			met = append(met, fmt.Sprintf("%s is %g (needs %s %g)", cond.Fact, v, cond.Op, cond.Value))
		} else {
			missing = append(missing, explain(cond, v))
		}
	}
	if len(missing) > 0 {
		r.Status, r.Because = NotEvidenced, missing
		return r
	}
	r.Because = met
	return r
}

func explain(c Condition, v float64) string {
	return fmt.Sprintf("%s is %g: %s", c.Fact, v, c.Why)
}

// Load reads and parses a controls file.
func Load(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	file, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return file, nil
}

// Parse parses a controls file strictly: unknown keys, a version other than
// Version, a control without an id, framework, title or rule, a duplicate
// id, an event kind trailevent does not know, a fact the report does not
// compute and an unknown operator are errors naming the control.
func Parse(data []byte) (*File, error) {
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("controls file larger than %d bytes", MaxFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty controls file")
		}
		return nil, err
	}
	if f.Version != Version {
		return nil, fmt.Errorf("controls file version %d; this kvh reads version %d", f.Version, Version)
	}
	if len(f.Controls) == 0 {
		return nil, errors.New("no controls")
	}
	events := map[string]bool{}
	for _, k := range trailevent.Kinds() {
		events[k.Name] = true
	}
	facts := map[string]bool{}
	for _, x := range Facts() {
		facts[x.Name] = true
	}
	seen := map[string]bool{}
	for i, c := range f.Controls {
		where := fmt.Sprintf("control %d (%s)", i+1, c.ID)
		switch {
		case c.ID == "" || c.Framework == "" || c.Title == "":
			return nil, fmt.Errorf("%s: id, framework and title are required", where)
		case seen[c.Framework+" "+c.ID]:
			return nil, fmt.Errorf("%s: listed twice for %s", where, c.Framework)
		case c.KvhDoes == "" || c.HowToCheck == "" || len(c.NotCovered) == 0:
			return nil, fmt.Errorf("%s: kvh_does, how_to_check and not_covered are required", where)
		case len(c.Rule.FailIf)+len(c.Rule.Require) == 0:
			return nil, fmt.Errorf("%s: a rule needs at least one condition", where)
		}
		seen[c.Framework+" "+c.ID] = true
		for _, e := range c.Evidence.Events {
			if !events[e] {
				return nil, fmt.Errorf("%s: evidence names trail event %q, which trailevent.Kinds does not list", where, e)
			}
		}
		for _, cond := range slices.Concat(c.Rule.FailIf, c.Rule.Require) {
			if !facts[cond.Fact] {
				return nil, fmt.Errorf("%s: rule names fact %q, which the report does not compute (compliance.Facts)", where, cond.Fact)
			}
			if !slices.Contains(Ops, cond.Op) {
				return nil, fmt.Errorf("%s: rule on %s: operator %q is not one of %s", where, cond.Fact, cond.Op, strings.Join(Ops, " "))
			}
			if strings.TrimSpace(cond.Why) == "" {
				return nil, fmt.Errorf("%s: rule on %s: why is required", where, cond.Fact)
			}
		}
	}
	return &f, nil
}

// Fact is one number the report computes from a verified trail, by name.
type Fact struct {
	Name string
	Doc  string
}

// Facts lists every fact a rule may name. The report computes each one
// (a test in report/ holds it to that).
func Facts() []Fact {
	f := []Fact{
		{"trail.verified", "1: the trail verified (a report is drawn only over a trail that does)"},
		{"trail.records", "records in the trail"},
		{"trail.signatures_checked", "1: every checkpoint's signature was checked with the auditor's public key"},
		{"trail.mac_declared", "1: the trail declares a MAC on every record"},
		{"trail.mac_checked", "1: every record's MAC was checked with the auditor's MAC key"},
		{"trail.offnode_checkpoints", "checkpoints kept off the node that the trail matched (--checkpoint)"},
		{"trail.unsealed_records", "records after the latest signed checkpoint (no signature covers them)"},
		{"trail.prunes", "signed prune records (older segments removed with proof)"},
		{"trail.tamper_detected", "tamper_detected records: the writer found an earlier trail tampered with and started over it"},
		{"trail.span_seconds", "seconds between the first and the last record"},
		{"events.total", "event records"},
		{"events.unknown", "event records this kvh does not know (a newer agent's)"},
		{"events.malformed", "event records that do not decode as their type"},
		{"violations.total", "violation records"},
		{"violations.overflowed", "violations counted in violations_overflow records, not recorded one by one"},
		{"actions.total", "action records"},
		{"actions.errors", "action records whose result is an error or a timeout"},
		{"sanitize.steps", "sanitize steps: attest, sanitize and sanitize_end records"},
		{"sanitize.unverified", "sanitize steps whose verification did not run or did not pass"},
		{"sanitize.partial", "sanitize steps with coverage below 100%"},
		{"flood.events", "records summarised in flood_summary records, not ingested one by one"},
		{"flood.unverified_frees", "frees in flood_summary records whose zeroize was not verified"},
		{"posture.records", "posture records"},
		{"posture.scrub_disabled", "posture records saying the driver's scrub-on-free is disabled"},
		{"posture.scrub_unknown", "posture records saying scrub-on-free could not be read"},
		{"posture.witness_on", "posture records with the eBPF witness attached"},
		{"posture.witness_off", "posture records with the eBPF witness not attached"},
	}
	for _, k := range trailevent.Kinds() {
		f = append(f, Fact{"events." + k.Name, "records of event " + k.Name})
	}
	for _, k := range violation.Kinds() {
		f = append(f, Fact{"violations." + string(k), "violation records of kind " + string(k)})
	}
	return f
}
