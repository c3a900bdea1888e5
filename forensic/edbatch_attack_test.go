package forensic

// Attacks on batched checkpoint signatures (from the review of 152c9ec). The
// tests named ...NoKey... use only what an attacker on the trail, without
// the signing key, can write: kvh's verdict must equal crypto/ed25519's
// (note.NewVerifier) exactly. The ...KeyHolder... tests need the key's
// private scalar: there kvh's verdict must follow its stated rule
// (edbatch.go), the same batched or alone, whatever shares a batch.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/edwards25519"
	"golang.org/x/mod/sumdb/note"
)

// atkTorsion8 is a point of order 8 (a generator of the curve's torsion).
func atkTorsion8(t testing.TB) *edwards25519.Point {
	t.Helper()
	enc, _ := hex.DecodeString("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	T, err := new(edwards25519.Point).SetBytes(enc)
	if err != nil {
		t.Fatal(err)
	}
	id := edwards25519.NewIdentityPoint()
	if new(edwards25519.Point).MultByCofactor(T).Equal(id) != 1 {
		t.Fatal("not small order")
	}
	four := new(edwards25519.Point).Add(T, T)
	four.Add(four, four)
	if four.Equal(id) == 1 {
		t.Fatal("order below 8")
	}
	return T
}

// atkSigner signs notes with a known private scalar a, optionally adding a
// small-order point to every R (torsionR) or publishing A = aB + T
// (torsionA) as its key. Both are within the key holder's power only.
type atkSigner struct {
	name     string
	hash     uint32
	a        *edwards25519.Scalar
	pub      []byte
	torsionR func(i int) *edwards25519.Point // nil, or nil for call i: honest R
	calls    int
}

func (s *atkSigner) Name() string    { return s.name }
func (s *atkSigner) KeyHash() uint32 { return s.hash }
func (s *atkSigner) Sign(msg []byte) ([]byte, error) {
	var rb [64]byte
	rand.Read(rb[:])
	r, _ := new(edwards25519.Scalar).SetUniformBytes(rb[:])
	R := new(edwards25519.Point).ScalarBaseMult(r)
	if s.torsionR != nil {
		if T := s.torsionR(s.calls); T != nil {
			R.Add(R, T)
		}
	}
	s.calls++
	Rb := R.Bytes()
	h := sha512.New()
	h.Write(Rb)
	h.Write(s.pub)
	h.Write(msg)
	k, _ := new(edwards25519.Scalar).SetUniformBytes(h.Sum(nil))
	S := new(edwards25519.Scalar).MultiplyAdd(k, s.a, r)
	return append(Rb, S.Bytes()...), nil
}

// atkKey makes a key pair from a random seed exactly as crypto/ed25519 does
// (a = clamp(SHA-512(seed)[:32])), with A + torsionA published when set.
func atkKey(t testing.TB, name string, torsionA *edwards25519.Point) (*atkSigner, string) {
	t.Helper()
	seed := make([]byte, 32)
	rand.Read(seed)
	h := sha512.Sum512(seed)
	a, err := new(edwards25519.Scalar).SetBytesWithClamping(h[:32])
	if err != nil {
		t.Fatal(err)
	}
	A := new(edwards25519.Point).ScalarBaseMult(a)
	if !bytes.Equal(A.Bytes(), ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)) {
		t.Fatal("scalar derivation differs from crypto/ed25519")
	}
	if torsionA != nil {
		A.Add(A, torsionA)
	}
	pub := A.Bytes()
	key := append([]byte{1}, pub...)
	hs := sha256.Sum256(append([]byte(name+"\n"), key...))
	hash := binary.BigEndian.Uint32(hs[:])
	vkey := fmt.Sprintf("%s+%08x+%s", name, hash, base64.StdEncoding.EncodeToString(key))
	return &atkSigner{name: name, hash: hash, a: a, pub: pub}, vkey
}

func atkTrail(t testing.TB, s note.Signer, events int) string {
	t.Helper()
	dir := t.TempDir()
	l, err := Open(dir, Options{Signer: s, MACKey: testMAC})
	if err != nil {
		t.Fatal(err)
	}
	for i := range events { // one record, one commit, one checkpoint each
		if _, err := l.Append(map[string]any{"ev": "free", "i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// atkBoth verifies dir with the batched and the one-by-one verifier of vkey
// (and opts' other fields) and returns both reports as JSON.
func atkBoth(t testing.TB, dir, vkey string, opts VerifyOptions) (batched, alone string, bOK, aOK bool) {
	t.Helper()
	bv, err := NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bv.(*edVerifier); !ok {
		t.Fatalf("NewVerifier gave %T: nothing batched", bv)
	}
	av, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	var out [2]string
	var ok [2]bool
	for i, v := range []note.Verifier{bv, av} {
		o := opts
		o.Verifier, o.MACKey = v, testMAC
		rep, err := Verify(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		j, _ := json.Marshal(rep)
		out[i], ok[i] = string(j), rep.OK
	}
	return out[0], out[1], ok[0], ok[1]
}

// kvhAlone is an edVerifier that Verify cannot batch (it is not an
// *edVerifier): every signature is checked alone, by kvh's rule.
type kvhAlone struct{ note.Verifier }

// atkKVH verifies dir batched and with kvhAlone and returns both reports.
func atkKVH(t testing.TB, dir, vkey string) (batched, alone string, bOK, aOK bool) {
	t.Helper()
	bv, err := NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	var out [2]string
	var ok [2]bool
	for i, v := range []note.Verifier{bv, kvhAlone{bv}} {
		rep, err := Verify(dir, VerifyOptions{Verifier: v, MACKey: testMAC})
		if err != nil {
			t.Fatal(err)
		}
		j, _ := json.Marshal(rep)
		out[i], ok[i] = string(j), rep.OK
	}
	return out[0], out[1], ok[0], ok[1]
}

func atkSame(t *testing.T, what, dir, vkey string) {
	t.Helper()
	b, a, bok, aok := atkBoth(t, dir, vkey, VerifyOptions{})
	if b != a {
		t.Errorf("%s: the two paths differ (batched OK=%v, one by one OK=%v)\nbatched:    %s\none by one: %s", what, bok, aok, b, a)
	}
}

// atkEditSig rewrites the first signature of checkpoint line i (0-based)
// with f (f gets the 4-byte key hash and the signature).
func atkEditSig(t testing.TB, dir string, i int, f func(sig []byte) []byte) {
	t.Helper()
	atkEditNote(t, dir, i, func(n string) string {
		j := strings.Index(n, "\n\n") + 2
		line := n[j : strings.IndexByte(n[j:], '\n')+j]
		sp := strings.LastIndex(line, " ")
		raw, err := base64.StdEncoding.DecodeString(line[sp+1:])
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw[:4:4], f(bytes.Clone(raw[4:]))...)
		return n[:j] + line[:sp+1] + base64.StdEncoding.EncodeToString(raw) + n[j+len(line):]
	})
}

func atkEditNote(t testing.TB, dir string, i int, f func(string) string) {
	t.Helper()
	ckpt := filepath.Join(dir, CheckpointFile)
	lines := readLines(t, ckpt)
	var cl checkpointLine
	if err := json.Unmarshal(lines[i], &cl); err != nil {
		t.Fatal(err)
	}
	cl.Note = f(cl.Note)
	lines[i], _ = json.Marshal(cl)
	lines[i] = append(lines[i], '\n')
	writeLines(t, ckpt, lines)
}

// A key holder's signature whose R carries a small-order component,
// R = rB + T, s = r + H(R||A||M)a: crypto/ed25519 (cofactorless: [s]B - [k]A
// = rB != R) rejects it, kvh's rule (cofactored) accepts it, batched and
// alone alike. This is the one stated difference (edbatch.go), and it needs
// the key.
func TestEdBatchAttackKeyHolderTorsionR(t *testing.T) {
	T := atkTorsion8(t)
	s, vkey := atkKey(t, "kvh-atk", nil)
	msg := []byte("x\n")
	sig, _ := s.Sign(msg)
	if !ed25519.Verify(s.pub, msg, sig) {
		t.Fatal("honest signature refused: the crafting is wrong")
	}
	s.torsionR = func(int) *edwards25519.Point { return T }
	sig, _ = s.Sign(msg)
	if ed25519.Verify(s.pub, msg, sig) {
		t.Fatal("crypto/ed25519 accepted a torsioned R: the crafting is wrong")
	}
	kv, _ := NewVerifier(vkey)
	if !kv.Verify(msg, sig) {
		t.Fatal("kvh's rule refused a torsioned R alone")
	}

	dir := atkTrail(t, s, 20)
	b, a, bok, aok := atkKVH(t, dir, vkey)
	if b != a || !bok || !aok {
		t.Errorf("kvh batched and alone: OK %v / %v\nbatched: %s\nalone:   %s", bok, aok, b, a)
	}
	_, plain, _, plainOK := atkBoth(t, dir, vkey, VerifyOptions{})
	if plainOK {
		t.Errorf("note.NewVerifier (cofactorless) accepted the torsioned trail: %s", problemOf(plain))
	}
}

// A published key with a small-order component (A' = aB + T8): under it
// crypto/ed25519 accepts one signature in eight and a cofactored check all.
// NewVerifier refuses the key itself.
func TestEdBatchAttackKeyHolderTorsionA(t *testing.T) {
	_, vkey := atkKey(t, "kvh-atk", atkTorsion8(t))
	if _, err := NewVerifier(vkey); err == nil || !strings.Contains(err.Error(), "small-order") {
		t.Fatalf("NewVerifier took a key with a small-order component: %v", err)
	}
	if _, err := ParseKeyring([]byte(vkey + "\n")); err == nil {
		t.Fatal("ParseKeyring took a key with a small-order component")
	}
	// Honest keys, the identity, a small-order point, a non-canonical one.
	for range 20 {
		_, honest := atkKey(t, "kvh-ok", nil)
		if _, err := NewVerifier(honest); err != nil {
			t.Fatalf("an honest key refused: %v", err)
		}
	}
	id := edwards25519.NewIdentityPoint().Bytes()
	nonCanon := bytes.Repeat([]byte{0xff}, 32)
	nonCanon[0], nonCanon[31] = 0xee, 0x7f // y = p+1
	for name, pub := range map[string][]byte{"identity": id, "order 8": atkTorsion8(t).Bytes(), "y = p+1": nonCanon} {
		vk, err := note.NewEd25519VerifierKey("kvh-bad", ed25519.PublicKey(pub))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewVerifier(vk); err == nil {
			t.Errorf("NewVerifier took the %s as a key", name)
		}
	}
}

// One torsioned signature (line 11): kvh's verdict on it, and the problem a
// trail with another bad signature reports, do not depend on what else
// shares its batch of 128 (it would if a failed batch fell back to a
// cofactorless check).
func TestEdBatchAttackKeyHolderVerdictDependsOnChunk(t *testing.T) {
	const torsioned = 10 // 0-based checkpoint line
	T := atkTorsion8(t)
	s, vkey := atkKey(t, "kvh-atk", nil)
	s.torsionR = func(i int) *edwards25519.Point {
		if i == torsioned {
			return T
		}
		return nil
	}
	dir := atkTrail(t, s, 300)
	lines := readLines(t, filepath.Join(dir, CheckpointFile))
	if len(lines) < 260 {
		t.Fatalf("%d checkpoint lines", len(lines))
	}
	flip := func(sig []byte) []byte { sig[40] ^= 1; return sig }
	for _, c := range []struct {
		name string
		bad  int // 0-based checkpoint line whose s gets a bit flipped; -1 none
		want string
	}{
		{"torsioned line alone", -1, "OK=true"},
		{"bad signature in another chunk (line 251)", 250, "checkpoints.jsonl line 251: "},
		{"bad signature in the same chunk (line 51)", 50, "checkpoints.jsonl line 51: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			copyTree(t, dir, d)
			if c.bad >= 0 {
				atkEditSig(t, d, c.bad, flip)
			}
			b, a, _, _ := atkKVH(t, d, vkey)
			if b != a || !strings.HasPrefix(problemOf(b), c.want) {
				t.Errorf("want %q from both\nbatched: %s\nalone:   %s", c.want, problemOf(b), problemOf(a))
			}
		})
	}
}

func problemOf(js string) string {
	var r Report
	json.Unmarshal([]byte(js), &r)
	if r.Problem == nil {
		return fmt.Sprintf("OK=%v checkpoints=%d", r.OK, r.Checkpoints)
	}
	return r.Problem.String()
}

func copyTree(t testing.TB, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}

// What an attacker without the key can write into checkpoints.jsonl: every
// variant must get the same Report from both paths (these pass: recorded as
// checked and sound).
func TestEdBatchAttackNoKeyAgrees(t *testing.T) {
	k := newKeys(t, "kvh-nokey")
	vkey := k.signer.(keySigner).vkey
	dir := buildTrail(t, k, testMAC, 300, 0)
	n := len(readLines(t, filepath.Join(dir, CheckpointFile)))
	atkSame(t, "untouched", dir, vkey)

	T8 := atkTorsion8(t)
	pts := map[string]*edwards25519.Point{"T8": T8}
	T2 := new(edwards25519.Point).Add(T8, T8)
	T2.Add(T2, T2)
	pts["T2"] = T2
	T4 := new(edwards25519.Point).Add(T8, T8)
	pts["T4"] = T4
	addR := func(T *edwards25519.Point) func([]byte) []byte {
		return func(sig []byte) []byte {
			R, err := new(edwards25519.Point).SetBytes(sig[:32])
			if err != nil {
				panic(err)
			}
			return append(R.Add(R, T).Bytes(), sig[32:]...)
		}
	}
	id := edwards25519.NewIdentityPoint().Bytes()
	negZero := bytes.Clone(id)
	negZero[31] |= 0x80
	nonCanonID := bytes.Repeat([]byte{0xff}, 32)
	nonCanonID[0], nonCanonID[31] = 0xee, 0x7f
	muts := map[string]func([]byte) []byte{
		"R + T8":            addR(T8),
		"R + T4":            addR(T4),
		"R + T2":            addR(T2),
		"s + L":             func(sig []byte) []byte { return append(sig[:32], addL(sig[32:])...) },
		"R sign bit":        func(sig []byte) []byte { sig[31] ^= 0x80; return sig },
		"R = identity, s=0": func(sig []byte) []byte { return append(bytes.Clone(id), make([]byte, 32)...) },
		"R = -0, s=0":       func(sig []byte) []byte { return append(bytes.Clone(negZero), make([]byte, 32)...) },
		"R = p+1, s=0":      func(sig []byte) []byte { return append(bytes.Clone(nonCanonID), make([]byte, 32)...) },
		"R = T2, s=0":       func(sig []byte) []byte { return append(T2.Bytes(), make([]byte, 32)...) },
		"63 bytes":          func(sig []byte) []byte { return sig[:63] },
		"65 bytes":          func(sig []byte) []byte { return append(sig, 0) },
		"empty":             func(sig []byte) []byte { return nil },
	}
	for name, m := range muts {
		for _, line := range []int{0, 127, 128, n - 1} {
			d := t.TempDir()
			copyTree(t, dir, d)
			atkEditSig(t, d, line, m)
			atkSame(t, fmt.Sprintf("%s at line %d", name, line+1), d, vkey)
		}
	}
	// Another checkpoint's signature (valid, other message), pasted in.
	d := t.TempDir()
	copyTree(t, dir, d)
	var other []byte
	atkEditSig(t, d, 5, func(sig []byte) []byte { other = sig; return sig })
	atkEditSig(t, d, 200, func([]byte) []byte { return other })
	atkSame(t, "line 6's signature pasted on line 201", d, vkey)

	// Signature-line games.
	notes := map[string]func(n string) string{
		"two signatures by the key, first valid, second garbage": func(n string) string {
			j := strings.Index(n, "\n\n") + 2
			sl := n[j:]
			return n + strings.Replace(sl, sl[len(sl)-10:len(sl)-1], "AAAAAAAAA", 1)
		},
		"two signatures by the key, first garbage, second valid": func(n string) string {
			j := strings.Index(n, "\n\n") + 2
			sl := n[j:]
			return n[:j] + strings.Replace(sl, sl[len(sl)-10:len(sl)-1], "AAAAAAAAA", 1) + sl
		},
		"an unknown key's signature added": func(n string) string {
			return n + "— someone-else " + base64.StdEncoding.EncodeToString(make([]byte, 68)) + "\n"
		},
		"only an unknown key's signature": func(n string) string {
			j := strings.Index(n, "\n\n") + 2
			return n[:j] + "— someone-else " + base64.StdEncoding.EncodeToString(make([]byte, 68)) + "\n"
		},
		"valid signature then malformed line": func(n string) string { return n + "garbage\n" },
		"101 signature lines": func(n string) string {
			j := strings.Index(n, "\n\n") + 2
			return n + strings.Repeat(n[j:], 100)
		},
		"text altered": func(n string) string { return strings.Replace(n, "\n", "\nx", 1) },
	}
	for name, f := range notes {
		for _, line := range []int{0, 130, n - 1} {
			d := t.TempDir()
			copyTree(t, dir, d)
			atkEditNote(t, d, line, f)
			atkSame(t, fmt.Sprintf("%s at line %d", name, line+1), d, vkey)
		}
	}
	// The same key twice in the keyring, and a plain verifier beside it.
	bv, _ := NewVerifier(vkey)
	pv, _ := note.NewVerifier(vkey)
	for _, kr := range [][]note.Verifier{{bv, bv}, {bv, pv}, {pv, bv}} {
		rep, err := Verify(dir, VerifyOptions{Keyring: kr, MACKey: testMAC})
		if err != nil || !rep.OK {
			t.Errorf("keyring %T %T: %v %+v", kr[0], kr[1], err, rep.Problem)
		}
	}
}
