package forensic

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Attack on the auditor: checkpoints.jsonl was read whole and split into a
// slice of lines, and every line's verdict was computed (on all cores)
// before the first was judged. A file of empty lines — one byte each —
// cost the verifier over 100 bytes of memory per byte of file (a slice
// header and a verdict per line): a few hundred megabytes of newlines
// exhausted an auditor's memory before it reported the empty line 2. Now
// the file is read in bounded chunks and judged as it is read, so the
// memory does not grow with the file and the first bad line ends it.
func TestAttackCheckpointFileOfNewlines(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	allocs := func() uint64 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.TotalAlloc
	}
	a0 := allocs()
	if rep := verify(t, dir, k, testMAC); !rep.OK {
		t.Fatalf("before the attack: %v", rep.Problem)
	}
	clean := allocs() - a0 // the reference: the same trail, verified untouched
	const n = 4 << 20
	path := filepath.Join(dir, CheckpointFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first := bytes.IndexByte(data, '\n') + 1
	forged := append(append(append([]byte(nil), data[:first]...), bytes.Repeat([]byte("\n"), n)...), data[first:]...)
	if err := os.WriteFile(path, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	a1 := allocs()
	rep := verify(t, dir, k, testMAC)
	attacked := allocs() - a1
	if rep.OK || !strings.Contains(rep.Problem.String(), "line 2: empty line") {
		t.Fatalf("a checkpoint file with %d empty lines: %+v", n, rep.Problem)
	}
	if attacked > clean+n {
		t.Fatalf("verifying with %d bytes of newlines in the checkpoint file allocated %d bytes, the untouched trail %d: memory grows with the file", n, attacked, clean)
	}
}

// The checkpoint file read in chunks judges each line as the whole file
// did: duplicates across chunk boundaries verify, an incomplete last line
// is a warning, and a line too long for a checkpoint is malformed where it
// is (with its right line number), or ignored when it is the incomplete last.
func TestCheckpointFileAcrossChunks(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	path := filepath.Join(dir, CheckpointFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first := data[:bytes.IndexByte(data, '\n')+1]
	long := bytes.Repeat([]byte("x"), maxCheckpointLine+10)
	for _, tc := range []struct {
		name string
		file []byte
		want string // "" for OK
	}{
		{"duplicates over three chunks", append(bytes.Repeat(first, 2*checkpointChunk+7), data...), ""},
		{"incomplete last line", append(append(bytes.Repeat(first, checkpointChunk+1), data...), first[:20]...), ""},
		{"long line inside", append(append(append(bytes.Repeat(first, checkpointChunk+3), long...), '\n'), data...),
			"line " + itoa(checkpointChunk+4) + ": malformed checkpoint line"},
		{"long incomplete last line", append(append([]byte(nil), data...), long...), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.file, 0o600); err != nil {
				t.Fatal(err)
			}
			rep := verify(t, dir, k, testMAC)
			switch {
			case tc.want == "" && !rep.OK:
				t.Fatalf("unexpected failure: %v", rep.Problem)
			case tc.want != "" && (rep.OK || !strings.Contains(rep.Problem.String(), tc.want)):
				t.Fatalf("got %+v, want a problem containing %q", rep.Problem, tc.want)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// Attack on the auditor: what follows the first line of a segment that
// does not verify was read whole into memory (to look for complete records
// in it and hash it as a torn tail), so a segment padded with gigabytes
// after one bad line exhausted the verifier's memory. Now it is read as a
// stream: the verifier's peak heap does not grow with it.
func TestAttackHugeTornTail(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	clean, rep := peakHeap(func() *Report { return verify(t, dir, k, testMAC) })
	if !rep.OK {
		t.Fatalf("before the attack: %v", rep.Problem)
	}
	const n = 64 << 20
	for _, tc := range []struct{ name, seg string }{
		{"middle segment", segPath(dir, 1)},
		{"last segment", lastSeg(t, dir)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig, err := os.ReadFile(tc.seg)
			if err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(tc.seg, orig, 0o600)
			// Garbage after line 3, written a MiB at a time (the test's own
			// heap stays small, so the verifier's is what the samples see),
			// in 4 KiB lines (so that the read-ahead's per-line state is
			// small beside them).
			cut := 0
			for range 3 {
				cut += bytes.IndexByte(orig[cut:], '\n') + 1
			}
			f, err := os.Create(tc.seg)
			if err != nil {
				t.Fatal(err)
			}
			line := append(bytes.Repeat([]byte("g"), 4<<10-1), '\n')
			mib := bytes.Repeat(line, 256)
			f.Write(orig[:cut])
			for range n >> 20 {
				if _, err := f.Write(mib); err != nil {
					t.Fatal(err)
				}
			}
			f.Write(orig[cut:])
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			attacked, rep := peakHeap(func() *Report { return verify(t, dir, k, testMAC) })
			want := "a complete record in what is left as a torn tail"
			if rep.OK || !strings.Contains(rep.Problem.String(), want) {
				t.Fatalf("a segment with %d bytes of garbage after its line 3: %+v, want a problem with %q", n, rep.Problem, want)
			}
			if attacked > clean+16<<20 {
				t.Fatalf("verifying with %d bytes of garbage in a segment peaked at %d bytes of heap, the untouched trail at %d: memory grows with the garbage", n, attacked, clean)
			}
		})
	}
}

// peakHeap runs f and returns the largest heap (live and not yet swept)
// seen while it ran, sampled every half millisecond, above the heap before.
func peakHeap(f func() *Report) (uint64, *Report) {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	base := s[0].Value.Uint64()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Microsecond):
			}
		}
	}()
	rep := f()
	close(stop)
	<-done
	return peak.Load() - min(base, peak.Load()), rep
}

func lastSegName(t *testing.T, dir string) string { return filepath.Base(lastSeg(t, dir)) }

// Attack on the auditor: the verifier reads a segment ahead in 256 KiB
// blocks, on every core, and keeps a parsed record (some 300 bytes) for
// every line of every block in flight. A segment with 16 MiB of empty
// lines after its line 3 peaked the verifier's heap at 770 MB on two cores
// (a block of empty lines cost 64 MB; the blocks in flight grow with the
// cores, so a 64-core auditor needed some 16 GB) before it reported line
// 4. Now a block holds at most maxBlockLines lines.
func TestAttackSegmentOfEmptyLines(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := buildTrail(t, k, testMAC, 300, 6<<10)
	clean, rep := peakHeap(func() *Report { return verify(t, dir, k, testMAC) })
	if !rep.OK {
		t.Fatalf("before the attack: %v", rep.Problem)
	}
	seg := segPath(dir, 1)
	orig, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	cut := 0
	for range 3 {
		cut += bytes.IndexByte(orig[cut:], '\n') + 1
	}
	f, err := os.Create(seg)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(orig[:cut])
	mib := bytes.Repeat([]byte("\n"), 1<<20)
	const n = 16
	for range n {
		if _, err := f.Write(mib); err != nil {
			t.Fatal(err)
		}
	}
	f.Write(orig[cut:])
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	attacked, rep := peakHeap(func() *Report { return verify(t, dir, k, testMAC) })
	t.Logf("peak heap above the start: %d bytes untouched, %d with %d MiB of empty lines", clean, attacked, n)
	if rep.OK || !strings.Contains(rep.Problem.String(), "from line 4; first bad line") {
		t.Fatalf("a segment with %d MiB of empty lines after line 3: %+v", n, rep.Problem)
	}
	if attacked > clean+n<<20 {
		t.Fatalf("verifying a segment with %d MiB of empty lines peaked at %d bytes of heap, the untouched trail at %d", n, attacked, clean)
	}
}
