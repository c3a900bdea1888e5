package forensic

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// linePipe reads newline-terminated lines in large blocks and runs prep on
// every line on all cores, then hands the lines back in file order with what
// prep computed. Verifiers keep their one sequential loop (chain, seq, the
// order in which problems are found) and move the per-line work that needs
// no state from earlier lines — parsing, the leaf hash, the MAC — into prep:
// verification scales with cores, and a file with one segment scales too.
//
// Lifecycle: newLinePipe starts a reader goroutine and one worker per
// GOMAXPROCS; next returns lines until the end; stop (always, deferred)
// ends the goroutines. Blocks in flight are bounded (2×workers+2), so memory
// does not grow with the file.
type linePipe[T any] struct {
	ordered chan *lineBlock[T]
	// free holds blocks the consumer is done with: their buffer, spans and
	// out are reused, so that a verify allocates a few blocks, not one
	// per 256 KiB read (the profile had the allocations, their zeroing and
	// the GC returning them at a fifth of verify).
	free    chan *lineBlock[T]
	quit    chan struct{}
	wg      sync.WaitGroup
	cur     *lineBlock[T]
	i       int
	maxLine int
}

type lineBlock[T any] struct {
	buf   []byte
	spans [][2]int // [start, end) of each line in buf, without its newline
	out   []T
	tail  []byte // on the last block: the bytes after the last newline
	err   error  // on the last block: io.EOF, an over-long line, or a read error
	done  chan struct{}
}

const pipeBlock = 256 << 10

// maxBlockLines caps the lines of one block: what prep computes per line
// (a parsed record, some 300 bytes) is kept for the whole block, so a file
// of empty lines would otherwise cost 300 times its size per block in flight.
const maxBlockLines = 4096

// errLineTooLong is the error next returns for a line longer than maxLine.
type errLineTooLong int

func (e errLineTooLong) Error() string {
	return fmt.Sprintf("record line longer than %d bytes", int(e))
}

// blockPool holds read blocks for the pipes of one verification, so that
// its segments, one pipe each, share a few blocks.
type blockPool[T any] chan *lineBlock[T]

func newBlockPool[T any]() blockPool[T] {
	return make(blockPool[T], 2*runtime.GOMAXPROCS(0)+4)
}

// newLinePipe starts reading r. newWorker makes each worker's private state
// (hashes, scratch buffers); prep must not keep line after it returns
// unless it copies it. Blocks come from and go back to free (nil: a pool of
// the pipe's own).
func newLinePipe[T any, W any](r io.Reader, maxLine int, free blockPool[T], newWorker func() W, prep func(w W, line []byte, out *T)) *linePipe[T] {
	workers := runtime.GOMAXPROCS(0)
	if free == nil {
		free = newBlockPool[T]()
	}
	p := &linePipe[T]{
		ordered: make(chan *lineBlock[T], 2*workers+2),
		quit:    make(chan struct{}),
		free:    free,
		maxLine: maxLine,
	}
	work := make(chan *lineBlock[T], 2*workers+2)
	p.wg.Add(1 + workers)
	go p.read(r, work)
	for range workers {
		go func() {
			defer p.wg.Done()
			w := newWorker()
			for b := range work {
				for i, s := range b.spans {
					prep(w, b.buf[s[0]:s[1]], &b.out[i])
				}
				close(b.done)
			}
		}()
	}
	return p
}

func (p *linePipe[T]) read(r io.Reader, work chan<- *lineBlock[T]) {
	defer p.wg.Done()
	defer close(work)
	defer close(p.ordered)
	var carry []byte
	for {
		var b *lineBlock[T]
		select {
		case b = <-p.free:
		default:
			b = &lineBlock[T]{}
		}
		b.done, b.spans, b.tail, b.err = make(chan struct{}), b.spans[:0], nil, nil
		if cap(b.buf) < max(pipeBlock, 2*len(carry)) {
			b.buf = make([]byte, 0, max(pipeBlock, 2*len(carry)))
		}
		b.buf = b.buf[:0]
		b.buf = append(b.buf, carry...)
		var rerr error
		for {
			// What is carried may be a block already (the last one stopped
			// at maxBlockLines): then it is not read onto, so that buffers
			// do not grow with each block.
			if len(b.buf) >= pipeBlock/2 && bytes.IndexByte(b.buf, '\n') >= 0 {
				break
			}
			if len(b.buf) == cap(b.buf) {
				b.buf = append(b.buf, 0)[:len(b.buf)] // grow
			}
			n, err := r.Read(b.buf[len(b.buf):cap(b.buf)])
			b.buf = b.buf[:len(b.buf)+n]
			if err != nil {
				rerr = err
				break
			}
			nl := bytes.LastIndexByte(b.buf, '\n')
			if nl < 0 && len(b.buf) > p.maxLine {
				break // split reports the over-long line
			}
			if nl >= 0 && len(b.buf) >= pipeBlock/2 {
				break
			}
		}
		last := p.split(b, rerr)
		if !last {
			end := 0
			if n := len(b.spans); n > 0 {
				end = b.spans[n-1][1] + 1
			}
			carry = append(carry[:0], b.buf[end:]...)
		}
		if cap(b.out) < len(b.spans) {
			b.out = make([]T, len(b.spans))
		} else {
			b.out = b.out[:len(b.spans)]
			clear(b.out) // prep starts from a zero T, as with a new block
		}
		select {
		case p.ordered <- b:
		case <-p.quit:
			return
		}
		select {
		case work <- b:
		case <-p.quit:
			return
		}
		if last {
			return
		}
	}
}

// split finds the lines in b; it reports whether b is the last block (end of
// input, a read error, or a line longer than maxLine).
func (p *linePipe[T]) split(b *lineBlock[T], rerr error) bool {
	for off := 0; ; {
		if len(b.spans) == maxBlockLines {
			return false // the rest is carried to the next block
		}
		nl := bytes.IndexByte(b.buf[off:], '\n')
		if nl > p.maxLine || (nl < 0 && len(b.buf)-off > p.maxLine) {
			b.tail, b.err = b.buf[off:], errLineTooLong(p.maxLine)
			return true
		}
		if nl < 0 {
			if rerr != nil {
				b.tail, b.err = b.buf[off:], rerr
				return true
			}
			return false
		}
		b.spans = append(b.spans, [2]int{off, off + nl})
		off += nl + 1
	}
}

// next returns the next line (without its newline) and what prep computed
// for it; the line is valid until next returns a line of a later block. At the end it returns the bytes after the last newline, a nil out
// and io.EOF; an over-long line or a read error ends it the same way with
// that error.
func (p *linePipe[T]) next() (line []byte, out *T, err error) {
	for p.cur == nil || p.i == len(p.cur.spans) {
		if p.cur != nil && p.cur.err != nil {
			return p.cur.tail, nil, p.cur.err
		}
		if p.cur != nil {
			// Lines of a block are valid until next moves past it: now.
			// Released before waiting for the next block, so that the
			// reader, woken by that wait, finds it free.
			select {
			case p.free <- p.cur:
			default:
			}
			p.cur = nil
		}
		b, ok := <-p.ordered
		if !ok {
			return nil, nil, errors.New("line reader stopped")
		}
		<-b.done
		p.cur, p.i = b, 0
	}
	s := p.cur.spans[p.i]
	out = &p.cur.out[p.i]
	p.i++
	return p.cur.buf[s[0]:s[1]], out, nil
}

// stop ends the reader and workers; lines already returned stay valid.
func (p *linePipe[T]) stop() {
	close(p.quit)
	for range p.ordered {
	}
	p.wg.Wait()
}
