package realcudatest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// An extension module linked against NVIDIA's runtime, loaded RTLD_LOCAL as
// Python loads extensions: its runtime is in no global scope, but its call to
// cudaGetDriverEntryPoint binds to libkvh's wrapper (preloaded, global).
const localExt = `#include <cuda_runtime_api.h>
int ext_entry(void **p) { return (int)cudaGetDriverEntryPoint("cuMemAlloc", p, cudaEnableDefault); }
`

const localMain = `#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  (void)argc;
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "%s\n", dlerror()); return 2; }
  int (*f)(void **) = (int (*)(void **))dlsym(h, "ext_entry");
  if (!f) return 3;
  void *p = NULL;
  int rc = f(&p);
  printf("rc=%d ptr=%s\n", rc, p ? "set" : "null");
  return 0;
}
`

// cudaGetDriverEntryPoint called from a module whose runtime was loaded
// RTLD_LOCAL (issue 11 item 3): libkvh finds the real function in the
// runtime copy the caller links against (libcudart.so.11.0 here, not the .12
// it once looked for) and returns the runtime's own answer
// (cudaErrorNoDevice without a GPU), not cudaErrorInitializationError.
func TestEntryPointFromLocallyLoadedRuntime(t *testing.T) {
	realDriver(t)
	realRuntime(t)
	needBuild(t)
	dir := t.TempDir()
	for name, text := range map[string]string{"ext.c": localExt, "main.c": localMain} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ext, main := filepath.Join(dir, "ext.so"), filepath.Join(dir, "main")
	build(t, "cc", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", ext, filepath.Join(dir, "ext.c"), "-l:libcudart.so.11.0")
	build(t, "cc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", main, filepath.Join(dir, "main.c"), "-ldl")
	run := func(preload bool) string {
		cmd := exec.Command(main, ext)
		cmd.Env = append(cleanEnv(), "KVH_SOCKET="+filepath.Join(dir, "no-agent.sock"))
		if preload {
			cmd.Env = append(cmd.Env, "LD_PRELOAD="+libkvhtest.Lib())
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("libkvh %v: %v\n%s", preload, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	plain, withKvh := run(false), run(true)
	if plain != "rc=100 ptr=null" {
		t.Fatalf("without libkvh: %q, want rc=100 (cudaErrorNoDevice) ptr=null", plain)
	}
	if withKvh != plain {
		t.Fatalf("with libkvh: %q, without: %q", withKvh, plain)
	}
}
