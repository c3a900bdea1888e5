package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/forensic"
)

// rotatedTrailCLI makes the keys the way README's "Rotating keys" does
// (keygen --hmac --keyring), writes a trail under the first pair, rotates
// it to the second as the agent does at start, and writes more.
func rotatedTrailCLI(t *testing.T) (dir, ring string, old, next [2]string) {
	t.Helper()
	root := t.TempDir()
	ring = filepath.Join(root, "keyring")
	for i, p := range []*[2]string{&old, &next} {
		d := filepath.Join(root, []string{"old", "next"}[i])
		if code, out, e := runCmd(t, "keygen", "--out", d, "--name", []string{"kvh-old", "kvh-next"}[i], "--hmac", "--keyring", ring); code != 0 || !strings.Contains(out, "hmac key:") {
			t.Fatalf("keygen: %d %s %s", code, out, e)
		}
		*p = [2]string{filepath.Join(d, forensic.SigningKeyFile), filepath.Join(d, forensic.MACKeyFile)}
	}
	load := func(p [2]string) (forensic.Options, []byte) {
		s, err := forensic.LoadSigner(p[0])
		if err != nil {
			t.Fatal(err)
		}
		m, err := forensic.LoadMACKey(p[1])
		if err != nil {
			t.Fatal(err)
		}
		return forensic.Options{Signer: s, MACKey: m, MaxSegmentBytes: 4 << 10}, m
	}
	dir = filepath.Join(root, "trail")
	o, _ := load(old)
	for i, opts := range []forensic.Options{o, {}} {
		if i == 1 {
			opts, _ = load(next)
			prev, pm := load(old)
			opts.PreviousSigner, opts.PreviousMACKey = prev.Signer, pm
		}
		l, err := forensic.Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 60; j++ {
			if _, err := l.Append(map[string]int{"i": j}); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dir, ring, old, next
}

func pubOf(key string) string { return filepath.Join(filepath.Dir(key), forensic.VerificationKeyFile) }

func TestLogFollowsRotatedKeys(t *testing.T) {
	dir, ring, old, next := rotatedTrailCLI(t)
	other, _ := keys(t, "kvh-other")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"the original key and both MAC keys", []string{"--pubkey", pubOf(old[0]), "--hmac-key-file", old[1], "--hmac-key-file", next[1]}, 0,
			[]string{"VERIFIED", "MACs         verified", "key          kvh-old+", "trusted (given); retired by the rekey record at seq", "key          kvh-next+", "introduced by a sealed rekey record"}},
		{"the keyring", []string{"--keyring", ring, "--hmac-key-file", old[1], "--hmac-key-file", next[1]}, 0,
			[]string{"VERIFIED", "MACs         verified"}},
		{"the new keys only", []string{"--pubkey", pubOf(next[0]), "--hmac-key-file", next[1]}, 0,
			[]string{"VERIFIED", "MACs         verified except seq 0.."}},
		{"a key the trail never used", []string{"--pubkey", pubOf(other)}, 1, []string{"not by the given key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, e := runCmd(t, append(append([]string{"log"}, tc.args...), dir)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, out, e)
			}
			for _, w := range tc.want {
				if !strings.Contains(out+e, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, e)
				}
			}
		})
	}
	// The keyring is public (0644); the HMAC keys are secrets (0600).
	if st, _ := os.Stat(ring); st.Mode().Perm() != 0o644 {
		t.Errorf("keyring mode %04o", st.Mode().Perm())
	}
	if st, _ := os.Stat(next[1]); st.Mode().Perm() != 0o600 {
		t.Errorf("hmac key mode %04o", st.Mode().Perm())
	}
}

// The report's "Prune and key history" shows each key epoch and the rekey
// record, in every format, with the numbers the verdict found.
func TestReportShowsKeyHistory(t *testing.T) {
	dir, ring, old, next := rotatedTrailCLI(t)
	args := []string{"report", dir, "--hmac-key-file", old[1], "--hmac-key-file", next[1]}
	code, out, e := runCmd(t, append(args, "--pubkey", pubOf(old[0]), "--format", "json")...)
	if code != 0 {
		t.Fatalf("json: exit %d %s", code, e)
	}
	var r struct {
		History struct {
			KeyEpochs []forensic.KeyEpoch `json:"key_epochs"`
			Rekeys    []struct {
				Seq    uint64 `json:"seq"`
				Detail string `json:"detail"`
			} `json:"rekeys"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	h := r.History
	if len(h.KeyEpochs) != 2 || len(h.Rekeys) != 1 || h.KeyEpochs[0].RekeySeq == nil || *h.KeyEpochs[0].RekeySeq != h.Rekeys[0].Seq ||
		h.KeyEpochs[1].FirstSeq != h.Rekeys[0].Seq+1 || !strings.HasPrefix(h.KeyEpochs[0].Key, "kvh-old+") || !strings.HasPrefix(h.KeyEpochs[1].Key, "kvh-next+") ||
		!strings.Contains(h.Rekeys[0].Detail, "kvh-old+") || !strings.Contains(h.Rekeys[0].Detail, "kvh-next+") {
		t.Fatalf("key history: %+v", h)
	}
	for _, f := range []struct{ format, want string }{
		{"markdown", "| `" + h.KeyEpochs[1].Key + "` | " + strconv.FormatUint(h.KeyEpochs[1].FirstSeq, 10) + " |"},
		{"html", `<table id="key-epochs">`},
	} {
		code, out, e := runCmd(t, append(args, "--keyring", ring, "--format", f.format)...)
		if code != 0 || !strings.Contains(out, f.want) || !strings.Contains(out, "kvh-old") {
			t.Errorf("%s: exit %d %s; lacks %q", f.format, code, e, f.want)
		}
	}
}

// prune on a rotated trail, as README's "Rotating keys" says: the new
// signing key, the original public key or the keyring, and every MAC key in
// any order. Without the current MAC key it refuses and removes nothing.
func TestPruneRotatedTrail(t *testing.T) {
	for _, trust := range [][]string{
		{"--pubkey", "OLDPUB", "--hmac-key-file", "OLDMAC", "--hmac-key-file", "NEXTMAC"},
		{"--keyring", "RING", "--hmac-key-file", "NEXTMAC", "--hmac-key-file", "OLDMAC"},
	} {
		dir, ring, old, next := rotatedTrailCLI(t)
		args := []string{"prune", dir, "--max-rotated", "1", "--key", next[0]}
		for _, a := range trust {
			a = strings.NewReplacer("OLDPUB", pubOf(old[0]), "OLDMAC", old[1], "NEXTMAC", next[1], "RING", ring).Replace(a)
			args = append(args, a)
		}
		code, out, e := runCmd(t, args...)
		if code != 0 {
			t.Fatalf("prune %v: %d %s %s", trust, code, out, e)
		}
		var rep forensic.PruneReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Removed) == 0 || rep.After.MAC != "verified" {
			t.Fatalf("prune %v: %v %s", trust, err, out)
		}
		if code, out, e := runCmd(t, "log", dir, "--pubkey", pubOf(old[0]), "--hmac-key-file", old[1], "--hmac-key-file", next[1]); code != 0 || !strings.Contains(out, "MACs         verified") {
			t.Fatalf("log after the prune: %d %s %s", code, out, e)
		}
	}
	dir, _, old, next := rotatedTrailCLI(t)
	before, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	code, _, e := runCmd(t, "prune", dir, "--max-rotated", "0", "--key", next[0], "--pubkey", pubOf(old[0]), "--hmac-key-file", old[1])
	if code != exitFail || !strings.Contains(e, "current epoch") {
		t.Fatalf("prune without the current MAC key: %d %s", code, e)
	}
	if after, _ := filepath.Glob(filepath.Join(dir, "*.jsonl")); len(after) != len(before) {
		t.Fatalf("a refused prune removed files: %d -> %d", len(before), len(after))
	}
}
