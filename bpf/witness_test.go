//go:build linux && (amd64 || arm64)

package bpf

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
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
		case e := <-w.Events():
			if int(e.TGID) == pid {
				out = append(out, e)
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
	src, _ := os.Open(filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"))
	dst, _ := os.Create(filepath.Join(dir, "libcuda.so.1"))
	io.Copy(dst, src)
	src.Close()
	dst.Close()
	// A long-running client that maps the copy: the /proc scan must find it.
	cmd := exec.Command(libkvhtest.Client("deny"))
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir)
	if err := cmd.Start(); err != nil {
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
