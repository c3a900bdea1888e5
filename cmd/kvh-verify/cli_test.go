package main

import (
	"debug/buildinfo"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
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

// buildBinaries builds the real kvh-verify and kvh-agent in one go build, so
// both carry the same build information.
func buildBinaries(t *testing.T) (verify, agent string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-buildvcs=auto", "-o", dir, "./cmd/kvh-verify", "./cmd/kvh-agent")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "kvh-verify"), filepath.Join(dir, "kvh-agent")
}

// --version prints the version the binary was built as, the same string in
// both commands, and exits 0.
func TestVersion(t *testing.T) {
	verify, agent := buildBinaries(t)
	bi, err := buildinfo.ReadFile(verify)
	if err != nil {
		t.Fatal(err)
	}
	want := versionOf(bi)
	for _, c := range [][]string{{verify, "--version"}, {verify, "version"}, {agent, "--version"}} {
		cmd := exec.Command(c[0], c[1:]...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v %s", strings.Join(c, " "), err, stderr.String())
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s printed %q, want %q", strings.Join(c, " "), got, want)
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
