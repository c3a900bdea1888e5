package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/forensic"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// trail makes keys and a closed trail with n events under a temp dir.
func trail(t *testing.T, n int) (dir, key, pub string) {
	t.Helper()
	root := t.TempDir()
	if code, _, e := runCmd(t, "keygen", "--out", root, "--name", "kvh-test"); code != 0 {
		t.Fatalf("keygen: %s", e)
	}
	key, pub = filepath.Join(root, "kvh.key"), filepath.Join(root, "kvh.pub")
	signer, err := forensic.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(root, "trail")
	l, err := forensic.Open(dir, forensic.Options{Signer: signer, MaxSegmentBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		l.Append(map[string]int{"i": i})
	}
	l.Close()
	return dir, key, pub
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	if code, out, _ := runCmd(t, "keygen", "--out", dir); code != 0 || !strings.Contains(out, "verification key") {
		t.Fatalf("keygen: %d %s", code, out)
	}
	st, _ := os.Stat(filepath.Join(dir, "kvh.key"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("signing key mode %v", st.Mode())
	}
	if code, _, e := runCmd(t, "keygen", "--out", dir); code != 1 || !strings.Contains(e, "refusing to overwrite") {
		t.Errorf("second keygen: %d %s", code, e)
	}
}

func TestLog(t *testing.T) {
	dir, _, pub := trail(t, 200)
	code, out, _ := runCmd(t, "log", dir, "--pubkey", pub)
	if code != 0 || !strings.Contains(out, "VERIFIED") {
		t.Fatalf("clean trail: %d\n%s", code, out)
	}
	// Without a key: refused, unless explicitly asked, and then loudly.
	if code, _, e := runCmd(t, "log", dir); code != 1 || !strings.Contains(e, "--pubkey is required") {
		t.Errorf("no pubkey: %d %s", code, e)
	}
	if code, _, e := runCmd(t, "log", dir, "--no-signatures"); code != 0 || !strings.Contains(e, "NOT checked") {
		t.Errorf("--no-signatures: %d %s", code, e)
	}
	// Tamper: the machine verdict names the record.
	seg := filepath.Join(dir, "seg-000001.jsonl")
	b, _ := os.ReadFile(seg)
	os.WriteFile(seg, bytes.Replace(b, []byte(`{"i":40}`), []byte(`{"i":41}`), 1), 0o600)
	code, out, _ = runCmd(t, "log", dir, "--pubkey", pub, "--json")
	if code != 2 {
		t.Fatalf("tampered: exit %d", code)
	}
	var rep forensic.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Problem == nil || rep.Problem.Segment != "seg-000001.jsonl" || rep.Problem.Line == 0 || rep.Problem.Seq == nil {
		t.Fatalf("verdict does not name the record: %+v", rep.Problem)
	}
	// I/O errors are exit 1.
	if code, _, _ := runCmd(t, "log", filepath.Join(dir, "nope"), "--pubkey", pub); code != 1 {
		t.Errorf("missing dir: exit %d", code)
	}
}

func TestLogExternalCheckpoint(t *testing.T) {
	dir, _, pub := trail(t, 50)
	ck, _ := os.ReadFile(filepath.Join(dir, forensic.CheckpointFile))
	lines := bytes.Split(bytes.TrimSpace(ck), []byte("\n"))
	ext := filepath.Join(t.TempDir(), "offnode.ckpt")
	os.WriteFile(ext, lines[len(lines)-1], 0o600)
	if code, out, _ := runCmd(t, "log", dir, "--pubkey", pub, "--checkpoint", ext); code != 0 || !strings.Contains(out, "1 of 1 external") {
		t.Fatalf("external checkpoint: %d %s", code, out)
	}
}

func TestLogSeed(t *testing.T) {
	src := "../../forensic/testdata/seed/clean"
	dir := t.TempDir()
	ents, _ := filepath.Glob(filepath.Join(src, "*.log"))
	for _, e := range ents {
		b, _ := os.ReadFile(e)
		os.WriteFile(filepath.Join(dir, filepath.Base(e)), b, 0o600)
	}
	keyFile := filepath.Join(t.TempDir(), "hmac")
	os.WriteFile(keyFile, []byte("secret\n"), 0o600)
	code, out, _ := runCmd(t, "log", "--format", "seed", filepath.Join(dir, "kv_cache.log"), "--hmac-key-file", keyFile)
	if code != 0 || !strings.Contains(out, "VERIFIED") {
		t.Fatalf("seed log: %d %s", code, out)
	}
	t.Setenv("FORENSIC_HMAC_SECRET", "wrong")
	if code, _, _ := runCmd(t, "log", "--format", "seed", filepath.Join(dir, "kv_cache.log")); code != 2 {
		t.Errorf("wrong key from env: exit %d", code)
	}
	os.Chmod(keyFile, 0o644)
	if code, _, e := runCmd(t, "log", "--format", "seed", filepath.Join(dir, "kv_cache.log"), "--hmac-key-file", keyFile); code != 1 || !strings.Contains(e, "0600") {
		t.Errorf("world-readable key: %d %s", code, e)
	}
}

func TestPruneCmd(t *testing.T) {
	dir, key, pub := trail(t, 300)
	code, out, e := runCmd(t, "prune", dir, "--max-rotated", "2", "--key", key, "--pubkey", pub)
	if code != 0 {
		t.Fatalf("prune: %d %s %s", code, out, e)
	}
	var rep forensic.PruneReport
	json.Unmarshal([]byte(out), &rep)
	if !rep.OK || len(rep.Removed) == 0 {
		t.Fatalf("prune report %s", out)
	}
	if code, _, _ := runCmd(t, "log", dir, "--pubkey", pub); code != 0 {
		t.Errorf("pruned trail does not verify")
	}
	if code, _, e := runCmd(t, "prune", dir, "--key", key, "--pubkey", pub); code != 1 || !strings.Contains(e, "retention") {
		t.Errorf("prune without policy: %d %s", code, e)
	}
	// The wrong verification key, or an empty directory, is not a refusal on
	// the evidence (2) but the auditor's input (1).
	_, otherPub := keys(t, "kvh-other")
	if code, _, e := runCmd(t, "prune", dir, "--max-rotated", "1", "--key", key, "--pubkey", otherPub); code != 1 || !strings.Contains(e, "not by the given key kvh-other") {
		t.Errorf("prune with another key: %d %s", code, e)
	}
	if code, _, e := runCmd(t, "prune", t.TempDir(), "--max-rotated", "1", "--key", key, "--pubkey", pub); code != 1 || !strings.Contains(e, "no trail in") {
		t.Errorf("prune of an empty directory: %d %s", code, e)
	}
	// A trail that fails on its evidence is refused: 2.
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
	b, _ := os.ReadFile(segs[0])
	os.WriteFile(segs[0], bytes.Replace(b, []byte(`{"i":`), []byte(`{"j":`), 1), 0o600)
	if code, _, e := runCmd(t, "prune", dir, "--max-rotated", "1", "--key", key, "--pubkey", pub); code != 2 || !strings.Contains(e, "refused") {
		t.Errorf("prune of a tampered trail: %d %s", code, e)
	}
}

func TestGate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	good := write("good.json", `{"total_buffers": 3, "active_buffers": 0, "unsanitized_regions_count": 0, "quarantine_count": 0,
	  "min_coverage_pct": 100.0, "avg_coverage_pct": 100.0, "threshold_pct": 99.9, "sanitize_duration_p50_ms": 0.2,
	  "sanitize_duration_p95_ms": 0.4, "allocations": 3, "freed_total": 3, "reuse_total": 0, "reuse_rate": 0.0}`)
	bad := write("bad.json", `{"min_coverage_pct": 50.0, "unsanitized_regions_count": 2, "quarantine_count": 1, "reuse_rate": 0.9, "sanitize_duration_p95_ms": 12.5}`)
	nan := write("nan.json", `{"min_coverage_pct": NaN, "unsanitized_regions_count": 0, "quarantine_count": 0}`)
	out := filepath.Join(dir, "out", "verdict.json")

	code, stdout, _ := runCmd(t, "gate", good, "--out", out)
	if code != 0 || !strings.Contains(stdout, `"pass":true`) {
		t.Fatalf("good: %d %s", code, stdout)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatalf("verdict not written: %v", err)
	}
	code, stdout, _ = runCmd(t, "gate", bad, "--out", "", "--reuse-rate-max", "0.5", "--sanitize-p95-ms-max", "10")
	var v struct {
		Pass     bool
		Failures []struct{ Metric string }
	}
	json.Unmarshal([]byte(stdout), &v)
	if code != 2 || v.Pass || len(v.Failures) != 5 {
		t.Fatalf("all thresholds violated: %d %s", code, stdout)
	}
	want := []string{"coverage_pct", "unsanitized_regions_count", "quarantine_count", "reuse_rate", "sanitize_duration_p95_ms"}
	for i, f := range v.Failures {
		if f.Metric != want[i] {
			t.Errorf("failure %d is %s, want %s (the seed's order)", i, f.Metric, want[i])
		}
	}
	if code, stdout, _ := runCmd(t, "gate", nan, "--out", ""); code != 2 {
		t.Errorf("NaN coverage passed: %s", stdout)
	}
	if code, _, e := runCmd(t, "gate", filepath.Join(dir, "missing.json")); code != 1 || !strings.Contains(e, "no such file") {
		t.Errorf("missing file: %d %s", code, e)
	}
	if code, _, e := runCmd(t, "gate", write("junk.json", "{nope")); code != 1 || !strings.Contains(e, "not JSON") {
		t.Errorf("malformed: %d %s", code, e)
	}
	if code, _, _ := runCmd(t, "gate", good, "--coverage-min", "abc"); code != 1 {
		t.Errorf("bad flag: exit %d (usage errors are 1, not the gate's 2)", code)
	}
	// Thresholds that could never fail are refused, not applied.
	for _, th := range [][]string{{"--coverage-min", "NaN"}, {"--coverage-min", "150"}, {"--unsanitized-max", "-1"}, {"--reuse-rate-max", "NaN"}, {"--sanitize-p95-ms-max", "-Inf"}} {
		if code, _, e := runCmd(t, append([]string{"gate", good, "--out", ""}, th...)...); code != 1 || !strings.Contains(e, "Usage: kvh-verify gate") {
			t.Errorf("%v: exit %d %s", th, code, e)
		}
	}
	// A value no exporter can produce fails (2), and stderr names its key.
	for key, val := range map[string]string{"unsanitized_regions_count": "-1", "total_buffers": "-3", "allocations": "-1", "freed_total": "-1",
		"reuse_total": "-2", "min_coverage_pct": "150", "avg_coverage_pct": "-0.5", "sanitize_duration_p50_ms": "NaN"} {
		in := `{"min_coverage_pct": 100.0, "unsanitized_regions_count": 0, "quarantine_count": 0, "` + key + `": ` + val + `}`
		in = strings.Replace(in, `"`+key+`": 100.0,`, "", 1)
		in = strings.Replace(in, `"`+key+`": 0,`, "", 1)
		code, stdout, e := runCmd(t, "gate", write(key+".json", in), "--out", "")
		if code != 2 || !strings.Contains(stdout, `"pass":false`) || !strings.Contains(e, key) {
			t.Errorf("%s=%s: exit %d\n%s\n%s", key, val, code, stdout, e)
		}
	}
}
