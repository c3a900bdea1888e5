package realcudatest

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

const installHint = "NVIDIA's real libraries are not installed: run `make real-cuda` as root " +
	"(scripts/install-real-cuda.sh: Debian non-free libcuda1, libcudart11.0, nvidia-cuda-toolkit, clang-14)"

// Where Debian (and most distributions) put the real driver and runtime.
var (
	driverCandidates  = []string{"/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib/aarch64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1"}
	runtimeCandidates = []string{"/usr/lib/x86_64-linux-gnu/libcudart.so.11.0", "/usr/lib/aarch64-linux-gnu/libcudart.so.11.0", "/usr/lib64/libcudart.so.11.0"}
)

// realDriver is the path of NVIDIA's libcuda.so.1 ($KVH_REAL_LIBCUDA, else
// the distribution's). It fails the test when there is none: the fake
// driver is not a substitute.
func realDriver(t testing.TB) string {
	t.Helper()
	cands := driverCandidates
	if p := os.Getenv("KVH_REAL_LIBCUDA"); p != "" {
		cands = []string{p}
	}
	for _, p := range cands {
		syms, err := exportedSymbols(p)
		if err != nil {
			continue
		}
		// The fake exports no cuGetExportTable; NVIDIA's does.
		if !syms["cuGetExportTable"] {
			t.Fatalf("%s is not NVIDIA's driver (no cuGetExportTable)", p)
		}
		return p
	}
	t.Fatalf("no real libcuda.so.1 in %v: %s", cands, installHint)
	return ""
}

// realRuntime is the path of NVIDIA's libcudart.so.11.0.
func realRuntime(t testing.TB) string {
	t.Helper()
	for _, p := range runtimeCandidates {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("no libcudart.so.11.0 in %v: %s", runtimeCandidates, installHint)
	return ""
}

// tool finds a program of the CUDA toolkit (nvcc, ptxas) or fails.
func tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: %s", name, installHint)
	}
	return p
}

// ccbin is nvcc's host compiler: $NVCC_CCBIN, else clang-14 where there is
// one (Debian's nvcc 11.8 refuses gcc 12), else nvcc's own default.
func ccbin() []string {
	if c := os.Getenv("NVCC_CCBIN"); c != "" {
		return []string{"-ccbin", c}
	}
	if p, err := exec.LookPath("clang-14"); err == nil {
		return []string{"-ccbin", p}
	}
	return nil
}

// build runs a compiler and fails the test with its output on error.
func build(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = libkvhtest.Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// src is a file under testdata/realcuda.
func src(name string) string {
	return filepath.Join(libkvhtest.Root(), "testdata", "realcuda", name)
}

// needBuild builds libkvh.so and the fake driver (make interpose fakecuda).
func needBuild(t testing.TB) {
	t.Helper()
	if err := libkvhtest.Build(); err != nil {
		t.Fatal(err)
	}
}

// exportedSymbols reads the defined dynamic function symbols of an ELF
// shared object (what nm -D --defined-only lists), by name without version.
func exportedSymbols(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]bool{}
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF || elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		if b := elf.ST_BIND(s.Info); b != elf.STB_GLOBAL && b != elf.STB_WEAK {
			continue
		}
		out[s.Name] = true
	}
	if len(out) == 0 {
		return nil, errors.New(path + ": no exported functions")
	}
	return out, nil
}

// hooked lists the entry points interpose/hooks.def declares (the names
// libkvh exports a wrapper for).
func hooked(t testing.TB) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(libkvhtest.Root(), "interpose", "hooks.def"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`^KVH_HOOK\((\w+),`)
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			out[m[1]] = true
		}
	}
	if len(out) == 0 {
		t.Fatal("interpose/hooks.def declares no KVH_HOOK")
	}
	return out
}

// Kinds of a driver symbol in the README's table.
const (
	kindAlloc   = "alloc"   // hands out memory the caller owns
	kindFree    = "free"    // memory leaves its owner: back to the driver, a pool or the next user
	kindImport  = "import"  // maps or releases memory another process or API owns
	kindNeither = "neither" // moves no memory between owners
)

// row is one line of the README's table of the real driver's allocation and
// release family.
type row struct {
	Symbol string
	Kind   string
	Hooked bool
	Why    string // the reason when not hooked
	Line   int
}

const (
	tableBegin = "<!-- real-driver-symbols:begin -->"
	tableEnd   = "<!-- real-driver-symbols:end -->"
)

// readmeTable parses the table between the markers in README.md.
func readmeTable(t testing.TB) map[string]row {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(libkvhtest.Root(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	out := map[string]row{}
	in, seen := false, false
	cell := regexp.MustCompile("^`(\\w+)`$")
	for i, l := range lines {
		switch strings.TrimSpace(l) {
		case tableBegin:
			in, seen = true, true
			continue
		case tableEnd:
			in = false
			continue
		}
		if !in || !strings.HasPrefix(l, "|") || strings.HasPrefix(l, "|---") || strings.HasPrefix(l, "| symbol") {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(l), "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("README.md:%d: want | `symbol` | kind | hooked or not hooked: why |, got %q", i+1, l)
		}
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		m := cell.FindStringSubmatch(cells[0])
		if m == nil {
			t.Fatalf("README.md:%d: symbol cell %q is not `name`", i+1, cells[0])
		}
		r := row{Symbol: m[1], Kind: cells[1], Line: i + 1}
		switch r.Kind {
		case kindAlloc, kindFree, kindImport, kindNeither:
		default:
			t.Fatalf("README.md:%d: kind %q is not alloc, free, import or neither", i+1, r.Kind)
		}
		switch {
		case cells[2] == "hooked":
			r.Hooked = true
		case strings.HasPrefix(cells[2], "not hooked: ") && len(cells[2]) >= len("not hooked: ")+3:
			r.Why = strings.TrimPrefix(cells[2], "not hooked: ")
		default:
			t.Fatalf("README.md:%d: %s: third cell must be \"hooked\" or \"not hooked: <why>\", got %q", i+1, r.Symbol, cells[2])
		}
		if _, dup := out[r.Symbol]; dup {
			t.Fatalf("README.md:%d: %s listed twice", i+1, r.Symbol)
		}
		out[r.Symbol] = r
	}
	if !seen {
		t.Fatalf("README.md has no %s ... %s table", tableBegin, tableEnd)
	}
	return out
}

func sorted[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
