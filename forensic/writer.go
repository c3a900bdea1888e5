package forensic

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/sys/unix"
)

type request struct {
	kind  string
	body  []byte
	seq   uint64
	err   error
	async bool // nobody waits: the syncer recycles it
	done  chan struct{}
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
