package forensic

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// seedCase is a crafted seed log (testdata/seed/crafted.py): records of
// [text, hashed_as], joined by sep, with HMACs under key unless nil.
type seedCase struct {
	name    string
	records [][2]any
	sep     string
	key     any // a string, or nil
}

func (c seedCase) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{c.name, c.records, c.sep, c.key})
}

// seedVerdicts writes each case as a seed log under dir (see
// testdata/seed/crafted.py) and returns the seed's own verify_chain verdict
// on each. python3 runs the seed's code: make deps installs it.
func seedVerdicts(t *testing.T, dir string, cases []seedCase) map[string]string {
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
	var cases []seedCase
	for i, n := range nums {
		text := strings.Replace(tmpl, "%s", n, 1)
		cases = append(cases, seedCase{"seedhash" + itoa(i), [][2]any{{text, nil}}, "\n", nil},
			seedCase{"texthash" + itoa(i), [][2]any{{text, text}}, "\n", nil})
	}
	dir := t.TempDir()
	seed := seedVerdicts(t, dir, cases)
	for _, c := range cases {
		name := c.name
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

// Attack on the auditor: how the seed reads its file. Its verify_chain
// iterates a text file — a bare carriage return ends a line there — and
// skips a line that Python's str.strip empties (U+001C..U+001F included),
// and with a key its hmac.compare_digest raises TypeError on an hmac member
// that is truthy and not an ASCII string. kvh read a record with a bare
// "\r" between its members as one line and verified it (the seed crashes
// on its first half), rejected a log with a "\x1c" line the seed skips,
// and predicted "ok" for an hmac of 1, where the seed crashes. Each
// verdict, kvh's and its prediction of the seed's, must be the seed's own.
func TestSeedReadAsTheSeedReadsIt(t *testing.T) {
	const a = `{"event_type":"alloc","prev_hash":"GENESIS","schema":1,"n":1}`
	b := func(prev string) string { return `{"event_type":"free","prev_hash":"` + prev + `","schema":1,"n":2}` }
	cases := []seedCase{
		{"cr_between_members", [][2]any{{"{\"event_type\":\"alloc\",\r\"prev_hash\":\"GENESIS\",\"schema\":1}", nil}}, "\n", nil},
		{"crlf_lines", [][2]any{{a, nil}, {a, nil}}, "\r\n", nil},
		{"cr_lines", [][2]any{{a, nil}, {a, nil}}, "\r", nil},
		{"cr_blank_then_record", [][2]any{{"\r", "raw"}, {a, nil}}, "\n", nil},
		{"fs_line", [][2]any{{"\x1c", "raw"}, {a, nil}}, "\n", nil},
		{"us_and_nbsp_line", [][2]any{{"\x1f\u00a0 \t", "raw"}, {a, nil}}, "\n", nil},
		{"zwsp_line", [][2]any{{"\u200b", "raw"}, {a, nil}}, "\n", nil},
		{"hmac_int", [][2]any{{`{"event_type":"alloc","hmac":1,"prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"hmac_list", [][2]any{{`{"event_type":"alloc","hmac":[0],"prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"hmac_nonascii", [][2]any{{`{"event_type":"alloc","hmac":"\u00e9","prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"hmac_zero", [][2]any{{`{"event_type":"alloc","hmac":0,"prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"hmac_empty_object", [][2]any{{`{"event_type":"alloc","hmac":{},"prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"hmac_true", [][2]any{{`{"event_type":"alloc","hmac":true,"prev_hash":"GENESIS","schema":1}`, nil}}, "\n", "k"},
		{"keyed_clean", [][2]any{{a, nil}, {b("x"), nil}}, "\n", "k"},
	}
	dir := t.TempDir()
	seed := seedVerdicts(t, dir, cases)
	for _, c := range cases {
		var key []byte
		if c.key != nil {
			key = []byte(c.key.(string))
		}
		rep, err := VerifySeed(filepath.Join(dir, c.name, "kv_cache.log"), key)
		if err != nil {
			t.Fatal(err)
		}
		wantOK := seed[c.name] == "ok"
		if strings.HasPrefix(c.name, "hmac_") && wantOK {
			// kvh is stricter by design: with a key every line carries an
			// HMAC; the seed skips a falsy one (reported as a seed miss).
			wantOK = false
			if rep.Problem == nil || !strings.Contains(rep.Problem.Reason, "HMAC missing") {
				t.Errorf("%s: kvh's problem %v, want HMAC missing", c.name, rep.Problem)
			}
		}
		if rep.OK != wantOK || rep.SeedVerdict != seed[c.name] {
			t.Errorf("%s: kvh ok=%v, predicting the seed says %q; the seed says %q (kvh: %v)", c.name, rep.OK, rep.SeedVerdict, seed[c.name], rep.Problem)
		}
	}
}
