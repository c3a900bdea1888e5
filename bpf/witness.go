//go:build linux && (amd64 || arm64)

package bpf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/hashicorp/go-hclog"
)

// Witness is a running set of probes.
type Witness struct {
	opts     Options
	coll     *ebpf.Collection
	progs    map[string]*ebpf.Program // section name -> program
	reader   *ringbuf.Reader
	events   chan Event
	mu       sync.Mutex
	links    []link.Link
	attached map[[2]uint64]string // (dev, ino) -> path
	quit     chan struct{}
	closed   bool // under mu: the maps are gone
	wg       sync.WaitGroup
	dropped  atomic.Uint64 // events the reader could not hand on
}

// Start loads the programs and attaches them.
func Start(opts Options) (*Witness, error) {
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.Rescan == 0 {
		opts.Rescan = 2 * time.Second
	}
	if opts.Log == nil {
		opts.Log = hclog.NewNullLogger()
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root (CAP_BPF and CAP_PERFMON)", ErrUnavailable)
	}
	if _, err := os.Stat("/sys/bus/event_source/devices/uprobe/type"); err != nil {
		return nil, fmt.Errorf("%w: no uprobe PMU (%v)", ErrUnavailable, err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w: memlock: %v", ErrUnavailable, err)
	}
	spec, err := loadKvh()
	if err != nil {
		return nil, fmt.Errorf("loading the witness object: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: loading programs: %v", ErrUnavailable, err)
	}
	w := &Witness{opts: opts, coll: coll, progs: map[string]*ebpf.Program{}, events: make(chan Event, 65536), attached: map[[2]uint64]string{}, quit: make(chan struct{})}
	for name, ps := range spec.Programs {
		w.progs[ps.SectionName] = coll.Programs[name]
	}
	w.reader, err = ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("ring buffer: %w", err)
	}
	for _, p := range opts.Libraries {
		if _, err := w.attach(p); err != nil {
			opts.Log.Warn("witness: library not attached", "path", p, "error", err)
		}
	}
	w.scan()
	w.wg.Add(1)
	go w.read()
	if opts.Rescan > 0 {
		w.wg.Add(1)
		go w.rescan()
	}
	return w, nil
}

// Events delivers witnessed calls.
func (w *Witness) Events() <-chan Event { return w.events }

// Attached lists the library paths probed (one per inode).
func (w *Witness) Attached() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.attached))
	for _, p := range w.attached {
		out = append(out, p)
	}
	return out
}

// Lost is the number of events lost: the ring had no room, or the reader's
// channel was full.
func (w *Witness) Lost() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var per []uint64
	if w.closed {
		return w.dropped.Load()
	}
	if err := w.coll.Maps["lost"].Lookup(uint32(0), &per); err != nil {
		return w.dropped.Load()
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n + w.dropped.Load()
}

// Failed counts, per function, the probed calls that returned an error
// (never reported as events: a refused free frees nothing).
func (w *Witness) Failed() map[string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]uint64{}
	if w.closed {
		return out
	}
	m := w.coll.Maps["failed"]
	for i, name := range fnNames {
		var per []uint64
		if err := m.Lookup(uint32(i+1), &per); err != nil {
			continue
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		if n > 0 {
			out[name] = n
		}
	}
	return out
}

// attach probes the library at path once per (device, inode).
func (w *Witness) attach(path string) (bool, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return false, err
	}
	key := [2]uint64{st.Dev, st.Ino}
	w.mu.Lock()
	if _, ok := w.attached[key]; ok {
		w.mu.Unlock()
		return false, nil
	}
	w.attached[key] = path // claimed now so a concurrent scan does not repeat it
	w.mu.Unlock()
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return false, err
	}
	var ls []link.Link
	for sec, prog := range w.progs {
		ret := strings.HasPrefix(sec, "uretprobe/")
		sym := sec[strings.IndexByte(sec, '/')+1:]
		var l link.Link
		if ret {
			l, err = ex.Uretprobe(sym, prog, nil)
		} else {
			l, err = ex.Uprobe(sym, prog, nil)
		}
		if err != nil {
			continue // the library lacks this symbol
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return false, errors.New("no CUDA allocation or free symbols")
	}
	w.mu.Lock()
	w.links = append(w.links, ls...)
	w.mu.Unlock()
	w.opts.Log.Info("witness attached", "library", path, "probes", len(ls))
	return true, nil
}

// scan attaches to every libcuda/libcudart mapped by a live process.
func (w *Witness) scan() {
	ents, err := os.ReadDir(w.opts.ProcRoot)
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		for _, lib := range cudaLibraries(filepath.Join(w.opts.ProcRoot, e.Name(), "maps")) {
			w.attach(filepath.Join(w.opts.ProcRoot, strconv.Itoa(pid), "root", lib))
		}
	}
}

func cudaLibraries(maps string) []string {
	f, err := os.Open(maps)
	if err != nil {
		return nil
	}
	defer f.Close()
	seen := map[string]bool{}
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		p := fields[5]
		base := filepath.Base(p)
		if (strings.HasPrefix(base, "libcuda.so") || strings.HasPrefix(base, "libcudart.so")) && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func (w *Witness) rescan() {
	defer w.wg.Done()
	t := time.NewTicker(w.opts.Rescan)
	defer t.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-t.C:
			w.scan()
		}
	}
}

func (w *Witness) read() {
	defer w.wg.Done()
	defer close(w.events)
	for {
		rec, err := w.reader.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			continue
		}
		b := rec.RawSample
		if len(b) < 48 {
			continue
		}
		fn := binary.LittleEndian.Uint16(b[40:])
		ev := Event{
			TGID: binary.LittleEndian.Uint32(b[0:]), TID: binary.LittleEndian.Uint32(b[4:]),
			Cgroup: binary.LittleEndian.Uint64(b[8:]), Ptr: binary.LittleEndian.Uint64(b[16:]),
			Size: binary.LittleEndian.Uint64(b[24:]), TS: binary.LittleEndian.Uint64(b[32:]), Free: b[42] == 1, Import: b[42] == 2,
		}
		if fn >= 1 && int(fn) <= len(fnNames) {
			ev.Fn = fnNames[fn-1]
		}
		select {
		case w.events <- ev:
		default:
			w.dropped.Add(1)
		}
	}
}

// Close detaches every probe and stops the reader.
func (w *Witness) Close() error {
	close(w.quit)
	w.reader.Close()
	w.mu.Lock()
	for _, l := range w.links {
		l.Close()
	}
	w.links = nil
	w.mu.Unlock()
	w.wg.Wait()
	w.mu.Lock()
	w.closed = true
	w.coll.Close()
	w.mu.Unlock()
	return nil
}
