package forensic

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

var rangeFactory = compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// chain is the running state both the writer and the verifier keep: the next
// seq, the previous leaf hash and the Merkle frontier.
type chain struct {
	rng  *compact.Range
	prev [32]byte
	mac  hash.Hash // nil: MACs are not checked (or not written)
	// macAlg is what the trail declared; when it is hmac-sha256 every record
	// must carry a MAC whether or not it can be checked.
	macAlg string
}

func newChain(size uint64, frontier [][]byte) (*chain, error) {
	rng, err := rangeFactory.NewRange(0, size, frontier)
	if err != nil {
		return nil, fmt.Errorf("frontier for size %d: %w", size, err)
	}
	return &chain{rng: rng}, nil
}

func (c *chain) size() uint64 { return c.rng.End() }

func (c *chain) root() []byte {
	r, err := c.rng.GetRootHash(nil)
	if err != nil { // cannot happen for a range starting at 0
		panic(err)
	}
	return r
}

// accept checks that line is the next record of the chain and appends it.
// First-record-after-prune callers pass skipPrev.
func (c *chain) accept(line []byte, p *parsed, skipPrev bool) error {
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
	case p.mac != nil && c.mac != nil && !checkMAC(line, p, c.mac):
		return errors.New("MAC invalid")
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(line)
	if err := c.rng.Append(leaf, nil); err != nil {
		return err
	}
	copy(c.prev[:], leaf)
	return nil
}

func newMAC(key []byte) hash.Hash {
	if key == nil {
		return nil
	}
	return hmac.New(sha256.New, key)
}
