package forensic

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"github.com/kvhygiene/kvh/internal/pyjson"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func FuzzParseLine(f *testing.F) {
	body := json.RawMessage(`{"ev":"free","bytes":4096}`)
	for _, mac := range []bool{false, true} {
		r := Record{V: 1, Seq: 7, TS: tsNow(), Kind: KindEvent, Prev: make([]byte, 32), Body: body}
		var h = hmac.New(sha256.New, []byte("k"))
		if !mac {
			h = nil
		}
		line, _ := encodeLine(&r, h)
		f.Add(line)
	}
	f.Add([]byte(`{"v":1,"seq":01,"ts":"x","kind":"event","prev":"","body":{}}`))
	f.Add([]byte(`{"v":1,"seq":1,"ts":"2026-01-01T00:00:00Z","kind":"event","prev":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","body":{"a":"\"}"},"mac":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	mac := hmac.New(sha256.New, []byte("k"))
	f.Fuzz(func(t *testing.T, line []byte) {
		var p parsed
		if err := parseLine(line, &p); err != nil {
			return
		}
		// Whatever parses re-encodes to the same bytes: no two encodings of one record.
		if p.mac != nil {
			checkMAC(line, &p, mac)
		}
		if !json.Valid(line) {
			t.Fatalf("accepted invalid JSON %q", line)
		}
	})
}

func FuzzCheckpointLine(f *testing.F) {
	skey, vkey, _ := note.GenerateKey(nil, "kvh-fuzz")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	n, _ := note.Sign(&note.Note{Text: "kvh/x/1\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, s)
	line, _ := json.Marshal(checkpointLine{Size: 5, Note: string(n)})
	f.Add(line)
	f.Add(n)
	f.Add([]byte(`{"size":1,"note":"x\n\n"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		vr := &verifier{opts: VerifyOptions{Verifier: v}, rep: &Report{Origin: "kvh/x/1"}}
		var cl checkpointLine
		if strictUnmarshal(data, &cl) == nil {
			vr.openCheckpoint([]byte(cl.Note))
		}
		if ext, err := ParseExternalCheckpoint(data); err == nil {
			vr.openCheckpoint(ext)
		}
		vr.opts.NoSignatures = true
		vr.openCheckpoint(data)
	})
}

func FuzzSeedLine(f *testing.F) {
	f.Add([]byte(`{"event_type": "allocate", "ts": 1700000000.5, "x": [1, NaN, -Infinity, "\u2028\ud83d\ude00"], "prev_hash": "GENESIS"}`))
	f.Add([]byte(`{"a":{"b":{"c":[]}}}`))
	f.Add([]byte(`"\ud800"`))
	f.Fuzz(func(t *testing.T, line []byte) {
		v, err := pyjson.Parse(line)
		if err != nil {
			return
		}
		// Canonical output must itself parse to the same canonical form.
		c := v.Canonical(nil)
		v2, err := pyjson.Parse(c)
		if err != nil {
			t.Fatalf("canonical %q does not parse: %v", c, err)
		}
		if c2 := v2.Canonical(nil); string(c2) != string(c) {
			t.Fatalf("canonical not stable: %q vs %q", c, c2)
		}
	})
}

// FuzzValidJSON holds the verifier's body check to json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":[1,2.5e-3,-0,true,false,null,"x\u00e9\n"]}`, `{"a":}`, `{"a":01}`, `[1,]`, `"\ud800"`, "\"\xff\"", ` {} `, `{"a":1}x`, `-`, `1.`, `1e`, `[[[[]]]]`, `{"a" : { "b" : [ ] } }`, "\"\x7f\"", `"\/"`, `"\x"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

// FuzzCanonicalBody holds canonicalBody, whose fast path copies an
// already compact body, to json.Marshal of the body as a RawMessage.
func FuzzCanonicalBody(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"x y"}`, `{ "a":1}`, `{"a":"<&>"}`, "{\"a\":\"\u2028\"}", "{\"a\":\"\xe2\x80\xa8\"}", `{"a":"\\\" "}`, `{"a":"\" , "}`, "{\"a\":\"\xff\"}", `{"a":[1, 2]}`, `{"a":1}` + "\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := canonicalBody(b)
		want, werr := json.Marshal(json.RawMessage(b))
		if (err == nil) != (werr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("canonicalBody(%q) = %q, %v; json.Marshal gives %q, %v", b, got, err, want, werr)
		}
		if len(b) > 0 && len(got) > 0 && &got[0] == &b[0] {
			t.Fatalf("canonicalBody(%q) aliases its input", b)
		}
	})
}

// FuzzCheckpointLineFast holds parseCheckpointLine's hand decoder to
// strictUnmarshal: whatever it accepts, strictUnmarshal accepts with the
// same values; and the writer's own lines take the hand decoder.
func FuzzCheckpointLineFast(f *testing.F) {
	skey, _, _ := note.GenerateKey(nil, "kvh-fuzz")
	s, _ := note.NewSigner(skey)
	n, _ := note.Sign(&note.Note{Text: "kvh/x/1\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, s)
	line, _ := json.Marshal(checkpointLine{Size: 5, Note: string(n)})
	var cl checkpointLine
	if !fastCheckpointLine(line, &cl) || cl.Size != 5 || cl.Note != string(n) {
		f.Fatalf("the writer's line %s: fast path %+v", line, cl)
	}
	f.Add(line)
	for _, l := range []string{`{"size":0,"note":""}`, `{"size":01,"note":""}`, `{"size":18446744073709551616,"note":"x"}`,
		`{"size":1,"note":"a\nb\"c"}`, `{"size":1,"note":"a\u2014"}`, `{"size":1,"note":"\xff"}`, `{"size":1,"note":"x"}}`,
		`{"size":1,"note":"x"} `, `{"size":1,"note":"\n\\"}`, `{"Size":1,"note":"x"}`, "{\"size\":1,\"note\":\"\t\"}"} {
		f.Add([]byte(l))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, slow checkpointLine
		if !fastCheckpointLine(data, &fast) {
			return
		}
		if err := strictUnmarshal(data, &slow); err != nil || fast != slow {
			t.Fatalf("%q: fast path %+v, strictUnmarshal %+v (%v)", data, fast, slow, err)
		}
	})
}
