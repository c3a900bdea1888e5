//go:build linux && (amd64 || arm64)

package bpf

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"golang.org/x/sys/unix"
)

// needWitness skips when not root, and fails when root on a kernel that
// should support uprobes.
func needWitness(t *testing.T) *Witness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	w, err := Start(Options{Libraries: []string{filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1")}, Rescan: 200 * time.Millisecond})
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			if _, serr := os.Stat("/sys/kernel/btf/vmlinux"); serr == nil {
				t.Fatalf("root on a kernel with BTF, but: %v", err)
			}
			t.Skipf("witness unavailable: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// collect gathers the events of pid for d.
func collect(w *Witness, pid int, d time.Duration) []Event {
	var out []Event
	deadline := time.After(d)
	for {
		select {
		case batch := <-w.Events():
			for _, e := range batch {
				if int(e.TGID) == pid {
					out = append(out, e)
				}
			}
		case <-deadline:
			return out
		}
	}
}

func TestWitnessSeesEveryWayIn(t *testing.T) {
	w := needWitness(t)
	for _, way := range []string{"driver", "dlopen", "runtime"} {
		run := libkvhtest.Exec(way, "", nil)
		if run.Err != nil {
			t.Fatal(run.Err)
		}
		evs := collect(w, run.PID, 500*time.Millisecond)
		frees, allocs := 0, 0
		for _, e := range evs {
			if e.Fn == "cuMemFree_v2" && e.Free && e.Ptr != 0 {
				frees++
			}
			if e.Fn == "cuMemAlloc_v2" && !e.Free && e.Ptr != 0 && e.Size == 65536 {
				allocs++
			}
		}
		if frees != 2 || allocs != 2 {
			t.Errorf("%s: %d frees and %d allocations witnessed: %+v", way, frees, allocs, evs)
		}
	}
}

func TestWitnessFindsCopiesByInode(t *testing.T) {
	w := needWitness(t)
	dir := t.TempDir()
	// A long-running client that maps the copy: the /proc scan must find it.
	cmd, err := libkvhtest.StartOnCopiedDriver(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	evs := collect(w, cmd.Process.Pid, 2*time.Second)
	found := false
	for _, e := range evs {
		found = found || e.Fn == "cuMemFree_v2"
	}
	if !found {
		t.Fatalf("the copy at another inode was not probed; attached %v", w.Attached())
	}
}

// The fake driver's resolver hands out its exported entry points, as the
// self-test expects of a real one.
func TestSelfTestOnTheFakeDriver(t *testing.T) {
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	bad, err := SelfTest(filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"))
	if err != nil || len(bad) != 0 {
		t.Fatalf("%v %v", err, bad)
	}
	if _, err := SelfTest(filepath.Join(t.TempDir(), "nope.so")); err == nil {
		t.Fatal("a missing library passed")
	}
}

// A driver whose resolver hands out an internal (non-exported) function is
// reported: the probes would not see calls made through that pointer.
func TestSelfTestCatchesInternalEntryPoints(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "lib.c")
	os.WriteFile(src, []byte(`
#include <string.h>
static int hidden_free(unsigned long long p) { (void)p; return 0; }
__attribute__((visibility("default"))) int cuMemFree_v2(unsigned long long p) { (void)p; return 0; }
__attribute__((visibility("default"))) int cuGetProcAddress_v2(const char *s, void **p, int v, unsigned long long f, int *st) {
  (void)v; (void)f; if (st) *st = 0;
  if (!strcmp(s, "cuMemFree")) { *p = (void *)hidden_free; return 0; }
  *p = 0; return 500;
}`), 0o644)
	lib := filepath.Join(dir, "libcuda.so.1")
	if out, err := exec.Command("cc", "-shared", "-fPIC", "-fvisibility=hidden", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	bad, err := SelfTest(lib)
	if err != nil || len(bad) != 1 || !strings.Contains(bad[0], "cuMemFree") {
		t.Fatalf("%v %v", err, bad)
	}
}

// Destroying a context, and releasing or resetting a primary context, hand
// the context's memory back to the driver with no free call: the witness
// reports each that succeeded as a Context event (never a Free), with the
// context handle or the device ordinal — device 0 included — and the v1
// names cuGetProcAddress hands out at old versions are probed too. A call
// the driver refuses is counted, not reported.
func TestWitnessSeesContextTeardown(t *testing.T) {
	w := needWitness(t)
	before := w.Failed()["cuCtxDestroy_v2"]
	run := libkvhtest.Exec("ctx", "", nil)
	if run.Err != nil || !strings.Contains(run.Stdout, "REFUSED 1") {
		t.Fatal(run.Err, run.Stdout, run.Stderr)
	}
	got := map[string][]uint64{}
	for _, e := range collect(w, run.PID, 500*time.Millisecond) {
		if e.Context {
			if e.Free || e.Import {
				t.Errorf("a context event is also free=%v import=%v: %+v", e.Free, e.Import, e)
			}
			got[e.Fn] = append(got[e.Fn], e.Ptr)
		}
	}
	// client_ctx: cuCtxDestroy as cuGetProcAddress hands it out at 3020 (v1),
	// two cuDevicePrimaryCtxRelease_v2(0), cuDevicePrimaryCtxReset at 10000
	// (v1), two cuCtxDetach of one context (each that succeeds is reported).
	if d := got["cuCtxDestroy"]; len(d) != 1 || d[0] == 0 {
		t.Errorf("cuCtxDestroy: %v", d)
	}
	if r := got["cuDevicePrimaryCtxRelease_v2"]; len(r) != 2 || r[0] != 0 || r[1] != 0 {
		t.Errorf("cuDevicePrimaryCtxRelease_v2: %v", r)
	}
	if r := got["cuDevicePrimaryCtxReset"]; len(r) != 1 || r[0] != 0 {
		t.Errorf("cuDevicePrimaryCtxReset: %v", r)
	}
	if d := got["cuCtxDetach"]; len(d) != 2 || d[0] == 0 || d[0] != d[1] {
		t.Errorf("cuCtxDetach: %v", d)
	}
	if len(got) != 4 {
		t.Errorf("context events: %v", got)
	}
	if n := w.Failed()["cuCtxDestroy_v2"]; n != before+1 {
		t.Errorf("the refused cuCtxDestroy_v2(NULL): failed count %d, was %d", n, before)
	}
}

// TestWitnessAttachesOnceThroughOverlays: four "containers" map one image
// file, each through its own overlay mount (another device each, as every
// container's root is). The witness must probe the file underneath once:
// probed four times, every call would be reported four times, and each
// free's one attestation would leave three unattested_free violations.
func TestWitnessAttachesOnceThroughOverlays(t *testing.T) {
	w := needWitness(t)
	lower := t.TempDir()
	if err := libkvhtest.CopyFakeDriver(lower); err != nil {
		t.Fatal(err)
	}
	var mounts []string
	for i := 0; i < 4; i++ {
		d := t.TempDir()
		for _, s := range []string{"upper", "work", "merged"} {
			os.Mkdir(filepath.Join(d, s), 0o755)
		}
		m := filepath.Join(d, "merged")
		opts := "lowerdir=" + lower + ",upperdir=" + filepath.Join(d, "upper") + ",workdir=" + filepath.Join(d, "work")
		if err := unix.Mount("overlay", m, "overlay", 0, opts); err != nil {
			t.Fatalf("mounting an overlay (root on a kernel with overlayfs): %v", err)
		}
		t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
		mounts = append(mounts, m)
	}
	var st0, st1 unix.Stat_t
	unix.Stat(filepath.Join(mounts[0], "libcuda.so.1"), &st0)
	unix.Stat(filepath.Join(mounts[1], "libcuda.so.1"), &st1)
	if st0.Dev == st1.Dev {
		t.Fatalf("the overlays share a device (%d): the test would prove nothing", st0.Dev)
	}
	var pids []int
	for _, m := range mounts {
		cmd := exec.Command(libkvhtest.Client("deny"))
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+m)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		pids = append(pids, cmd.Process.Pid)
	}
	for _, m := range mounts { // and named explicitly, as --witness-lib would
		w.attach(filepath.Join(m, "libcuda.so.1"))
	}
	// Once every probe is attached, each process's allocations and frees
	// alternate: a second probe on the file would report each call twice.
	// What was queued while the probes went on one by one (an allocation's
	// probe before the free's) is drained first.
	drain := time.After(500 * time.Millisecond)
drained:
	for {
		select {
		case <-w.Events():
		case <-drain:
			break drained
		}
	}
	seq := map[int][]string{}
	deadline := time.After(1500 * time.Millisecond)
loop:
	for {
		select {
		case batch := <-w.Events():
			for _, e := range batch {
				if e.Fn == "cuMemAlloc_v2" || e.Fn == "cuMemFree_v2" {
					seq[int(e.TGID)] = append(seq[int(e.TGID)], e.Fn)
				}
			}
		case <-deadline:
			break loop
		}
	}
	ours := 0 // other tests' processes may be probed too
	for _, p := range w.Attached() {
		if strings.Contains(p, filepath.Dir(lower)) {
			ours++
		}
	}
	if ours != 1 {
		t.Errorf("one file through four overlays probed %d times: %v", ours, w.Attached())
	}
	// Each overlay's path names the file its processes map: none is taken
	// for a swapped path, probed through map_files or reported.
	for _, p := range w.Attached() {
		if strings.Contains(p, "/map_files/") {
			t.Errorf("a mapping through an overlay probed as one its path no longer names: %s", p)
		}
	}
	w.mu.Lock()
	if len(w.flagged) != 0 {
		t.Errorf("mappings through overlays reported unprobed: %v", w.flagged)
	}
	w.mu.Unlock()
	for _, pid := range pids {
		s := seq[pid]
		if len(s) < 4 {
			t.Errorf("pid %d: only %d calls witnessed (the file was not probed)", pid, len(s))
			continue
		}
		for i := 1; i < len(s); i++ {
			if s[i] == s[i-1] {
				t.Errorf("pid %d: %s witnessed twice in a row at %d of %d: a library probed more than once (%q)", pid, s[i], i, len(s), s[:min(len(s), 6)])
				break
			}
		}
	}
}
