package forensic

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// Sentinel errors callers branch on.
var (
	ErrLocked   = errors.New("trail is locked by another writer")
	ErrClosed   = errors.New("trail is closed")
	ErrTampered = errors.New("trail has been tampered with")
)

// LockFile guards the trail directory against a second writer.
const LockFile = "LOCK"

// Options configure a writer. Signer is required.
type Options struct {
	// Origin names the log in every checkpoint. Empty: "kvh/<hostname>/<random
	// 64-bit id>" for a new trail; for an existing trail it must match or be empty.
	Origin string
	// Signer signs checkpoints (an Ed25519 note signer from LoadSigner).
	Signer note.Signer
	// PreviousSigner and PreviousMACKey rotate keys: when the trail's latest
	// checkpoint is PreviousSigner's (or its current records carry MACs under
	// PreviousMACKey), Open writes a rekey record naming the new verifier
	// key and MAC key id, MAC'd with the old MAC key and sealed by a
	// checkpoint that PreviousSigner signs and Signer cosigns, and continues
	// with Signer and MACKey. When the trail already uses Signer and MACKey
	// they are ignored, so an agent may keep them across restarts.
	PreviousSigner note.Signer
	PreviousMACKey []byte
	// RekeyReason is written in the rekey record (default "key rotation").
	RekeyReason string
	// MACKey, when set on a new trail, makes a MAC mandatory on every record.
	// An existing trail must be reopened with the key it declared.
	MACKey []byte
	// MaxSegmentBytes rotates segments at about this size (default 64 MiB).
	MaxSegmentBytes int64
	// TickInterval writes a tick record and checkpoint when the trail has been
	// idle this long (default 15 minutes; negative disables).
	TickInterval time.Duration
	// MaxBatch caps records per group commit (default 4096).
	MaxBatch int
	// AppendOnly sets FS_APPEND_FL on trail files when the process may
	// (CAP_LINUX_IMMUTABLE); it is skipped quietly otherwise.
	AppendOnly bool
	// AcceptTampered makes Open start on a trail it finds tampered with
	// instead of refusing it with a *TamperError: every trail file but LOCK
	// is moved, untouched, into a new evidence-<time> directory beside the
	// segments, and a new log (same origin) starts whose first record after
	// the genesis is a signed tamper_detected record naming the file, line
	// and seq, what was found, and each moved file's SHA-256. Nothing is
	// deleted or rewritten, and nothing that failed is ever sealed.
	AcceptTampered bool
}

// Stats is a snapshot of the writer's progress.
type Stats struct {
	Records        uint64 // records in the trail (the next seq)
	CheckpointSize uint64 // size of the latest signed checkpoint
	Segment        uint64 // index of the active segment
	Commits        uint64 // group commits since Open
	Recovered      *Torn  // how the previous run ended, when it did not close cleanly
	// Tamper is set when Open found tampering, accepted it (AcceptTampered)
	// and started a new log: the body of its tamper_detected record.
	Tamper *TamperBody
	// Rekeyed is set when Open rotated keys: the rekey record it wrote (empty
	// when it only sealed one written before a crash).
	Rekeyed *RekeyBody
}

// TamperError is the ErrTampered that Open returns: the first thing in the
// trail that a crash cannot explain. errors.Is(err, ErrTampered) holds.
type TamperError struct {
	File  string // a file in the trail directory
	Line  int    // 1-based line in File; 0 when the finding is not about one line
	Seq   uint64 // the seq the record there has, or should have had
	Found string // what was found
}

func (e *TamperError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc += fmt.Sprintf(" line %d", e.Line)
	}
	return fmt.Sprintf("%v: %s: seq %d: %s", ErrTampered, loc, e.Seq, e.Found)
}

// Unwrap makes a TamperError an ErrTampered.
func (e *TamperError) Unwrap() error { return ErrTampered }

func tampered(file string, line int, seq uint64, format string, args ...any) *TamperError {
	return &TamperError{File: file, Line: line, Seq: seq, Found: fmt.Sprintf(format, args...)}
}

// Log is an open trail. Its methods are safe for concurrent use.
type Log struct {
	d    *trailDir
	opts Options

	mu     sync.RWMutex // guards closed against Append's send
	closed bool
	reqs   chan *request
	stop   chan struct{}
	done   chan struct{}

	statsMu sync.Mutex
	stats   Stats
	err     error       // sticky write error
	failed  atomic.Bool // err is set (read without statsMu)

	// Owned by the writer goroutine.
	lock      *os.File
	seg       *os.File
	segName   string
	segIndex  uint64
	segBytes  int64
	segRecs   int
	ckpt      *os.File
	ckptDirty bool
	ckptSync  time.Time
	lastWrite time.Time
	origin    string
	tamper    *TamperBody // written after the genesis of a log started over tampering
	c         *chain
	mac       hash.Hash
	signers   []note.Signer // set only while sealing a rekey record
	// Found by replay: the last segment's current records are MAC'd with
	// the previous MAC key; a rekey record to our signer is in the unsealed tail.
	macOld      bool
	rekeyedTail bool
	leafHash    hash.Hash
	buf         []byte
	ts          string // the batch's timestamp while commit encodes it
	leafSum     [32]byte
	batch       []*request

	// The encoder (run) writes batches and hands them to the syncer, which
	// fdatasyncs, signs the checkpoint and acknowledges: encoding the next
	// batch overlaps the flush of the previous one.
	jobs     chan *job
	inflight sync.WaitGroup
}

// Open opens (or creates) the trail in dir, recovers it and starts the writer.
//
// It refuses a directory that another user owns or that group or others may
// write, and any trail file that is not a regular file (a symbolic link is
// never followed). It refuses a trail signed with another key than
// opts.Signer. It refuses, with a *TamperError, a trail whose last segment
// does not end the way a crash can leave it (only an incomplete final line
// of an open segment is a torn write), or that its checkpoints contradict;
// with opts.AcceptTampered it keeps the evidence and starts a new log.
func Open(dir string, opts Options) (*Log, error) {
	if opts.Signer == nil {
		return nil, errors.New("forensic: a checkpoint signer is required")
	}
	if opts.MaxSegmentBytes <= 0 {
		opts.MaxSegmentBytes = 64 << 20
	}
	if opts.TickInterval == 0 {
		opts.TickInterval = 15 * time.Minute
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 4096
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating trail directory: %w", err)
	}
	d, err := openTrailDir(dir, true)
	if err != nil {
		return nil, err
	}
	l := &Log{d: d, opts: opts, mac: newMAC(opts.MACKey)}
	if err := l.takeLock(); err != nil {
		d.close()
		return nil, err
	}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	l.reqs = make(chan *request, opts.MaxBatch)
	l.stop = make(chan struct{})
	l.done = make(chan struct{})
	go l.run()
	return l, nil
}

func (l *Log) takeLock() error {
	path := l.d.join(LockFile)
	f, err := l.d.open(LockFile, os.O_RDWR|os.O_CREATE, 0o600, true)
	if err != nil {
		return fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s is held by pid %s", ErrLocked, l.d.path, strings.TrimSpace(string(b[:n])))
		}
		return fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	l.lock = f
	return nil
}

// recover checks the directory, finds the last segment, replays it to
// rebuild the chain, checks it against the latest checkpoint and opens the
// next segment, declaring any torn tail. Nothing is ever truncated.
func (l *Log) recover() error {
	bad, err := l.d.irregular()
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return describeIrregular(l.d.path, bad)
	}
	segs, _, err := listSegments(l.d)
	if err != nil {
		return err
	}
	data, err := l.d.readFile(CheckpointFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	latest, latestNote := latestCheckpoint(parseCheckpointLines(data))
	signerOld, err := l.checkKey(latestNote)
	if err != nil {
		return err
	}
	head, err := l.replay(segs, latest)
	var te *TamperError
	if errors.As(err, &te) && l.opts.AcceptTampered {
		head, err = l.keepEvidence(te, latest)
	}
	if err != nil {
		return err
	}
	if l.ckpt, err = l.d.open(CheckpointFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600, true); err != nil {
		return err
	}
	l.setAppendOnly(l.ckpt)
	rot, err := l.planRotation(signerOld && l.tamper == nil, l.macOld && l.tamper == nil, l.rekeyedTail)
	if err != nil {
		return err
	}
	if rot != nil && rot.oldMAC != nil {
		// Up to and including the rekey record, records are the old epoch's.
		l.mac = newMAC(rot.oldMAC)
	}
	if err := l.startSegment(head); err != nil {
		return err
	}
	if l.tamper != nil {
		body, _ := json.Marshal(l.tamper)
		if err := l.encode(KindTamper, body); err != nil {
			return err
		}
	}
	if rot != nil {
		err = l.rekey(rot)
	} else {
		err = l.flushSync()
	}
	if err != nil {
		return err
	}
	return l.syncCheckpoints()
}

// checkKey refuses to continue a trail whose latest checkpoint neither the
// given signer nor the previous signer (a rotation) signed: a checkpoint by
// another key would leave the trail verifiable by neither key. It reports
// whether the previous signer's key must hand over to the signer's.
func (l *Log) checkKey(latestNote string) (previous bool, err error) {
	if latestNote == "" {
		return false, nil // a new trail, or one that crashed before its first checkpoint
	}
	ours := keyID(l.opts.Signer.Name(), l.opts.Signer.KeyHash())
	theirs := noteSigners(latestNote)
	if slices.Contains(theirs, ours) {
		return false, nil
	}
	if p := l.opts.PreviousSigner; p != nil && slices.Contains(theirs, keyID(p.Name(), p.KeyHash())) {
		return true, nil
	}
	trail := "no readable key"
	if len(theirs) > 0 {
		trail = "key " + strings.Join(theirs, ", ")
	}
	prev := ""
	if p := l.opts.PreviousSigner; p != nil {
		prev = " nor with the given previous signing key " + keyID(p.Name(), p.KeyHash())
	}
	return false, fmt.Errorf("trail %s is signed with %s, not with the given signing key %s%s: use the trail's key, rotate to a new key by giving the trail's key as the previous signing key, or use another trail directory", l.d.path, trail, ours, prev)
}

// replay rebuilds the chain from the last segment and returns the record
// that opens the next one. Whatever a crash cannot explain is a
// *TamperError: a complete line that does not verify (a torn write leaves
// only an incomplete final line, so records after a bad line were cut off,
// not torn), anything after a close record, or a checkpoint that attests
// more, or other, records than are there.
func (l *Log) replay(segs []segFile, want *log.Checkpoint) (SegmentBody, error) {
	if len(segs) == 0 {
		if want != nil {
			l.origin = want.Origin
			return SegmentBody{}, tampered(CheckpointFile, 0, 0, "holds checkpoints attesting %d records but %s has no segment (deleted?)", want.Size, l.d.path)
		}
		l.origin = l.opts.Origin
		if l.origin == "" {
			l.origin = defaultOrigin()
		}
		l.c = l.newLogChain()
		return SegmentBody{Origin: l.origin, Segment: 0, Frontier: [][]byte{}, MACAlg: l.c.macAlg}, nil
	}
	last := segs[len(segs)-1]
	if l.opts.Origin != "" && l.opts.Origin != last.head.Origin {
		return SegmentBody{}, fmt.Errorf("trail origin is %q, not %q", last.head.Origin, l.opts.Origin)
	}
	l.origin = last.head.Origin
	switch {
	case last.head.MACAlg == MACAlgHMACSHA256 && l.mac == nil:
		return SegmentBody{}, errors.New("the trail declares hmac-sha256: its HMAC key is required to append")
	case last.head.MACAlg == MACAlgNone && l.mac != nil:
		return SegmentBody{}, errors.New("the trail was created without a MAC; refusing to mix in a key")
	case last.head.MACAlg != MACAlgNone && last.head.MACAlg != MACAlgHMACSHA256:
		return SegmentBody{}, fmt.Errorf("unknown mac_alg %q", last.head.MACAlg)
	}
	if len(segs) > 1 && segs[len(segs)-2].index == last.index {
		return SegmentBody{}, tampered(last.name, 1, last.first.seq, "segment %d appears twice (also %s)", last.index, segs[len(segs)-2].name)
	}
	data, err := l.d.readFile(last.name)
	if err != nil {
		return SegmentBody{}, err
	}
	c, err := newChain(last.head.Size, last.head.Frontier)
	if err != nil {
		return SegmentBody{}, tampered(last.name, 1, last.first.seq, "segment record: %v", err)
	}
	c.macAlg = last.head.MACAlg
	c.prev = last.first.prev
	if first := bytes.IndexByte(data, '\n'); first >= 0 && c.macAlg == MACAlgHMACSHA256 {
		var key []byte
		key, l.macOld = l.replayMAC(data[:first])
		c.setMAC(key)
	} else {
		c.setMAC(l.opts.MACKey)
	}
	var rootAt []byte
	rootLine, lineNo, validLen, lastKind := 0, 0, 0, ""
	var p parsed
	for off := 0; off < len(data); {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break // an incomplete final line: judged below
		}
		lineNo++
		line := data[off : off+nl]
		if lastKind == KindClose {
			return SegmentBody{}, tampered(last.name, lineNo, c.size(), "%s after the close record: a closed segment is never written again", describeRest(data[off:]))
		}
		err := parseLine(line, &p)
		if err == nil {
			err = c.accept(line, &p, false)
		}
		if err == nil && lineNo > 1 && string(p.kind) == KindSegment {
			err = errors.New("segment record inside a segment")
		}
		if err == nil && string(p.kind) == KindRekey {
			var toUs bool
			if l.macOld, toUs, err = l.replayRekey(c, p.body); err == nil {
				l.rekeyedTail = toUs && (want == nil || p.seq >= want.Size)
			}
		}
		if err != nil {
			if lineNo == 1 {
				return SegmentBody{}, tampered(last.name, 1, last.first.seq, "its segment record does not verify: %v", err)
			}
			return SegmentBody{}, tampered(last.name, lineNo, c.size(), "the line does not verify (%v) yet is complete: %s; only an incomplete final line can be a torn write", err, describeRest(data[off:]))
		}
		off += nl + 1
		validLen, lastKind = off, string(p.kind)
		if want != nil && c.size() == want.Size {
			rootAt, rootLine = c.root(), lineNo
		}
	}
	if validLen == 0 {
		return SegmentBody{}, tampered(last.name, 1, last.first.seq, "its segment record is incomplete, which the writer never leaves (it renames a segment into place only once that record is durable)")
	}
	if lastKind == KindClose && validLen != len(data) {
		return SegmentBody{}, tampered(last.name, lineNo+1, c.size(), "a %d-byte incomplete line after the close record: a closed segment is never written again", len(data)-validLen)
	}
	if want != nil {
		if want.Size > c.size() {
			return SegmentBody{}, tampered(last.name, 0, c.size(), "TRUNCATION: the latest checkpoint attests %d records but only %d are present; run kvh-verify log", want.Size, c.size())
		}
		if rootAt != nil && !bytes.Equal(rootAt, want.Hash) {
			return SegmentBody{}, tampered(last.name, rootLine, want.Size-1, "the root at size %d does not match the latest checkpoint", want.Size)
		}
	}
	c.setMAC(l.opts.MACKey) // the writer's chain does not check MACs; encode writes them with l.mac
	l.c = c
	head := SegmentBody{Origin: l.origin, Segment: last.index + 1, PrevFile: last.name, MACAlg: last.head.MACAlg}
	if lastKind != KindClose || validLen != len(data) {
		torn := data[validLen:]
		sum := sha256.Sum256(torn)
		head.Torn = &Torn{File: last.name, ValidLen: int64(validLen), TornLen: int64(len(torn)), TornSHA256: sum[:]}
		l.stats.Recovered = head.Torn
	}
	return head, nil
}

// describeRest says what follows a line that does not verify, starting
// with that line: how many complete lines and bytes, how many of them are
// well-formed records, and whether the last is a close record.
func describeRest(rest []byte) string {
	complete, records, closed := 0, 0, false
	var p parsed
	for off := 0; ; {
		nl := bytes.IndexByte(rest[off:], '\n')
		if nl < 0 {
			break
		}
		complete++
		closed = false
		if parseLine(rest[off:off+nl], &p) == nil {
			records++
			closed = string(p.kind) == KindClose
		}
		off += nl + 1
	}
	s := fmt.Sprintf("%d complete line(s), %d bytes, from here to the end of the segment, %d of them well-formed records", complete, len(rest), records)
	if closed {
		s += ", the last a close record"
	}
	return s
}

func (l *Log) newLogChain() *chain {
	c, _ := newChain(0, nil)
	c.macAlg = MACAlgNone
	if l.mac != nil {
		c.macAlg = MACAlgHMACSHA256
	}
	return c
}

// keepEvidence is Open's answer to tampering it was told to accept. Every
// trail file but LOCK moves, untouched (rename(2): same inode, bytes and
// times), into a new directory evidence-<UTC time> beside the segments, and
// a new log starts in their place with the same origin. Its genesis is
// followed by a tamper_detected record binding each moved file by size and
// SHA-256. The new log never seals anything from the tampered one; the
// evidence verifies on its own (and fails where the tampering is).
func (l *Log) keepEvidence(te *TamperError, latest *log.Checkpoint) (SegmentBody, error) {
	prevOrigin := l.origin
	name, evfd, err := l.d.mkdirEvidence(time.Now())
	if err != nil {
		return SegmentBody{}, err
	}
	defer unix.Close(evfd)
	ents, err := l.d.entries()
	if err != nil {
		return SegmentBody{}, err
	}
	body := &TamperBody{File: te.File, Line: te.Line, Seq: te.Seq, Found: te.Found, PrevOrigin: prevOrigin, Evidence: name, Files: []EvidenceFile{}}
	if latest != nil {
		body.PrevCheckpoint = latest.Size
	}
	for _, e := range ents {
		if e.Name() == LockFile || !isTrailName(e.Name()) {
			continue
		}
		ef, err := l.d.moveTo(e.Name(), evfd)
		if err != nil {
			return SegmentBody{}, fmt.Errorf("keeping %s as evidence in %s: %w", e.Name(), l.d.join(name), err)
		}
		body.Files = append(body.Files, ef)
	}
	if err := unix.Fsync(evfd); err != nil {
		return SegmentBody{}, err
	}
	if err := l.d.sync(); err != nil {
		return SegmentBody{}, err
	}
	l.origin = prevOrigin
	if l.origin == "" {
		l.origin = l.opts.Origin
	}
	if l.origin == "" {
		l.origin = defaultOrigin()
	}
	l.c = l.newLogChain()
	l.tamper = body
	l.stats.Recovered = nil
	l.stats.Tamper = body
	return SegmentBody{Origin: l.origin, Segment: 0, Frontier: [][]byte{}, MACAlg: l.c.macAlg}, nil
}

func defaultOrigin() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	host = strings.Map(func(r rune) rune {
		if r <= ' ' || r == '+' || r == '/' {
			return '-'
		}
		return r
	}, host)
	var id [8]byte
	rand.Read(id[:])
	return "kvh/" + host + "/" + hex.EncodeToString(id[:])
}

// Append writes one event record whose body is body marshalled as a JSON
// object, and returns its seq once it is durable and covered by a signed
// checkpoint. body is encoded before Append queues the record; the Log
// keeps no reference to it.
func (l *Log) Append(body any) (uint64, error) {
	return l.submitEvent(body, false)
}

// AppendAsync queues an event record and returns without waiting for it to
// be durable; like Append it encodes body first and keeps no reference to
// it. Records are written in the order they are queued, so when a
// later Append or Sync returns, this record is durable too. A write error
// stops the trail (Err) and fails every later call.
func (l *Log) AppendAsync(body any) error {
	_, err := l.submitEvent(body, true)
	return err
}

// Sync returns once every record queued before it is durable and covered by
// a signed checkpoint.
func (l *Log) Sync() error {
	_, err := l.submit("", nil, false)
	return err
}

// appendPrune writes a prune record; only Prune calls it.
func (l *Log) appendPrune(p PruneBody) (uint64, error) {
	b, _ := json.Marshal(p)
	return l.submit(KindPrune, b, false)
}

// Stats returns a snapshot of the writer's progress.
func (l *Log) Stats() Stats {
	l.statsMu.Lock()
	defer l.statsMu.Unlock()
	return l.stats
}

// Origin is the log's origin line, as written in every checkpoint.
func (l *Log) Origin() string { return l.origin }

// Dir is the trail directory.
func (l *Log) Dir() string { return l.d.path }

// Err returns the sticky write error, if the trail has stopped accepting records.
func (l *Log) Err() error {
	if !l.failed.Load() { // every AppendAsync asks: no lock while all is well
		return nil
	}
	l.statsMu.Lock()
	defer l.statsMu.Unlock()
	return l.err
}

// Close drains pending appends, writes a close record and a final checkpoint,
// and releases the lock. It returns the sticky write error, if any.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	return l.Err()
}

func (l *Log) closeFiles() {
	for _, f := range []*os.File{l.seg, l.ckpt, l.lock} {
		if f != nil {
			f.Close()
		}
	}
	l.d.close()
}
