package forensic

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// seedVerdicts writes each case as a one-record seed log under dir (see
// testdata/seed/crafted.py) and returns the seed's own verify_chain verdict
// on each. python3 runs the seed's code: make deps installs it.
func seedVerdicts(t *testing.T, dir string, cases [][3]any) map[string]string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 runs the seed's own verifier, the reference for these verdicts: install it (make deps)")
	}
	in, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "testdata/seed/crafted.py", dir)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crafted.py: %v", err)
	}
	var v map[string]string
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("crafted.py said %q: %v", out, err)
	}
	return v
}

// Attack on the auditor: kvh hashed a seed line's numbers as their text,
// where the seed hashes what json.loads made of them (an int, or a float
// written back by repr). A line whose curr_hash was computed over "1.50",
// "1E2", "-0" or "1e400" as written verified here — and kvh said the
// seed's verifier would agree — while the seed's verify_chain rejects it;
// a line hashed the seed's way (1.5, 100.0, 0, Infinity) the seed accepts
// and kvh rejected. An integer longer than Python's 4,300 digits, on which
// the seed's verifier crashes, verified. Each verdict, kvh's and its
// prediction of the seed's, must be the seed's own.
func TestSeedNumbersAsTheSeedReadsThem(t *testing.T) {
	const tmpl = `{"event_type":"alloc","prev_hash":"GENESIS","schema":1,"x":%s}`
	nums := []string{"1.50", "1E2", "1e400", "-1e400", "-0", "-0.0", "0.0", "1e-400", "-1e-400", "0.1e1", "1.0000000000000000001",
		"123456789012345678.0", "1e16", "1e15", "9999999999999998.0", "1e-5", "0.0001", "0.00012345", "1.5e300", "2.5E-7",
		"12345678901234567890", "1733059200.123456", "0.1", "-12.75e2", strings.Repeat("7", 4300), strings.Repeat("7", 4301)}
	var cases [][3]any
	for i, n := range nums {
		text := strings.Replace(tmpl, "%s", n, 1)
		cases = append(cases, [3]any{"seedhash" + itoa(i), text, nil}, [3]any{"texthash" + itoa(i), text, text})
	}
	dir := t.TempDir()
	seed := seedVerdicts(t, dir, cases)
	for _, c := range cases {
		name := c[0].(string)
		rep, err := VerifySeed(filepath.Join(dir, name, "kv_cache.log"), nil)
		if err != nil {
			t.Fatal(err)
		}
		n := nums[atoi(t, strings.TrimLeft(name, "seedtxah"))]
		if len(n) > 20 {
			n = n[:20] + "…"
		}
		if rep.OK != (seed[name] == "ok") || rep.SeedVerdict != seed[name] {
			t.Errorf("%s (x = %s): kvh ok=%v, predicting the seed says %q; the seed says %q (kvh: %v)", name, n, rep.OK, rep.SeedVerdict, seed[name], rep.Problem)
		}
	}
}

func atoi(t *testing.T, s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("not a number: %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}
