//go:build linux && (amd64 || arm64)

package bpf

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

const realHint = "NVIDIA's real libraries are not installed: run `make real-cuda` as root (scripts/install-real-cuda.sh)"

// realLib is NVIDIA's library name (libcuda.so.1, libcudart.so.11.0) where
// Debian puts it; the test fails without it (the fake is no substitute).
func realLib(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("no %s: %s", name, realHint)
	return ""
}

// NVIDIA's resolver hands out, at every version and flag the self-test asks
// (old versions included: they return the v1 entry points), functions the
// probes sit on.
func TestSelfTestOnTheRealDriver(t *testing.T) {
	bad, err := SelfTest(realLib(t, "libcuda.so.1"))
	if err != nil || len(bad) != 0 {
		t.Fatalf("%v\n%s", err, strings.Join(bad, "\n"))
	}
}

// A runtime has no cuGetProcAddress: the self-test says it cannot test it,
// and never that it passed.
func TestSelfTestOnARuntimeIsNotTestable(t *testing.T) {
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
	for _, lib := range []string{filepath.Join(libkvhtest.FakeDir(), "libcudart.so.12"), realLib(t, "libcudart.so.11.0")} {
		bad, err := SelfTest(lib)
		if !errors.Is(err, ErrNotTestable) {
			t.Errorf("%s: got %v %v, want ErrNotTestable", lib, bad, err)
		}
	}
}

// callsProgram calls every probed driver entry point of the library named on
// its command line, before cuInit, so that NVIDIA's driver (with or without
// a GPU) refuses each one (CUDA_ERROR_NOT_INITIALIZED, or INVALID_VALUE for
// arguments it checks first).
const callsProgram = `
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
typedef unsigned long long u64;
typedef struct { char reserved[64]; } ipc_handle;
typedef int (*fn5)(u64, u64, u64, u64, u64);
typedef int (*ipc_open)(u64 *, ipc_handle, unsigned int);
int main(int argc, char **argv) {
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  static const char *names[] = {"cuMemAlloc", "cuMemAlloc_v2", "cuMemAllocPitch", "cuMemAllocPitch_v2",
    "cuMemAllocManaged", "cuMemAllocHost", "cuMemAllocHost_v2", "cuMemHostAlloc", "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz", "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", "cuMemCreate", "cuMemMap",
    "cuMemFree", "cuMemFree_v2", "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemFreeHost", "cuMemHostRegister",
    "cuMemHostRegister_v2", "cuMemHostUnregister", "cuMemUnmap", "cuMemRelease", "cuIpcCloseMemHandle",
    "cuCtxDestroy", "cuCtxDestroy_v2", "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2", "cuCtxDetach"};
  u64 out[4] = {0}, pitch = 0;
  static char host[4096];
  for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
    fn5 f = (fn5)dlsym(h, names[i]);
    if (!f) { printf("%s absent\n", names[i]); continue; }
    int rc = f((u64)out, !strncmp(names[i], "cuMemAllocPitch", 15) ? (u64)&pitch : 4096, 64, 64, 1);
    if (strstr(names[i], "Free") || strstr(names[i], "Unmap") || strstr(names[i], "Release") || strstr(names[i], "Close"))
      rc = f(0x7f0000001000ULL, 4096, 0, 0, 0);
    if (strstr(names[i], "Register")) rc = f((u64)host, sizeof host, 0, 0, 0);
    printf("%s %d\n", names[i], rc);
  }
  ipc_handle ih;
  memset(&ih, 0, sizeof ih);
  const char *ipc[] = {"cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2"};
  for (int i = 0; i < 2; i++) {
    ipc_open f = (ipc_open)dlsym(h, ipc[i]);
    if (f) printf("%s %d\n", ipc[i], f(out, ih, 1));
  }
  return 0;
}`

// The witness attaches to NVIDIA's libcuda.so.1 (no GPU needed), both
// probes of every probed driver function fire there, and calls the driver
// refused are counted as failed, never reported as events — so a failed
// free can never become an unattested free.
func TestWitnessOnTheRealDriver(t *testing.T) {
	lib := realLib(t, "libcuda.so.1")
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "calls.c")
	if err := os.WriteFile(src, []byte(callsProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "calls")
	if out, err := exec.Command("cc", "-O1", "-Wall", "-o", bin, src, "-ldl").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	w, err := Start(Options{Libraries: []string{lib}, Rescan: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got := w.Attached(); !slices.Contains(got, lib) {
		t.Fatalf("attached %v, not %s", got, lib)
	}
	cmd := exec.Command(bin, lib)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) != 2 || f[1] == "0" || f[1] == "absent" {
			t.Errorf("the real driver answered %q before cuInit, want an error", l)
		}
	}
	evs := collect(w, cmd.Process.Pid, 500*time.Millisecond)
	if len(evs) != 0 {
		t.Errorf("calls the driver refused were reported: %+v", evs)
	}
	failed := w.Failed()
	for fn := range probedDriverFns() {
		if failed[fn] == 0 {
			t.Errorf("%s: no refused call counted: its probes did not fire on %s (failed counts %v)", fn, lib, failed)
		}
	}
}

// On the fake driver, a free the driver refuses (FAKECUDA_FREE_FAIL) is not
// an event, while the allocations before it are.
func TestWitnessReportsOnlyFreesThatSucceeded(t *testing.T) {
	w := needWitness(t)
	run := libkvhtest.Exec("driver", "", []string{"FAKECUDA_FREE_FAIL=1"})
	// The client checks every call: a refused free makes it fail, after the call.
	evs := collect(w, run.PID, 500*time.Millisecond)
	allocs, frees := 0, 0
	for _, e := range evs {
		switch {
		case e.Free:
			frees++
		case e.Fn == "cuMemAlloc_v2":
			allocs++
		}
	}
	if frees != 0 || allocs == 0 {
		t.Fatalf("%d frees (want 0: the driver refused them) and %d allocations witnessed: %+v (client: %v %s)", frees, allocs, evs, run.Err, run.Stderr)
	}
	if w.Failed()["cuMemFree_v2"] == 0 {
		t.Fatalf("the refused frees were not counted: %v", w.Failed())
	}
}

// runtimeProgram calls the probed runtime functions; without a GPU each
// returns cudaErrorNoDevice.
const runtimeProgram = `
#include <cuda_runtime_api.h>
#include <stdio.h>
int main(void) {
  void *p = 0;
  printf("cudaMalloc %d\n", cudaMalloc(&p, 4096));
  printf("cudaFree %d\n", cudaFree((void *)0x7f0000001000ULL));
  printf("cudaMallocHost %d\n", cudaMallocHost(&p, 4096));
  printf("cudaFreeHost %d\n", cudaFreeHost((void *)0x7f0000001000ULL));
  printf("cudaMallocAsync %d\n", cudaMallocAsync(&p, 4096, 0));
  printf("cudaFreeAsync %d\n", cudaFreeAsync((void *)0x7f0000001000ULL, 0));
  return 0;
}`

// The runtime probes attach to NVIDIA's libcudart 11.8 (versioned symbols)
// and fire there; the calls it refuses are counted, not reported.
func TestWitnessOnTheRealRuntime(t *testing.T) {
	lib := realLib(t, "libcudart.so.11.0")
	if os.Geteuid() != 0 {
		t.Skip("the eBPF witness needs root: skipped")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "rt.c")
	if err := os.WriteFile(src, []byte(runtimeProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "rt")
	if out, err := exec.Command("cc", "-O1", "-Wall", "-o", bin, src, "-l:libcudart.so.11.0").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, realHint)
	}
	w, err := Start(Options{Libraries: []string{lib}, Rescan: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := exec.Command(bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) != 2 || f[1] != "100" {
			t.Errorf("the real runtime answered %q without a GPU, want cudaErrorNoDevice (100)", l)
		}
	}
	if evs := collect(w, cmd.Process.Pid, 500*time.Millisecond); len(evs) != 0 {
		t.Errorf("calls the runtime refused were reported: %+v", evs)
	}
	failed := w.Failed()
	for _, fn := range fnNames {
		if strings.HasPrefix(fn, "cuda") && failed[fn] == 0 {
			t.Errorf("%s: no refused call counted: its probes did not fire on %s (failed counts %v)", fn, lib, failed)
		}
	}
}
