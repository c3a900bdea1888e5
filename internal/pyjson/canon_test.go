package pyjson

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

var seedLines = [][]byte{
	[]byte(`{"a": 1, "b": [1, 2.50, -0, 1e+16, NaN, -Infinity], "c": {"z": null, "y": true}}`),
	[]byte(`{"b": 1, "a": 2, "b": 3}`),
	[]byte(`{"k\u00e9": "caf\u00e9 \u2028 \"q\" \\ \n \u0001", "k": "tenant-ä", "\ud83d\ude00": {}}`),
	[]byte(`{"nested": {"b": {"d": [], "c": [{"y": 1, "x": 2}]}, "a": ""}, "hmac": "x", "curr_hash": "y"}`),
	[]byte(`  {"a": 1}  ` + "\n"),
	[]byte(`[1, 2]`), []byte(`"s"`), []byte(`{"a": }`), []byte(`{"a": 1,}`), []byte(`{"a": "\ud800"}`),
	[]byte(`{"a": 01}`), []byte("{\"a\": \"\xff\"}"), []byte(`{"a": 1} x`), []byte(``), []byte(`{`),
}

// FuzzCanonicalizer holds the one-pass canonicalizer to the tree it
// replaces: the same verdict on every input, the same bytes on every object.
func FuzzCanonicalizer(f *testing.F) {
	for _, l := range seedLines {
		f.Add(l)
	}
	files, _ := filepath.Glob("../../forensic/testdata/seed/clean/*.log")
	for _, fn := range files {
		data, _ := os.ReadFile(fn)
		for _, l := range bytes.Split(data, []byte("\n")) {
			f.Add(l)
		}
	}
	var c Canonicalizer
	f.Fuzz(func(t *testing.T, line []byte) {
		v, perr := Parse(line)
		got, err := c.Object([]byte("prefix"), line, "curr_hash", "hmac")
		if perr == nil && v.Kind != 'o' {
			if err == nil {
				t.Fatalf("%q: not an object, but Object accepts it", line)
			}
			return
		}
		if (perr == nil) != (err == nil) {
			t.Fatalf("%q: Parse says %v, Object says %v", line, perr, err)
		}
		if perr != nil {
			if err.Error() != perr.Error() {
				t.Fatalf("%q: error %q, Parse's %q", line, err, perr)
			}
			return
		}
		want := v.Canonical([]byte("prefix"), "curr_hash", "hmac")
		if !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got %s\nwant %s", line, got, want)
		}
		for _, k := range append(append([]string(nil), v.Keys...), "curr_hash", "missing") {
			ws, wok := v.Str(k)
			gs, gok := c.Str(k)
			if ws != gs || wok != gok {
				t.Fatalf("%q: Str(%q) = %q %v, want %q %v", line, k, gs, gok, ws, wok)
			}
		}
	})
}

// TestPlainSpan holds the eight-bytes-at-a-time scan to the byte loop it
// replaces, at every offset of inputs dense in the bytes that end a run.
func TestPlainSpan(t *testing.T) {
	alphabet := []byte{'a', ' ', '"', '\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, '!', '#', '[', ']', 0x21, 0x5b, 0x5d}
	naive := func(b []byte, j int) int {
		for ; j < len(b); j++ {
			if ch := b[j]; ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x80 {
				return j
			}
		}
		return j
	}
	rng := uint64(1)
	for n := 0; n < 20000; n++ {
		b := make([]byte, n%40)
		for i := range b {
			rng = rng*6364136223846793005 + 1442695040888963407
			if rng>>60 < 12 { // mostly plain text, so runs are long enough to cross words
				b[i] = 'a' + byte(rng>>40)%26
			} else {
				b[i] = alphabet[(rng>>33)%uint64(len(alphabet))]
			}
		}
		for j := 0; j <= len(b); j++ {
			if got, want := plainSpan(b, j), naive(b, j); got != want {
				t.Fatalf("plainSpan(%q, %d) = %d, want %d", b, j, got, want)
			}
		}
	}
}

// BenchmarkCanonicalizer: the seed's own lines (testdata), canonicalized as
// VerifySeed does, per line.
func BenchmarkCanonicalizer(b *testing.B) {
	files, _ := filepath.Glob("../../forensic/testdata/seed/clean/*.log")
	var lines [][]byte
	for _, fn := range files {
		data, _ := os.ReadFile(fn)
		for _, l := range bytes.Split(data, []byte("\n")) {
			if len(l) > 0 {
				lines = append(lines, l)
			}
		}
	}
	if len(lines) == 0 {
		b.Fatal("no seed lines in ../../forensic/testdata/seed/clean")
	}
	var c Canonicalizer
	var buf []byte
	var err error
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if buf, err = c.Object(buf[:0], lines[i%len(lines)], "curr_hash", "hmac"); err != nil {
			b.Fatal(err)
		}
	}
}
