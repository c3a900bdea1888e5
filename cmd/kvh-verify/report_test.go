package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/compliance"
	"github.com/kvhygiene/kvh/trailevent"
)

// node writes a small trail a real agent could have written.
func node(t *testing.T, key string) string {
	t.Helper()
	cov, ok := 100.0, true
	return writeTrail(t, key, nil,
		trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: trailevent.Version, Version: "test", PID: 1},
		trailevent.Posture{Ev: trailevent.EvPosture, ScrubOnFree: 1, Source: "test", Witness: true},
		trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: trailevent.Identity{PID: 42, Comm: "vllm", Tenant: "acme", TenantSource: "pod"}},
		trailevent.Buffer{Ev: trailevent.EvAllocate, H: 1, Kind: "remote", Tenant: "acme", PID: 42, Bytes: 8192},
		trailevent.Buffer{Ev: trailevent.EvAttest, H: 1, Kind: "remote", Tenant: "acme", PID: 42, Bytes: 8192, Coverage: &cov, Verified: &ok, DurNS: 5000},
		trailevent.Buffer{Ev: trailevent.EvFree, H: 1, Kind: "remote", Tenant: "acme", PID: 42, Coverage: &cov},
		trailevent.Violation{Ev: trailevent.EvViolation, Kind: "uncovered_process", PID: 77, Tenant: "uid:0", Source: "witness", Action: "deny"},
	)
}

// report draws a report over a verified trail and refuses one that fails;
// exit 1 is for what the auditor gave, exit 2 only for the evidence.
func TestReportExitCodes(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	_, otherPub := keys(t, "kvh-other")
	badControls := filepath.Join(t.TempDir(), "controls.yaml")
	os.WriteFile(badControls, []byte("version: 1\ncontrols:\n  - id: X\n    framework: F\n    title: T\n    kvh_does: d\n    how_to_check: h\n    not_covered: [n]\n    evidence: {events: [no_such_event]}\n    rule: {require: [{fact: sanitize.steps, op: '>', value: 0, why: w}]}\n"), 0o600)
	for _, tc := range []struct {
		name   string
		tamper func(dir string)
		args   []string
		code   int
		stderr string
	}{
		{"html", nil, []string{"--pubkey", pub}, 0, ""},
		{"with controls", nil, []string{"--pubkey", pub, "--controls", "../../compliance/controls.yaml"}, 0, ""},
		{"json", nil, []string{"--pubkey", pub, "--format", "json"}, 0, ""},
		{"markdown", nil, []string{"--pubkey", pub, "--format", "markdown"}, 0, ""},
		{"a record edited", func(dir string) {
			p := filepath.Join(dir, "seg-000000.jsonl")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte(`"bytes":8192`), []byte(`"bytes":8193`), 1), 0o600)
		}, []string{"--pubkey", pub}, 2, "refusing to draw a report over a trail that fails verification"},
		{"records cut off the end", func(dir string) {
			p := filepath.Join(dir, "seg-000000.jsonl")
			b, _ := os.ReadFile(p)
			lines := bytes.SplitAfter(b, []byte("\n"))
			os.WriteFile(p, bytes.Join(lines[:len(lines)-4], nil), 0o600)
		}, []string{"--pubkey", pub}, 2, "refusing"},
		{"another node's key", nil, []string{"--pubkey", otherPub}, 1, "not by the given key kvh-other"},
		{"no key", nil, nil, 1, "--pubkey is required"},
		{"unknown format", nil, []string{"--pubkey", pub, "--format", "pdf"}, 1, `unknown --format "pdf"`},
		{"controls naming an unknown event", nil, []string{"--pubkey", pub, "--controls", badControls}, 1, `trail event "no_such_event"`},
		{"no controls file", nil, []string{"--pubkey", pub, "--controls", "/nonexistent/controls.yaml"}, 1, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := node(t, key)
			if tc.tamper != nil {
				tc.tamper(dir)
			}
			out := filepath.Join(t.TempDir(), "report.out")
			code, stdout, stderr := runCmd(t, append([]string{"report", dir, "--out", out}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("exit %d, want %d; stderr %q, want it to say %q", code, tc.code, stderr, tc.stderr)
			}
			b, err := os.ReadFile(out)
			if tc.code != 0 {
				if err == nil {
					t.Errorf("exit %d left a report behind", code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 {
				t.Errorf("report mode %v, want 0600 like the trail's", st.Mode().Perm())
			}
			if !strings.Contains(stdout, "VERIFIED") || !strings.Contains(stdout, out) {
				t.Errorf("stdout %q does not say where the report went", stdout)
			}
			s := string(b)
			switch {
			case strings.Contains(strings.Join(tc.args, " "), "json"):
				var r struct {
					Verdict struct{ Verified bool } `json:"verdict"`
					Node    struct {
						BytesVerified int64 `json:"bytes_verified"`
					} `json:"node"`
				}
				if err := json.Unmarshal(b, &r); err != nil || !r.Verdict.Verified || r.Node.BytesVerified != 8192 {
					t.Errorf("json report: %v %+v", err, r)
				}
			case strings.Contains(strings.Join(tc.args, " "), "markdown"):
				if !strings.HasPrefix(s, "# kvh evidence report") || !strings.Contains(s, "8192 bytes verified zero") {
					t.Errorf("markdown report:\n%s", s)
				}
			default:
				if !strings.HasPrefix(s, "<!DOCTYPE html>") || !strings.Contains(s, `data-k="bytes_verified" data-v="8192"`) {
					t.Errorf("html report lacks the verified bytes")
				}
				if withCtl := strings.Contains(s, `id="controls"`); withCtl != strings.Contains(strings.Join(tc.args, " "), "--controls") {
					t.Errorf("controls section present: %v", withCtl)
				}
			}
		})
	}
}

// Without --out the report goes to stdout.
func TestReportToStdout(t *testing.T) {
	key, pub := keys(t, "kvh-node")
	code, stdout, stderr := runCmd(t, "report", node(t, key), "--pubkey", pub, "--format", "markdown")
	if code != 0 || !strings.HasPrefix(stdout, "# kvh evidence report") || stderr != "" {
		t.Errorf("exit %d, stdout %.60q, stderr %q", code, stdout, stderr)
	}
}

// Every command a control names is a kvh-verify subcommand, with every flag
// it uses: a control must not send an auditor to a command that is not
// there.
func TestControlsNameRealCommands(t *testing.T) {
	f, err := compliance.Load("../../compliance/controls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range f.Controls {
		if len(c.Evidence.Commands) == 0 {
			t.Errorf("%s names no command", c.ID)
		}
		for _, line := range c.Evidence.Commands {
			words := strings.Fields(line)
			if len(words) < 2 || words[0] != "kvh-verify" {
				t.Errorf("%s: %q is not a kvh-verify command", c.ID, line)
				continue
			}
			if _, ok := commands[words[1]]; !ok {
				t.Errorf("%s: kvh-verify has no command %q", c.ID, words[1])
				continue
			}
			_, help, _ := runCmd(t, words[1], "--help")
			for _, w := range words[2:] {
				flag, _, _ := strings.Cut(w, "=")
				if strings.HasPrefix(flag, "--") && !strings.Contains(help, flag+" ") && !strings.Contains(help, flag+"[") {
					t.Errorf("%s: kvh-verify %s has no flag %s", c.ID, words[1], flag)
				}
			}
			n++
		}
	}
	if n < 13 {
		t.Errorf("only %d commands checked", n)
	}
}
