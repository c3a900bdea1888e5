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
