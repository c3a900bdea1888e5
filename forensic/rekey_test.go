package forensic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

var testMAC2 = []byte("test-mac-key-2")

func appendEvents(t testing.TB, l *Log, n int, tag string) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.Append(map[string]any{"ev": "free", "i": i, "tenant": tag}); err != nil {
			t.Fatal(err)
		}
	}
}

// rotatedTrail writes 200 events under k0/mac0, rotates to k1/mac1 and
// writes 200 more, then reopens with the same rotation options (a restarted
// agent) and writes 10. It returns the dir and the rekey record's seq.
func rotatedTrail(t *testing.T, k0, k1 keys, mac0, mac1 []byte) (string, uint64) {
	t.Helper()
	dir := buildTrail(t, k0, mac0, 200, 6<<10)
	opts := Options{Signer: k1.signer, PreviousSigner: k0.signer, MACKey: mac1, PreviousMACKey: mac0, MaxSegmentBytes: 6 << 10, RekeyReason: "quarterly rotation"}
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if st.Rekeyed == nil || st.Rekeyed.Reason != "quarterly rotation" {
		t.Fatalf("Open did not rotate: %+v", st)
	}
	rekeySeq := st.Records - 1
	appendEvents(t, l, 200, "b")
	must(t, l.Close())
	l, err = Open(dir, opts)
	if err != nil {
		t.Fatalf("reopening a rotated trail with the same options: %v", err)
	}
	if st := l.Stats(); st.Rekeyed != nil {
		t.Fatalf("a second Open rotated again: %+v", st.Rekeyed)
	}
	appendEvents(t, l, 10, "c")
	must(t, l.Close())
	return dir, rekeySeq
}

func TestRekeyMidTrailVerifies(t *testing.T) {
	k0, k1, k2 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new"), newKeys(t, "kvh-other")
	dir, rekeySeq := rotatedTrail(t, k0, k1, testMAC, testMAC2)
	id0, id1 := vkeyID(k0.verifier), vkeyID(k1.verifier)

	// The auditor trusts the original key and holds both MAC keys.
	rep, err := Verify(dir, VerifyOptions{Verifier: k0.verifier, MACKeys: [][]byte{testMAC, testMAC2}})
	must(t, err)
	if !rep.OK || rep.MAC != "verified" {
		t.Fatalf("rotated trail from the old key: %v %s", rep.Problem, rep.MAC)
	}
	if len(rep.Keys) != 2 {
		t.Fatalf("key history %+v", rep.Keys)
	}
	e0, e1 := rep.Keys[0], rep.Keys[1]
	if e0.Key != id0 || e0.FirstSeq != 0 || e0.LastSeq != rekeySeq || e0.RekeySeq == nil || *e0.RekeySeq != rekeySeq || !e0.Trusted || e0.MACKeyID != KeyID(testMAC) {
		t.Errorf("epoch 0: %+v", e0)
	}
	if e1.Key != id1 || e1.FirstSeq != rekeySeq+1 || e1.LastSeq != rep.FirstSeq+rep.Records-1 || e1.Trusted || e1.MACKeyID != KeyID(testMAC2) || e1.VKey == "" {
		t.Errorf("epoch 1: %+v", e1)
	}
	// Exactly one rekey record: the restart with the same options wrote none.
	n := 0
	for _, s := range mustGlob(t, dir, "seg-*.jsonl") {
		n += bytes.Count(must1(os.ReadFile(s)), []byte(`"kind":"rekey"`))
	}
	if n != 1 {
		t.Fatalf("%d rekey records", n)
	}

	// From the new key alone: its cosignature on the seal vouches for the
	// old epoch, whose MACs are not checked without the old MAC key.
	rep, err = Verify(dir, VerifyOptions{Verifier: k1.verifier, MACKey: testMAC2})
	must(t, err)
	if !rep.OK || !strings.HasPrefix(rep.MAC, "verified except seq 0..") {
		t.Fatalf("rotated trail from the new key: %v %q", rep.Problem, rep.MAC)
	}
	// A keyring of both keys.
	rep, err = Verify(dir, VerifyOptions{Keyring: []note.Verifier{k0.verifier, k1.verifier}, MACKeys: [][]byte{testMAC, testMAC2}})
	must(t, err)
	if !rep.OK || !rep.Keys[0].Trusted || !rep.Keys[1].Trusted {
		t.Fatalf("keyring: %v %+v", rep.Problem, rep.Keys)
	}
	// A key the trail never used proves nothing.
	rep, err = Verify(dir, VerifyOptions{Verifier: k2.verifier, MACKeys: [][]byte{testMAC, testMAC2}})
	must(t, err)
	if rep.OK || !strings.Contains(rep.Problem.Reason, "does not verify with the given key") {
		t.Fatalf("unrelated key: %+v", rep.Problem)
	}
	// A MAC key the trail never used is a wrong key, not "not checked".
	rep, err = Verify(dir, VerifyOptions{Verifier: k0.verifier, MACKey: []byte("some other key")})
	must(t, err)
	if rep.OK || !strings.Contains(rep.Problem.Reason, "match none of the MAC keys") {
		t.Fatalf("unrelated MAC key: %+v", rep.Problem)
	}

	// Reopening with keys the trail does not know is still refused, and
	// so is the old key once the trail has moved on.
	for _, o := range []Options{
		{Signer: k2.signer, MACKey: testMAC2},
		{Signer: k2.signer, PreviousSigner: k0.signer, MACKey: testMAC2},
		{Signer: k0.signer, MACKey: testMAC},
	} {
		if l, err := Open(dir, o); err == nil {
			l.Close()
			t.Fatalf("reopened with %s (previous %v)", o.Signer.Name(), o.PreviousSigner)
		} else if !strings.Contains(err.Error(), id1) {
			t.Errorf("refusal does not name the trail's key %s: %v", id1, err)
		}
	}
}

// One MAC key replaces another under the same signing key; each epoch's
// MACs are checked with its own key.
func TestRekeyMACOnly(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 50, 0)
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC2, PreviousMACKey: testMAC})
	must(t, err)
	if l.Stats().Rekeyed == nil {
		t.Fatal("no rekey for a new MAC key")
	}
	rekeySeq := l.Stats().Records - 1
	appendEvents(t, l, 50, "b")
	must(t, l.Close())
	rep, err := Verify(dir, VerifyOptions{Verifier: k.verifier, MACKeys: [][]byte{testMAC, testMAC2}})
	must(t, err)
	if !rep.OK || rep.MAC != "verified" || len(rep.Keys) != 2 || rep.Keys[0].Key != rep.Keys[1].Key || rep.Keys[1].MACKeyID != KeyID(testMAC2) {
		t.Fatalf("%v %s %+v", rep.Problem, rep.MAC, rep.Keys)
	}
	// Only the old MAC key: the new epoch is reported unchecked.
	rep, err = Verify(dir, VerifyOptions{Verifier: k.verifier, MACKey: testMAC})
	must(t, err)
	if !rep.OK || !strings.Contains(rep.MAC, "MAC key "+KeyID(testMAC2)+" not given") {
		t.Fatalf("%v %s", rep.Problem, rep.MAC)
	}
	// The new key is really used: a record after the rekey whose MAC was
	// made with the old key fails with the new one.
	last := lastSeg(t, dir)
	editLines(t, last, func(x [][]byte) [][]byte {
		for i, line := range x {
			var p parsed
			if parseLine(bytes.TrimSuffix(line, []byte("\n")), &p) == nil && p.seq == rekeySeq+5 {
				r := bytes.TrimSuffix(line, []byte("\n"))
				x[i] = append(appendMAC(append(append([]byte(nil), r[:p.macStart]...), '}'), newMAC(testMAC)), '\n')
			}
		}
		return x
	})
	rep, err = Verify(dir, VerifyOptions{Verifier: k.verifier, MACKeys: [][]byte{testMAC, testMAC2}})
	must(t, err)
	if rep.OK || rep.Problem.Reason != "MAC invalid" || *rep.Problem.Seq != rekeySeq+5 {
		t.Fatalf("old-key MAC after the rekey: %+v", rep.Problem)
	}
}

// forgeAppend is an attacker who holds the MAC key but not the trail's
// signing key: it drops the last segment's close record (and the
// checkpoints that cover it), appends records that chain correctly, and
// signs a checkpoint over them with whatever keys it has.
func forgeAppend(t *testing.T, dir string, mac []byte, recs []Record, signers ...note.Signer) uint64 {
	t.Helper()
	segs, _, err := listDir(dir)
	must(t, err)
	s := segs[len(segs)-1]
	lines := readLines(t, s.path)
	lines = lines[:len(lines)-1] // the close record
	c, err := newChain(s.head.Size, s.head.Frontier)
	must(t, err)
	c.prev = s.first.prev
	for i, line := range lines {
		var p parsed
		must(t, parseLine(bytes.TrimSuffix(line, []byte("\n")), &p))
		must(t, c.accept(bytes.TrimSuffix(line, []byte("\n")), &p, i == 0))
	}
	dropCheckpointsAbove(t, dir, c.size())
	first := c.size()
	for _, r := range recs {
		r.V, r.Seq, r.TS, r.Prev = 1, c.size(), tsNow(), append([]byte(nil), c.prev[:]...)
		line, err := encodeLine(&r, newMAC(mac))
		must(t, err)
		leaf := rfc6962.DefaultHasher.HashLeaf(line)
		c.rng.Append(leaf, nil)
		copy(c.prev[:], leaf)
		lines = append(lines, append(line, '\n'))
	}
	writeLines(t, s.path, lines)
	cp := log.Checkpoint{Origin: s.head.Origin, Size: c.size(), Hash: c.root()}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, signers...)
	must(t, err)
	cl, _ := json.Marshal(checkpointLine{Size: c.size(), Note: string(signed)})
	f, err := os.OpenFile(filepath.Join(dir, CheckpointFile), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	f.Write(append(cl, '\n'))
	must(t, f.Close())
	return first
}

func rekeyRecord(t *testing.T, from, to keys, macFrom, macTo []byte) Record {
	t.Helper()
	b := RekeyBody{OldKey: must1(VerifierKeyOf(from.signer)), NewKey: must1(VerifierKeyOf(to.signer)), OldMACKeyID: KeyID(macFrom), NewMACKeyID: KeyID(macTo)}
	body, _ := json.Marshal(b)
	return Record{Kind: KindRekey, Body: body}
}

func TestRekeyForgedRefused(t *testing.T) {
	k0, k1, att := newKeys(t, "kvh-old"), newKeys(t, "kvh-new"), newKeys(t, "kvh-attacker")
	ev := Record{Kind: KindEvent, Body: json.RawMessage(`{"ev":"free","forged":true}`)}
	for _, tc := range []struct {
		name  string
		make  func(t *testing.T) string
		want  string
		noMAC bool
	}{
		{"rekey naming the trail's key, sealed by the attacker's", func(t *testing.T) string {
			dir := buildTrail(t, k0, testMAC, 50, 0)
			forgeAppend(t, dir, testMAC, []Record{rekeyRecord(t, k0, att, testMAC, testMAC), ev}, att.signer)
			return dir
		}, "not sealed by the key it retires", false},
		{"rekey from the attacker's own key", func(t *testing.T) string {
			dir := buildTrail(t, k0, testMAC, 50, 0)
			forgeAppend(t, dir, testMAC, []Record{rekeyRecord(t, att, att, testMAC, testMAC), ev}, att.signer)
			return dir
		}, "sealed by no key the auditor trusts", false},
		{"second rekey from a key that is not the current one", func(t *testing.T) string {
			dir, _ := rotatedTrail(t, k0, k1, testMAC, testMAC2)
			forgeAppend(t, dir, testMAC2, []Record{rekeyRecord(t, k0, att, testMAC2, testMAC2), ev}, k0.signer, att.signer)
			return dir
		}, "but the current key is", false},
		{"old key stolen after the rotation extends the trail", func(t *testing.T) string {
			dir, _ := rotatedTrail(t, k0, k1, testMAC, testMAC2)
			forgeAppend(t, dir, testMAC2, []Record{ev}, k0.signer)
			return dir
		}, "retired by the rekey record", false},
		{"new key stolen later rewrites the old key's epoch", func(t *testing.T) string {
			dir, rekeySeq := rotatedTrail(t, k0, k1, nil, nil)
			rewriteChain(t, dir, func(seq uint64, body []byte) []byte {
				if seq == rekeySeq-10 {
					return []byte(`{"ev":"free","i":0,"tenant":"rewritten"}`)
				}
				return body
			})
			resignAll(t, dir, k1.signer)
			return dir
		}, "not sealed by the key it retires", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.make(t)
			o := VerifyOptions{Verifier: k0.verifier, MACKeys: [][]byte{testMAC, testMAC2}}
			if tc.noMAC {
				o.MACKeys = nil
			}
			rep, err := Verify(dir, o)
			must(t, err)
			if rep.OK || !strings.Contains(rep.Problem.String(), tc.want) {
				t.Fatalf("want %q, got OK=%v %v", tc.want, rep.OK, rep.Problem)
			}
		})
	}
}

// Truncation right after a rekey: everything after the rekey record (and
// the checkpoints covering it) is gone, so the old key alone sees a trail
// that ends cleanly in its own epoch. A checkpoint kept off the node, signed
// by the new key, catches it.
func TestRekeyTruncationCaught(t *testing.T) {
	k0, k1 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new")
	dir, rekeySeq := rotatedTrail(t, k0, k1, testMAC, testMAC2)
	ck := readLines(t, filepath.Join(dir, CheckpointFile))
	external := must1(ParseExternalCheckpoint(ck[len(ck)-1]))
	for _, cut := range []struct {
		name string
		keep uint64 // records kept
	}{{"after the rekey record", rekeySeq + 1}, {"before the rekey record", rekeySeq - 1}} {
		t.Run(cut.name, func(t *testing.T) {
			d := t.TempDir()
			for _, f := range mustGlob(t, dir, "*.jsonl") {
				must(t, os.WriteFile(filepath.Join(d, filepath.Base(f)), must1(os.ReadFile(f)), 0o600))
			}
			truncateTo(t, d, cut.keep)
			opts := VerifyOptions{Verifier: k0.verifier, MACKeys: [][]byte{testMAC, testMAC2}}
			if rep := must1(Verify(d, opts)); !rep.OK {
				t.Fatalf("local-only truncation should pass locally (the documented gap): %v", rep.Problem)
			}
			opts.External = [][]byte{external}
			rep := must1(Verify(d, opts))
			if rep.OK {
				t.Fatal("the new key's off-node checkpoint did not catch the truncation")
			}
			t.Logf("caught: %v", rep.Problem)
			// With both keys trusted the verdict names the truncation itself.
			opts.Verifier, opts.Keyring = nil, []note.Verifier{k0.verifier, k1.verifier}
			rep = must1(Verify(d, opts))
			if rep.OK || !strings.Contains(rep.Problem.String(), "TRUNCATION: the external checkpoint") {
				t.Fatalf("keyring: %+v", rep.Problem)
			}
		})
	}
}

// truncateTo keeps the first n records: later segments go, the segment
// holding record n-1 is cut after it, and checkpoints above n are dropped.
func truncateTo(t *testing.T, dir string, n uint64) {
	t.Helper()
	segs, _, err := listDir(dir)
	must(t, err)
	for _, s := range segs {
		switch {
		case s.head.Size >= n:
			must(t, os.Remove(s.path))
		default:
			editLines(t, s.path, func(x [][]byte) [][]byte {
				var keep [][]byte
				for _, l := range x {
					if seqOf(t, l) < n {
						keep = append(keep, l)
					}
				}
				return keep
			})
		}
	}
	dropCheckpointsAbove(t, dir, n)
}

// Pruning the segments that held the rekey record: the trail still proves
// from the new key, from a keyring, and from the old key alone (the prune
// record carries the rekey record and its inclusion in the old key's seal).
func TestRekeyPruneAcross(t *testing.T) {
	k0, k1 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new")
	dir, rekeySeq := rotatedTrail(t, k0, k1, testMAC, testMAC2)
	segs, _, _ := listDir(dir)
	pr, err := Prune(dir, PruneOptions{Signer: k1.signer, Verifier: k1.verifier, MACKey: testMAC2, RetentionDays: -1, MaxRotated: 2})
	must(t, err)
	if !pr.OK {
		t.Fatalf("prune: %+v %v %v", pr.Refused, pr.Before.Problem, pr.After.Problem)
	}
	if pr.After.FirstSeq <= rekeySeq || len(pr.Removed) != len(segs)-3 {
		t.Fatalf("the prune did not remove the rekey record (first seq %d, rekey %d)", pr.After.FirstSeq, rekeySeq)
	}
	for _, o := range []VerifyOptions{
		{Verifier: k1.verifier, MACKey: testMAC2},
		{Keyring: []note.Verifier{k0.verifier, k1.verifier}, MACKeys: [][]byte{testMAC, testMAC2}},
		{Verifier: k0.verifier, MACKeys: [][]byte{testMAC, testMAC2}},
	} {
		rep := must1(Verify(dir, o))
		if !rep.OK || rep.MAC != "verified" {
			t.Fatalf("after a prune across the rekey (trusting %v): %v %s", o.Verifier, rep.Problem, rep.MAC)
		}
		if len(rep.Keys) != 2 || !rep.Keys[0].Pruned || rep.Keys[1].Key != vkeyID(k1.verifier) {
			t.Fatalf("key history: %+v", rep.Keys)
		}
	}
}

// A crash after the rekey record was written but before it was sealed: the
// next Open seals it (old key signs, new key cosigns) instead of writing a
// second one.
func TestRekeyCrashBeforeSeal(t *testing.T) {
	k0, k1 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new")
	dir := buildTrail(t, k0, testMAC, 20, 0)
	opts := Options{Signer: k1.signer, PreviousSigner: k0.signer, MACKey: testMAC2, PreviousMACKey: testMAC}
	l, err := Open(dir, opts)
	must(t, err)
	rekeySeq := l.Stats().Records - 1
	crashWriter(t, l, nil)
	// The seal was written with the rekey record; take it away.
	dropCheckpointsAbove(t, dir, rekeySeq)
	l, err = Open(dir, opts)
	must(t, err)
	if st := l.Stats(); st.Rekeyed == nil || st.Rekeyed.NewKey != "" {
		t.Fatalf("reopen after a crash before the seal: %+v", st.Rekeyed)
	}
	appendEvents(t, l, 5, "b")
	must(t, l.Close())
	rep := must1(Verify(dir, VerifyOptions{Verifier: k0.verifier, MACKeys: [][]byte{testMAC, testMAC2}}))
	if !rep.OK || len(rep.Keys) != 2 || rep.Keys[0].SealSize <= rekeySeq+1 {
		t.Fatalf("%v %+v", rep.Problem, rep.Keys)
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// resignAll replaces every checkpoint with one, over the whole trail as it
// now is, signed by s.
func resignAll(t *testing.T, dir string, s note.Signer) {
	t.Helper()
	segs, _, err := listDir(dir)
	must(t, err)
	c, _ := newChain(0, nil)
	for _, sf := range segs {
		for _, line := range readLines(t, sf.path) {
			c.rng.Append(rfc6962.DefaultHasher.HashLeaf(bytes.TrimSuffix(line, []byte("\n"))), nil)
		}
	}
	cp := log.Checkpoint{Origin: segs[0].head.Origin, Size: c.size(), Hash: c.root()}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, s)
	must(t, err)
	cl, _ := json.Marshal(checkpointLine{Size: c.size(), Note: string(signed)})
	must(t, os.WriteFile(filepath.Join(dir, CheckpointFile), append(cl, '\n'), 0o600))
}

// BenchmarkVerifyRekeyed verifies a 100k-record trail whose keys rotated
// half way (both MAC keys given, the old one first) and, in the same run,
// the same trail written under one key: rekeyed/plain is what a rotation
// costs the verifier.
func BenchmarkVerifyRekeyed(b *testing.B) {
	k0, k1 := newKeys(b, "kvh-old"), newKeys(b, "kvh-new")
	const N = 100_000
	write := func(dir string, o Options, n int) {
		l, err := Open(dir, o)
		if err != nil {
			b.Fatal(err)
		}
		body := []byte(`{"ev":"free","tenant":"tenant-a","request":"req-000123","bytes":2097152,"coverage_pct":100,"method":"memset+full"}`)
		for i := 0; i < n/500; i++ {
			for j := 0; j < 499; j++ {
				l.AppendAsync(body)
			}
			l.Append(body)
		}
		l.Close()
	}
	plain, rekeyed := b.TempDir(), b.TempDir()
	write(plain, Options{Signer: k0.signer, MACKey: testMAC, MaxSegmentBytes: 16 << 20}, N)
	write(rekeyed, Options{Signer: k0.signer, MACKey: testMAC, MaxSegmentBytes: 16 << 20}, N/2)
	write(rekeyed, Options{Signer: k1.signer, PreviousSigner: k0.signer, MACKey: testMAC2, PreviousMACKey: testMAC, MaxSegmentBytes: 16 << 20}, N/2)
	// CPU time (all threads) as well as wall time: on a shared machine the
	// CPU ratio is the steadier one.
	cpu := func() time.Duration {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var tp, tr, cp, cr time.Duration
	for b.Loop() {
		for _, x := range []struct {
			dir  string
			t, c *time.Duration
			o    VerifyOptions
		}{
			{plain, &tp, &cp, VerifyOptions{Verifier: k0.verifier, MACKey: testMAC}},
			{rekeyed, &tr, &cr, VerifyOptions{Verifier: k0.verifier, MACKey: testMAC, MACKeys: [][]byte{testMAC2}}},
		} {
			start, c0 := time.Now(), cpu()
			rep, err := Verify(x.dir, x.o)
			*x.t += time.Since(start)
			*x.c += cpu() - c0
			if err != nil || !rep.OK {
				b.Fatalf("%v %+v", err, rep.Problem)
			}
		}
	}
	b.ReportMetric(tr.Seconds()/tp.Seconds(), "rekeyed/plain")
	b.ReportMetric(cr.Seconds()/cp.Seconds(), "cpu-rekeyed/plain")
	b.ReportMetric(float64(N)*float64(b.N)/tr.Seconds(), "rekeyed-records/s")
}

// Pruning a trail whose MAC key rotated, given every MAC key in either
// order (and the keyring instead of one key): each epoch is checked before
// and after, and the prune record is MAC'd with the current key. Given only
// the old MAC key, prune refuses and removes nothing.
func TestRekeyPruneWithEveryMACKey(t *testing.T) {
	k0, k1 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new")
	for i, o := range []PruneOptions{
		{Verifier: k0.verifier, MACKey: testMAC, MACKeys: [][]byte{testMAC2}},
		{Keyring: []note.Verifier{k0.verifier, k1.verifier}, MACKey: testMAC2, MACKeys: [][]byte{testMAC}},
	} {
		dir, _ := rotatedTrail(t, k0, k1, testMAC, testMAC2)
		o.Signer, o.RetentionDays, o.MaxRotated = k1.signer, -1, 2
		pr, err := Prune(dir, o)
		must(t, err)
		if !pr.OK || len(pr.Removed) == 0 {
			t.Fatalf("case %d: prune: %q %v %v", i, pr.Refused, pr.Before.Problem, pr.After)
		}
		if pr.Before.MAC != "verified" || pr.After.MAC != "verified" {
			t.Fatalf("case %d: MACs before %q, after %q: every epoch should be checked", i, pr.Before.MAC, pr.After.MAC)
		}
		rep := must1(Verify(dir, VerifyOptions{Verifier: k1.verifier, MACKey: testMAC2}))
		if !rep.OK || rep.MAC != "verified" {
			t.Fatalf("case %d: after the prune, with the current keys: %v %s", i, rep.Problem, rep.MAC)
		}
	}
	dir, _ := rotatedTrail(t, k0, k1, testMAC, testMAC2)
	segs, _, _ := listDir(dir)
	pr, err := Prune(dir, PruneOptions{Signer: k1.signer, Verifier: k0.verifier, MACKey: testMAC, RetentionDays: -1, MaxRotated: 0})
	must(t, err)
	if pr.OK || !strings.Contains(pr.Refused, "current epoch") || len(pr.Removed) != 0 {
		t.Fatalf("prune with only the old MAC key: ok %v refused %q removed %v", pr.OK, pr.Refused, pr.Removed)
	}
	if after, _, _ := listDir(dir); len(after) != len(segs) {
		t.Fatalf("a refused prune removed files: %d -> %d", len(segs), len(after))
	}
}

// A second prune after the rekey record was pruned carries it again, from
// the proof the first prune record holds: verifying that proof must not
// change it (compact.Range merges into the frontier it is given), or the
// second prune record carries a proof that no longer matches its seal and
// the trail, its segments already removed, no longer verifies.
func TestRekeyPruneTwiceCarriesTheProofIntact(t *testing.T) {
	k0, k1 := newKeys(t, "kvh-old"), newKeys(t, "kvh-new")
	dir, rekeySeq := rotatedTrail(t, k0, k1, testMAC, testMAC2)
	if rekeySeq&1 == 0 {
		t.Fatalf("rekey at seq %d: the frontier merges on Append only for an odd seq", rekeySeq)
	}
	for _, max := range []int{3, 0} {
		pr, err := Prune(dir, PruneOptions{Signer: k1.signer, Verifier: k1.verifier, MACKey: testMAC2, RetentionDays: -1, MaxRotated: max})
		must(t, err)
		if !pr.OK {
			t.Fatalf("prune --max-rotated %d (removed %v): %q %v", max, pr.Removed, pr.Refused, pr.After.Problem)
		}
	}
	rep := must1(Verify(dir, VerifyOptions{Verifier: k0.verifier, MACKey: testMAC, MACKeys: [][]byte{testMAC2}}))
	if !rep.OK {
		t.Fatal(rep.Problem)
	}
}

// A Report holds no MAC secret: a caller that logs it (%+v prints
// unexported fields) must not print the key it was verified with.
func TestReportHoldsNoMACKey(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 20, 0)
	rep := must1(Verify(dir, VerifyOptions{Verifier: k.verifier, MACKey: testMAC}))
	if !rep.OK || rep.MAC != "verified" {
		t.Fatalf("verify: %v %s", rep.Problem, rep.MAC)
	}
	if s := fmt.Sprintf("%+v", *rep); strings.Contains(s, fmt.Sprint(testMAC)) || strings.Contains(s, string(testMAC)) {
		t.Fatalf("the report prints the MAC key: %s", s)
	}
}
