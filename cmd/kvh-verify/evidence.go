package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/trailevent"
)

// evidence summarises what a verified trail holds, in counts: one pass over
// its events, decoded with the trail's typed vocabulary (trailevent), with
// nothing kept but the counts.
type evidence struct {
	Events     uint64                   `json:"events"`
	ByName     map[string]uint64        `json:"by_name"`
	AgentRuns  uint64                   `json:"agent_runs"`
	Schemas    []int                    `json:"schema_versions"`
	Violations map[string]uint64        `json:"violations_by_kind"`
	Overflowed map[string]uint64        `json:"violations_overflowed_by_kind,omitempty"`
	Actions    map[string]*actionCounts `json:"actions"`
	// Unknown counts events by a name trailevent does not know (a newer
	// agent's), or with no name at all; they are reported, not fatal.
	Unknown map[string]uint64 `json:"unknown,omitempty"`
	// Malformed counts events whose known name's type does not fit them.
	Malformed      uint64 `json:"malformed,omitempty"`
	FirstMalformed string `json:"first_malformed,omitempty"`
}

// actionCounts splits an action's outcomes: the enforcer records a failed
// or timed-out action as "error: ...".
type actionCounts struct {
	OK    uint64 `json:"ok"`
	Error uint64 `json:"error"`
}

// maxDistinct bounds each map: names and kinds come from the trail, and a
// summary must not grow with it. The rest are counted under other.
const (
	maxDistinct = 256
	other       = "(other)"
	noName      = "(no ev field)"
)

func (e *evidence) init() {
	e.ByName, e.Violations, e.Overflowed = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	e.Actions, e.Unknown, e.Schemas = map[string]*actionCounts{}, map[string]uint64{}, []int{}
}

func bump(m map[string]uint64, key string, n uint64) {
	if _, ok := m[key]; !ok && len(m) >= maxDistinct {
		key = other
	}
	m[key] += n
}

// readEvidence reads the events of the trail in dir. It verifies nothing:
// call it after forensic.Verify passed.
//
// trailevent.Read stops at the first event it cannot decode; a summary must
// go on past a newer agent's events, so this runs Read's two steps itself,
// forensic.Events then trailevent.Decode, and counts what does not decode.
func readEvidence(dir string) (*evidence, error) {
	e := &evidence{}
	e.init()
	err := forensic.Events(dir, func(seq uint64, body []byte) error {
		e.add(seq, body)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the trail's events: %w", err)
	}
	return e, nil
}

func (e *evidence) add(seq uint64, body []byte) {
	e.Events++
	name, ev, err := trailevent.Decode(body)
	switch {
	case errors.Is(err, trailevent.ErrUnknownEvent):
		bump(e.Unknown, name, 1)
		return
	case err != nil && name == "":
		bump(e.Unknown, noName, 1)
		return
	case err != nil:
		if e.Malformed == 0 {
			e.FirstMalformed = fmt.Sprintf("seq %d: %v", seq, err)
		}
		e.Malformed++
		return
	}
	bump(e.ByName, name, 1)
	switch ev := ev.(type) {
	case *trailevent.AgentStart:
		e.AgentRuns++
		if !slices.Contains(e.Schemas, ev.Schema) && len(e.Schemas) < maxDistinct {
			e.Schemas = append(e.Schemas, ev.Schema)
			slices.Sort(e.Schemas)
		}
	case *trailevent.Violation:
		bump(e.Violations, ev.Kind, 1)
	case *trailevent.ViolationsOverflow:
		bump(e.Overflowed, ev.Kind, ev.Count)
	case *trailevent.Action:
		act := ev.Action
		if _, ok := e.Actions[act]; !ok && len(e.Actions) >= maxDistinct {
			act = other
		}
		c := e.Actions[act]
		if c == nil {
			c = &actionCounts{}
			e.Actions[act] = c
		}
		if strings.HasPrefix(ev.Result, "error") {
			c.Error++
		} else {
			c.OK++
		}
	}
}

// counts renders a map as "a 1, b 2", sorted by key.
func counts(m map[string]uint64) string {
	var s []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		s = append(s, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func (e *evidence) print(w io.Writer, unsealed uint64) {
	schemas := "no agent_start"
	if len(e.Schemas) > 0 {
		var s []string
		for _, v := range e.Schemas {
			s = append(s, fmt.Sprint(v))
		}
		schemas = "schema " + strings.Join(s, ", ")
	}
	fmt.Fprintf(w, "  evidence     %d events from %d agent run(s), %s\n", e.Events, e.AgentRuns, schemas)
	if len(e.Schemas) > 0 && e.Schemas[len(e.Schemas)-1] > trailevent.Version {
		fmt.Fprintf(w, "  warning      written with schema %d; this kvh-verify reads schema %d: newer fields are not summarised\n", e.Schemas[len(e.Schemas)-1], trailevent.Version)
	}
	if unsealed > 0 {
		fmt.Fprintf(w, "  warning      the counts include the %d record(s) no signature covers\n", unsealed)
	}
	fmt.Fprintf(w, "  events       %s\n", counts(e.ByName))
	fmt.Fprintf(w, "  violations   %s\n", counts(e.Violations))
	if len(e.Overflowed) > 0 {
		fmt.Fprintf(w, "  overflowed   %s (counted by the agent, not recorded one by one)\n", counts(e.Overflowed))
	}
	var acts []string
	for _, k := range slices.Sorted(maps.Keys(e.Actions)) {
		c := e.Actions[k]
		s := fmt.Sprintf("%s %d ok", k, c.OK)
		if c.Error > 0 {
			s += fmt.Sprintf(", %d error", c.Error)
		}
		acts = append(acts, s)
	}
	if len(acts) == 0 {
		acts = []string{"none"}
	}
	fmt.Fprintf(w, "  actions      %s\n", strings.Join(acts, "; "))
	if len(e.Unknown) > 0 {
		var n uint64
		for _, c := range e.Unknown {
			n += c
		}
		fmt.Fprintf(w, "  unknown      %d event(s) this kvh-verify does not know: %s\n", n, counts(e.Unknown))
	}
	if e.Malformed > 0 {
		fmt.Fprintf(w, "  malformed    %d event(s) that do not decode as their type, the first: %s\n", e.Malformed, e.FirstMalformed)
	}
}
