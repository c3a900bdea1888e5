package forensic

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// VerifyOptions say what an auditor trusts.
type VerifyOptions struct {
	// Verifier is the trail's public key. Nil is refused unless NoSignatures
	// (or a Keyring is given).
	Verifier note.Verifier
	// Keyring holds further keys the auditor trusts, for a trail whose keys
	// rotated. Keys a sealed rekey record introduces need not be listed: the
	// verifier follows the chain from any trusted key.
	Keyring []note.Verifier
	// NoSignatures skips checkpoint signatures; the report says so loudly.
	NoSignatures bool
	// MACKey checks every record's MAC when the trail declares one.
	MACKey []byte
	// MACKeys are further MAC keys, for a trail whose MAC key rotated: each
	// epoch's records are checked with the key whose id its rekey record
	// names (an epoch whose key is not given is reported as not checked).
	// Records under MACKey are checked fastest (ahead, on every core).
	MACKeys [][]byte
	// Origin, when set, pins the log's origin.
	Origin string
	// External holds signed checkpoints kept off the node; the trail must
	// still contain everything each attests.
	External [][]byte
	// AllowUnsealed accepts records after the latest signed checkpoint (a
	// live trail copied mid-commit, or a crashed writer not yet restarted)
	// with a warning instead of a failure.
	AllowUnsealed bool
	// Progress, when set, is called with bytes read so far and bytes in all.
	Progress func(done, total int64)
}

// Problem names the first thing that failed verification.
type Problem struct {
	Segment string  `json:"segment,omitempty"`
	Line    int     `json:"line,omitempty"`
	Seq     *uint64 `json:"seq,omitempty"`
	Reason  string  `json:"reason"`
}

func (p *Problem) String() string {
	var b strings.Builder
	if p.Segment != "" {
		b.WriteString(p.Segment)
		if p.Line > 0 {
			fmt.Fprintf(&b, " line %d", p.Line)
		}
		b.WriteString(": ")
	}
	if p.Seq != nil {
		fmt.Fprintf(&b, "seq %d: ", *p.Seq)
	}
	b.WriteString(p.Reason)
	return b.String()
}

// Report is Verify's verdict.
type Report struct {
	OK                  bool        `json:"ok"`
	Origin              string      `json:"origin"`
	Records             uint64      `json:"records"`
	FirstSeq            uint64      `json:"first_seq"`
	Segments            int         `json:"segments"`
	Bytes               int64       `json:"bytes"`
	Checkpoints         int         `json:"checkpoints_matched"`
	CheckpointsPruned   int         `json:"checkpoints_before_prune"`
	LatestCheckpoint    uint64      `json:"latest_checkpoint_size"`
	ExternalCheckpoints int         `json:"external_checkpoints_matched"`
	Unsealed            uint64      `json:"unsealed_records"`
	Signatures          string      `json:"signatures"`
	MAC                 string      `json:"mac"`
	Open                bool        `json:"last_segment_open"`
	Prunes              []PruneBody `json:"prunes,omitempty"`
	// Keys is the signing key history: which key covered which records,
	// one entry per key epoch (several after rekey records).
	Keys []KeyEpoch `json:"keys,omitempty"`
	// Tamper lists the tamper_detected records: this log was started over a
	// trail found tampered with, whose files are kept in the named evidence
	// directory (verify that directory on its own to see the tampering).
	Tamper   []TamperBody `json:"tamper_detected,omitempty"`
	Warnings []string     `json:"warnings,omitempty"`
	Problem  *Problem     `json:"problem,omitempty"`

	// rekeyProofs are the trail's rekey records with what proves them
	// against their seals; Prune carries them in its prune record.
	rekeyProofs []RekeyProof
	// macKeyID names the given MAC key that verified the last epoch (""
	// when none did): the key a writer appending to this trail must use.
	// Its id, not the key: a caller may log the Report.
	macKeyID string
}

type verifier struct {
	d      *trailDir
	opts   VerifyOptions
	rep    *Report
	roots  map[uint64][]byte // size -> root from local checkpoints
	ext    map[uint64][]byte // size -> root from external checkpoints
	c      *chain
	prunes []prunedAt
	// why the last segment's walk stopped early, for a torn tail that the next
	// segment fails to declare
	tornLine   int
	tornReason string
	blocks     blockPool[preLine] // shared by the segments' line pipes
	done       int64
	total      int64

	// Keys (rekey.go): every key known so far, the signers of each verified
	// checkpoint, checkpoints waiting for their key, and the roots seen at
	// the sizes those claim.
	keys       map[string]*keyState
	known      note.Verifiers
	knownList  []note.Verifier // known, as a list (openCheckpoints batches it)
	sigs       map[uint64][]string
	pend       []pendingNote
	pendAt     map[uint64]bool
	seen       map[uint64][]byte
	cur        string
	curVKey    string
	epochStart uint64
	curSeg     string
	// MAC epochs: the given keys by id, the current epoch's key id ("?":
	// none of the given keys verifies its first record).
	macKeys      map[string][]byte
	macID        string
	macBad       *macFirstBad
	macPicked    bool
	macVerified  bool
	macUnchecked []string
}

type prunedAt struct {
	seq  uint64
	body PruneBody
}

type verifyErr struct{ p Problem }

func (e *verifyErr) Error() string { return e.p.String() }

func fail(seg string, line int, seq *uint64, format string, args ...any) error {
	return &verifyErr{Problem{Segment: seg, Line: line, Seq: seq, Reason: fmt.Sprintf(format, args...)}}
}

func seqp(s uint64) *uint64 { return &s }

// Verify checks a trail directory: segments, chain, MACs, signed checkpoints,
// linkage, torn tails and prune records. A tampered trail is a Report with
// OK false and Problem set, not an error; the error is for I/O trouble and
// refused options.
func Verify(dir string, opts VerifyOptions) (*Report, error) {
	if opts.Verifier == nil && len(opts.Keyring) == 0 && !opts.NoSignatures {
		return nil, errors.New("a verification key is required (or explicitly skip signatures)")
	}
	d, err := openTrailDir(dir, false)
	if err != nil {
		return nil, err
	}
	defer d.close()
	v := &verifier{d: d, opts: opts, rep: &Report{}, roots: map[uint64][]byte{}, ext: map[uint64][]byte{}, blocks: newBlockPool[preLine]()}
	v.sigs, v.pendAt, v.seen = map[uint64][]string{}, map[uint64]bool{}, map[uint64][]byte{}
	v.initKeys()
	err = v.run(dir)
	var ve *verifyErr
	switch {
	case errors.As(err, &ve):
		v.rep.Problem = &ve.p
	case err != nil:
		return nil, err
	default:
		v.rep.OK = true
	}
	return v.rep, nil
}

func (v *verifier) run(dir string) error {
	rep := v.rep
	rep.Signatures = "verified"
	if v.opts.NoSignatures {
		rep.Signatures = "NOT CHECKED"
	}
	segs, notes, err := listSegments(v.d)
	if err != nil {
		return err
	}
	for _, n := range notes {
		rep.Warnings = append(rep.Warnings, "ignored "+n)
	}
	if len(segs) == 0 {
		return fail("", 0, nil, "no segments found in %s", dir)
	}
	rep.Origin = segs[0].head.Origin
	if v.opts.Origin != "" && rep.Origin != v.opts.Origin {
		return fail(segs[0].name, 1, nil, "origin %q, expected %q", rep.Origin, v.opts.Origin)
	}
	for i, s := range segs {
		if s.head.Origin != rep.Origin {
			return fail(s.name, 1, seqp(s.first.seq), "origin %q differs from %q (segment from another log)", s.head.Origin, rep.Origin)
		}
		if i > 0 && segs[i-1].index == s.index {
			return fail(s.name, 1, nil, "segment %d appears twice (also %s): replayed copy", s.index, segs[i-1].name)
		}
		if s.name != segmentName(s.index) {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s holds segment %d (renamed; ordered by its internal index)", s.name, s.index))
		}
		if st, err := os.Stat(s.path); err == nil {
			v.total += st.Size()
		}
	}
	if err := v.loadCheckpoints(); err != nil {
		return err
	}
	first := segs[0]
	rep.FirstSeq = first.head.Size
	switch first.head.MACAlg {
	case MACAlgHMACSHA256:
		rep.MAC = "present on every record, NOT CHECKED (no key given)"
		if len(v.macKeys) > 0 {
			rep.MAC = "verified"
		}
	case MACAlgNone:
		rep.MAC = "none declared"
		if len(v.macKeys) > 0 {
			return fail(first.name, 1, seqp(first.first.seq), "a MAC key was given but the trail declares no MAC (stripped?)")
		}
	default:
		return fail(first.name, 1, seqp(first.first.seq), "unknown mac_alg %q", first.head.MACAlg)
	}
	if first.index != 0 && first.head.Size == 0 {
		return fail(first.name, 1, seqp(0), "segment %d claims to start the log", first.index)
	}
	if first.index == 0 && (first.head.Size != 0 || first.head.PrevFile != "" || first.head.Torn != nil) {
		return fail(first.name, 1, seqp(first.first.seq), "genesis segment record is malformed")
	}
	c, err := newChain(first.head.Size, first.head.Frontier)
	if err != nil {
		return fail(first.name, 1, seqp(first.first.seq), "frontier: %v", err)
	}
	c.macAlg = first.head.MACAlg // the MAC key: pickMAC, on the first record
	v.epochStart = first.head.Size
	if first.index == 0 {
		c.prev = [32]byte{}
	} else {
		c.prev = first.first.prev // the record it chains to was pruned
	}
	v.c = c
	if first.index > 0 {
		// Rekey records pruned away: the prune records carry them.
		if err := v.prunedRekeys(segs); err != nil {
			return err
		}
	}
	if err := v.matchRoot(first.name, 1); err != nil {
		return err
	}
	var pendingTorn *Torn
	var pendingName string
	for i, s := range segs {
		if i > 0 {
			prev := segs[i-1]
			if s.index != prev.index+1 {
				return fail(s.name, 1, seqp(s.first.seq), "segment(s) %d..%d missing", prev.index+1, s.index-1)
			}
		}
		torn, err := v.segment(s, i == len(segs)-1, pendingTorn, pendingName)
		if err != nil {
			return err
		}
		pendingTorn, pendingName = torn, s.name
	}
	rep.Segments = len(segs)
	rep.Records = c.size() - rep.FirstSeq
	if err := v.finishMAC(c.size() - 1); err != nil {
		return err
	}
	if c.macKey != nil {
		rep.macKeyID = KeyID(c.macKey)
	}
	// Truncation: anything a signed checkpoint attests must still be here.
	for size := range v.roots {
		if ok, why := v.signedAt(size); size > c.size() && !ok && !v.opts.NoSignatures {
			return fail(CheckpointFile, 0, nil, "the checkpoint for size %d is signed by %s", size, why)
		}
	}
	for size := range v.roots {
		if size > c.size() {
			return fail(segs[len(segs)-1].name, 0, seqp(c.size()), "TRUNCATION: a signed checkpoint attests %d records, only %d present", maxKey(v.roots), c.size())
		}
	}
	for size := range v.ext {
		if size > c.size() {
			return fail(segs[len(segs)-1].name, 0, seqp(c.size()), "TRUNCATION: the external checkpoint attests %d records, only %d present", maxKey(v.ext), c.size())
		}
	}
	if len(v.opts.External) > 0 && rep.ExternalCheckpoints < len(v.ext) {
		return fail("", 0, nil, "an external checkpoint predates the first present record and cannot be checked")
	}
	latest := maxKey(v.roots)
	rep.LatestCheckpoint = latest
	if err := v.finishKeys(c.size() - 1); err != nil {
		return err
	}
	if latest == 0 && !v.opts.NoSignatures {
		return fail(CheckpointFile, 0, nil, "no signed checkpoint covers the trail")
	}
	if c.size() > latest {
		rep.Unsealed = c.size() - max(latest, rep.FirstSeq)
		// The writer seals every commit, on open and on close, so records past
		// the last seal mean a tail appended by someone else, or a writer that
		// stopped mid-commit and has not been restarted.
		if !v.opts.AllowUnsealed && !v.opts.NoSignatures {
			return fail(segs[len(segs)-1].name, 0, seqp(max(latest, rep.FirstSeq)),
				"%d record(s) after the latest signed checkpoint are not covered by a signature (appended after the last seal, or the writer stopped before sealing: restart it to seal, or verify with --allow-unsealed)", rep.Unsealed)
		}
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%d record(s) after the latest checkpoint are not covered by a signature", rep.Unsealed))
	}
	// Pruning: a missing head is fine only if a sealed prune record allows it.
	if first.index > 0 {
		authorised := uint64(0)
		for _, p := range v.prunes {
			if p.seq < latest && p.body.BeforeSegment > authorised {
				authorised = p.body.BeforeSegment
			}
		}
		if authorised < first.index {
			if authorised == 0 {
				return fail(first.name, 1, seqp(first.first.seq), "segments 0..%d missing and no signed prune record authorises it", first.index-1)
			}
			return fail(first.name, 1, seqp(first.first.seq), "segments %d..%d missing: pruned beyond the authorised point (before segment %d)", authorised, first.index-1, authorised)
		}
	}
	return nil
}

func maxKey(m map[uint64][]byte) uint64 {
	var k uint64
	for s := range m {
		k = max(k, s)
	}
	return k
}

// matchRoot compares the running root against any checkpoint of this size.
func (v *verifier) matchRoot(seg string, line int) error {
	size := v.c.size()
	if len(v.pendAt) > 0 {
		v.notePending()
	}
	want, ok := v.roots[size]
	ext, eok := v.ext[size]
	if !ok && !eok {
		return nil
	}
	root := v.c.root()
	if !v.opts.NoSignatures {
		if good, why := v.signedAt(size); !good {
			return fail(seg, line, seqp(size-1), "the checkpoint for size %d is signed by %s", size, why)
		}
	}
	if ok {
		if !bytes.Equal(root, want) {
			return fail(seg, line, seqp(size-1), "root at size %d does not match the signed checkpoint", size)
		}
		v.rep.Checkpoints++
	}
	if eok {
		if !bytes.Equal(root, ext) {
			return fail(seg, line, seqp(size-1), "root at size %d does not match the external checkpoint (history rewritten)", size)
		}
		v.rep.ExternalCheckpoints++
	}
	return nil
}

// segment walks one segment. It returns the torn tail declaration the next
// segment must carry (nil when the segment closed cleanly).
func (v *verifier) segment(s segFile, last bool, torn *Torn, prevName string) (*Torn, error) {
	c := v.c
	h := s.head
	if s.first.seq != c.size() && prevName != "" {
		return nil, fail(s.name, 1, seqp(s.first.seq), "seq %d, expected %d (segment does not continue the previous one)", s.first.seq, c.size())
	}
	if prevName != "" {
		if h.MACAlg != c.macAlg {
			return nil, fail(s.name, 1, seqp(s.first.seq), "mac_alg %q changed from %q", h.MACAlg, c.macAlg)
		}
		if !slices.EqualFunc(h.Frontier, c.rng.Hashes(), bytes.Equal) {
			return nil, fail(s.name, 1, seqp(s.first.seq), "frontier does not match the records before it (replayed or foreign segment)")
		}
		switch {
		case torn == nil && h.Torn != nil:
			return nil, fail(s.name, 1, seqp(s.first.seq), "declares a torn tail but %s was closed cleanly", prevName)
		case torn != nil && h.Torn == nil:
			return nil, fail(prevName, 0, nil, "segment ends without a close record and %s declares no torn tail", s.name)
		case torn != nil:
			if h.Torn.ValidLen != torn.ValidLen || h.Torn.TornLen != torn.TornLen || !bytes.Equal(h.Torn.TornSHA256, torn.TornSHA256) {
				if v.tornReason != "" {
					return nil, fail(prevName, v.tornLine, nil, "%s (not declared as a torn tail by %s)", v.tornReason, s.name)
				}
				return nil, fail(prevName, 0, nil, "%s does not declare exactly this segment's torn tail (%d bytes after offset %d)", s.name, torn.TornLen, torn.ValidLen)
			}
			if h.Torn.File != prevName {
				v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s declares the torn tail of %q, found as %s", s.name, h.Torn.File, prevName))
			}
			if torn.TornLen > 0 {
				v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s: %d torn byte(s) after offset %d from an unclean stop, declared by %s", prevName, torn.TornLen, torn.ValidLen, s.name))
			}
		}
	}
	f, err := v.d.open(s.name, os.O_RDONLY, 0, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Workers check MACs with the key in force where the segment starts
	// (a rekey inside it is rare: accept checks those lines itself).
	wkey := v.opts.MACKey
	if c.macKey != nil {
		wkey = c.macKey
	}
	alt := v.opts.MACKeys
	if len(alt) > 0 {
		alt = append([][]byte{v.opts.MACKey}, alt...)
	}
	lp := newLinePipe(f, MaxLine, v.blocks, func() *lineWorker { return newLineWorker(wkey, alt...) }, prepLine)
	defer lp.stop()
	var off int64
	lineNo := 0
	closed := false
	for {
		line, pre, rerr := lp.next()
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return v.tornOrFail(s, f, off, lineNo+1, last, closed, rerr.Error())
		}
		if errors.Is(rerr, io.EOF) {
			if len(line) == 0 {
				break
			}
			// A final line with no newline: only a crash leaves that.
			return v.tornOrFail(s, f, off, lineNo+1, last, closed, "incomplete final line")
		}
		lineNo++
		if closed {
			return nil, fail(s.name, lineNo, nil, "data after the close record")
		}
		if pre.perr != nil {
			return v.tornOrFail(s, f, off, lineNo, last, closed, pre.perr.Error())
		}
		p := &pre.p
		switch kind := string(p.kind); {
		case lineNo == 1:
			if !v.macPicked {
				v.curSeg = s.name
				v.pickMAC(line, p)
			}
			if err := c.acceptPre(line, p, prevName == "", pre); err != nil {
				return nil, fail(s.name, lineNo, seqp(p.seq), "%v", err)
			}
		case kind == KindSegment:
			return nil, fail(s.name, lineNo, seqp(p.seq), "segment record inside a segment")
		default:
			var before [][]byte
			if kind == KindRekey { // rare: keep what proves it after a prune
				for _, h := range c.rng.Hashes() { // Append reuses the slice
					before = append(before, bytes.Clone(h))
				}
			}
			if err := c.acceptPre(line, p, false, pre); err != nil {
				return nil, fail(s.name, lineNo, seqp(p.seq), "%v", err)
			}
			switch kind {
			case KindClose:
				var cb CloseBody
				if err := strictUnmarshal(p.body, &cb); err != nil || cb.Segment != s.index {
					return nil, fail(s.name, lineNo, seqp(p.seq), "malformed close record")
				}
				closed = true
			case KindPrune:
				var pb PruneBody
				if err := strictUnmarshal(p.body, &pb); err != nil {
					return nil, fail(s.name, lineNo, seqp(p.seq), "malformed prune record: %v", err)
				}
				v.prunes = append(v.prunes, prunedAt{p.seq, pb})
				v.rep.Prunes = append(v.rep.Prunes, pb)
			case KindTamper:
				if err := v.tamper(s.name, lineNo, p.seq, p.body); err != nil {
					return nil, err
				}
			case KindRekey:
				if err := v.rekey(s.name, lineNo, p.seq, p.body, nil); err != nil {
					return nil, err
				}
				v.rep.rekeyProofs = append(v.rep.rekeyProofs, RekeyProof{Seq: p.seq, Record: bytes.Clone(line), Frontier: before})
			case KindEvent, KindTick:
			default:
				return nil, fail(s.name, lineNo, seqp(p.seq), "unknown record kind %q", kind)
			}
		}
		if err := v.matchRoot(s.name, lineNo); err != nil {
			return nil, err
		}
		off += int64(len(line)) + 1
		v.progress(int64(len(line)) + 1)
	}
	v.rep.Bytes += off
	if closed {
		return nil, nil
	}
	if last {
		v.rep.Open = true
		return nil, nil
	}
	v.tornLine, v.tornReason = 0, ""
	sum := sha256.Sum256(nil)
	return &Torn{File: s.name, ValidLen: off, TornLen: 0, TornSHA256: sum[:]}, nil
}

// tornOrFail handles the first line that does not verify: in a segment that
// a later one follows it may be a declared torn tail; anywhere else, and in
// the last segment unless it is an incomplete final line, it is a failure.
// A torn write leaves only an incomplete final line: complete records in a
// torn tail were cut off, not torn (a forgery laundered by a restart that
// declared them torn), and nothing may follow a close record.
func (v *verifier) tornOrFail(s segFile, f *os.File, off int64, lineNo int, last, closed bool, reason string) (*Torn, error) {
	// What is left is read as a stream, never whole: it may be anything a
	// tamperer appended.
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size() - off
	v.rep.Bytes += off
	if closed {
		v.progress(size)
		return nil, fail(s.name, lineNo, nil, "data after the close record (%d bytes)", size)
	}
	h := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(io.NewSectionReader(f, off, 1<<62), h), MaxLine+1)
	var p parsed
	var n int64 // bytes read
	newline := false
	for i := 0; ; i++ {
		line, err := br.ReadSlice('\n')
		n += int64(len(line))
		long := false
		for errors.Is(err, bufio.ErrBufferFull) { // longer than MaxLine: not a record
			long = true
			line, err = br.ReadSlice('\n')
			n += int64(len(line))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		newline = true
		if !long && parseLine(line[:len(line)-1], &p) == nil {
			v.progress(size)
			return nil, fail(s.name, lineNo+i, seqp(p.seq), "a complete record in what is left as a torn tail (%d bytes from line %d; first bad line: %s): a torn write leaves only an incomplete final line, so these records were cut off from the chain, not torn", size, lineNo, reason)
		}
	}
	v.progress(n)
	if last {
		if !newline {
			v.rep.Open = true
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s: %d-byte incomplete final line (torn write; the next writer will declare it)", s.name, n))
			return nil, nil
		}
		return nil, fail(s.name, lineNo, nil, "%s", reason)
	}
	// The next segment decides: if it declares exactly these bytes they are a
	// torn tail, otherwise segment() reports the mismatch with this reason.
	v.tornLine, v.tornReason = lineNo, reason
	return &Torn{File: s.name, ValidLen: off, TornLen: n, TornSHA256: h.Sum(nil)}, nil
}

func (v *verifier) progress(n int64) {
	v.done += n
	if v.opts.Progress != nil && v.done&(1<<20-1) < n {
		v.opts.Progress(v.done, v.total)
	}
}

// loadCheckpoints reads checkpoints.jsonl and the external checkpoints,
// checking every signature. The file is read and judged in chunks
// (checkpointChunk lines, checkpointChunkBytes bytes at most), so memory
// does not grow with it and its first bad line ends the reading.
func (v *verifier) loadCheckpoints() error {
	f, err := v.d.open(CheckpointFile, unix.O_RDONLY, 0, false)
	if errors.Is(err, errNotRegular) {
		return fail(CheckpointFile, 0, nil, "%v", err)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if errors.Is(err, os.ErrNotExist) {
		if v.opts.NoSignatures {
			v.rep.Warnings = append(v.rep.Warnings, "no checkpoint file")
			return nil
		}
		return fail(CheckpointFile, 0, nil, "missing: nothing in the trail is signed")
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, maxCheckpointLine+1)
	var (
		lines [][]byte
		buf   []byte
		ends  []int
	)
	for lineNo := 1; ; {
		// A chunk of lines; the element after the file's last newline (empty
		// when the file ends with one) is the last, as bytes.Split gives it.
		lines, buf, ends = lines[:0], buf[:0], ends[:0]
		last, long := false, false
		for len(ends) < checkpointChunk && len(buf) < checkpointChunkBytes {
			line, err := br.ReadSlice('\n')
			if errors.Is(err, bufio.ErrBufferFull) {
				// Longer than any checkpoint line: malformed. Skip to its end.
				for errors.Is(err, bufio.ErrBufferFull) {
					_, err = br.ReadSlice('\n')
				}
				if err != nil && err != io.EOF {
					return fmt.Errorf("reading %s: %w", CheckpointFile, err)
				}
				long, last = true, err == io.EOF
				break
			}
			if err == io.EOF {
				buf = append(buf, line...)
				ends = append(ends, len(buf))
				last = true
				break
			}
			if err != nil {
				return fmt.Errorf("reading %s: %w", CheckpointFile, err)
			}
			buf = append(buf, line[:len(line)-1]...)
			ends = append(ends, len(buf))
		}
		for i, o := range ends {
			lo := 0
			if i > 0 {
				lo = ends[i-1]
			}
			lines = append(lines, buf[lo:o:o])
		}
		// Signatures are checked on every core first (one Ed25519
		// verification per group commit is most of this file's cost); the
		// loop below then judges the lines in order.
		opened := v.openCheckpoints(lines)
		for i, line := range lines {
			if err := v.judgeCheckpoint(lineNo, line, &opened[i], last && !long && i == len(lines)-1); err != nil {
				return err
			}
			lineNo++
		}
		if long {
			if !last {
				return fail(CheckpointFile, lineNo, nil, "malformed checkpoint line (longer than %d bytes)", maxCheckpointLine)
			}
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s line %d: incomplete checkpoint ignored", CheckpointFile, lineNo))
			lineNo++
		}
		if last {
			break
		}
	}
	for i, n := range v.opts.External {
		cp, ids, err := v.openCheckpoint(n)
		if err != nil {
			return fail("external checkpoint", i+1, nil, "%v", err)
		}
		if cp == nil {
			size := uint64(0)
			if t, ok := noteText(string(n)); ok {
				if c, err := v.parseCheckpointText(t); err == nil {
					size = c.Size
				}
			}
			v.pend = append(v.pend, pendingNote{note: n, size: size, line: i + 1, ext: true})
			v.pendAt[size] = true
			continue
		}
		v.sigs[cp.Size] = append(v.sigs[cp.Size], ids...)
		v.ext[cp.Size] = cp.Hash
	}
	return nil
}

// The checkpoint file is read in chunks of at most these many lines and
// bytes; a line longer than maxCheckpointLine is malformed.
const (
	checkpointChunk      = 4096
	checkpointChunkBytes = 4 << 20
	maxCheckpointLine    = 64 << 10
)

// judgeCheckpoint judges line lineNo of the checkpoint file, whose note o
// has opened; last is the element after the file's last newline.
func (v *verifier) judgeCheckpoint(lineNo int, line []byte, o *openedCheckpoint, last bool) error {
	if len(line) == 0 {
		if !last {
			return fail(CheckpointFile, lineNo, nil, "empty line")
		}
		return nil
	}
	cl := o.line
	if !o.parsed {
		if last {
			// An incomplete last checkpoint line is a crash artefact; checkpoints are re-derivable.
			v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("%s line %d: incomplete checkpoint ignored", CheckpointFile, lineNo))
			return nil
		}
		return fail(CheckpointFile, lineNo, nil, "malformed checkpoint line")
	}
	cp, err := o.cp, o.err
	if err != nil {
		return fail(CheckpointFile, lineNo, nil, "%v", err)
	}
	if cp == nil { // signed by a key not known yet
		v.pend = append(v.pend, pendingNote{note: []byte(cl.Note), size: cl.Size, line: lineNo})
		v.pendAt[cl.Size] = true
		return nil
	}
	v.sigs[cp.Size] = append(v.sigs[cp.Size], o.ids...)
	if cp.Size != cl.Size {
		return fail(CheckpointFile, lineNo, nil, "size %d does not match the signed size %d", cl.Size, cp.Size)
	}
	if old, ok := v.roots[cp.Size]; ok && !bytes.Equal(old, cp.Hash) {
		return fail(CheckpointFile, lineNo, nil, "two signed checkpoints for size %d disagree (fork)", cp.Size)
	}
	v.roots[cp.Size] = cp.Hash
	return nil
}

type openedCheckpoint struct {
	line   checkpointLine
	parsed bool // line is well-formed (and cp, ids, err are its note's)
	cp     *log.Checkpoint
	ids    []string // the keys whose signatures verified
	err    error
}

// openCheckpoints parses every checkpoint line and opens the note of every
// well-formed one, on all cores. Each worker takes lines in chunks and
// checks their Ed25519 signatures as one batch (edbatch.go); a chunk whose
// batch fails is opened again one note at a time, so that each line gets
// exactly the verdict a lone check gives it.
func (v *verifier) openCheckpoints(lines [][]byte) []openedCheckpoint {
	const chunk = 128
	out := make([]openedCheckpoint, len(lines))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), max(len(lines)/chunk, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b edBatch
			for {
				lo := int(next.Add(chunk) - chunk)
				if lo >= len(lines) {
					return
				}
				hi := min(lo+chunk, len(lines))
				b.reset()
				vs, batched := deferring(v.knownList, &b)
				batched = batched && !v.opts.NoSignatures
				for i := lo; i < hi; i++ {
					o := &out[i]
					if len(lines[i]) == 0 || len(lines[i]) > maxCheckpointLine || parseCheckpointLine(lines[i], &o.line) != nil {
						o.line = checkpointLine{}
						continue
					}
					o.parsed = true
					if batched {
						o.cp, o.ids, o.err = v.openNoteWith([]byte(o.line.Note), vs)
					} else {
						o.cp, o.ids, o.err = v.openCheckpoint([]byte(o.line.Note))
					}
				}
				if batched && b.verify() != nil {
					for i := lo; i < hi; i++ {
						if o := &out[i]; o.parsed {
							o.cp, o.ids, o.err = v.openCheckpoint([]byte(o.line.Note))
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// openCheckpoint opens a signed checkpoint with the keys known so far (it
// runs on several goroutines: it only reads the verifier). It returns nil
// and no error for one signed by no key known yet (a later rekey record may
// introduce it), and the ids of the keys whose signatures verified.
func (v *verifier) openCheckpoint(n []byte) (*log.Checkpoint, []string, error) {
	if v.opts.NoSignatures {
		t, ok := noteText(string(n))
		if !ok {
			return nil, nil, errors.New("not a signed note")
		}
		cp, err := v.parseCheckpointText(t)
		return cp, nil, err
	}
	return v.openNote(n)
}

func (v *verifier) parseCheckpointText(text string) (*log.Checkpoint, error) {
	cp := &log.Checkpoint{}
	rest, err := cp.Unmarshal([]byte(text))
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, errors.New("checkpoint has extension lines")
	}
	if cp.Origin != v.rep.Origin {
		return nil, fmt.Errorf("checkpoint origin %q is not the trail's %q", cp.Origin, v.rep.Origin)
	}
	if len(cp.Hash) != 32 {
		return nil, errors.New("checkpoint root is not 32 bytes")
	}
	return cp, nil
}

// ParseExternalCheckpoint accepts a checkpoint kept off the node as either a
// raw signed note or one line of checkpoints.jsonl (the last line when many).
func ParseExternalCheckpoint(data []byte) ([]byte, error) {
	t := bytes.TrimSpace(data)
	if len(t) > 0 && t[0] == '{' {
		lines := bytes.Split(t, []byte("\n"))
		var cl checkpointLine
		if err := json.Unmarshal(lines[len(lines)-1], &cl); err != nil {
			return nil, fmt.Errorf("external checkpoint: %w", err)
		}
		return []byte(cl.Note), nil
	}
	if !bytes.Contains(data, []byte("\n\n")) {
		return nil, errors.New("external checkpoint is neither a signed note nor a checkpoint line")
	}
	return data, nil
}

// Events calls fn with the seq and body of every event record in the trail,
// in order. It does not verify anything: run Verify first.
func Events(dir string, fn func(seq uint64, body []byte) error) error {
	d, err := openTrailDir(dir, false)
	if err != nil {
		return err
	}
	defer d.close()
	segs, _, err := listSegments(d)
	if err != nil {
		return err
	}
	for _, s := range segs {
		f, err := d.open(s.name, os.O_RDONLY, 0, false)
		if err != nil {
			return err
		}
		br := bufio.NewReaderSize(f, MaxLine+1)
		var p parsed
		for {
			line, err := readLine(br)
			if err != nil {
				break
			}
			if parseLine(line, &p) == nil && string(p.kind) == KindEvent {
				if err := fn(p.seq, p.body); err != nil {
					f.Close()
					return err
				}
			}
		}
		f.Close()
	}
	return nil
}

// tamper reads a tamper_detected record and checks the evidence it names
// against the sizes and hashes it recorded, when that directory is beside
// the segments (moved elsewhere, it is the auditor's to check).
func (v *verifier) tamper(seg string, line int, seq uint64, body []byte) error {
	var tb TamperBody
	if err := strictUnmarshal(body, &tb); err != nil || tb.Evidence == "" || strings.ContainsAny(tb.Evidence, "/\x00") || tb.Evidence == "." || tb.Evidence == ".." {
		return fail(seg, line, seqp(seq), "malformed tamper_detected record")
	}
	v.rep.Tamper = append(v.rep.Tamper, tb)
	where := tb.File
	if tb.Line > 0 {
		where += fmt.Sprintf(" line %d", tb.Line)
	}
	v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("seq %d: the writer found the previous trail tampered with (%s: seq %d: %s) and started this log over it; the untouched evidence is in %s", seq, where, tb.Seq, tb.Found, tb.Evidence))
	ev, err := openTrailDir(v.d.join(tb.Evidence), false)
	if errors.Is(err, os.ErrNotExist) {
		v.rep.Warnings = append(v.rep.Warnings, fmt.Sprintf("evidence directory %s is not beside the trail: its files were not checked", tb.Evidence))
		return nil
	}
	if err != nil {
		return err
	}
	defer ev.close()
	for _, ef := range tb.Files {
		f, err := ev.open(ef.Name, os.O_RDONLY, 0, false)
		if err != nil {
			return fail(seg, line, seqp(seq), "evidence %s/%s: %v", tb.Evidence, ef.Name, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		if n != ef.Size || !bytes.Equal(h.Sum(nil), ef.SHA256) {
			return fail(seg, line, seqp(seq), "evidence %s/%s changed since it was recorded (%d bytes now, %d recorded)", tb.Evidence, ef.Name, n, ef.Size)
		}
	}
	return nil
}
