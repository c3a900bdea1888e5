package forensic

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// forgery is an attack on the last segment of a closed trail and where a
// writer must report it.
type forgery struct {
	name   string
	mac    []byte
	attack func(t *testing.T, dir string, last string, lines [][]byte) (line int, seq uint64)
}

// seqOf is the seq of a record line.
func seqOf(t testing.TB, line []byte) uint64 {
	t.Helper()
	var p parsed
	if err := parseLine(bytes.TrimSuffix(line, []byte("\n")), &p); err != nil {
		t.Fatal(err)
	}
	return p.seq
}

// dropCheckpointsAbove keeps only the checkpoints attesting at most size records.
func dropCheckpointsAbove(t testing.TB, dir string, size uint64) {
	t.Helper()
	editLines(t, filepath.Join(dir, CheckpointFile), func(x [][]byte) [][]byte {
		var keep [][]byte
		for _, l := range x {
			var cl checkpointLine
			if json.Unmarshal(l, &cl) == nil && cl.Size <= size {
				keep = append(keep, l)
			}
		}
		return keep
	})
}

// editGarbleDrop is the brief's attack: edit record k, garble record k+1,
// delete every checkpoint that covers record k.
func editGarbleDrop(t *testing.T, dir, last string, l [][]byte) (int, uint64) {
	const k = 3 // 0-based line of record k in the last segment
	if len(l) < k+4 {
		t.Fatalf("last segment has only %d lines", len(l))
	}
	seq := seqOf(t, l[k])
	l[k] = bytes.Replace(l[k], []byte(`"tenant":"a"`), []byte(`"tenant":"b"`), 1)
	l[k+1] = bytes.Replace(l[k+1], []byte(`"kind":"event"`), []byte(`"kind":"ev#nt"`), 1)
	writeLines(t, last, l)
	dropCheckpointsAbove(t, dir, seq)
	return k + 2, seq + 1 // without a MAC the garbled line is the first that fails
}

var forgeries = []forgery{
	{"edit k, garble k+1, drop checkpoints beyond k, no MAC", nil, editGarbleDrop},
	{"edit k, garble k+1, drop checkpoints beyond k, MAC", testMAC, func(t *testing.T, dir, last string, l [][]byte) (int, uint64) {
		line, seq := editGarbleDrop(t, dir, last, l)
		return line - 1, seq - 1 // the MAC catches the edited record itself
	}},
	{"one bad line in the middle, checkpoints kept", testMAC, func(t *testing.T, dir, last string, l [][]byte) (int, uint64) {
		seq := seqOf(t, l[2])
		l[2] = bytes.Replace(l[2], []byte(`"kind":"event"`), []byte(`"kind":"ev#nt"`), 1)
		writeLines(t, last, l)
		dropCheckpointsAbove(t, dir, seq)
		return 3, seq
	}},
	{"an incomplete line after the close record", testMAC, func(t *testing.T, dir, last string, l [][]byte) (int, uint64) {
		writeLines(t, last, append(l, []byte(`{"v":1,"seq":`)))
		return len(l) + 1, seqOf(t, l[len(l)-1]) + 1
	}},
}

// A forgery dressed up as a torn tail is refused at Open: only an incomplete
// final line of an open segment may be declared torn.
func TestOpenRefusesForgeryAsTornTail(t *testing.T) {
	k := newKeys(t, "kvh-test")
	for _, tc := range forgeries {
		t.Run(tc.name, func(t *testing.T) {
			dir := buildTrail(t, k, tc.mac, 300, 6<<10)
			last := lastSeg(t, dir)
			line, seq := tc.attack(t, dir, last, readLines(t, last))
			before := snapshot(t, dir)

			l, err := Open(dir, Options{Signer: k.signer, MACKey: tc.mac})
			if err == nil {
				l.Close()
				rep := verify(t, dir, k, tc.mac)
				t.Fatalf("Open accepted the forgery; Verify then says OK=%v %v, warnings %q", rep.OK, rep.Problem, rep.Warnings)
			}
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("Open: %v, want ErrTampered", err)
			}
			want := fmt.Sprintf("%s line %d: seq %d", filepath.Base(last), line, seq)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("Open: %v\nwant it to name %q", err, want)
			}
			t.Logf("refused: %v", err)
			if after := snapshot(t, dir); !equalSnapshots(before, after) {
				t.Fatalf("a refused Open changed the trail directory:\nbefore %v\nafter  %v", keysOf(before), keysOf(after))
			}
		})
	}
}

// A trail restarted by a writer without this rule carries a "torn" tail that
// is really complete, chained records: Verify fails it.
func TestVerifyRefusesLaunderedTornTail(t *testing.T) {
	k := newKeys(t, "kvh-test")
	for _, tc := range forgeries {
		t.Run(tc.name, func(t *testing.T) {
			dir := buildTrail(t, k, tc.mac, 300, 6<<10)
			last := lastSeg(t, dir)
			line, _ := tc.attack(t, dir, last, readLines(t, last))
			launder(t, dir, k.signer, tc.mac)
			rep := verify(t, dir, k, tc.mac)
			if rep.OK {
				t.Fatalf("laundered torn tail verified; warnings %q", rep.Warnings)
			}
			t.Logf("detected: %s", rep.Problem)
			if rep.Problem.Segment != filepath.Base(last) || rep.Problem.Line < line {
				t.Fatalf("problem %s, want %s at or after line %d", rep.Problem, filepath.Base(last), line)
			}
		})
	}
}

// launder does what recovery did before torn tails were restricted: the
// first line that does not verify and everything after it are declared torn
// by a new segment, and a checkpoint is signed over what came before.
func launder(t *testing.T, dir string, signer note.Signer, mac []byte) {
	t.Helper()
	segs, _, err := listDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	last := segs[len(segs)-1]
	data, err := os.ReadFile(last.path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := newChain(last.head.Size, last.head.Frontier)
	if err != nil {
		t.Fatal(err)
	}
	c.mac, c.macAlg, c.prev = newMAC(mac), last.head.MACAlg, last.first.prev
	valid := 0
	for off := 0; ; {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break
		}
		var p parsed
		line := data[off : off+nl]
		if parseLine(line, &p) != nil || c.accept(line, &p, false) != nil {
			break
		}
		off += nl + 1
		valid = off
	}
	sum := sha256.Sum256(data[valid:])
	head := SegmentBody{Origin: last.head.Origin, Segment: last.index + 1, PrevFile: last.name, Size: c.size(),
		Frontier: c.rng.Hashes(), MACAlg: last.head.MACAlg,
		Torn: &Torn{File: last.name, ValidLen: int64(valid), TornLen: int64(len(data) - valid), TornSHA256: sum[:]}}
	var out []byte
	for _, r := range []struct {
		kind string
		body any
	}{{KindSegment, head}, {KindClose, CloseBody{Segment: head.Segment, Reason: "shutdown"}}} {
		body, _ := json.Marshal(r.body)
		rec := Record{V: 1, Seq: c.size(), TS: tsNow(), Kind: r.kind, Prev: append([]byte(nil), c.prev[:]...), Body: body}
		line, _ := encodeLine(&rec, newMAC(mac))
		leaf := rfc6962.DefaultHasher.HashLeaf(line)
		c.rng.Append(leaf, nil)
		copy(c.prev[:], leaf)
		out = append(append(out, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, segmentName(head.Segment)), out, 0o600); err != nil {
		t.Fatal(err)
	}
	cp := log.Checkpoint{Origin: head.Origin, Size: c.size(), Hash: c.root()}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, signer)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := json.Marshal(checkpointLine{Size: cp.Size, Note: string(signed)})
	f, err := os.OpenFile(filepath.Join(dir, CheckpointFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(append(line, '\n'))
	f.Close()
}

// snapshot maps every file under dir to its contents.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalSnapshots(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func keysOf(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s(%d)", k, len(v)))
	}
	return out
}

// With AcceptTampered, Open keeps every file untouched in an evidence
// directory, starts a new log whose tamper_detected record names the file,
// line and seq, and both can be verified: the new log passes, the evidence
// fails where the tampering is.
func TestAcceptTamperedKeepsEvidence(t *testing.T) {
	k := newKeys(t, "kvh-test")
	cases := append([]forgery{}, forgeries...)
	cases = append(cases, forgery{"deleted newest segment", testMAC, func(t *testing.T, dir, last string, l [][]byte) (int, uint64) {
		os.Remove(last)
		return 0, seqOf(t, l[0])
	}})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := buildTrail(t, k, tc.mac, 300, 6<<10)
			last := lastSeg(t, dir)
			line, seq := tc.attack(t, dir, last, readLines(t, last))
			last = lastSeg(t, dir)
			before := snapshot(t, dir)
			delete(before, LockFile)

			l, err := Open(dir, Options{Signer: k.signer, MACKey: tc.mac, AcceptTampered: true})
			if err != nil {
				t.Fatal(err)
			}
			tb := l.Stats().Tamper
			if tb == nil || tb.File != filepath.Base(last) || tb.Line != line || tb.Seq != seq || tb.Found == "" {
				t.Fatalf("Stats().Tamper = %+v, want %s line %d seq %d", tb, filepath.Base(last), line, seq)
			}
			if _, err := l.Append(map[string]string{"ev": "after"}); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			// The evidence: every file, byte for byte, and nothing left behind.
			evidence := filepath.Join(dir, tb.Evidence)
			if got := snapshot(t, evidence); !equalSnapshots(before, got) {
				t.Fatalf("evidence differs from the trail as found:\nfound    %v\nevidence %v", keysOf(before), keysOf(got))
			}
			if len(tb.Files) != len(before) {
				t.Errorf("tamper_detected lists %d files, %d were moved", len(tb.Files), len(before))
			}

			// The new log verifies, and says what happened.
			rep := verify(t, dir, k, tc.mac)
			if !rep.OK {
				t.Fatalf("new log: %v", rep.Problem)
			}
			if len(rep.Tamper) != 1 || rep.Tamper[0].Seq != seq || !strings.Contains(strings.Join(rep.Warnings, "\n"), tb.Evidence) {
				t.Fatalf("report does not carry the tamper_detected record: %+v %q", rep.Tamper, rep.Warnings)
			}
			if rep.Records != 4 { // genesis, tamper_detected, the event, close
				t.Errorf("new log holds %d records", rep.Records)
			}
			// The evidence fails verification at the tampering.
			ev := verify(t, evidence, k, tc.mac)
			if ev.OK {
				t.Fatalf("evidence verifies: %+v", ev)
			}
			t.Logf("evidence: %s", ev.Problem)
			if ev.Problem.Segment != tb.File && !strings.Contains(ev.Problem.String(), "TRUNCATION") {
				t.Fatalf("evidence fails elsewhere: %s", ev.Problem)
			}
			// Changing the evidence afterwards is caught through the new log.
			victim := filepath.Join(evidence, CheckpointFile)
			editLines(t, victim, func(x [][]byte) [][]byte { return x[:len(x)-1] })
			if rep := verify(t, dir, k, tc.mac); rep.OK || !strings.Contains(rep.Problem.String(), "changed since it was recorded") {
				t.Fatalf("altered evidence: %+v", rep.Problem)
			}
		})
	}
}

// Append-only files (FS_APPEND_FL, which forbids rename) are still moved
// aside, and stay append-only as evidence.
func TestAcceptTamperedMovesAppendOnlyFiles(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	last := lastSeg(t, dir)
	forgeries[1].attack(t, dir, last, readLines(t, last))
	names := []string{filepath.Base(last), CheckpointFile}
	for _, n := range names {
		setAppendOnlyPath(t, filepath.Join(dir, n))
	}
	if !appendOnly(last) {
		t.Skipf("append-only attribute not available here (euid %d)", os.Geteuid())
	}
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC, AcceptTampered: true, AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	ev := filepath.Join(dir, l.Stats().Tamper.Evidence)
	l.Close()
	t.Cleanup(func() {
		for _, n := range names {
			clearAppendOnlyPath(filepath.Join(ev, n))
		}
		clearAppendOnlyPath(filepath.Join(dir, segmentName(0)))
		clearAppendOnlyPath(filepath.Join(dir, CheckpointFile))
	})
	for _, n := range names {
		if !appendOnly(filepath.Join(ev, n)) {
			t.Errorf("evidence %s lost its append-only attribute", n)
		}
	}
	if rep := verify(t, dir, k, testMAC); !rep.OK {
		t.Fatal(rep.Problem)
	}
}

func setAppendOnlyPath(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS); err == nil {
		unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsAppendFL))
	}
	t.Cleanup(func() { clearAppendOnlyPath(path) })
}
