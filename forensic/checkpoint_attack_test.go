package forensic

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
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
