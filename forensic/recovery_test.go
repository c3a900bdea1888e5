package forensic

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// crashWriter leaves the trail as a killed process would: records written,
// no close record, the lock released by the kernel.
func crashWriter(t *testing.T, l *Log, tail []byte) {
	t.Helper()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	time.Sleep(10 * time.Millisecond)
	if len(tail) > 0 {
		if _, err := l.seg.Write(tail); err != nil {
			t.Fatal(err)
		}
	}
	l.lock.Close()
}

func TestTornTailDeclaredNotTruncated(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		l.Append(map[string]int{"i": i})
	}
	torn := []byte(`{"v":1,"seq":21,"ts":"2026-`)
	crashWriter(t, l, torn)
	before, _ := os.ReadFile(segPath(dir, 0))

	l2, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	if r := l2.Stats().Recovered; r == nil || r.TornLen != int64(len(torn)) {
		t.Fatalf("recovered %+v", r)
	}
	l2.Append(map[string]int{"after": 1})
	l2.Close()
	after, _ := os.ReadFile(segPath(dir, 0))
	if !bytes.Equal(before, after) {
		t.Fatal("the torn segment was modified")
	}
	rep := verify(t, dir, k, testMAC)
	if !rep.OK {
		t.Fatal(rep.Problem)
	}
	if !strings.Contains(strings.Join(rep.Warnings, "\n"), "torn byte") {
		t.Errorf("no torn warning: %v", rep.Warnings)
	}
	// Tampering with the declared torn bytes is caught.
	editLines(t, segPath(dir, 0), func(x [][]byte) [][]byte {
		x[len(x)-1] = bytes.Replace(x[len(x)-1], []byte("2026"), []byte("2027"), 1)
		return x
	})
	rep = verify(t, dir, k, testMAC)
	if rep.OK || !strings.Contains(rep.Problem.String(), "not declared as a torn tail") {
		t.Fatalf("tampered torn tail: %+v", rep.Problem)
	}
}

func TestPrune(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	segs, _, _ := listDir(dir)
	archive := filepath.Join(t.TempDir(), "archive")
	rep, err := Prune(dir, PruneOptions{Signer: k.signer, Verifier: k.verifier, MACKey: testMAC, RetentionDays: -1, MaxRotated: 3, ArchiveDir: archive})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK {
		t.Fatalf("prune: %+v %v", rep, rep.After.Problem)
	}
	// The prune opened one more segment; 3 rotated + the new active remain... the
	// removed ones are the oldest len(segs)-1-3.
	if want := len(segs) - 1 - 3; len(rep.Removed) != want {
		t.Fatalf("removed %v, want %d", rep.Removed, want)
	}
	if _, err := os.Stat(filepath.Join(archive, rep.Removed[0])); err != nil {
		t.Fatalf("not archived: %v", err)
	}
	if rep.After.FirstSeq == 0 || len(rep.After.Prunes) != 1 {
		t.Fatalf("after: %+v", rep.After)
	}
	// Deleting one more than authorised is caught.
	segs, _, _ = listDir(dir)
	os.Remove(segs[0].path)
	v := verify(t, dir, k, testMAC)
	if v.OK || !strings.Contains(v.Problem.String(), "pruned beyond the authorised point") {
		t.Fatalf("over-prune: %+v", v.Problem)
	}
	// A trail that does not verify is never pruned.
	rep, err = Prune(dir, PruneOptions{Signer: k.signer, Verifier: k.verifier, MACKey: testMAC, RetentionDays: 0, MaxRotated: 0})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.Refused == "" || len(rep.Removed) != 0 {
		t.Fatalf("pruned a tampered trail: %+v", rep)
	}
}

// Archiving to another file system copies the segment (mode 0600), removes
// the original, and never replaces an archive already there.
func TestArchiveAcrossFileSystems(t *testing.T) {
	src := filepath.Join(t.TempDir(), "kvh-000001.log")
	other, err := os.MkdirTemp("/dev/shm", "kvh-archive-")
	if err != nil {
		t.Skipf("no second file system: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	var a, b syscall.Stat_t
	if syscall.Stat(filepath.Dir(src), &a) != nil || syscall.Stat(other, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same file system as the test's temp dir")
	}
	dst := filepath.Join(other, "kvh-000001.log")
	os.WriteFile(src, []byte("segment"), 0o600)
	if err := archive(src, dst); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v", st, err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "segment" {
		t.Errorf("archive holds %q", b)
	}
	if _, err := os.Stat(src); !os.IsNotExist(err) {
		t.Errorf("original still there after archiving: %v", err)
	}
	os.WriteFile(src, []byte("another"), 0o600)
	if err := archive(src, dst); err == nil {
		t.Fatal("archived over an existing archive")
	}
	if b, _ := os.ReadFile(dst); string(b) != "segment" {
		t.Errorf("existing archive changed to %q", b)
	}
	if b, _ := os.ReadFile(src); string(b) != "another" {
		t.Errorf("original lost after a refused archive: %q", b)
	}
	if ents, _ := os.ReadDir(other); len(ents) != 1 {
		t.Errorf("archive directory holds %v, want only the archive", ents)
	}
}

// TestCrashChild is the child of TestCrash: it appends under load and prints
// every acknowledged seq until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("KVH_CRASH_DIR")
	if dir == "" {
		t.Skip("child process of TestCrash")
	}
	skey, _ := os.ReadFile(filepath.Join(dir, "skey"))
	s, err := note.NewSigner(string(skey))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(filepath.Join(dir, "trail"), Options{Signer: s, MACKey: testMAC, MaxSegmentBytes: 32 << 10})
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	for g := 0; g < 16; g++ {
		go func() {
			for i := 0; ; i++ {
				seq, err := l.Append(map[string]int{"g": g, "i": i})
				if err != nil {
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d %d %d\n", seq, g, i)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash loop")
	}
	skey, vkey, _ := note.GenerateKey(nil, "kvh-crash")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "skey"), []byte(skey), 0o600)
	v, _ := note.NewVerifier(vkey)
	s, _ := note.NewSigner(skey)
	acked := map[uint64]string{}
	for round := 0; round < 12; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
		cmd.Env = append(os.Environ(), "KVH_CRASH_DIR="+dir)
		var stdout bytes.Buffer
		cmd.Stdout = &stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		for _, line := range strings.Split(stdout.String(), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 {
				continue
			}
			seq, _ := strconv.ParseUint(f[0], 10, 64)
			acked[seq] = fmt.Sprintf(`{"g":%s,"i":%s}`, f[1], f[2])
		}
		// Reopening recovers (declares any torn tail) and the trail verifies.
		l, err := Open(filepath.Join(dir, "trail"), Options{Signer: s, MACKey: testMAC})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		l.Close()
		rep, err := Verify(filepath.Join(dir, "trail"), VerifyOptions{Verifier: v, MACKey: testMAC})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK {
			t.Fatalf("round %d: %v", round, rep.Problem)
		}
	}
	if len(acked) == 0 {
		t.Fatal("the child acknowledged nothing")
	}
	got := readEvents(t, filepath.Join(dir, "trail"))
	for seq, body := range acked {
		if got[seq] != body {
			t.Fatalf("acknowledged seq %d lost: have %q want %q", seq, got[seq], body)
		}
	}
	t.Logf("%d acknowledged records survived 12 SIGKILLs", len(acked))
}

// A record forged onto the tail of a trail whose writer stopped (no close,
// nothing after it sealed) is not covered by any signature: it fails, unless
// the auditor explicitly accepts an unsealed tail.
func TestForgedTailAfterLastSeal(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		l.Append(map[string]int{"i": i})
	}
	c := l.c
	rec := Record{V: 1, Seq: c.size(), TS: tsNow(), Kind: KindEvent, Prev: append([]byte(nil), c.prev[:]...), Body: []byte(`{"ev":"free","forged":true}`)}
	forged, _ := encodeLine(&rec, nil)
	crashWriter(t, l, append(forged, '\n'))
	rep := verify(t, dir, k, nil)
	if rep.OK || !strings.Contains(rep.Problem.String(), "not covered by a signature") {
		t.Fatalf("forged tail accepted: %+v", rep.Problem)
	}
	lax, err := Verify(dir, VerifyOptions{Verifier: k.verifier, AllowUnsealed: true})
	if err != nil || !lax.OK || lax.Unsealed != 1 {
		t.Fatalf("--allow-unsealed: %v %+v", err, lax)
	}
}
