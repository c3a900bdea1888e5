package realcudatest

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

// abiDiff is a known way the fake driver answers an ABI question
// differently from NVIDIA's: the question's key (abi.c's first column)
// matches Key, the answer's field matches Field, the fake's value matches
// Fake and the real one's Real.
type abiDiff struct {
	Name                   string
	Key, Field, Fake, Real string
	Why                    string
}

// fakeDiffers lists every known disagreement between the fake driver
// (testdata/fakecuda/fakecuda.c) and NVIDIA's 535 driver on what the real
// one answers without a GPU. Each is a bug in the fake, to be fixed there;
// then its entry must go (the test fails on an entry that matches nothing).
// A disagreement not listed here fails the test.
var fakeDiffers = []abiDiff{
	// fake differs: issue 11 (fake must not drift)
	{Name: "missing-exports",
		Key:   `^dlsym (cuGetExportTable|cuArrayDestroy)$`,
		Field: `^value$`, Fake: `^absent$`, Real: `^exported$`,
		Why: "the fake does not export cuGetExportTable or the array calls (it models no arrays)"},
	// fake differs: issue 11 (fake must not drift)
	{Name: "resolver-lacks-names",
		Key:   `^(pre|post) gpa[12] (cuGetProcAddress|cuGetExportTable|cuArrayDestroy) `,
		Field: `^(rc|pfn|status)$`, Fake: `^(500|null|untouched|1)$`, Real: `^(0|2|cu\w+)$`,
		Why: "the fake's resolver does not know cuGetProcAddress itself (which the real runtime asks for first, and stops without), cuGetExportTable, or the array calls"},
	// fake differs: issue 11 (fake must not drift)
	{Name: "works-before-cuInit",
		Key: `^pre cu\w+\(`, Field: `^rc$`, Fake: `^(0|1)$`, Real: `^3$`,
		Why: "before cuInit every memory call returns CUDA_ERROR_NOT_INITIALIZED (3), NULL frees included; the fake allocates, and answers NULL frees with INVALID_VALUE (1)"},
}

// inherent lists differences that are not drift: the fake simulates a
// device, and NVIDIA's library here has none.
var inherent = []abiDiff{
	{Name: "fake-has-a-device", Key: `^init$`, Field: `^rc$`, Fake: `^0$`, Real: `^100$`,
		Why: "cuInit: the fake has a simulated device; without a GPU NVIDIA's answers CUDA_ERROR_NO_DEVICE"},
}

// answers runs abi against a driver library and parses its output.
func answers(t *testing.T, abi, lib string) (map[string]map[string]string, []string) {
	t.Helper()
	out, err := exec.Command(abi, lib).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", abi, lib, err)
	}
	res := map[string]map[string]string{}
	var order []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		key, ans, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			t.Fatalf("%s: malformed line %q", lib, sc.Text())
		}
		fields := map[string]string{}
		for _, f := range strings.Fields(ans) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				k, v = "value", f
			}
			fields[k] = v
		}
		if _, dup := res[key]; dup {
			t.Fatalf("%s: question %q asked twice", lib, key)
		}
		res[key] = fields
		order = append(order, key)
	}
	return res, order
}

type mismatch struct{ key, field, fake, real string }

func (m mismatch) String() string {
	return fmt.Sprintf("%-48s %-7s fake %-24s real %s", m.key, m.field, m.fake, m.real)
}

// The same ABI questions — exports, cuGetProcAddress[_v2] on known, unknown
// and too-new names at versions 2000..13000 with flags 0, 1, 2, bad
// arguments, NULL frees and allocations before cuInit, cuInit — asked of
// the fake driver and of NVIDIA's, without libkvh: every disagreement is in
// fakeDiffers (or inherent), and every entry there still happens.
func TestFakeDriverMatchesRealABI(t *testing.T) {
	real := realDriver(t)
	needBuild(t)
	abi := filepath.Join(t.TempDir(), "abi")
	build(t, "cc", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-o", abi, src("abi.c"), "-ldl")
	fake, fakeOrder := answers(t, abi, filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1"))
	nv, nvOrder := answers(t, abi, real)
	if len(nv) < 3000 {
		t.Fatalf("only %d answers from %s", len(nv), real)
	}
	keys := append([]string{}, nvOrder...)
	for _, k := range fakeOrder {
		if _, ok := nv[k]; !ok {
			keys = append(keys, k)
		}
	}
	var ms []mismatch
	for _, k := range keys {
		f, inFake := fake[k]
		r, inReal := nv[k]
		if !inFake || !inReal {
			ms = append(ms, mismatch{k, "line", presence(inFake), presence(inReal)})
			continue
		}
		fields := map[string]bool{}
		for n := range f {
			fields[n] = true
		}
		for n := range r {
			fields[n] = true
		}
		for _, n := range sorted(fields) {
			if f[n] != r[n] {
				ms = append(ms, mismatch{k, n, orNone(f[n]), orNone(r[n])})
			}
		}
	}
	used := map[string]int{}
	var unknown []string
	for _, m := range ms {
		d := match(m, fakeDiffers, inherent)
		if d == "" {
			unknown = append(unknown, m.String())
			continue
		}
		used[d]++
	}
	if len(unknown) > 0 {
		t.Errorf("the fake driver answers %d question(s) unlike NVIDIA's %s, and fakeDiffers does not list them: fix the fake "+
			"(testdata/fakecuda/fakecuda.c), or, if that must wait, add an entry:\n  %s", len(unknown), real, strings.Join(unknown, "\n  "))
	}
	for _, d := range append(append([]abiDiff{}, fakeDiffers...), inherent...) {
		if used[d.Name] == 0 {
			t.Errorf("%s: the fake and NVIDIA's driver no longer differ there: delete the entry (%s)", d.Name, d.Why)
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.Logf("known difference %-28s %5d answers", n, used[n])
	}
}

var compiled = map[string]*regexp.Regexp{}

func re(s string) *regexp.Regexp {
	if r, ok := compiled[s]; ok {
		return r
	}
	r := regexp.MustCompile(s)
	compiled[s] = r
	return r
}

// match names the first entry that covers m, or "".
func match(m mismatch, tables ...[]abiDiff) string {
	for _, table := range tables {
		for _, d := range table {
			if re(d.Key).MatchString(m.key) && re(d.Field).MatchString(m.field) && re(d.Fake).MatchString(m.fake) && re(d.Real).MatchString(m.real) {
				return d.Name
			}
		}
	}
	return ""
}

func presence(ok bool) string {
	if ok {
		return "present"
	}
	return "missing"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
