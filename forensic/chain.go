package forensic

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

var rangeFactory = compact.RangeFactory{Hash: hashChildren}

// hashChildren is rfc6962.DefaultHasher.HashChildren without its digest
// allocation (the profile of verify had one per record);
// TestHashChildren pins it to the library's.
func hashChildren(l, r []byte) []byte {
	var in [1 + 2*sha256.Size]byte
	in[0] = rfc6962.RFC6962NodeHashPrefix
	if len(l) != sha256.Size || len(r) != sha256.Size {
		return rfc6962.DefaultHasher.HashChildren(l, r)
	}
	copy(in[1:], l)
	copy(in[1+sha256.Size:], r)
	sum := sha256.Sum256(in[:])
	return sum[:]
}

// chain is the running state both the writer and the verifier keep: the next
// seq, the previous leaf hash and the Merkle frontier.
type chain struct {
	rng   *compact.Range
	arena hashArena // storage for the hashes rng keeps
	prev  [32]byte
	mac   hash.Hash // nil: MACs are not checked (or not written); set with setMAC
	// macKey is the key mac was made from: a verifier's workers check MACs
	// ahead with a key, and accept uses their verdict only for this one.
	macKey []byte
	// macAlg is what the trail declared; when it is hmac-sha256 every record
	// must carry a MAC whether or not it can be checked.
	macAlg string
}

func newChain(size uint64, frontier [][]byte) (*chain, error) {
	c := &chain{}
	rng, err := (&compact.RangeFactory{Hash: c.arena.hashChildren}).NewRange(0, size, frontier)
	if err != nil {
		return nil, fmt.Errorf("frontier for size %d: %w", size, err)
	}
	c.rng = rng
	return c, nil
}

// hashArena hands out 32-byte hashes carved from shared chunks. The compact
// range keeps the slices it is given and computes, so each needs storage of
// its own; one allocation per chunk instead of one per hash (the verify
// profile had two per record: the leaf and hashChildren's node).
type hashArena struct{ buf []byte }

const arenaChunk = 4 << 10 // the frontier keeps at most 64 hashes: they pin at most 64 chunks

func (a *hashArena) keep(h *[sha256.Size]byte) []byte {
	if cap(a.buf)-len(a.buf) < sha256.Size {
		a.buf = make([]byte, 0, arenaChunk)
	}
	n := len(a.buf)
	a.buf = append(a.buf, h[:]...)
	return a.buf[n : n+sha256.Size : n+sha256.Size]
}

// hashChildren is the package's hashChildren with the node kept in the arena.
func (a *hashArena) hashChildren(l, r []byte) []byte {
	if len(l) != sha256.Size || len(r) != sha256.Size {
		return rfc6962.DefaultHasher.HashChildren(l, r)
	}
	var in [1 + 2*sha256.Size]byte
	in[0] = rfc6962.RFC6962NodeHashPrefix
	copy(in[1:], l)
	copy(in[1+sha256.Size:], r)
	sum := sha256.Sum256(in[:])
	return a.keep(&sum)
}

func (c *chain) size() uint64 { return c.rng.End() }

func (c *chain) root() []byte {
	r, err := c.rng.GetRootHash(nil)
	if err != nil { // cannot happen for a range starting at 0
		panic(err)
	}
	return r
}

// setMAC makes MACs checked (or written) with key; nil turns them off.
func (c *chain) setMAC(key []byte) {
	c.mac, c.macKey = newMAC(key), key
}

// accept checks that line is the next record of the chain and appends it.
// First-record-after-prune callers pass skipPrev.
func (c *chain) accept(line []byte, p *parsed, skipPrev bool) error {
	return c.acceptPre(line, p, skipPrev, nil)
}

// acceptPre is accept given what a verifier's worker computed ahead for
// the line (pre.p must be p): its leaf hash, and its MAC verdict when the
// worker checked it with this chain's key. pre nil computes both here.
func (c *chain) acceptPre(line []byte, p *parsed, skipPrev bool, pre *preLine) error {
	if p.seq != c.size() {
		return fmt.Errorf("seq %d, expected %d", p.seq, c.size())
	}
	if !skipPrev && p.prev != c.prev {
		return errors.New("prev does not match the hash of the previous record (previous line altered, removed or inserted)")
	}
	switch {
	case c.macAlg == MACAlgHMACSHA256 && p.mac == nil:
		return errors.New("MAC missing (the trail declares hmac-sha256)")
	case c.macAlg == MACAlgNone && p.mac != nil:
		return errors.New("MAC present but the trail declares none")
	case p.mac != nil && c.mac != nil && !c.macValid(line, p, pre):
		return errors.New("MAC invalid")
	}
	var leaf []byte
	if pre != nil {
		leaf = c.arena.keep(&pre.leaf) // pre is reused for a later line
	} else {
		leaf = rfc6962.DefaultHasher.HashLeaf(line)
	}
	if err := c.rng.Append(leaf, nil); err != nil {
		return err
	}
	copy(c.prev[:], leaf)
	return nil
}

func (c *chain) macValid(line []byte, p *parsed, pre *preLine) bool {
	if pre != nil && pre.mac != macUnchecked && bytes.Equal(pre.macKey, c.macKey) {
		return pre.mac == macOK
	}
	return checkMAC(line, p, c.mac)
}

// preLine is what a verifier's worker computes for a line ahead of the
// sequential walk: everything that needs no state from earlier lines.
type preLine struct {
	p      parsed
	perr   error
	leaf   [32]byte
	mac    int8   // macUnchecked, macOK or macBad
	macKey []byte // the key the MAC was checked with
}

const (
	macUnchecked int8 = iota
	macOK
	macBad
)

// lineWorker is one verify worker's private state.
type lineWorker struct {
	leaf   hash.Hash
	mac    hash.Hash
	macKey []byte
	// alt are the other MAC keys given (a trail whose MAC key rotated): a
	// line whose MAC fails with macKey is tried with each (and the one that
	// verifies becomes macKey), so that a rekey inside a segment does not
	// leave its rest to the ordered walk.
	alt    []hash.Hash
	altKey [][]byte
}

func newLineWorker(macKey []byte, alt ...[]byte) *lineWorker {
	w := &lineWorker{leaf: sha256.New(), mac: newMAC(macKey), macKey: macKey}
	for _, k := range alt {
		if k != nil && !bytes.Equal(k, macKey) {
			w.alt, w.altKey = append(w.alt, newMAC(k)), append(w.altKey, k)
		}
	}
	return w
}

var leafPrefix = []byte{rfc6962.RFC6962LeafHashPrefix}

// prepLine parses a record line, hashes its leaf and checks its MAC.
func prepLine(w *lineWorker, line []byte, out *preLine) {
	out.mac, out.macKey = macUnchecked, nil
	if out.perr = parseLine(line, &out.p); out.perr != nil {
		return
	}
	w.leaf.Reset()
	w.leaf.Write(leafPrefix)
	w.leaf.Write(line)
	w.leaf.Sum(out.leaf[:0])
	if w.mac != nil && out.p.mac != nil {
		out.mac, out.macKey = macBad, w.macKey
		if checkMAC(line, &out.p, w.mac) {
			out.mac = macOK
			return
		}
		for i, m := range w.alt {
			if checkMAC(line, &out.p, m) {
				out.mac, out.macKey = macOK, w.altKey[i]
				// Lines come in runs under one key: try this one first now.
				w.mac, w.alt[i] = w.alt[i], w.mac
				w.macKey, w.altKey[i] = w.altKey[i], w.macKey
				return
			}
		}
	}
}

func newMAC(key []byte) hash.Hash {
	if key == nil {
		return nil
	}
	return hmac.New(sha256.New, key)
}
