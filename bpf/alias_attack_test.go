//go:build linux && (amd64 || arm64)

package bpf

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"golang.org/x/sys/unix"
)

// Attack: a process maps its own copy of libcuda, then deletes it, or
// puts a symlink to a library the witness already probes in its place. The
// witness resolved the path its maps name, not the mapping: the deleted
// copy was skipped as gone on every scan, and the replaced one was taken
// for the probed file and never probed. Calls through the copy went
// unwitnessed and nothing said so. Now the mapping itself is probed
// (map_files, which root here may follow) and, where it cannot be, the
// process is reported.
func TestAttackWitnessMissesSwappedCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	probed := filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1")
	for _, tc := range []struct {
		name string
		swap func(path string) error
	}{
		{"replaced by a link to a probed library", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink(probed, p)
		}},
		{"deleted", os.Remove},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, log := startReporting(t, probed)
			dir := t.TempDir()
			cmd, err := libkvhtest.StartOnCopiedDriver(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			time.Sleep(300 * time.Millisecond) // the copy is mapped
			if err := tc.swap(filepath.Join(dir, "libcuda.so.1")); err != nil {
				t.Fatal(err)
			}
			w.scan()
			if evs := collect(w, cmd.Process.Pid, time.Second); len(evs) == 0 {
				t.Fatalf("the process's own copy of libcuda went unprobed (attached: %v)", w.Attached())
			}
			if reported := log.pids(); len(reported) != 0 {
				t.Errorf("a mapping the witness probed was reported unprobed: %v", reported)
			}
		})
	}
}

// Without the capability to follow map_files (the DaemonSet grants neither
// CAP_CHECKPOINT_RESTORE nor CAP_SYS_ADMIN), the process is reported once.
func TestAttackWitnessReportsUnprobeableCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	probed := filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1")
	w, log := startReporting(t, probed)
	dir := t.TempDir()
	cmd, err := libkvhtest.StartOnCopiedDriver(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	p := filepath.Join(dir, "libcuda.so.1")
	os.Remove(p)
	if err := os.Symlink(probed, p); err != nil {
		t.Fatal(err)
	}
	// Scan from a thread without the capabilities map_files needs (the
	// thread is locked and dropped; it ends with the goroutine).
	done := make(chan struct{})
	go func() {
		defer close(done)
		lockAndDropCaps(t)
		w.scan()
		w.scan() // reported once, not per scan
	}()
	<-done
	if reported := log.pids(); len(reported) != 1 || reported[0] != cmd.Process.Pid {
		t.Fatalf("reported %v, want [%d] once", reported, cmd.Process.Pid)
	}
}

// Attack: a non-root process keeps its copy of libcuda in a directory
// only it may search. The agent, root without DAC_READ_SEARCH (as the
// DaemonSet runs it), cannot resolve the path: the copy was skipped as
// "not readable" on every scan, never probed and never reported.
func TestAttackWitnessUnsearchableCopy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	w, log := startReporting(t, filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"))
	base := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(base, 0o755))
	must(os.Chmod(filepath.Dir(base), 0o755)) // t.TempDir's own parent is 0700
	dir := filepath.Join(base, "private")
	must(os.Mkdir(dir, 0o700))
	must(libkvhtest.CopyFakeDriver(dir))
	must(os.Chown(filepath.Join(dir, "libcuda.so.1"), 65534, 65534))
	must(os.Chown(dir, 65534, 65534))
	// The client runs as uid 65534 from a copy that uid can reach: the
	// checkout may sit in a directory only root can enter (a CI clone in a
	// 0700 temporary directory).
	b, err := os.ReadFile(libkvhtest.Client("deny"))
	must(err)
	client := filepath.Join(base, "client_deny")
	must(os.WriteFile(client, b, 0o755))
	cmd := exec.Command(client)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	must(cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lockAndDropCaps(t, unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH)
		w.scan()
	}()
	<-done
	if reported := log.whys(); len(reported) != 1 {
		maps, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "maps"))
		t.Fatalf("a copy of libcuda in a directory the agent cannot search: reported %q, want once\n%s", reported, maps)
	}
}

// unprobedLog keeps what a witness's Unprobed callback reported.
type unprobedLog struct {
	mu  sync.Mutex
	pid []int
	why []string
}

func (l *unprobedLog) add(pid int, _, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pid = append(l.pid, pid)
	l.why = append(l.why, why)
}

func (l *unprobedLog) pids() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.pid)
}

func (l *unprobedLog) whys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.why)
}

// startReporting starts a witness on lib that scans only when a test says
// and keeps what it reports unprobed; it is closed when the test ends.
func startReporting(t *testing.T, lib string) (*Witness, *unprobedLog) {
	log := &unprobedLog{}
	w, err := Start(Options{Libraries: []string{lib}, Rescan: -1, Unprobed: log.add})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, log
}

// lockAndDropCaps removes CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE (and
// extra) from the calling thread's effective set, for the rest of its life.
func lockAndDropCaps(t *testing.T, extra ...uint) {
	runtimeLockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Error(err)
		return
	}
	for _, c := range append([]uint{unix.CAP_SYS_ADMIN, unix.CAP_CHECKPOINT_RESTORE}, extra...) {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Error(err)
	}
}

func runtimeLockOSThread() { runtime.LockOSThread() }
