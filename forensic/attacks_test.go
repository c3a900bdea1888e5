package forensic

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"
)

// segPath returns the path of segment i in dir.
func segPath(dir string, i int) string { return filepath.Join(dir, segmentName(uint64(i))) }

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func editLines(t testing.TB, path string, f func([][]byte) [][]byte) {
	writeLines(t, path, f(readLines(t, path)))
}

// rewriteChain is the attacker without keys: it re-encodes every record with
// a recomputed seq/prev chain and frontiers, no MACs, after mutate.
func rewriteChain(t testing.TB, dir string, mutate func(seq uint64, body []byte) []byte) {
	t.Helper()
	segs, _, err := listDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := newChain(0, nil)
	for _, s := range segs {
		var out [][]byte
		for _, line := range readLines(t, s.path) {
			var p parsed
			if err := parseLine(bytes.TrimSuffix(line, []byte("\n")), &p); err != nil {
				t.Fatal(err)
			}
			body := append([]byte(nil), p.body...)
			if string(p.kind) == KindSegment {
				var h SegmentBody
				json.Unmarshal(body, &h)
				h.MACAlg, h.Size, h.Frontier = MACAlgNone, c.size(), c.rng.Hashes()
				if h.Frontier == nil {
					h.Frontier = [][]byte{}
				}
				body, _ = json.Marshal(h)
			} else if mutate != nil {
				body = mutate(p.seq, body)
			}
			rec := Record{V: 1, Seq: c.size(), TS: string(p.ts), Kind: string(p.kind), Prev: append([]byte(nil), c.prev[:]...), Body: body}
			nl, _ := encodeLine(&rec, nil)
			leaf := rfc6962.DefaultHasher.HashLeaf(nl)
			c.rng.Append(leaf, nil)
			copy(c.prev[:], leaf)
			out = append(out, append(nl, '\n'))
		}
		writeLines(t, s.path, out)
	}
}

func TestAttacks(t *testing.T) {
	k := newKeys(t, "kvh-test")
	other := newKeys(t, "kvh-test")
	cases := []struct {
		name   string
		mac    []byte
		attack func(t *testing.T, dir string)
		want   string // substring of the problem
	}{
		{"edit a byte, MAC", testMAC, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte {
				l[5] = bytes.Replace(l[5], []byte(`"tenant":"a"`), []byte(`"tenant":"b"`), 1)
				return l
			})
		}, "MAC invalid"},
		{"edit a byte, no MAC", nil, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte {
				l[5] = bytes.Replace(l[5], []byte(`"tenant":"a"`), []byte(`"tenant":"b"`), 1)
				return l
			})
		}, "line 6: seq 44: root at size 45 does not match"},
		{"delete a line", testMAC, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte { return append(l[:3], l[4:]...) })
		}, "line 4: seq"},
		{"insert a line", testMAC, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte {
				return append(l[:3], append([][]byte{l[2]}, l[3:]...)...)
			})
		}, "line 4: seq"},
		{"reorder lines", testMAC, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte { l[3], l[4] = l[4], l[3]; return l })
		}, "line 4: seq"},
		{"strip one MAC", testMAC, func(t *testing.T, dir string) {
			editLines(t, segPath(dir, 1), func(l [][]byte) [][]byte {
				i := bytes.Index(l[4], macKey)
				l[4] = append(append([]byte(nil), l[4][:i]...), "}\n"...)
				return l
			})
		}, "line 5: seq"},
		{"strip all MACs, chain recomputed", testMAC, func(t *testing.T, dir string) {
			rewriteChain(t, dir, nil)
		}, "declares no MAC"},
		{"recompute the chain without the key", nil, func(t *testing.T, dir string) {
			rewriteChain(t, dir, func(seq uint64, b []byte) []byte {
				if seq == 20 {
					return bytes.Replace(b, []byte(`"a"`), []byte(`"z"`), 1)
				}
				return b
			})
		}, "does not match the signed checkpoint"},
		{"forged checkpoint", testMAC, func(t *testing.T, dir string) {
			l, _ := Open(t.TempDir(), Options{Signer: other.signer, Origin: "kvh/test/0001"})
			l.Close()
			ck := readLines(t, filepath.Join(l.Dir(), CheckpointFile))
			editLines(t, filepath.Join(dir, CheckpointFile), func(x [][]byte) [][]byte { return append(x, ck[0]) })
		}, "signature does not verify"},
		{"truncated tail", testMAC, func(t *testing.T, dir string) {
			last := lastSeg(t, dir)
			editLines(t, last, func(l [][]byte) [][]byte { return l[:len(l)-3] })
		}, "TRUNCATION"},
		{"deleted newest segment", testMAC, func(t *testing.T, dir string) {
			os.Remove(lastSeg(t, dir))
		}, "TRUNCATION"},
		{"deleted middle segment", testMAC, func(t *testing.T, dir string) {
			os.Remove(segPath(dir, 2))
		}, "segment(s) 2..2 missing"},
		{"deleted oldest segment", testMAC, func(t *testing.T, dir string) {
			os.Remove(segPath(dir, 0))
		}, "segments 0..0 missing and no signed prune record"},
		{"deleted all checkpoints", testMAC, func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, CheckpointFile))
		}, "nothing in the trail is signed"},
		{"replayed segment", testMAC, func(t *testing.T, dir string) {
			data, _ := os.ReadFile(segPath(dir, 1))
			os.WriteFile(filepath.Join(dir, "seg-000001-copy.jsonl"), data, 0o600)
		}, "appears twice"},
		{"segment from an older copy", testMAC, func(t *testing.T, dir string) {
			// Replace segment 2 by segment 1 relabelled as 2: frontier cannot match.
			lines := readLines(t, segPath(dir, 1))
			lines[0] = bytes.Replace(lines[0], []byte(`"segment":1`), []byte(`"segment":2`), 1)
			writeLines(t, segPath(dir, 2), lines)
		}, "seg-000002.jsonl line 1"},
		{"checkpoints.jsonl symlinked elsewhere", testMAC, func(t *testing.T, dir string) {
			elsewhere := filepath.Join(t.TempDir(), CheckpointFile)
			os.Rename(filepath.Join(dir, CheckpointFile), elsewhere)
			os.Symlink(elsewhere, filepath.Join(dir, CheckpointFile))
		}, "checkpoints.jsonl: "},
		{"dropped one checkpoint (harmless)", testMAC, func(t *testing.T, dir string) {
			editLines(t, filepath.Join(dir, CheckpointFile), func(x [][]byte) [][]byte {
				return append(x[:1], x[2:]...)
			})
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := buildTrail(t, k, tc.mac, 300, 6<<10)
			if rep := verify(t, dir, k, tc.mac); !rep.OK {
				t.Fatalf("before the attack: %v", rep.Problem)
			}
			tc.attack(t, dir)
			rep := verify(t, dir, k, tc.mac)
			if tc.want == "" {
				if !rep.OK {
					t.Fatalf("unexpected failure: %v", rep.Problem)
				}
				return
			}
			if rep.OK {
				t.Fatalf("attack not detected; report %+v", rep)
			}
			t.Logf("detected: %s", rep.Problem)
			if got := rep.Problem.String(); !strings.Contains(got, tc.want) {
				t.Fatalf("problem %q does not contain %q", got, tc.want)
			}
		})
	}
}

func lastSeg(t testing.TB, dir string) string {
	segs, _, err := listDir(dir)
	if err != nil || len(segs) == 0 {
		t.Fatal(err)
	}
	return segs[len(segs)-1].path
}

func TestRenamedSegmentsVerifyWithWarning(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	a, b := segPath(dir, 1), segPath(dir, 2)
	os.Rename(a, a+".tmp")
	os.Rename(b, a)
	os.Rename(a+".tmp", b)
	rep := verify(t, dir, k, testMAC)
	if !rep.OK {
		t.Fatal(rep.Problem)
	}
	if !strings.Contains(strings.Join(rep.Warnings, "\n"), "renamed") {
		t.Errorf("no rename warning: %v", rep.Warnings)
	}
}

func TestTruncationNeedsExternalCheckpoint(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	// The auditor kept a checkpoint off the node.
	ck := readLines(t, filepath.Join(dir, CheckpointFile))
	external, err := ParseExternalCheckpoint(ck[len(ck)-1])
	if err != nil {
		t.Fatal(err)
	}
	// The attacker drops the newest segment and every checkpoint that covers it.
	segs, _, _ := listDir(dir)
	last := segs[len(segs)-1]
	os.Remove(last.path)
	// Keep only checkpoints that attest no more than what is left; the
	// previous segment then ends without close, so drop its declaration too
	// by removing that segment's last line (the close record).
	editLines(t, filepath.Join(dir, CheckpointFile), func(x [][]byte) [][]byte {
		var keep [][]byte
		for _, l := range x {
			var cl checkpointLine
			json.Unmarshal(l, &cl)
			if cl.Size <= last.head.Size-1 {
				keep = append(keep, l)
			}
		}
		return keep
	})
	editLines(t, segs[len(segs)-2].path, func(l [][]byte) [][]byte { return l[:len(l)-1] })
	if rep := verify(t, dir, k, testMAC); !rep.OK {
		t.Fatalf("local-only truncation should pass locally (the documented gap): %v", rep.Problem)
	}
	rep := verify(t, dir, k, testMAC, external)
	if rep.OK || !strings.Contains(rep.Problem.String(), "TRUNCATION: the external checkpoint") {
		t.Fatalf("external checkpoint did not catch truncation: %+v", rep.Problem)
	}
}
