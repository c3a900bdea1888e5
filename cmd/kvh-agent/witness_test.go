package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// witnessAgent starts an agent with the witness required, probing the fake
// libcuda. It skips when not root and fails when root on a kernel that
// should support uprobes.
func witnessAgent(t *testing.T, extra ...string) *testAgent {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("no BTF: this kernel may not support the witness")
	}
	return newAgent(t, append([]string{"--witness", "on", "--witness-lib", filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"), "--attest-window", "500ms"}, extra...)...)
}

func hasViolation(a *testAgent, kind string, pid int) bool {
	for _, e := range a.events() {
		if e["ev"] == "violation" && e["kind"] == kind && num(e["pid"]) == pid {
			return true
		}
	}
	return false
}

func TestWitnessAttestedClientIsClean(t *testing.T) {
	a := witnessAgent(t)
	run := a.client("driver")
	if run.Err != nil {
		t.Fatal(run.Err)
	}
	if m, ok := a.waitMetrics("kvh_witness_matched_frees_total 2"); !ok {
		t.Fatalf("frees not matched:\n%s\n%s", grepMetrics(m), a.log)
	}
	time.Sleep(time.Second)
	if hasViolation(a, "unattested_free", run.PID) || hasViolation(a, "uncovered_process", run.PID) {
		t.Fatalf("a covered client was flagged: %v", a.events())
	}
}

func TestWitnessCatchesBypass(t *testing.T) {
	a := witnessAgent(t, "--on-violation", "kill")
	for _, way := range []string{"driver", "dlopen"} {
		// Without libkvh: a bypassing client (static binary, stripped LD_PRELOAD).
		run := libkvhtest.Exec(way, "", []string{"CLIENT_LINGER_MS=100"})
		if run.Err != nil {
			t.Fatal(run.Err)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
			return e["ev"] == "violation" && e["kind"] == "unattested_free" && num(e["pid"]) == run.PID
		}); !ok {
			t.Fatalf("%s: bypassing client %d not caught:\n%s", way, run.PID, a.log)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
			return e["ev"] == "action" && e["action"] == "kill" && num(e["pid"]) == run.PID
		}); !ok {
			t.Fatalf("%s: no action on the bypassing client", way)
		}
	}
}

func TestWitnessSeesClientsStartedBeforeIt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	// A copy of the library at another path (another inode), used by a client
	// that is already running when the agent starts.
	dir := t.TempDir()
	cmd, err := libkvhtest.StartOnCopiedDriver(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(200 * time.Millisecond)
	a := witnessAgent(t)
	if _, ok := a.waitEvent(8*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && num(e["pid"]) == cmd.Process.Pid
	}); !ok {
		t.Fatalf("the running client on a copied library was not witnessed:\n%s", a.log)
	}
	if !strings.Contains(a.log.String(), dir) {
		t.Fatalf("the copy was not attached:\n%s", a.log)
	}
}

func TestAgentWithoutWitness(t *testing.T) {
	a := newAgent(t, "--witness", "off")
	if m, ok := a.waitMetrics("kvh_witness_enabled 0"); !ok {
		t.Fatalf("%s", grepMetrics(m))
	}
	if !strings.Contains(a.log.String(), "eBPF witness off") {
		t.Fatalf("the log does not say the witness is off:\n%s", a.log)
	}
}

// startSwappedCopy starts a client (no libkvh) on its own copy of the fake
// driver, then puts a symlink to the driver the agent probes where the copy
// was: the path its maps name is now a probed library, the mapping is not.
func startSwappedCopy(t *testing.T) *exec.Cmd {
	t.Helper()
	dir := t.TempDir()
	cmd, err := libkvhtest.StartOnCopiedDriver(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(200 * time.Millisecond) // mapped
	p := filepath.Join(dir, "libcuda.so.1")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"), p); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// Attack: a bypassing process (no libkvh) on its own copy of libcuda,
// whose path it then points at the library the agent probes. The witness
// took the copy for the probed file and never probed it: no violation.
// The agent (root with every capability here) now probes the mapping
// itself and catches the bypass.
func TestWitnessAttackSwappedCopyCaught(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	cmd := startSwappedCopy(t)
	a := witnessAgent(t)
	if _, ok := a.waitEvent(8*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "unattested_free" && num(e["pid"]) == cmd.Process.Pid
	}); !ok {
		t.Fatalf("a bypass through a copy whose path names a probed library went unseen:\n%s", a.log)
	}
}

// Where the agent cannot follow /proc/<pid>/map_files (the DaemonSet grants
// neither CAP_SYS_ADMIN nor CAP_CHECKPOINT_RESTORE), the same process is an
// uncovered_process violation, and the action applies.
func TestWitnessAttackSwappedCopyReported(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed to run the agent without CAP_SYS_ADMIN: ", err)
	}
	cmd := startSwappedCopy(t)
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skip("no BTF: this kernel may not support the witness")
	}
	a := &testAgent{t: t, dir: t.TempDir(), wrap: []string{"setpriv", "--bounding-set=-sys_admin,-checkpoint_restore", "--inh-caps=-sys_admin,-checkpoint_restore", "--"},
		extra: []string{"--witness", "on", "--witness-lib", filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"), "--attest-window", "500ms", "--on-violation", "kill"}}
	if _, _, err := forensic.GenerateKeys(a.dir, "kvh-test"); err != nil {
		t.Fatal(err)
	}
	a.sock, a.pub = filepath.Join(a.dir, "run", "kvh.sock"), filepath.Join(a.dir, forensic.VerificationKeyFile)
	a.start()
	t.Cleanup(func() { a.kill() })
	if _, ok := a.waitEvent(8*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "uncovered_process" && num(e["pid"]) == cmd.Process.Pid &&
			strings.Contains(fmt.Sprint(e["detail"]), "cannot probe")
	}); !ok {
		t.Fatalf("an unprobeable copy of libcuda was not reported:\n%s", a.log)
	}
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "action" && e["action"] == "kill" && num(e["pid"]) == cmd.Process.Pid
	}); !ok {
		t.Fatalf("no action on the unprobeable process:\n%s", a.log)
	}
}
