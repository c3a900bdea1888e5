package proc

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/proc/proctest"
)

func TestParseStart(t *testing.T) {
	stat := []byte("4242 (evil) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 0 0 0 0")
	st, err := parseStart(stat)
	if err != nil || st != 987654 {
		t.Fatalf("parseStart = %d, %v", st, err)
	}
	if _, err := parseStart([]byte("4242 (x S 1")); err == nil {
		t.Fatal("a stat without a closing parenthesis parsed")
	}
}

func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c
}

// A handle never signals the process that reused its pid, and a pid seen
// before its current holder started is refused.
func TestPIDReuse(t *testing.T) {
	proctest.NeedRoot(t)
	a := sleeper(t)
	seen := time.Now()
	h, err := OpenSeenAt(a.Process.Pid, seen, "/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if !h.Alive() {
		t.Fatal("a live process is not alive")
	}
	a.Process.Kill()
	a.Wait()
	time.Sleep(20 * time.Millisecond)
	b := proctest.StartAt(t, h.PID, nil)
	if err := h.Signal(syscall.SIGKILL); !errors.Is(err, ErrGone) {
		t.Fatalf("signal through a dead process's handle: %v", err)
	}
	if err := b.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process that reused the pid was hit: %v", err)
	}
	if _, err := OpenSeenAt(h.PID, seen, "/proc"); !errors.Is(err, ErrGone) {
		t.Fatalf("the pid's new holder was taken for the process seen before it started: %v", err)
	}
	hb, err := OpenSeenAt(b.Process.Pid, time.Now(), "/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	if hb.Key() == h.Key() {
		t.Fatalf("two processes share a key %s", h.Key())
	}
	if err := hb.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestFromSocketPrefersPeerPidfd(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	h, err := FromSocket(fds[0], os.Getpid(), time.Now(), "/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.PID != os.Getpid() || !h.Alive() || h.Start == 0 {
		t.Fatalf("handle %v", h)
	}
	k, err := KeyOf("/proc", os.Getpid())
	if err != nil || k != h.Key() {
		t.Fatalf("KeyOf = %q, %v; handle key %q", k, err, h.Key())
	}
	if pp, err := Parent("/proc", os.Getpid()); err != nil || pp != os.Getppid() {
		t.Fatalf("Parent = %d, %v", pp, err)
	}
}

// A peer that exited before it was opened: nothing can be done to it; its
// connections share one key, which no live process has.
func TestExited(t *testing.T) {
	a, b := Exited(4242), Exited(4242)
	if a.Key() != b.Key() || !a.IsExited() || a.Key() == (&Handle{PID: 4242}).Key() {
		t.Fatalf("keys %q %q", a.Key(), b.Key())
	}
	if a.Alive() {
		t.Fatal("an exited handle is alive")
	}
	if err := a.Signal(syscall.SIGKILL); !errors.Is(err, ErrGone) {
		t.Fatalf("Signal: %v", err)
	}
	if _, err := a.Read("/proc", "stat"); !errors.Is(err, ErrGone) {
		t.Fatalf("Read: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}
