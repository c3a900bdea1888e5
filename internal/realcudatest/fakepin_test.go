package realcudatest

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// With NVIDIA's libcuda.so.1 on the default library path, every test that
// means the fake driver must still get it: each client the Makefile builds
// carries a RUNPATH of $ORIGIN, and the ways into the driver — linked,
// through the fake runtime's dlopen, through the client's own dlopen, with
// libkvh preloaded or not, with LD_LIBRARY_PATH or without — all load
// build/fakecuda/libcuda.so.1 and nothing else called libcuda.
func TestFakeClientsLoadTheFake(t *testing.T) {
	real := realDriver(t)
	needBuild(t)
	fake := filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1")
	clients, err := filepath.Glob(filepath.Join(libkvhtest.FakeDir(), "client_*"))
	if err != nil || len(clients) == 0 {
		t.Fatalf("no clients in %s: %v", libkvhtest.FakeDir(), err)
	}
	clients = append(clients, filepath.Join(libkvhtest.FakeDir(), "kvh_demo"))
	for _, c := range clients {
		f, err := elf.Open(c)
		if err != nil {
			t.Fatal(err)
		}
		rp, _ := f.DynString(elf.DT_RUNPATH)
		rpath, _ := f.DynString(elf.DT_RPATH)
		f.Close()
		if !slicesHas(rp, "$ORIGIN") && !slicesHas(rpath, "$ORIGIN") {
			t.Errorf("%s has no RUNPATH/RPATH $ORIGIN: it would load %s", filepath.Base(c), real)
		}
	}
	loaded := regexp.MustCompile(`calling init: (\S*libcuda\.so[.0-9]*)`)
	for _, way := range []string{"runtime", "runtime_now", "entry", "driver", "dlopen", "vmm"} {
		for _, env := range [][]string{nil, {"LD_LIBRARY_PATH=" + libkvhtest.FakeDir()}, {"LD_PRELOAD=" + libkvhtest.Lib()}} {
			cmd := exec.Command(libkvhtest.Client(way))
			cmd.Env = append(cleanEnv(), append(env, "LD_DEBUG=libs", "KVH_SOCKET="+filepath.Join(t.TempDir(), "none.sock"))...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("client_%s %v: %v\n%s", way, env, err, tail(out))
				continue
			}
			libs := loaded.FindAllStringSubmatch(string(out), -1)
			if len(libs) == 0 {
				t.Errorf("client_%s %v loaded no libcuda", way, env)
			}
			for _, m := range libs {
				if m[1] != fake {
					t.Errorf("client_%s %v loaded %s, not the fake %s", way, env, m[1], fake)
				}
			}
		}
	}
}

func slicesHas(vals []string, want string) bool {
	for _, v := range vals {
		for _, p := range strings.Split(v, ":") {
			if p == want {
				return true
			}
		}
	}
	return false
}

// cleanEnv is the environment without any LD_ variable the test runner may
// carry, so each case sets only its own.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LD_") {
			out = append(out, kv)
		}
	}
	return out
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
