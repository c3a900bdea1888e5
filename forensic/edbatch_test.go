package forensic

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/edwards25519"
	"golang.org/x/mod/sumdb/note"
)

type edSig struct {
	pub      ed25519.PublicKey
	msg, sig []byte
}

func batchOf(sigs ...edSig) error {
	var b edBatch
	for _, s := range sigs {
		var pub [32]byte
		copy(pub[:], s.pub)
		b.add(&pub, s.msg, s.sig)
	}
	return b.verify()
}

// addL returns s + L, the group order: the same scalar, not canonically
// encoded.
func addL(s []byte) []byte {
	le := func(b []byte) *big.Int {
		r := make([]byte, len(b))
		for i := range b {
			r[len(b)-1-i] = b[i]
		}
		return new(big.Int).SetBytes(r)
	}
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)
	v := new(big.Int).Add(le(s), l).FillBytes(make([]byte, 32))
	out := make([]byte, 32)
	for i := range v {
		out[31-i] = v[i]
	}
	return out
}

// The batch accepts exactly what crypto/ed25519 accepts, one signature at
// a time and one bad signature among many good ones, by several keys.
func TestEdBatchAgreesWithEd25519(t *testing.T) {
	var good []edSig
	for k := range 3 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		for i := range 40 {
			msg := []byte(strings.Repeat("checkpoint ", k+i))
			good = append(good, edSig{pub, msg, ed25519.Sign(priv, msg)})
		}
	}
	if err := batchOf(good...); err != nil {
		t.Fatalf("a batch of %d good signatures: %v", len(good), err)
	}
	if err := batchOf(); err != nil {
		t.Fatalf("an empty batch: %v", err)
	}
	mutants := map[string]func(s edSig) edSig{
		"a bit of R": func(s edSig) edSig { s.sig = bytes.Clone(s.sig); s.sig[3] ^= 0x10; return s },
		"a bit of s": func(s edSig) edSig { s.sig = bytes.Clone(s.sig); s.sig[40] ^= 0x01; return s },
		"s + L":      func(s edSig) edSig { s.sig = append(bytes.Clone(s.sig[:32]), addL(s.sig[32:])...); return s },
		"message":    func(s edSig) edSig { s.msg = append(bytes.Clone(s.msg), 'x'); return s },
		"other key":  func(s edSig) edSig { s.pub = good[len(good)-1].pub; return s },
		"short":      func(s edSig) edSig { s.sig = s.sig[:63]; return s },
		"R zeroed":   func(s edSig) edSig { s.sig = append(make([]byte, 32), s.sig[32:]...); return s },
	}
	for name, m := range mutants {
		for _, i := range []int{0, 41, 97} {
			bad := m(good[i])
			stdlib := len(bad.sig) == 64 && ed25519.Verify(bad.pub, bad.msg, bad.sig)
			if alone := batchOf(bad) == nil; alone != stdlib {
				t.Errorf("%s, signature %d: batch of one says %v, crypto/ed25519 says %v", name, i, alone, stdlib)
			}
			mixed := append(append([]edSig(nil), good[:i]...), bad)
			mixed = append(mixed, good[i+1:]...)
			if among := batchOf(mixed...) == nil; among != stdlib {
				t.Errorf("%s, signature %d among %d good: batch says %v, crypto/ed25519 says %v", name, i, len(good)-1, among, stdlib)
			}
		}
	}
}

// A point encoding with y at or above p decodes (edwards25519 accepts it)
// but is not what crypto/ed25519 produces or accepts for R: refused.
func TestEdBatchRefusesNonCanonicalPoints(t *testing.T) {
	// y = p + 1 (the identity's y, 1, plus p): 2^255 - 18, little-endian.
	enc := bytes.Repeat([]byte{0xff}, 32)
	enc[0], enc[31] = 0xee, 0x7f
	if _, err := new(edwards25519.Point).SetBytes(enc); err != nil {
		t.Fatalf("edwards25519 no longer decodes a non-canonical y (%v): this test must find another", err)
	}
	if canonicalPoint(new(edwards25519.Point), enc) == nil {
		t.Fatal("a non-canonical encoding of the identity was accepted")
	}
	// Every y from p-40 to p+40 and a few more, with either sign: the byte
	// checks agree with decoding and re-encoding.
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	var ys []*big.Int
	for d := int64(-40); d <= 40; d++ {
		ys = append(ys, new(big.Int).Add(p, big.NewInt(d)), big.NewInt(d+40))
	}
	for _, y := range ys {
		if y.BitLen() > 255 {
			continue
		}
		be := y.FillBytes(make([]byte, 32))
		for _, sign := range []byte{0, 0x80} {
			enc := make([]byte, 32)
			for i := range be {
				enc[31-i] = be[i]
			}
			enc[31] |= sign
			var q edwards25519.Point
			_, derr := q.SetBytes(enc)
			want := derr == nil && bytes.Equal(q.Bytes(), enc)
			if got := canonicalPoint(new(edwards25519.Point), enc) == nil; got != want {
				t.Errorf("y = %v, sign %#x: canonicalPoint says %v, decode and re-encode says %v", y, sign, got, want)
			}
		}
	}
	for range 200 { // and random points, as signatures' R are
		var k [64]byte
		rand.Read(k[:])
		sc, _ := new(edwards25519.Scalar).SetUniformBytes(k[:])
		enc := new(edwards25519.Point).ScalarBaseMult(sc).Bytes()
		if canonicalPoint(new(edwards25519.Point), enc) != nil {
			t.Fatalf("the canonical encoding %x was refused", enc)
		}
	}
}

// A trail whose checkpoints span several batches, one signature altered in
// the middle: Verify names that checkpoint's line, exactly as it does when
// every signature is checked alone (a verifier from note.NewVerifier).
func TestVerifyBatchedCheckpointTamper(t *testing.T) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "kvh-batch")
	s, _ := NewSigner(skey)
	batched, _ := NewVerifier(vkey)
	alone, _ := note.NewVerifier(vkey)
	if _, ok := batched.(*edVerifier); !ok {
		t.Fatalf("NewVerifier gave %T: nothing would be batched", batched)
	}
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: s, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 400 { // one record, one commit, one checkpoint each
		if _, err := l.Append(map[string]any{"ev": "free", "i": i}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	for _, v := range []note.Verifier{batched, alone} {
		rep, err := Verify(dir, VerifyOptions{Verifier: v, MACKey: testMAC})
		if err != nil || !rep.OK || rep.Checkpoints < 400 {
			t.Fatalf("untouched trail, %T: %v %+v", v, err, rep)
		}
	}
	ckpt := filepath.Join(dir, CheckpointFile)
	lines := readLines(t, ckpt)
	const victim = 300 // in the third batch of 128
	var cl checkpointLine
	if err := json.Unmarshal(lines[victim], &cl); err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndex(cl.Note, " ")
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(cl.Note[i+1:], "\n"))
	if err != nil {
		t.Fatal(err)
	}
	sig[4+40] ^= 1 // past the 4-byte key hash: the signature's s
	cl.Note = cl.Note[:i+1] + base64.StdEncoding.EncodeToString(sig) + "\n"
	lines[victim], _ = json.Marshal(cl)
	lines[victim] = append(lines[victim], '\n')
	writeLines(t, ckpt, lines)

	var problems []string
	for _, v := range []note.Verifier{batched, alone} {
		rep, err := Verify(dir, VerifyOptions{Verifier: v, MACKey: testMAC})
		if err != nil || rep.OK || rep.Problem == nil {
			t.Fatalf("altered signature, %T: %v %+v", v, err, rep)
		}
		problems = append(problems, rep.Problem.String())
	}
	want := "checkpoints.jsonl line 301: checkpoint signature does not verify"
	if !strings.HasPrefix(problems[0], want) || problems[0] != problems[1] {
		t.Fatalf("batched: %q\nalone:   %q\nwant both to start %q", problems[0], problems[1], want)
	}
}

// BenchmarkCheckpointSignatures: 128 checkpoint signatures by one key,
// checked one by one (crypto/ed25519, the reference) and as one batch.
func BenchmarkCheckpointSignatures(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	var sigs []edSig
	for i := range 128 {
		msg := []byte(strings.Repeat("x", 60+i%7))
		sigs = append(sigs, edSig{pub, msg, ed25519.Sign(priv, msg)})
	}
	b.Run("alone", func(b *testing.B) {
		for b.Loop() {
			for _, s := range sigs {
				if !ed25519.Verify(s.pub, s.msg, s.sig) {
					b.Fatal("bad")
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sigs)), "ns/signature")
	})
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			if err := batchOf(sigs...); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sigs)), "ns/signature")
	})
}

// BenchmarkCheckpointSignatureAlone: one signature by kvh's rule (what a
// failed batch costs per note) against crypto/ed25519's check.
func BenchmarkCheckpointSignatureAlone(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	vk, _ := note.NewEd25519VerifierKey("kvh-bench", pub)
	v, _ := NewVerifier(vk)
	msg := []byte("kvh/bench\n12345\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
	sig := ed25519.Sign(priv, msg)
	b.Run("crypto-ed25519", func(b *testing.B) {
		for b.Loop() {
			ed25519.Verify(pub, msg, sig)
		}
	})
	b.Run("kvh-rule", func(b *testing.B) {
		for b.Loop() {
			v.Verify(msg, sig)
		}
	})
}
