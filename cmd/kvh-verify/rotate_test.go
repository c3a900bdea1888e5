package main

import (
	"os"
	"path/filepath"
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
