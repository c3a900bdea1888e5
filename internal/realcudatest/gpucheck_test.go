package realcudatest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// make gpu-check builds its workload with the real nvcc (shared and static
// cudart) on any machine with the toolkit. Without a device it must stop
// there, saying so, with exit 2 — not crash, not pass; with one it must pass.
func TestGPUCheckBuilds(t *testing.T) {
	tool(t, "nvcc")
	needBuild(t)
	out := filepath.Join(t.TempDir(), "gpu-check.txt")
	cmd := exec.Command("bash", filepath.Join(libkvhtest.Root(), "scripts", "gpu-check.sh"))
	cmd.Env = append(os.Environ(), "GPU_CHECK_OUT="+out)
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		if !strings.Contains(string(b), "gpu-check: PASS") {
			t.Fatalf("exit 0 without PASS:\n%s", b)
		}
		t.Logf("a device was here, and gpu-check passed:\n%s", b)
	case errors.As(err, &ee) && ee.ExitCode() == 2:
		if !strings.Contains(string(b), "built build/gpu/residue_shared and build/gpu/residue_static") ||
			!strings.Contains(string(b), "no CUDA device here") {
			t.Fatalf("exit 2 without building both binaries and saying there is no device:\n%s", b)
		}
	default:
		t.Fatalf("gpu-check: %v\n%s", err, b)
	}
	if saved, err := os.ReadFile(out); err != nil || !strings.Contains(string(saved), "gpu-check:") {
		t.Fatalf("GPU_CHECK_OUT not written: %v", err)
	}
}
