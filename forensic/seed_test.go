package forensic

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"github.com/kvhygiene/kvh/internal/pyjson"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

func copySeed(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ents, _ := filepath.Glob("testdata/seed/clean/*.log")
	if len(ents) < 3 {
		t.Fatal("seed fixtures missing; run testdata/seed/gen.py")
	}
	for _, e := range ents {
		b, _ := os.ReadFile(e)
		os.WriteFile(filepath.Join(dir, filepath.Base(e)), b, 0o600)
	}
	return dir
}

func rotatedSeed(t *testing.T, dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "kv_cache-*.log"))
	sort.Strings(m)
	return m
}

func TestSeedFormat(t *testing.T) {
	key := []byte("secret")
	cases := []struct {
		name     string
		key      []byte
		attack   func(t *testing.T, dir string)
		wantOK   bool
		want     string // substring of our problem
		seedSays string // what the seed's verify_all would say
		seedMiss string // substring of a reported miss
	}{
		{"clean, with key", key, nil, true, "", "ok", ""},
		{"clean, without key", nil, nil, true, "", "ok", ""},
		{"wrong key", []byte("nope"), nil, false, "HMAC invalid", "fail", ""},
		{"edited record", key, func(t *testing.T, dir string) {
			editLines(t, filepath.Join(dir, "kv_cache.log"), func(l [][]byte) [][]byte {
				l[1] = bytes.Replace(l[1], []byte(`"h-23"`), []byte(`"h-99"`), 1)
				return l
			})
		}, false, "kv_cache.log line 2: hash chain broken", "fail", ""},
		{"stripped HMAC, chain recomputed", key, func(t *testing.T, dir string) {
			p := filepath.Join(dir, "kv_cache.log")
			lines := readLines(t, p)
			prev := ""
			for i, l := range lines {
				v, err := pyjson.Parse(l)
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					prev = v.Vals["prev_hash"].Text
				}
				delete(v.Vals, "hmac")
				v.Keys = removeKey(v.Keys, "hmac")
				if i == 1 {
					v.Vals["handle"].Text = "forged"
				}
				v.Vals["prev_hash"].Text = prev
				prev = seedHash(v)
				v.Vals["curr_hash"].Text = prev
				lines[i] = append(v.Canonical(nil), '\n')
			}
			writeLines(t, p, lines)
		}, false, "HMAC missing", "ok", "carry no HMAC"},
		{"deleted oldest rotated file", key, func(t *testing.T, dir string) {
			os.Remove(rotatedSeed(t, dir)[0])
		}, false, "is missing", "ok", "reports ok"},
		{"garbage line", key, func(t *testing.T, dir string) {
			p := filepath.Join(dir, "kv_cache.log")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, "{not json\n"...), 0o600)
		}, false, "not a seed record", "crash", "crashes"},
		{"deleted middle rotated file", key, func(t *testing.T, dir string) {
			os.Remove(rotatedSeed(t, dir)[3])
		}, false, "is missing", "fail", ""},
		{"unrelated backup file", key, func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "kv_cache-backup.log"), []byte("{}\n"), 0o600)
		}, true, "", "fail", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := copySeed(t)
			if tc.attack != nil {
				tc.attack(t, dir)
			}
			rep, err := VerifySeed(filepath.Join(dir, "kv_cache.log"), tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK != tc.wantOK {
				t.Fatalf("ok=%v, want %v: %+v", rep.OK, tc.wantOK, rep.Problem)
			}
			if tc.want != "" && !strings.Contains(rep.Problem.String(), tc.want) {
				t.Errorf("problem %q, want %q", rep.Problem, tc.want)
			}
			if rep.SeedVerdict != tc.seedSays {
				t.Errorf("seed verdict %q, want %q", rep.SeedVerdict, tc.seedSays)
			}
			if tc.seedMiss != "" && !strings.Contains(strings.Join(rep.SeedMisses, "\n"), tc.seedMiss) {
				t.Errorf("misses %v, want %q", rep.SeedMisses, tc.seedMiss)
			}
			if tc.wantOK && len(rep.Files) != 15 {
				t.Errorf("walked %d files", len(rep.Files))
			}
		})
	}
}

func removeKey(keys []string, k string) []string {
	var out []string
	for _, x := range keys {
		if x != k {
			out = append(out, x)
		}
	}
	return out
}

func seedHash(v *pyjson.Value) string {
	buf := append([]byte(v.Vals["prev_hash"].Text), v.Canonical(nil, "curr_hash", "hmac")...)
	return hexSHA(buf)
}

func TestSeedDirectory(t *testing.T) {
	dir := copySeed(t)
	rep, err := VerifySeed(dir, []byte("secret"))
	if err != nil || !rep.OK || len(rep.Files) != 15 {
		t.Fatalf("%v %+v", err, rep)
	}
	if _, err := VerifySeed(t.TempDir(), nil); err == nil {
		t.Fatal("a directory without kv_cache.log verified")
	}
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
