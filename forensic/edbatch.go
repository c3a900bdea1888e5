package forensic

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"strings"

	"filippo.io/edwards25519"
	"golang.org/x/mod/sumdb/note"
)

// A trail carries one signed checkpoint per group commit, every one by the
// same key, and verifying them one by one was a third of a verify's CPU.
// Verify checks them in batches instead: one multi-scalar multiplication per
// batch, in which all the signatures by one key share that key's term (the
// "coalesced" batch equation of ed25519-zebra and ZIP 215).
//
// Soundness: with fresh random 128-bit z_i, the batch equation
//
//	[8]( sum z_i R_i + sum_key (sum_{i by key} z_i k_i) A_key - (sum z_i s_i) B ) = 0
//
// holds for a batch with a forged signature with probability about 2^-128.
// It is the group equation RFC 8032 §5.1.7 states ([8][S]B = [8]R + [8][k]A).
// crypto/ed25519 checks the cofactorless one, which RFC 8032 allows instead;
// every signature it accepts the batch accepts. Encodings are held to
// crypto/ed25519's rules here: s canonical, R and A canonical encodings (it
// compares R's encoding byte for byte). The two checks can disagree only on a
// signature whose R has a small-order component, which only the holder of
// the signing key can make. A batch that fails is checked one note at a
// time with crypto/ed25519, so what a failure reports is exactly what it
// reported before.

// edVerifier is a note verifier that also knows its Ed25519 public key, so
// that Verify can batch its signatures.
type edVerifier struct {
	note.Verifier
	pub [32]byte
}

// NewVerifier parses a note verifier key (vkey: <name>+<hash>+<base64 key>).
// Use it rather than note.NewVerifier for Verify's options: its Ed25519
// signatures are checked in batches.
func NewVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, err
	}
	parts := strings.SplitN(vkey, "+", 3) // names never hold '+'; base64 may
	if len(parts) != 3 {
		return v, nil
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 33 || raw[0] != 1 { // 1: note's Ed25519
		return v, nil
	}
	e := &edVerifier{Verifier: v}
	copy(e.pub[:], raw[1:])
	return e, nil
}

// edBatch collects Ed25519 signatures to check at once.
type edBatch struct {
	keys    [][32]byte
	entries []edEntry
	bad     bool // a signature of the wrong length was added
}

type edEntry struct {
	key  int      // index in keys
	r, s [32]byte // the signature's halves
	k    [64]byte // SHA-512(R || A || M)
}

func (b *edBatch) reset() {
	b.keys, b.entries, b.bad = b.keys[:0], b.entries[:0], false
}

func (b *edBatch) add(pub *[32]byte, msg, sig []byte) {
	if len(sig) != 64 {
		b.bad = true
		return
	}
	key := -1
	for i := range b.keys {
		if b.keys[i] == *pub {
			key = i
			break
		}
	}
	if key < 0 {
		key = len(b.keys)
		b.keys = append(b.keys, *pub)
	}
	b.entries = append(b.entries, edEntry{key: key})
	e := &b.entries[len(b.entries)-1]
	copy(e.r[:], sig[:32])
	copy(e.s[:], sig[32:])
	h := sha512.New()
	h.Write(sig[:32])
	h.Write(pub[:])
	h.Write(msg)
	h.Sum(e.k[:0])
}

var errEdBatch = errors.New("a signature in the batch does not verify")

// verify reports whether every signature added verifies (an empty batch
// does). On false it cannot say which: check them one by one.
func (b *edBatch) verify() error {
	if b.bad {
		return errEdBatch
	}
	n := len(b.entries)
	if n == 0 {
		return nil
	}
	scal := make([]edwards25519.Scalar, n+len(b.keys)+1)
	pts := make([]edwards25519.Point, n+len(b.keys)+1)
	sp := make([]*edwards25519.Scalar, len(scal))
	pp := make([]*edwards25519.Point, len(pts))
	for i := range scal {
		sp[i], pp[i] = &scal[i], &pts[i]
	}
	zs, ks, bc := scal[:n], scal[n:n+len(b.keys)], &scal[len(scal)-1]
	var rnd [16 * 64]byte
	var zb [32]byte
	var s, k edwards25519.Scalar
	for i := range b.entries {
		e := &b.entries[i]
		if i%64 == 0 {
			if _, err := rand.Read(rnd[:]); err != nil {
				return err
			}
		}
		if err := canonicalPoint(&pts[i], e.r[:]); err != nil {
			return err
		}
		if _, err := s.SetCanonicalBytes(e.s[:]); err != nil {
			return errEdBatch
		}
		if _, err := k.SetUniformBytes(e.k[:]); err != nil {
			return errEdBatch
		}
		copy(zb[:16], rnd[(i%64)*16:])
		if _, err := zs[i].SetCanonicalBytes(zb[:]); err != nil { // < 2^128 < L
			return err
		}
		bc.MultiplyAdd(&zs[i], &s, bc)
		ks[e.key].MultiplyAdd(&zs[i], &k, &ks[e.key])
	}
	for j := range b.keys {
		if err := canonicalPoint(&pts[n+j], b.keys[j][:]); err != nil {
			return err
		}
	}
	bc.Negate(bc)
	pts[len(pts)-1].Set(edwards25519.NewGeneratorPoint())
	check := new(edwards25519.Point).VarTimeMultiScalarMult(sp, pp)
	check.MultByCofactor(check)
	if check.Equal(edwards25519.NewIdentityPoint()) != 1 {
		return errEdBatch
	}
	return nil
}

// canonicalPoint decodes a point, refusing encodings crypto/ed25519 never
// produces: a y at or above p = 2^255-19, and x = 0 with the sign bit set
// (re-encoding to compare would cost a field inversion per point).
func canonicalPoint(p *edwards25519.Point, enc []byte) error {
	if len(enc) != 32 || yNotReduced(enc) || enc[31]&0x80 != 0 && yIsPlusMinusOne(enc) {
		return errEdBatch
	}
	if _, err := p.SetBytes(enc); err != nil {
		return errEdBatch
	}
	return nil
}

// yNotReduced: the low 255 bits, little-endian, are at least p.
func yNotReduced(enc []byte) bool {
	if enc[31]&0x7f != 0x7f || enc[0] < 0xed {
		return false
	}
	for _, c := range enc[1:31] {
		if c != 0xff {
			return false
		}
	}
	return true
}

// yIsPlusMinusOne: y is 1 or p-1, the two points whose x is 0.
func yIsPlusMinusOne(enc []byte) bool {
	one, minusOne := [32]byte{0: 1}, [32]byte{0: 0xec, 31: 0x7f}
	for i := 1; i < 31; i++ {
		minusOne[i] = 0xff
	}
	var y [32]byte
	copy(y[:], enc)
	y[31] &= 0x7f
	return y == one || y == minusOne
}

// deferredVerifier stands in for an edVerifier while a batch is gathered:
// it accepts every signature and adds it to the batch, which the caller
// must then verify.
type deferredVerifier struct {
	*edVerifier
	b *edBatch
}

func (d deferredVerifier) Verify(msg, sig []byte) bool {
	d.b.add(&d.pub, msg, sig)
	return true
}

// deferring returns vs with every edVerifier replaced by one that adds its
// signatures to b; ok is false when none could be (nothing to batch).
func deferring(vs []note.Verifier, b *edBatch) (note.Verifiers, bool) {
	out := make([]note.Verifier, len(vs))
	ok := false
	for i, v := range vs {
		out[i] = v
		if e, is := v.(*edVerifier); is {
			out[i], ok = deferredVerifier{e, b}, true
		}
	}
	return note.VerifierList(out...), ok
}
