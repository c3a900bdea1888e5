package forensic

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
)

// TestWriterTS pins the ts fast path to time.Parse: it may only accept what
// time.Parse(time.RFC3339Nano) accepts.
func TestWriterTS(t *testing.T) {
	cases := []string{
		"2026-11-30T16:24:20.123456789Z", "2026-11-30T16:24:20Z", "2026-11-30T16:24:20.1Z",
		"2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z",
		"2026-00-01T00:00:00Z", "2026-01-00T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z",
		"2026-01-01T23:59:60Z", "2026-01-01T23:59:59.Z", "2026-01-01T23:59:59.1234567890Z",
		"2026-01-01T23:59:59+00:00", "2026-1-01T23:59:59Z", "2026-01-01t23:59:59Z", "+026-01-01T23:59:59Z",
		"2026-01-01T23:59:59.12a4Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "",
	}
	r := rand.New(rand.NewSource(1))
	for range 20000 {
		b := []byte(time.Unix(r.Int63n(1<<36), r.Int63n(1e9)).UTC().Format(time.RFC3339Nano))
		if r.Intn(2) == 0 {
			b[r.Intn(len(b))] = "0123456789:-.TZ+"[r.Intn(16)]
		}
		cases = append(cases, string(b))
	}
	for _, c := range cases {
		_, err := time.Parse(time.RFC3339Nano, c)
		if isWriterTS([]byte(c)) && err != nil {
			t.Errorf("isWriterTS accepts %q, time.Parse does not: %v", c, err)
		}
	}
	if !isWriterTS([]byte(tsNow())) {
		t.Errorf("isWriterTS refuses the writer's own %q", tsNow())
	}
}

// TestLinePipe: lines come back in order with what prep computed, whatever
// the block boundaries; the incomplete final line and an over-long line end
// the stream as readLine does.
func TestLinePipe(t *testing.T) {
	var in bytes.Buffer
	var want []string
	r := rand.New(rand.NewSource(2))
	for i := range 50000 {
		l := strings.Repeat(string(rune('a'+i%26)), r.Intn(40))
		want = append(want, l)
		in.WriteString(l + "\n")
	}
	in.WriteString("tail")
	p := newLinePipe(iotestHalf{bytes.NewReader(in.Bytes())}, 100, nil, func() int { return 0 }, func(_ int, line []byte, out *int) { *out = len(line) })
	defer p.stop()
	for i, w := range want {
		line, n, err := p.next()
		if err != nil || string(line) != w || *n != len(w) {
			t.Fatalf("line %d: %q %v %v, want %q", i, line, n, err, w)
		}
	}
	if line, _, err := p.next(); string(line) != "tail" || !errors.Is(err, io.EOF) {
		t.Fatalf("end: %q %v", line, err)
	}

	long := "short\n" + strings.Repeat("x", 101) + "\nafter\n"
	p2 := newLinePipe(strings.NewReader(long), 100, nil, func() int { return 0 }, func(int, []byte, *int) {})
	defer p2.stop()
	if line, _, err := p2.next(); string(line) != "short" || err != nil {
		t.Fatalf("first: %q %v", line, err)
	}
	if _, _, err := p2.next(); !errors.As(err, new(errLineTooLong)) {
		t.Fatalf("over-long line: %v", err)
	}
	exact := strings.Repeat("y", 100) + "\n"
	p3 := newLinePipe(strings.NewReader(exact), 100, nil, func() int { return 0 }, func(int, []byte, *int) {})
	defer p3.stop()
	if line, _, err := p3.next(); len(line) != 100 || err != nil {
		t.Fatalf("a line of exactly maxLine: %d %v", len(line), err)
	}
}

// iotestHalf returns reads of at most 7 bytes, so lines straddle reads.
type iotestHalf struct{ r io.Reader }

func (h iotestHalf) Read(b []byte) (int, error) { return h.r.Read(b[:min(len(b), 7)]) }

func TestHashChildren(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for _, n := range [][2]int{{32, 32}, {32, 32}, {31, 32}, {0, 0}} {
		a, b := make([]byte, n[0]), make([]byte, n[1])
		r.Read(a)
		r.Read(b)
		if got, want := hashChildren(a, b), rfc6962.DefaultHasher.HashChildren(a, b); !bytes.Equal(got, want) {
			t.Fatalf("hashChildren(%d, %d bytes) = %x, want %x", n[0], n[1], got, want)
		}
	}
}

func TestValidJSONDepth(t *testing.T) {
	for _, n := range []int{9999, 10000, 10001} {
		b := []byte(strings.Repeat("[", n) + strings.Repeat("]", n))
		if validJSON(b) != json.Valid(b) {
			t.Errorf("nesting %d: validJSON %v, json.Valid %v", n, validJSON(b), json.Valid(b))
		}
	}
}

// TestVerifyLongSegment verifies a segment many read blocks long, so that the
// verifier reuses its blocks (and what the chain keeps from them must not
// change under it), then finds one edited record far into it.
func TestVerifyLongSegment(t *testing.T) {
	k := newKeys(t, "kvh-test")
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: k.signer, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 200)
	const n = 16000 // about 5 MB: twenty blocks
	for i := range n {
		if err := l.AppendAsync(map[string]any{"i": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
		if i%997 == 0 { // checkpoints at sizes spread over the blocks
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs := mustGlob(t, dir, "seg-*.jsonl")
	if st, _ := os.Stat(segs[0]); len(segs) != 1 || st.Size() < 16*pipeBlock {
		t.Fatalf("want one segment of at least %d bytes: %v", 16*pipeBlock, segs)
	}
	rep := verify(t, dir, k, testMAC)
	if !rep.OK || rep.Records != n+2 || rep.Checkpoints < n/997 {
		t.Fatalf("untouched: ok %v records %d checkpoints %d: %v", rep.OK, rep.Records, rep.Checkpoints, rep.Problem)
	}
	const bad = n - 100
	editLines(t, segs[0], func(lines [][]byte) [][]byte {
		lines[bad] = bytes.Replace(lines[bad], []byte(`"pad":"x`), []byte(`"pad":"y`), 1)
		return lines
	})
	rep = verify(t, dir, k, testMAC)
	if rep.OK || rep.Problem.Line != bad+1 || !strings.Contains(rep.Problem.Reason, "MAC invalid") {
		t.Fatalf("edited line %d: %+v", bad+1, rep.Problem)
	}
}
