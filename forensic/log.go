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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// Sentinel errors callers branch on.
var (
	ErrLocked   = errors.New("trail is locked by another writer")
	ErrClosed   = errors.New("trail is closed")
	ErrTampered = errors.New("trail has been tampered with")
)

// Options configure a writer. Signer is required.
type Options struct {
	// Origin names the log in every checkpoint. Empty: "kvh/<hostname>/<random
	// 64-bit id>" for a new trail; for an existing trail it must match or be empty.
	Origin string
	// Signer signs checkpoints (an Ed25519 note signer from LoadSigner).
	Signer note.Signer
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
}

// Stats is a snapshot of the writer's progress.
type Stats struct {
	Records        uint64 // records in the trail (the next seq)
	CheckpointSize uint64 // size of the latest signed checkpoint
	Segment        uint64 // index of the active segment
	Commits        uint64 // group commits since Open
	Recovered      *Torn  // how the previous run ended, when it did not close cleanly
}

// Log is an open trail. Its methods are safe for concurrent use.
type Log struct {
	dir  string
	opts Options

	mu     sync.RWMutex // guards closed against Append's send
	closed bool
	reqs   chan *request
	stop   chan struct{}
	done   chan struct{}

	statsMu sync.Mutex
	stats   Stats
	err     error // sticky write error

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
	c         *chain
	mac       hash.Hash
	buf       []byte
	batch     []*request

	// The encoder (run) writes batches and hands them to the syncer, which
	// fdatasyncs, signs the checkpoint and acknowledges: encoding the next
	// batch overlaps the flush of the previous one.
	jobs     chan *job
	inflight sync.WaitGroup
}

// job is a written batch waiting for durability.
type job struct {
	reqs []*request
	seg  *os.File
	size uint64
	root []byte
	err  error
}

type request struct {
	kind  string
	body  []byte
	seq   uint64
	err   error
	async bool // nobody waits: the syncer recycles it
	done  chan struct{}
}

var reqPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// Open opens (or creates) the trail in dir, recovers it and starts the writer.
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
	l := &Log{dir: dir, opts: opts, mac: newMAC(opts.MACKey)}
	if err := l.takeLock(); err != nil {
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
	path := filepath.Join(l.dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s is held by pid %s", ErrLocked, l.dir, strings.TrimSpace(string(b[:n])))
		}
		return fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	l.lock = f
	return nil
}

// recover finds the last segment, replays it to rebuild the chain, checks it
// against the latest checkpoint and opens the next segment, declaring any torn
// tail. Nothing is ever truncated.
func (l *Log) recover() error {
	segs, _, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	ckpts, _ := readCheckpointLines(filepath.Join(l.dir, CheckpointFile))
	var head SegmentBody
	if len(segs) == 0 {
		if len(ckpts) > 0 {
			return fmt.Errorf("%w: %s holds checkpoints but no segments (deleted?)", ErrTampered, l.dir)
		}
		l.origin = l.opts.Origin
		if l.origin == "" {
			l.origin = defaultOrigin()
		}
		alg := MACAlgNone
		if l.mac != nil {
			alg = MACAlgHMACSHA256
		}
		l.c, _ = newChain(0, nil)
		l.c.macAlg = alg
		head = SegmentBody{Origin: l.origin, Segment: 0, Frontier: [][]byte{}, MACAlg: alg}
	} else {
		last := segs[len(segs)-1]
		if len(segs) > 1 && segs[len(segs)-2].index == last.index {
			return fmt.Errorf("%w: segment %d appears twice", ErrTampered, last.index)
		}
		if l.opts.Origin != "" && l.opts.Origin != last.head.Origin {
			return fmt.Errorf("trail origin is %q, not %q", last.head.Origin, l.opts.Origin)
		}
		switch {
		case last.head.MACAlg == MACAlgHMACSHA256 && l.mac == nil:
			return errors.New("the trail declares hmac-sha256: its HMAC key is required to append")
		case last.head.MACAlg == MACAlgNone && l.mac != nil:
			return errors.New("the trail was created without a MAC; refusing to mix in a key")
		case last.head.MACAlg != MACAlgNone && last.head.MACAlg != MACAlgHMACSHA256:
			return fmt.Errorf("unknown mac_alg %q", last.head.MACAlg)
		}
		l.origin = last.head.Origin
		data, err := os.ReadFile(last.path)
		if err != nil {
			return err
		}
		c, err := newChain(last.head.Size, last.head.Frontier)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrTampered, last.name, err)
		}
		c.mac, c.macAlg = l.mac, last.head.MACAlg
		c.prev = last.first.prev
		want := latestCheckpoint(ckpts)
		var rootAt []byte
		validLen, lastKind := 0, ""
		var p parsed
		for off := 0; off < len(data); {
			nl := bytes.IndexByte(data[off:], '\n')
			if nl < 0 {
				break
			}
			line := data[off : off+nl]
			if parseLine(line, &p) != nil || c.accept(line, &p, false) != nil {
				break
			}
			off += nl + 1
			validLen, lastKind = off, string(p.kind)
			if want != nil && c.size() == want.Size {
				rootAt = c.root()
			}
		}
		if validLen == 0 {
			return fmt.Errorf("%w: %s: its segment record does not verify", ErrTampered, last.name)
		}
		if want != nil {
			if want.Size > c.size() {
				return fmt.Errorf("%w: latest checkpoint attests %d records but only %d are present; run kvh-verify log", ErrTampered, want.Size, c.size())
			}
			if rootAt != nil && !bytes.Equal(rootAt, want.Hash) {
				return fmt.Errorf("%w: root at size %d does not match the latest checkpoint", ErrTampered, want.Size)
			}
		}
		l.c = c
		head = SegmentBody{Origin: l.origin, Segment: last.index + 1, PrevFile: last.name, MACAlg: last.head.MACAlg}
		if lastKind != KindClose || validLen != len(data) {
			torn := data[validLen:]
			sum := sha256.Sum256(torn)
			head.Torn = &Torn{File: last.name, ValidLen: int64(validLen), TornLen: int64(len(torn)), TornSHA256: sum[:]}
			l.stats.Recovered = head.Torn
		}
	}
	var err2 error
	if l.ckpt, err2 = os.OpenFile(filepath.Join(l.dir, CheckpointFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err2 != nil {
		return err2
	}
	l.setAppendOnly(l.ckpt)
	if err := l.startSegment(head); err != nil {
		return err
	}
	if err := l.flushSync(); err != nil {
		return err
	}
	return l.syncCheckpoints()
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

// startSegment creates the next segment. The file appears under its name
// only once its segment record is durable (written to a temp file, synced,
// renamed without replacing), so a crash never leaves a segment without one.
func (l *Log) startSegment(head SegmentBody) error {
	head.Size = l.c.size()
	head.Frontier = l.c.rng.Hashes()
	if head.Frontier == nil {
		head.Frontier = [][]byte{}
	}
	name := segmentName(head.Segment)
	path := filepath.Join(l.dir, name)
	tmp := filepath.Join(l.dir, "."+name+".tmp")
	os.Remove(tmp) // left by a crash between create and rename
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating segment: %w", err)
	}
	body, _ := json.Marshal(head)
	prevSeg, prevName := l.seg, l.segName
	l.seg, l.segName, l.segIndex, l.segBytes, l.segRecs = f, name, head.Segment, 0, 0
	err = l.encode(KindSegment, body)
	if err == nil {
		err = l.write()
	}
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if err == nil {
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%s already exists but is not a segment this trail recognises; move it aside", name)
		}
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		l.seg, l.segName = prevSeg, prevName
		return fmt.Errorf("creating segment %s: %w", name, err)
	}
	l.setAppendOnly(f)
	if d, err := os.Open(l.dir); err == nil {
		d.Sync()
		d.Close()
	}
	l.statsMu.Lock()
	l.stats.Segment = head.Segment
	l.statsMu.Unlock()
	return nil
}

const fsAppendFL = 0x20 // linux/fs.h FS_APPEND_FL; not exported by x/sys

func (l *Log) setAppendOnly(f *os.File) {
	if !l.opts.AppendOnly {
		return
	}
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return
	}
	unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsAppendFL))
}

// encode appends the next record to buf and advances the chain. body must
// be in canonical form (canonicalBody).
func (l *Log) encode(kind string, body []byte) error {
	start := len(l.buf)
	l.buf = appendRecord(l.buf, l.c.size(), tsNow(), kind, l.c.prev[:], body)
	if l.mac != nil {
		line := appendMAC(append([]byte(nil), l.buf[start:]...), l.mac)
		l.buf = append(l.buf[:start], line...)
	}
	line := l.buf[start:]
	if len(line) > MaxLine {
		l.buf = l.buf[:start]
		return fmt.Errorf("record of %d bytes exceeds %d", len(line), MaxLine)
	}
	leaf := rfc6962.DefaultHasher.HashLeaf(line)
	if err := l.c.rng.Append(leaf, nil); err != nil {
		return err
	}
	copy(l.c.prev[:], leaf)
	l.buf = append(l.buf, '\n')
	l.segRecs++
	return nil
}

// write hands buf to the active segment in one write(2).
func (l *Log) write() error {
	if len(l.buf) == 0 {
		return nil
	}
	if _, err := l.seg.Write(l.buf); err != nil {
		return fmt.Errorf("writing %s: %w", l.segName, err)
	}
	l.segBytes += int64(len(l.buf))
	l.buf = l.buf[:0]
	l.lastWrite = time.Now()
	return nil
}

// flushSync writes buf, fdatasyncs and signs a checkpoint, synchronously
// (used before the writer goroutines start).
func (l *Log) flushSync() error {
	if err := l.write(); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(l.seg.Fd())); err != nil {
		return fmt.Errorf("syncing %s: %w", l.segName, err)
	}
	return l.checkpoint(l.c.size(), l.c.root())
}

type checkpointLine struct {
	Size uint64 `json:"size"`
	Note string `json:"note"`
}

func (l *Log) checkpoint(size uint64, root []byte) error {
	cp := log.Checkpoint{Origin: l.origin, Size: size, Hash: root}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, l.opts.Signer)
	if err != nil {
		return fmt.Errorf("signing checkpoint: %w", err)
	}
	line, _ := json.Marshal(checkpointLine{Size: size, Note: string(signed)})
	if _, err := l.ckpt.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("writing checkpoint: %w", err)
	}
	// Checkpoints can be re-derived from the records, so they are synced lazily.
	l.ckptDirty = true
	l.statsMu.Lock()
	l.stats.Records, l.stats.CheckpointSize = size, size
	l.stats.Commits++
	l.statsMu.Unlock()
	return nil
}

func (l *Log) syncCheckpoints() error {
	l.ckptSync = time.Now()
	if !l.ckptDirty {
		return nil
	}
	l.ckptDirty = false
	return unix.Fdatasync(int(l.ckpt.Fd()))
}

// Append writes one event record whose body is body marshalled as a JSON
// object, and returns its seq once it is durable and covered by a signed
// checkpoint.
func (l *Log) Append(body any) (uint64, error) {
	b, err := canonical(body)
	if err != nil {
		return 0, err
	}
	return l.submit(KindEvent, b, false)
}

// AppendAsync queues an event record and returns without waiting for it to
// be durable. Records are written in the order they are queued, so when a
// later Append or Sync returns, this record is durable too. A write error
// stops the trail (Err) and fails every later call.
func (l *Log) AppendAsync(body any) error {
	b, err := canonical(body)
	if err != nil {
		return err
	}
	_, err = l.submit(KindEvent, b, true)
	return err
}

// Sync returns once every record queued before it is durable and covered by
// a signed checkpoint.
func (l *Log) Sync() error {
	_, err := l.submit("", nil, false)
	return err
}

// canonical turns a body into the bytes a record carries.
func canonical(body any) ([]byte, error) {
	var b []byte
	switch v := body.(type) {
	case BodyAppender:
		m := v.AppendBody(make([]byte, 0, 256))
		if len(m) < 2 || m[0] != '{' || len(m) > MaxLine/2 {
			return nil, errors.New("record body must be a JSON object within the size limit")
		}
		return m, nil
	case json.RawMessage:
		b = v
	case []byte:
		b = v
	default:
		// json.Marshal's output is already canonical: no second pass.
		m, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding record body: %w", err)
		}
		if len(m) < 2 || m[0] != '{' {
			return nil, errors.New("record body must be a JSON object")
		}
		if len(m) > MaxLine/2 {
			return nil, fmt.Errorf("record body of %d bytes is too large", len(m))
		}
		return m, nil
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, errors.New("record body must be a JSON object")
	}
	// Caller-supplied bytes: validated and canonicalised here, in the
	// caller's goroutine, not the writer's.
	b, err := canonicalBody(b)
	if err != nil {
		return nil, fmt.Errorf("record body is not valid JSON: %w", err)
	}
	if len(b) > MaxLine/2 {
		return nil, fmt.Errorf("record body of %d bytes is too large", len(b))
	}
	return b, nil
}

// BodyAppender is implemented by record bodies that encode themselves to
// exactly the bytes json.Marshal gives them (compact, HTML-escaped). Append
// trusts such bodies and skips reflection; implementations pin their output
// to json.Marshal in a test.
type BodyAppender interface {
	AppendBody(dst []byte) []byte
}

// appendPrune writes a prune record; only Prune calls it.
func (l *Log) appendPrune(p PruneBody) (uint64, error) {
	b, _ := json.Marshal(p)
	return l.submit(KindPrune, b, false)
}

// submit queues a record (kind "" is a barrier that writes nothing).
func (l *Log) submit(kind string, body []byte, async bool) (uint64, error) {
	if async {
		if err := l.Err(); err != nil {
			return 0, err
		}
	}
	r := reqPool.Get().(*request)
	r.kind, r.body, r.err, r.async = kind, body, nil, async
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		reqPool.Put(r)
		return 0, ErrClosed
	}
	l.reqs <- r
	l.mu.RUnlock()
	if async {
		return 0, nil
	}
	<-r.done
	seq, err := r.seq, r.err
	r.body = nil
	reqPool.Put(r)
	return seq, err
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
func (l *Log) Dir() string { return l.dir }

// Err returns the sticky write error, if the trail has stopped accepting records.
func (l *Log) Err() error {
	l.statsMu.Lock()
	defer l.statsMu.Unlock()
	return l.err
}

func (l *Log) run() {
	defer close(l.done)
	l.jobs = make(chan *job, 4)
	synced := make(chan struct{})
	go l.syncer(synced)
	var tick <-chan time.Time
	if l.opts.TickInterval > 0 {
		t := time.NewTicker(min(l.opts.TickInterval, time.Second))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case r := <-l.reqs:
			l.batch = append(l.batch[:0], r)
			l.drain()
			l.commit()
		case <-tick:
			if time.Since(l.lastWrite) >= l.opts.TickInterval {
				body, _ := json.Marshal(TickBody{Reason: "idle"})
				l.commitInternal(KindTick, body)
			}
		case <-l.stop:
			for {
				l.batch = l.batch[:0]
				l.drain()
				if len(l.batch) == 0 {
					break
				}
				l.commit()
			}
			body, _ := json.Marshal(CloseBody{Segment: l.segIndex, Reason: "shutdown"})
			l.commitInternal(KindClose, body)
			close(l.jobs)
			<-synced
			l.closeFiles()
			return
		}
	}
}

func (l *Log) drain() {
	for len(l.batch) < l.opts.MaxBatch {
		select {
		case r := <-l.reqs:
			l.batch = append(l.batch, r)
		default:
			return
		}
	}
}

func (l *Log) commitInternal(kind string, body []byte) {
	l.batch = l.batch[:0]
	err := l.Err()
	if err == nil {
		err = l.encode(kind, body)
	}
	l.send(err)
}

// commit encodes and writes the batch, then queues it for the syncer.
func (l *Log) commit() {
	err := l.Err()
	if err == nil {
		for _, r := range l.batch {
			if l.segBytes+int64(len(l.buf)) >= l.opts.MaxSegmentBytes && l.segRecs > 1 {
				if err = l.rotate(); err != nil {
					break
				}
			}
			if r.kind == "" { // a barrier: durable once this batch is
				r.seq = l.c.size()
				continue
			}
			r.seq = l.c.size()
			if err = l.encode(r.kind, r.body); err != nil {
				break
			}
		}
	}
	l.send(err)
}

func (l *Log) send(err error) {
	if err == nil {
		err = l.write()
	}
	j := &job{reqs: append([]*request(nil), l.batch...), seg: l.seg, err: err}
	if err == nil {
		j.size, j.root = l.c.size(), l.c.root()
	}
	l.inflight.Add(1)
	l.jobs <- j
}

// syncer makes written batches durable: it merges whatever jobs are queued,
// fdatasyncs once, signs one checkpoint covering them, then acknowledges.
func (l *Log) syncer(done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var js []*job
	for {
		select {
		case j, ok := <-l.jobs:
			if !ok {
				if l.Err() == nil {
					l.fail(l.syncCheckpoints())
				}
				return
			}
			js = append(js[:0], j)
		more:
			for {
				select {
				case j2, ok := <-l.jobs:
					if !ok {
						break more
					}
					js = append(js, j2)
					if j2.seg != j.seg {
						break more
					}
				default:
					break more
				}
			}
			l.complete(js)
		case <-t.C:
			if l.ckptDirty && l.Err() == nil {
				l.fail(l.syncCheckpoints())
			}
		}
	}
}

func (l *Log) complete(js []*job) {
	err := l.Err()
	for _, j := range js {
		if err == nil && j.err != nil {
			err = j.err
		}
	}
	last := js[len(js)-1]
	if err == nil {
		for i, j := range js {
			if i == len(js)-1 || js[i+1].seg != j.seg {
				if e := unix.Fdatasync(int(j.seg.Fd())); e != nil {
					err = fmt.Errorf("syncing segment: %w", e)
					break
				}
			}
		}
	}
	if err == nil {
		err = l.checkpoint(last.size, last.root)
	}
	l.fail(err)
	for _, j := range js {
		for _, r := range j.reqs {
			if r.async {
				r.body = nil
				reqPool.Put(r)
				continue
			}
			r.err = err
			r.done <- struct{}{}
		}
		l.inflight.Done()
	}
}

// rotate closes the active segment with a close record and starts the next.
func (l *Log) rotate() error {
	body, _ := json.Marshal(CloseBody{Segment: l.segIndex, Reason: "rotate"})
	if err := l.encode(KindClose, body); err != nil {
		return err
	}
	if err := l.write(); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(l.seg.Fd())); err != nil {
		return err
	}
	l.inflight.Wait() // the syncer may still hold the old segment
	l.seg.Close()
	return l.startSegment(SegmentBody{Origin: l.origin, Segment: l.segIndex + 1, PrevFile: l.segName, MACAlg: l.c.macAlg})
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
}

// readCheckpointLines parses checkpoints.jsonl without verifying signatures;
// unparseable lines are skipped (Verify reports them).
func readCheckpointLines(path string) ([]checkpointLine, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []checkpointLine
	for _, line := range bytes.Split(data, []byte("\n")) {
		var c checkpointLine
		if len(line) > 0 && strictUnmarshal(line, &c) == nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// latestCheckpoint returns the unverified checkpoint with the largest size.
func latestCheckpoint(lines []checkpointLine) *log.Checkpoint {
	var best *log.Checkpoint
	for _, cl := range lines {
		text, ok := noteText(cl.Note)
		if !ok {
			continue
		}
		cp := &log.Checkpoint{}
		if _, err := cp.Unmarshal([]byte(text)); err != nil || cp.Size != cl.Size {
			continue
		}
		if best == nil || cp.Size > best.Size {
			best = cp
		}
	}
	return best
}

// noteText returns the text part of a signed note.
func noteText(n string) (string, bool) {
	i := strings.LastIndex(n, "\n\n")
	if i < 0 {
		return "", false
	}
	return n[:i+1], true
}

// fail records the first write error; the trail then refuses further records
// (an audit trail that cannot persist must say so, not drop silently).
func (l *Log) fail(err error) {
	if err == nil {
		return
	}
	l.statsMu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.statsMu.Unlock()
}
