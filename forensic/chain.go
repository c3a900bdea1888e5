package forensic

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

// CheckpointFile is the file beside the segments that holds signed checkpoints.
const CheckpointFile = "checkpoints.jsonl"

// LockFile guards the trail directory against a second writer.
const LockFile = "LOCK"

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

// segFile is a segment file found in a trail directory.
type segFile struct {
	name  string
	path  string
	index uint64
	head  SegmentBody
	first parsed
}

// isSegmentName reports whether a directory entry may hold a segment.
func isSegmentName(name string) bool {
	return strings.HasSuffix(name, ".jsonl") && name != CheckpointFile
}

func segmentName(index uint64) string { return fmt.Sprintf("seg-%06d.jsonl", index) }

// listSegments reads the first record of every candidate file and returns the
// segments ordered by their internal index (never by name), plus notes on
// files that are not segments.
func listSegments(dir string) ([]segFile, []string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	var segs []segFile
	var notes []string
	for _, e := range ents {
		if !e.Type().IsRegular() || !isSegmentName(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		sf, err := readHead(path)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		sf.name = e.Name()
		segs = append(segs, sf)
	}
	sort.SliceStable(segs, func(i, j int) bool { return segs[i].index < segs[j].index })
	return segs, notes, nil
}

func readHead(path string) (segFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return segFile{}, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	line, err := readLine(br)
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, io.EOF) {
			return segFile{}, errors.New("empty file, not a segment")
		}
		return segFile{}, err
	}
	sf := segFile{path: path}
	if err := parseLine(line, &sf.first); err != nil {
		return segFile{}, fmt.Errorf("first line is not a record: %v", err)
	}
	if string(sf.first.kind) != KindSegment {
		return segFile{}, errors.New("first record is not a segment record")
	}
	if err := strictUnmarshal(sf.first.body, &sf.head); err != nil {
		return segFile{}, fmt.Errorf("segment record body: %v", err)
	}
	if sf.head.Size != sf.first.seq {
		return segFile{}, fmt.Errorf("segment record seq %d but declares size %d", sf.first.seq, sf.head.Size)
	}
	sf.index = sf.head.Segment
	return sf, nil
}

// readLine returns the next line without its newline. A final line with no
// newline is returned with io.EOF; longer than MaxLine is an error.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return line, fmt.Errorf("line longer than %d bytes", br.Size())
	}
	if err != nil {
		return line, err
	}
	return line[:len(line)-1], nil
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}
