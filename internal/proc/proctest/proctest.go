// Package proctest reuses a pid on purpose, for the tests that prove kvh
// never acts on a process that took a violator's pid. It steers the
// kernel's next pid (/proc/sys/kernel/ns_last_pid), which needs root.
package proctest

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// NeedRoot skips t, saying why, when it cannot steer pids.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("reusing a pid on purpose needs root (ns_last_pid): skipped")
	}
}

// StartAt starts commands made by mk until one gets pid (other processes
// forking at the same moment can take it, so it tries a few times), and
// kills and reaps it when the test ends. mk nil starts `sleep 60`.
func StartAt(t testing.TB, pid int, mk func() *exec.Cmd) *exec.Cmd {
	t.Helper()
	if mk == nil {
		mk = func() *exec.Cmd { return exec.Command("sleep", "60") }
	}
	for i := 0; i < 30; i++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("steering the next pid: %v", err)
		}
		c := mk()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if c.Process.Pid == pid {
			t.Cleanup(func() { c.Process.Kill(); c.Wait() })
			return c
		}
		c.Process.Kill()
		c.Wait()
	}
	t.Fatalf("could not reuse pid %d", pid)
	return nil
}
