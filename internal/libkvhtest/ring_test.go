package libkvhtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/wire"
)

// failRingMmap is preloaded before libkvh: it refuses the one anonymous
// MAP_NORESERVE mapping of 4..8 MiB, which is libkvh's event ring.
const failRingMmap = `
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
void *mmap(void *a, size_t len, int prot, int flags, int fd, off_t off) {
  if ((flags & MAP_NORESERVE) && (flags & MAP_ANONYMOUS) && len > (4u << 20) && len < (8u << 20)) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  return (void *)syscall(SYS_mmap, a, len, prot, flags, fd, off);
}
void *mmap64(void *a, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));
`

func buildFailRingMmap(t *testing.T) string {
	return buildC(t, "failmmap.so", failRingMmap, "-O2", "-shared", "-fPIC")
}

// buildC compiles a test program's C source with cc (make deps installs
// it) into a temporary directory and returns the output's path; flags come
// after the source, so libraries may be among them.
func buildC(t *testing.T, out, source string, flags ...string) string {
	t.Helper()
	dir := t.TempDir()
	src, bin := filepath.Join(dir, out+".c"), filepath.Join(dir, out)
	if err := os.WriteFile(src, []byte(source), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("cc", append([]string{"-o", bin, src}, flags...)...).CombinedOutput(); err != nil {
		t.Fatalf("building %s with cc (make deps installs it): %v\n%s", out, err, b)
	}
	return bin
}

// events counts the pid's allocation and free records.
func events(recs []Got, pid int) int {
	n := 0
	for _, r := range recs {
		if int(r.PeerPID) == pid && (r.Type == wire.Alloc || r.Type == wire.Free || r.Type == wire.Quarantine) {
			n++
		}
	}
	return n
}

// When the ring cannot be mapped, the process still runs and zeroizes,
// nothing but its hello and drop reports reaches the agent, and every event
// is counted dropped: as many as reach the agent when the ring is there.
func TestRingUnmappedCountsEveryEventDropped(t *testing.T) {
	shim := buildFailRingMmap(t)
	const n = 300
	l := listen(t)
	base := Exec("stress", Lib(), []string{"KVH_SOCKET=" + l.Path}, fmt.Sprint(n), "1000")
	if base.Err != nil || base.Value("RESIDUE") != 0 || base.Value("DROPPED") != 0 {
		t.Fatalf("baseline: %v\n%s%s", base.Err, base.Stdout, base.Stderr)
	}
	want := 0
	l.WaitFor(10*time.Second, func(r []Got) bool { want = events(r, base.PID); return want >= 2*16*n })
	if want < 2*16*n {
		t.Fatalf("baseline: %d events of at least %d arrived", want, 2*16*n)
	}

	run := Exec("stress", shim+" "+Lib(), []string{"KVH_SOCKET=" + l.Path}, fmt.Sprint(n), "1000")
	if run.Err != nil || run.Value("RESIDUE") != 0 {
		t.Fatalf("ring unmapped: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	time.Sleep(500 * time.Millisecond)
	if got := events(l.Records(), run.PID); got != 0 {
		t.Fatalf("ring unmapped, yet %d events reached the agent (is the shim in effect?)", got)
	}
	if d := run.Value("DROPPED"); d != want {
		t.Fatalf("ring unmapped: %d events dropped, %d emitted with the ring\n%s", d, want, run.Stdout)
	}
	hello(t, l, run.PID)
}

// A forked child of a process whose ring could not be mapped tries again,
// fails again, and still zeroizes in both.
func TestRingUnmappedFork(t *testing.T) {
	shim := buildFailRingMmap(t)
	l := listen(t)
	run := Exec("fork", shim+" "+Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || strings.Count(run.Stdout, "RESIDUE 0") != 2 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	time.Sleep(300 * time.Millisecond)
	if got := events(l.Records(), run.PID); got != 0 {
		t.Fatalf("%d events from the parent with no ring", got)
	}
}

// The agent's deny reaches a process whose ring could not be mapped: its
// reporter thread, the only reader of the agent's control messages, must
// still start (emit returned before starting it when the ring was NULL,
// so the process never heard the deny).
func TestRingUnmappedStillHearsDeny(t *testing.T) {
	shim := buildFailRingMmap(t)
	l := listen(t)
	l.SetDeny(true)
	run := Exec("deny", shim+" "+Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || run.Value("DENIED") < 0 {
		t.Fatalf("ring unmapped: deny not applied: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
}
