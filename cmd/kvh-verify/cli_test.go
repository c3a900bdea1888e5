package main

import (
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
)

// Every usage error says what was wrong and how the command is used, on
// stderr, and exits 1 (never 2, which means the evidence failed).
func TestUsageErrorsSayWhy(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		why  string // in the message
		use  string // in the usage that follows
	}{
		{[]string{"gate", "m.json", "--coverage-min", "abc"}, `invalid argument "abc"`, "kvh-verify gate [flags] METRICS_JSON"},
		{[]string{"gate", "m.json", "--no-such-flag"}, "unknown flag: --no-such-flag", "kvh-verify gate [flags] METRICS_JSON"},
		{[]string{"gate"}, "one metrics JSON file", "kvh-verify gate [flags] METRICS_JSON"},
		{[]string{"log", dir, "--pubkey"}, "flag needs an argument", "kvh-verify log [flags] TRAIL_DIR"},
		{[]string{"log", "--json=maybe", dir}, "invalid argument", "kvh-verify log [flags] TRAIL_DIR"},
		{[]string{"log"}, "trail directory", "kvh-verify log [flags] TRAIL_DIR"},
		{[]string{"log", "a", "b"}, "trail directory", "kvh-verify log [flags] TRAIL_DIR"},
		{[]string{"prune", dir, "--max-rotated", "x"}, "invalid argument", "kvh-verify prune [flags] TRAIL_DIR"},
		{[]string{"keygen", "--bogus"}, "unknown flag: --bogus", "kvh-verify keygen --out DIR [flags]"},
		{[]string{"keygen"}, "--out DIR is required", "kvh-verify keygen --out DIR [flags]"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`, "kvh-verify log [flags] TRAIL_DIR"},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`, "kvh-verify log [flags] TRAIL_DIR"},
		{nil, "a command is required", "kvh-verify log [flags] TRAIL_DIR"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, e := runCmd(t, tc.args...)
			if code != exitError {
				t.Errorf("exit %d, want 1", code)
			}
			if out != "" {
				t.Errorf("usage error wrote to stdout: %q", out)
			}
			if !strings.HasPrefix(e, "kvh-verify") || !strings.Contains(e, tc.why) {
				t.Errorf("stderr does not say why (%q):\n%s", tc.why, e)
			}
			if !strings.Contains(e, tc.use) {
				t.Errorf("stderr has no usage (%q):\n%s", tc.use, e)
			}
		})
	}
}

// Help is asked for: it goes to stdout and exits 0, and each command's usage
// line names its positional arguments.
func TestHelpGoesToStdout(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"kvh-verify log [flags] TRAIL_DIR", "kvh-verify gate [flags] METRICS_JSON", "Exit codes"}},
		{[]string{"--help"}, []string{"kvh-verify prune [flags] TRAIL_DIR"}},
		{[]string{"help"}, []string{"kvh-verify keygen --out DIR [flags]"}},
		{[]string{"help", "log"}, []string{"kvh-verify log [flags] TRAIL_DIR", "kvh-verify log --format seed [flags] SEED_LOG", "--pubkey", "--allow-unsealed"}},
		{[]string{"log", "--help"}, []string{"kvh-verify log [flags] TRAIL_DIR", "--pubkey"}},
		{[]string{"log", "-h"}, []string{"kvh-verify log [flags] TRAIL_DIR"}},
		{[]string{"help", "gate"}, []string{"kvh-verify gate [flags] METRICS_JSON", "--coverage-min", "Exit codes"}},
		{[]string{"gate", "-h"}, []string{"kvh-verify gate [flags] METRICS_JSON"}},
		{[]string{"help", "prune"}, []string{"kvh-verify prune [flags] TRAIL_DIR", "--retention-days"}},
		{[]string{"keygen", "--help"}, []string{"kvh-verify keygen --out DIR [flags]", "--name"}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, e := runCmd(t, tc.args...)
			if code != exitOK {
				t.Errorf("exit %d, want 0", code)
			}
			if e != "" {
				t.Errorf("help wrote to stderr: %q", e)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

var (
	binMu  sync.Mutex
	binDir string
	bins   = map[string]string{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds the real command ./cmd/NAME once per test run.
func binary(t *testing.T, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries")
	}
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := bins[name]; ok {
		return p
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "kvh-verify-test-bin")
		if err != nil {
			t.Fatal(err)
		}
		binDir = d
	}
	p := filepath.Join(binDir, name)
	cmd := exec.Command("go", "build", "-buildvcs=auto", "-o", p, "./cmd/"+name)
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, out)
	}
	bins[name] = p
	return p
}

// --version prints the version the binary was built as (kvh-agent's by the
// same rule) and exits 0.
func TestVersion(t *testing.T) {
	for _, c := range []struct{ bin, arg string }{{"kvh-verify", "--version"}, {"kvh-verify", "version"}, {"kvh-agent", "--version"}} {
		bin := binary(t, c.bin)
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, c.arg)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v %s", c.bin, c.arg, err, stderr.String())
		}
		if got, want := strings.TrimSpace(string(out)), versionOf(bi); got != want || got == "" {
			t.Errorf("%s %s printed %q, want %q", c.bin, c.arg, got, want)
		}
	}
}

func TestVersionOf(t *testing.T) {
	cases := []struct {
		bi   debug.BuildInfo
		want string
	}{
		{debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "e46dc0bcb97bd60214f68e3d4591641c7e15d54d"}}}, "e46dc0bcb97b"},
		{debug.BuildInfo{}, "devel"},
	}
	for _, tc := range cases {
		if got := versionOf(&tc.bi); got != tc.want {
			t.Errorf("versionOf(%+v) = %q, want %q", tc.bi.Main, got, tc.want)
		}
	}
}
