package forensic

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

type request struct {
	kind string
	body []byte
	// scratch is where the next body is encoded: the request is pooled,
	// and its body buffer with it (the profile had one allocation per record
	// for the body). The writer copies body into its batch before the
	// request is recycled.
	scratch []byte
	seq     uint64
	err     error
	async   bool // nobody waits: the syncer recycles it
	done    chan struct{}
}

var reqPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// job is a written batch waiting for durability.
type job struct {
	reqs []*request
	seg  *os.File
	size uint64
	root []byte
	err  error
}

// maxScratch caps the body buffer a pooled request keeps.
const maxScratch = 4 << 10

// recycle returns r to the pool, keeping the buffer its body was encoded in.
func (r *request) recycle() {
	if r.body != nil && cap(r.body) <= maxScratch {
		r.scratch = r.body[:0]
	}
	r.body = nil
	reqPool.Put(r)
}

// submitEvent encodes body (canonical) into a pooled request and queues it.
func (l *Log) submitEvent(body any, async bool) (uint64, error) {
	if async {
		if err := l.Err(); err != nil {
			return 0, err
		}
	}
	r := reqPool.Get().(*request)
	b, err := canonicalTo(r.scratch, body)
	if err != nil {
		reqPool.Put(r)
		return 0, err
	}
	r.scratch = nil // owned by b until the request is recycled
	return l.queue(r, KindEvent, b, async)
}

// submit queues a record (kind "" is a barrier that writes nothing).
func (l *Log) submit(kind string, body []byte, async bool) (uint64, error) {
	if async {
		if err := l.Err(); err != nil {
			return 0, err
		}
	}
	return l.queue(reqPool.Get().(*request), kind, body, async)
}

// queue sends r to the writer and, unless async, waits for it to be durable.
func (l *Log) queue(r *request, kind string, body []byte, async bool) (uint64, error) {
	r.kind, r.body, r.err, r.async = kind, body, nil, async
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		r.recycle()
		return 0, ErrClosed
	}
	l.reqs <- r
	l.mu.RUnlock()
	if async {
		return 0, nil
	}
	<-r.done
	seq, err := r.seq, r.err
	r.recycle()
	return seq, err
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
		// One timestamp for the batch: its records go to disk in one
		// write(2), and a clock read plus format per record was 5% of the
		// ledger's profile.
		l.ts = tsNow()
		defer func() { l.ts = "" }()
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

// maxSyncs is how many fdatasyncs the syncer keeps in flight. On ext4 a
// second fdatasync issued while one runs joins the journal commit instead
// of queueing behind it, so a record waits about one flush, not two. More
// than two cost more than they save: each flush is about 100 µs of kernel
// CPU here, and with 256 producers on 2 cores, 2 in flight (and
// minOverlap 128) beat 4 (and 32) in 5 of 5 interleaved runs of
// BenchmarkAppendDurable (+15 to +80%) and 3 of 3 of the ledger's.
const maxSyncs = 2

// minOverlap is the fewest records that start a flush while another runs:
// below it, a flush and a signed checkpoint of their own cost more than
// waiting for the running flush to end.
const minOverlap = 128

func pendingRecords(js []*job) int {
	n := 0
	for _, j := range js {
		n += len(j.reqs)
	}
	return n
}

// syncRound is one fdatasync covering jobs (the last one's data and all
// written before it).
type syncRound struct {
	jobs []*job
	err  error
	done bool
}

// syncer makes written batches durable. Whatever jobs have arrived when a
// sync slot is free go into one round: one fdatasync of the segment they
// were written to. Rounds overlap (maxSyncs) and are acknowledged in order,
// each group under one signed checkpoint.
func (l *Log) syncer(done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var pending []*job
	var rounds []*syncRound // started, not yet acknowledged, in order
	finished := make(chan *syncRound, maxSyncs)
	running := 0
	jobs := l.jobs
	start := func() {
		for running < maxSyncs && len(pending) > 0 {
			if running > 0 && pendingRecords(pending) < minOverlap {
				return // not worth a flush of its own yet: wait for the running one
			}
			// Jobs of one round share a segment: rotate waits for every job
			// of the old segment before the new one's are written.
			n := 1
			for n < len(pending) && pending[n].seg == pending[0].seg {
				n++
			}
			r := &syncRound{jobs: pending[:n:n]}
			pending = pending[n:]
			rounds = append(rounds, r)
			running++
			go func() {
				r.err = l.Err()
				for _, j := range r.jobs {
					if r.err == nil && j.err != nil {
						r.err = j.err
					}
				}
				if r.err == nil {
					if e := unix.Fdatasync(int(r.jobs[len(r.jobs)-1].seg.Fd())); e != nil {
						r.err = fmt.Errorf("syncing segment: %w", e)
					}
				}
				finished <- r
			}()
		}
	}
	for jobs != nil || running > 0 || len(pending) > 0 {
		select {
		case j, ok := <-jobs:
			if !ok {
				jobs = nil
				break
			}
			pending = append(pending, j)
		case r := <-finished:
			running--
			r.done = true
			l.acknowledge(&rounds)
		case <-t.C:
			if l.ckptDirty && l.Err() == nil {
				l.fail(l.syncCheckpoints())
			}
		}
		start()
	}
	if l.Err() == nil {
		l.fail(l.syncCheckpoints())
	}
}

// acknowledge acknowledges the completed rounds at the head of rounds, in
// order, under one signed checkpoint covering the last of them. A round
// waits for the rounds before it even when its own flush returned first,
// so that once a job is acknowledged no flush of its segment is running.
func (l *Log) acknowledge(rounds *[]*syncRound) {
	n := 0
	for n < len(*rounds) && (*rounds)[n].done {
		n++
	}
	if n == 0 {
		return
	}
	ack := (*rounds)[:n]
	var err error
	for _, r := range ack {
		if err == nil && r.err != nil {
			err = r.err
		}
	}
	lastRound := ack[n-1]
	last := lastRound.jobs[len(lastRound.jobs)-1]
	if err == nil {
		err = l.checkpoint(last.size, last.root)
	}
	l.fail(err)
	for _, r := range ack {
		for _, j := range r.jobs {
			for _, q := range j.reqs {
				if q.async {
					q.recycle()
					continue
				}
				q.err = err
				q.done <- struct{}{}
			}
			l.inflight.Done()
		}
	}
	*rounds = append((*rounds)[:0], (*rounds)[n:]...)
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

// fail records the first write error; the trail then refuses further records
// (an audit trail that cannot persist must say so, not drop silently).
func (l *Log) fail(err error) {
	if err == nil {
		return
	}
	l.statsMu.Lock()
	if l.err == nil {
		l.err = err
		l.failed.Store(true)
	}
	l.statsMu.Unlock()
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
	tmp := "." + name + ".tmp"
	unix.Unlinkat(l.d.fd, tmp, 0) // left by a crash between create and rename
	f, err := l.d.open(tmp, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600, true)
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
		err = unix.Renameat2(l.d.fd, tmp, l.d.fd, name, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%s already exists but is not a segment this trail recognises; move it aside", name)
		}
	}
	if err != nil {
		f.Close()
		unix.Unlinkat(l.d.fd, tmp, 0)
		l.seg, l.segName = prevSeg, prevName
		return fmt.Errorf("creating segment %s: %w", name, err)
	}
	l.setAppendOnly(f)
	l.d.sync()
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
	ts := l.ts
	if ts == "" {
		ts = tsNow()
	}
	l.buf = appendRecord(l.buf, l.c.size(), ts, kind, l.c.prev[:], body)
	if l.mac != nil { // in place: the MAC covers the line without it
		l.mac.Reset()
		l.mac.Write(l.buf[start:])
		var sum [32]byte
		l.mac.Sum(sum[:0])
		l.buf = append(l.buf[:len(l.buf)-1], macKey...)
		l.buf = base64.StdEncoding.AppendEncode(l.buf, sum[:])
		l.buf = append(l.buf, '"', '}')
	}
	line := l.buf[start:]
	if len(line) > MaxLine {
		l.buf = l.buf[:start]
		return fmt.Errorf("record of %d bytes exceeds %d", len(line), MaxLine)
	}
	if l.leafHash == nil {
		l.leafHash = sha256.New()
	}
	l.leafHash.Reset()
	l.leafHash.Write(leafPrefix)
	l.leafHash.Write(line)
	l.leafHash.Sum(l.leafSum[:0])
	leaf := l.c.arena.keep(&l.leafSum) // the range may keep it
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
