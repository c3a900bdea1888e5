package realcudatest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// verifyKernelPTX extracts libkvh's embedded zero-check kernel: the string
// literals of zero_check_ptx in interpose/verify.c, concatenated.
func verifyKernelPTX(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(libkvhtest.Root(), "interpose", "verify.c"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)static const char zero_check_ptx\[\]\s*=\s*(.*?);\n`).FindSubmatch(b)
	if m == nil {
		t.Fatal("interpose/verify.c has no static const char zero_check_ptx[] = ...;")
	}
	var ptx strings.Builder
	for _, lit := range regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).FindAll(m[1], -1) {
		s, err := strconv.Unquote(string(lit))
		if err != nil {
			t.Fatalf("zero_check_ptx literal %s: %v", lit, err)
		}
		ptx.WriteString(s)
	}
	if !strings.Contains(ptx.String(), ".entry kvh_nonzero") {
		t.Fatalf("extracted PTX has no kvh_nonzero entry:\n%s", ptx.String())
	}
	return ptx.String()
}

// libkvh's embedded verify kernel assembles with ptxas for Volta, Ampere and
// Hopper, with warnings as errors and no output at all: on a GPU the driver
// JITs the same text, and a kernel that does not build there leaves full
// verify on the slow copy-back path.
func TestVerifyKernelAssembles(t *testing.T) {
	ptxas := tool(t, "ptxas")
	dir := t.TempDir()
	file := filepath.Join(dir, "kvh_nonzero.ptx")
	if err := os.WriteFile(file, []byte(verifyKernelPTX(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, arch := range []string{"sm_70", "sm_80", "sm_90"} {
		out, err := exec.Command(ptxas, "-arch="+arch, "-Werror", "--warn-on-spills", "--warn-on-local-memory-usage", "--warn-on-double-precision-use",
			"-o", filepath.Join(dir, arch+".cubin"), file).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("ptxas -arch=%s: %v\n%s", arch, err, out)
		}
	}
}
