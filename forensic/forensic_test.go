package forensic

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"golang.org/x/mod/sumdb/note"
)

type keys struct {
	signer   note.Signer
	verifier note.Verifier
}

func newKeys(t testing.TB, name string) keys {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return keys{s, v}
}

var testMAC = []byte("test-mac-key")

// buildTrail writes segs segments of about perSeg events each and closes the trail.
func buildTrail(t testing.TB, k keys, mac []byte, events int, maxSeg int64) string {
	t.Helper()
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, MACKey: mac, MaxSegmentBytes: maxSeg, Origin: "kvh/test/0001"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < events; i++ {
		if _, err := l.Append(map[string]any{"ev": "free", "i": i, "tenant": "a"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func verify(t testing.TB, dir string, k keys, mac []byte, ext ...[]byte) *Report {
	t.Helper()
	rep, err := Verify(dir, VerifyOptions{Verifier: k.verifier, MACKey: mac, External: ext})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestRoundTrip(t *testing.T) {
	k := newKeys(t, "kvh-test")
	for _, mac := range [][]byte{nil, testMAC} {
		dir := buildTrail(t, k, mac, 500, 8<<10)
		rep := verify(t, dir, k, mac)
		if !rep.OK {
			t.Fatalf("untouched trail: %+v", rep.Problem)
		}
		if rep.Records != 500+uint64(rep.Segments)*2 {
			t.Errorf("records %d with %d segments", rep.Records, rep.Segments)
		}
		if rep.Segments < 3 {
			t.Errorf("expected rotation, got %d segments", rep.Segments)
		}
		if rep.Unsealed != 0 || rep.LatestCheckpoint != rep.Records {
			t.Errorf("unsealed %d latest %d records %d", rep.Unsealed, rep.LatestCheckpoint, rep.Records)
		}
		for _, e := range mustGlob(t, dir, "*") {
			st, _ := os.Stat(e)
			if st.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s has mode %v", e, st.Mode())
			}
		}
	}
}

func TestReopenContinues(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 10, 0)
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := l.Append(map[string]int{"x": 1})
	if err != nil {
		t.Fatal(err)
	}
	if seq != 13 { // 0 genesis, 1..10 events, 11 close, 12 new segment
		t.Errorf("seq %d after reopen", seq)
	}
	l.Close()
	if rep := verify(t, dir, k, testMAC); !rep.OK {
		t.Fatal(rep.Problem)
	}
	if _, err := Open(dir, Options{Signer: k.signer}); err == nil || !strings.Contains(err.Error(), "HMAC key is required") {
		t.Errorf("reopen without the declared MAC key: %v", err)
	}
}

func TestSecondWriterRefused(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Open(dir, Options{Signer: k.signer})
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second writer: %v", err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC, MaxSegmentBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	const G, N = 300, 40
	seqs := make([][]uint64, G)
	var wg sync.WaitGroup
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < N; i++ {
				s, err := l.Append(map[string]int{"g": g, "i": i})
				if err != nil {
					t.Error(err)
					return
				}
				seqs[g] = append(seqs[g], s)
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for g := range seqs {
		for i := 1; i < len(seqs[g]); i++ {
			if seqs[g][i] <= seqs[g][i-1] {
				t.Fatalf("goroutine %d: seq went %d -> %d", g, seqs[g][i-1], seqs[g][i])
			}
		}
		for _, s := range seqs[g] {
			if seen[s] {
				t.Fatalf("seq %d acknowledged twice", s)
			}
			seen[s] = true
		}
	}
	rep := verify(t, dir, k, testMAC)
	if !rep.OK {
		t.Fatal(rep.Problem)
	}
	// Every acknowledged record is in the trail with its body.
	got := readEvents(t, dir)
	for g := range seqs {
		for i, s := range seqs[g] {
			if want := fmt.Sprintf(`{"g":%d,"i":%d}`, g, i); got[s] != want {
				t.Fatalf("seq %d: body %q, want %q", s, got[s], want)
			}
		}
	}
}

// readEvents maps seq to event body for every event in the trail.
func readEvents(t testing.TB, dir string) map[uint64]string {
	t.Helper()
	out := map[uint64]string{}
	for _, f := range mustGlob(t, dir, "seg-*.jsonl") {
		data, _ := os.ReadFile(f)
		for _, line := range bytes.Split(data, []byte("\n")) {
			var p parsed
			if parseLine(line, &p) == nil && string(p.kind) == KindEvent {
				out[p.seq] = string(p.body)
			}
		}
	}
	return out
}

func mustGlob(t testing.TB, dir, pat string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, pat))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The writer assembles lines by hand for speed; they must be byte for byte
// what one json.Marshal of the Record struct gives.
func TestAppendRecordIsMarshal(t *testing.T) {
	bodies := []string{
		`{}`, `{"a":1}`, ` { "a" : [1, 2, {"b": "<&>"}] , "c":"é\u2028"} `, `{"x":"\u0000\"\\"}`,
		`{"n":1e300,"m":-0.0,"t":true,"f":null}`,
	}
	prev := make([]byte, 32)
	for i := range prev {
		prev[i] = byte(i * 7)
	}
	for i, b := range bodies {
		cb, err := canonicalBody([]byte(b))
		if err != nil {
			t.Fatal(err)
		}
		got := appendRecord(nil, uint64(i*1000), "2026-11-27T05:00:00.123456789Z", KindEvent, prev, cb)
		want, _ := json.Marshal(Record{V: 1, Seq: uint64(i * 1000), TS: "2026-11-27T05:00:00.123456789Z", Kind: KindEvent, Prev: prev, Body: json.RawMessage(b)})
		if !bytes.Equal(got, want) {
			t.Errorf("body %q:\n got %s\nwant %s", b, got, want)
		}
	}
}

func TestIdleTick(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, TickInterval: 30 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the ticker checks at most once a second
	l.Close()
	data, _ := os.ReadFile(segPath(dir, 0))
	if !bytes.Contains(data, []byte(`"kind":"tick"`)) {
		t.Fatalf("no tick record after an idle period:\n%s", data)
	}
	if rep := verify(t, dir, k, nil); !rep.OK || rep.Unsealed != 0 {
		t.Fatalf("%+v", rep)
	}
}

func TestAppendOnlyFlag(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(map[string]int{"a": 1})
	l.Close()
	path := segPath(dir, 0)
	t.Cleanup(func() { clearAppendOnlyIn(dir, segmentName(0)); clearAppendOnlyIn(dir, CheckpointFile) })
	f, _ := os.Open(path)
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	f.Close()
	if err != nil || os.Geteuid() != 0 {
		t.Skipf("append-only attribute not available here (euid %d, %v): the writer skips it quietly", os.Geteuid(), err)
	}
	if flags&fsAppendFL == 0 {
		t.Skip("filesystem does not keep FS_APPEND_FL (e.g. tmpfs)")
	}
	if err := os.Truncate(path, 10); err == nil {
		t.Fatal("truncate of an append-only segment succeeded")
	}
}

func TestAppendAsyncThenSync(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 1000; i++ {
		if err := l.AppendAsync(map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	// Everything queued before Sync is durable and checkpointed, in order.
	if st := l.Stats(); st.CheckpointSize < 1001 {
		t.Fatalf("checkpoint covers %d", st.CheckpointSize)
	}
	got := readEvents(t, dir)
	for i := 0; i < 1000; i++ {
		if got[uint64(i+1)] != fmt.Sprintf(`{"i":%d}`, i) {
			t.Fatalf("seq %d: %q", i+1, got[uint64(i+1)])
		}
	}
	l.Close()
	if rep := verify(t, dir, k, nil); !rep.OK {
		t.Fatal(rep.Problem)
	}
}

// Reopening a trail with another signing key would sign checkpoints that
// its verification key rejects from then on: Open refuses, naming both keys.
func TestReopenWithAnotherKeyRefused(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, nil, 10, 0)
	before := snapshot(t, dir)
	for _, other := range []keys{newKeys(t, "kvh-test"), newKeys(t, "kvh-other")} {
		l, err := Open(dir, Options{Signer: other.signer})
		if err == nil {
			l.Close()
			rep := verify(t, dir, k, nil)
			t.Fatalf("reopened with %s; the trail's own key now says OK=%v %v", other.signer.Name(), rep.OK, rep.Problem)
		}
		t.Logf("refused: %v", err)
		for _, want := range []string{
			fmt.Sprintf("%s+%08x", k.signer.Name(), k.signer.KeyHash()),
			fmt.Sprintf("%s+%08x", other.signer.Name(), other.signer.KeyHash()),
		} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name key %s", err, want)
			}
		}
		if after := snapshot(t, dir); !equalSnapshots(before, after) {
			t.Fatal("a refused Open changed the trail")
		}
	}
	// The trail's own key still opens it.
	l, err := Open(dir, Options{Signer: k.signer})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if rep := verify(t, dir, k, nil); !rep.OK {
		t.Fatal(rep.Problem)
	}
}
