package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/trailevent"
)

// After a trail verifies, log summarises what it holds, read back through
// the trail's typed vocabulary; events this kvh-verify does not know are
// counted and reported, not fatal.
func TestLogEvidenceSummary(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	cov := 100.0
	bodies := []any{
		trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: 1, Version: "v1", PID: 10},
		trailevent.Buffer{Ev: trailevent.EvAllocate, H: 1, Tenant: "a", Bytes: 4096},
		trailevent.Buffer{Ev: trailevent.EvSanitize, H: 1, Coverage: &cov},
		trailevent.Buffer{Ev: trailevent.EvFree, H: 1},
		trailevent.Violation{Ev: trailevent.EvViolation, Kind: "use_after_free", PID: 11, Action: "kill"},
		trailevent.Action{Ev: trailevent.EvAction, Action: "kill", PID: 11, Kind: "use_after_free", Result: "killed"},
		trailevent.Violation{Ev: trailevent.EvViolation, Kind: "use_after_free", PID: 12, Action: "kill"},
		trailevent.Action{Ev: trailevent.EvAction, Action: "kill", PID: 12, Kind: "use_after_free", Result: "error: no such process"},
		trailevent.Violation{Ev: trailevent.EvViolation, Kind: "unattested_free", PID: 13, Action: "freeze"},
		trailevent.Action{Ev: trailevent.EvAction, Action: "freeze", PID: 13, Kind: "unattested_free", Result: "frozen (cgroup)"},
		trailevent.ViolationsOverflow{Ev: trailevent.EvViolationsOverflow, Kind: "use_after_free", Count: 1000},
		map[string]any{"ev": "from_the_future", "x": 1},
		map[string]any{"ev": "from_the_future"},
		map[string]any{"no_ev": true},
		map[string]any{"ev": trailevent.EvViolation, "pid": "not a number"},
		trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: 1, Version: "v2", PID: 20},
		trailevent.Buffer{Ev: trailevent.EvAllocate, H: 2, Tenant: "b", Bytes: 4096},
	}
	dir := writeTrail(t, key, nil, bodies...)

	code, out, e := runCmd(t, "log", dir, "--pubkey", pub)
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, out, e)
	}
	for _, want := range []string{
		"evidence     17 events from 2 agent run(s), schema 1",
		"events       action 3, agent_start 2, allocate 2, free 1, sanitize 1, violation 3, violations_overflow 1",
		"violations   unattested_free 1, use_after_free 2",
		"overflowed   use_after_free 1000",
		"actions      freeze 1 ok; kill 1 ok, 1 error",
		"unknown      3 event(s) this kvh-verify does not know: (no ev field) 1, from_the_future 2",
		"malformed    1 event(s) that do not decode as their type, the first: seq ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = runCmd(t, "log", dir, "--pubkey", pub, "--json")
	if code != exitOK {
		t.Fatalf("json: exit %d", code)
	}
	var v struct {
		OK       bool `json:"ok"`
		Evidence struct {
			Events     uint64                       `json:"events"`
			ByName     map[string]uint64            `json:"by_name"`
			AgentRuns  uint64                       `json:"agent_runs"`
			Schemas    []int                        `json:"schema_versions"`
			Violations map[string]uint64            `json:"violations_by_kind"`
			Overflowed map[string]uint64            `json:"violations_overflowed_by_kind"`
			Actions    map[string]map[string]uint64 `json:"actions"`
			Unknown    map[string]uint64            `json:"unknown"`
			Malformed  uint64                       `json:"malformed"`
			First      string                       `json:"first_malformed"`
		} `json:"evidence"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	ev := v.Evidence
	if !v.OK || ev.Events != 17 || ev.AgentRuns != 2 || len(ev.Schemas) != 1 || ev.Schemas[0] != 1 ||
		ev.ByName["violation"] != 3 || ev.Violations["use_after_free"] != 2 || ev.Violations["unattested_free"] != 1 ||
		ev.Overflowed["use_after_free"] != 1000 ||
		ev.Actions["kill"]["ok"] != 1 || ev.Actions["kill"]["error"] != 1 || ev.Actions["freeze"]["ok"] != 1 ||
		ev.Unknown["from_the_future"] != 2 || ev.Unknown["(no ev field)"] != 1 || ev.Malformed != 1 || !strings.Contains(ev.First, "violation") {
		t.Errorf("json evidence: %s", out)
	}

	// A newer agent's schema is said, not hidden.
	newer := writeTrail(t, key, nil, trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: trailevent.Version + 1})
	if code, out, _ := runCmd(t, "log", newer, "--pubkey", pub); code != exitOK || !strings.Contains(out, "written with schema 2; this kvh-verify reads schema 1") {
		t.Errorf("newer schema: %d\n%s", code, out)
	}

	// A trail that does not verify gets no summary: its events are not evidence.
	dir = writeTrail(t, key, nil, bodies...)
	rewriteCheckpoints(t, dir, func(i int, _ uint64, n string) (string, bool) { return forge(t, n), true })
	if code, out, _ := runCmd(t, "log", dir, "--pubkey", pub); code != exitFail || strings.Contains(out, "evidence") {
		t.Errorf("a failed trail was summarised: %d\n%s", code, out)
	}
	if code, out, _ := runCmd(t, "log", dir, "--pubkey", pub, "--json"); code != exitFail || strings.Contains(out, "evidence") {
		t.Errorf("a failed trail was summarised: %d\n%s", code, out)
	}
}

// The summary holds counts, not events: a trail of many events from many
// tenants keeps its maps bounded.
func TestEvidenceCountsStayBounded(t *testing.T) {
	var e evidence
	e.init()
	for i := 0; i < 10*maxDistinct; i++ {
		body := []byte(`{"ev":"violation","kind":"k` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `-` + itoa(i) + `","pid":1,"action":"observe"}`)
		e.add(uint64(i), body)
	}
	if len(e.Violations) > maxDistinct+1 || e.Violations[other] == 0 || e.Events != 10*maxDistinct {
		t.Errorf("%d distinct kinds kept, %d under %q, %d events", len(e.Violations), e.Violations[other], other, e.Events)
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
