package forensic

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
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
// kvh's Ed25519 rule, for every key NewVerifier makes, batched or alone:
//
//   - s is canonical (below the group order L), R's encoding is canonical
//     (y below p, no x = 0 with the sign bit set);
//   - the key is canonical, not the identity, and has no small-order
//     component (NewVerifier refuses it otherwise: no key kvh-verify keygen
//     or crypto/ed25519 makes is refused);
//   - the group equation RFC 8032 §5.1.7 states holds: [8][s]B = [8]R + [8][k]A.
//
// A batch checks, with fresh random 128-bit z_i (nonzero),
//
//	[8]( sum z_i R_i + sum_key (sum_{i by key} z_i k_i) A_key - (sum z_i s_i) B ) = 0,
//
// which holds for every batch of signatures that pass the rule, and for a
// batch with one that does not with probability about 2^-128. A batch that
// fails is checked one note at a time with the same rule, so what Verify
// reports does not depend on which checkpoints share a batch.
//
// crypto/ed25519 (and note.NewVerifier) checks the cofactorless equation
// [s]B = R + [k]A instead, which RFC 8032 allows. Every signature it accepts
// with a key NewVerifier takes, this rule accepts. The converse fails only
// for a signature whose R has a small-order component, which only the
// holder of the signing key can make: a cofactorless verifier rejects it,
// kvh accepts it. Batching needs the cofactored equation (a cofactorless
// batch check is probabilistic exactly there), so kvh states its rule rather
// than mimic one it cannot batch.

// edVerifier is a note verifier that also knows its Ed25519 public key, so
// that Verify can batch its signatures. Alone, it checks kvh's rule.
type edVerifier struct {
	note.Verifier
	pub [32]byte
}

// Verify checks one signature by kvh's rule (a batch of one).
func (e *edVerifier) Verify(msg, sig []byte) bool {
	var b edBatch
	b.add(&e.pub, msg, sig)
	return b.verify() == nil
}

// NewVerifier parses a note verifier key (vkey: <name>+<hash>+<base64 key>).
// Use it rather than note.NewVerifier for Verify's options: its Ed25519
// signatures are checked by kvh's rule, in batches. A key with a
// small-order component, the identity or a non-canonical encoding is
// refused (no key generator makes one).
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
	if err := primeOrderKey(e.pub[:]); err != nil {
		return nil, fmt.Errorf("verifier key %s: %w", v.Name(), err)
	}
	return e, nil
}

// primeOrderKey refuses a public key that is not a canonical encoding of a
// point of the prime-order subgroup other than the identity.
func primeOrderKey(enc []byte) error {
	var a edwards25519.Point
	if canonicalPoint(&a, enc) != nil {
		return errors.New("the Ed25519 public key is not a canonical point encoding")
	}
	id := edwards25519.NewIdentityPoint()
	if a.Equal(id) == 1 {
		return errors.New("the Ed25519 public key is the identity")
	}
	// [L]A = [L-1]A + A, with L-1 as the scalar -1 (its canonical value).
	one, _ := new(edwards25519.Scalar).SetCanonicalBytes(append([]byte{1}, make([]byte, 31)...))
	la := new(edwards25519.Point).ScalarMult(new(edwards25519.Scalar).Negate(one), &a)
	if la.Add(la, &a).Equal(id) != 1 {
		return errors.New("the Ed25519 public key has a small-order component")
	}
	return nil
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
		// z in [2^127, 2^128): never 0, always below L
		zb[15] |= 0x80
		if _, err := zs[i].SetCanonicalBytes(zb[:]); err != nil {
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
