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
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Witness is a running set of probes.
type Witness struct {
	opts     Options
	coll     *ebpf.Collection
	progs    map[string]*ebpf.Program // section name -> program
	reader   *ringbuf.Reader
	events   chan []Event
	mu       sync.Mutex
	links    []link.Link
	attached map[[2]uint64]string    // (dev, ino) of the file underneath -> path
	real     map[[2]uint64][2]uint64 // (dev, ino) as a process's maps show it -> the file underneath
	quit     chan struct{}
	flagged  map[flagKey]bool // mappings reported to Options.Unprobed
	closed   bool             // under mu: the maps are gone
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
	delete(spec.Programs, "bench_fill") // the benchmark's producer, never the witness's
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: loading programs: %v", ErrUnavailable, err)
	}
	w := &Witness{opts: opts, coll: coll, progs: map[string]*ebpf.Program{}, events: make(chan []Event, eventBatches), attached: map[[2]uint64]string{}, real: map[[2]uint64][2]uint64{}, flagged: map[flagKey]bool{}, quit: make(chan struct{})}
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

// Events delivers witnessed calls in batches, in ring order: each slice
// holds what one read of the ring found (at most maxBatch events) and is the
// receiver's to keep. The channel closes when the witness does.
func (w *Witness) Events() <-chan []Event { return w.events }

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

// attach probes the library at path once per file underneath: the
// (device, inode) a mapping of it has, which for a file seen through an
// overlay (every container's root) is the layer's file, not the overlay's.
func (w *Witness) attach(path string) (bool, error) {
	key, err := realFile(w.opts.ProcRoot, "/proc/self/mountinfo", "", path)
	if err != nil {
		return false, err
	}
	return w.attachKey(path, key)
}

// attachKey probes path, known to be the file key, unless key is probed.
// The kernel resolves a uprobe's path to the file underneath too
// (d_real_inode), so two paths of one key would fire twice per call.
func (w *Witness) attachKey(path string, key [2]uint64) (bool, error) {
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
		dir := filepath.Join(w.opts.ProcRoot, strconv.Itoa(pid))
		for _, lib := range cudaLibraries(filepath.Join(dir, "maps")) {
			// maps names the file as the process sees it (an overlay's
			// device, one per container); the file underneath is found
			// once per such file and remembered.
			w.mu.Lock()
			key, known := w.real[lib.key]
			_, done := w.attached[key]
			w.mu.Unlock()
			if known && done {
				continue
			}
			path := filepath.Join(dir, "root", lib.path)
			key, err := realFile(w.opts.ProcRoot, filepath.Join(dir, "mountinfo"), filepath.Join(dir, "root"), lib.path)
			switch {
			case err == nil && !namesMapping(path, key, lib.key):
				// The process chose what its path names now (a deleted
				// copy, or a link to a probed library in its place):
				// resolving the path would take the mapping for that file.
				w.probeMapping(pid, dir, lib, "the path its maps name is now another file")
				continue
			case errors.Is(err, os.ErrNotExist) && lib.deleted:
				w.probeMapping(pid, dir, lib, "the mapped file was deleted")
				continue
			case errors.Is(err, os.ErrPermission):
				// A directory the process made unsearchable to the agent
				// (root without DAC_READ_SEARCH, as the DaemonSet runs).
				w.probeMapping(pid, dir, lib, "its path cannot be searched by the agent")
				continue
			case err != nil:
				continue // gone: the next scan tries again
			}
			w.mu.Lock()
			if len(w.real) >= maxReal {
				clear(w.real)
			}
			w.real[lib.key] = key
			w.mu.Unlock()
			w.attachKey(path, key)
		}
	}
}

// namesMapping: the file at path (key, the file underneath it) is the file
// a mapping holds (mapped, its (device, inode) in the maps). Kernels before
// 6.8 show the file underneath an overlay in the maps, later ones the
// overlay's own, which stat through path gives.
func namesMapping(path string, key, mapped [2]uint64) bool {
	if key == mapped {
		return true
	}
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && [2]uint64{st.Dev, st.Ino} == mapped
}

type flagKey struct {
	pid    int
	mapped [2]uint64
}

// probeMapping probes the file a mapping holds through
// /proc/<pid>/map_files, when the path in the maps no longer names it. The
// kernel lets only CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) follow those
// links; without, the process is reported to Options.Unprobed, once.
func (w *Witness) probeMapping(pid int, dir string, lib mappedLib, why string) {
	mf := filepath.Join(dir, "map_files", lib.rng)
	var st unix.Stat_t
	err := unix.Stat(mf, &st)
	if err == nil && [2]uint64{st.Dev, st.Ino} != lib.key {
		err = errors.New("map_files names another file")
	}
	if err == nil {
		if _, err = w.attachKey(mf, lib.key); err == nil {
			w.mu.Lock()
			w.real[lib.key] = lib.key
			w.mu.Unlock()
			return
		}
	}
	if _, serr := os.Stat(dir); serr != nil {
		return // gone
	}
	fk := flagKey{pid, lib.key}
	w.mu.Lock()
	done := w.flagged[fk]
	if !done {
		if len(w.flagged) >= maxReal {
			clear(w.flagged)
		}
		w.flagged[fk] = true
	}
	w.mu.Unlock()
	if done {
		return
	}
	w.opts.Log.Warn("witness: a process maps a CUDA library that cannot be probed", "pid", pid, "library", lib.path, "why", why, "error", err)
	if w.opts.Unprobed != nil {
		w.opts.Unprobed(pid, lib.path, why)
	}
}

// maxReal bounds the remembered maps -> file resolutions (one per
// container's view of a library; forgotten wholesale past it, then found
// again).
const maxReal = 1 << 14

// mappedLib is a library a process maps: its path in the process's mount
// namespace and the (device, inode) of the file the mapping holds.
type mappedLib struct {
	path    string
	key     [2]uint64
	rng     string // the mapping's address range, its name in map_files
	deleted bool   // the maps say "(deleted)"
}

func cudaLibraries(maps string) []mappedLib {
	f, err := os.Open(maps)
	if err != nil {
		return nil
	}
	defer f.Close()
	seen := map[[2]uint64]bool{}
	var out []mappedLib
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		p := fields[5]
		base := filepath.Base(p)
		if !strings.HasPrefix(base, "libcuda.so") && !strings.HasPrefix(base, "libcudart.so") {
			continue
		}
		key, ok := mapsKey(fields[3], fields[4])
		if ok && !seen[key] {
			seen[key] = true
			out = append(out, mappedLib{path: p, key: key, rng: fields[0], deleted: len(fields) > 6 && fields[6] == "(deleted)"})
		}
	}
	return out
}

// mapsKey parses a maps line's "major:minor" (hex) and inode into the
// (st_dev, st_ino) stat would give for the same file.
func mapsKey(dev, ino string) ([2]uint64, bool) {
	maj, min, ok := strings.Cut(dev, ":")
	if !ok {
		return [2]uint64{}, false
	}
	ma, err1 := strconv.ParseUint(maj, 16, 32)
	mi, err2 := strconv.ParseUint(min, 16, 32)
	in, err3 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || in == 0 {
		return [2]uint64{}, false
	}
	return [2]uint64{unix.Mkdev(uint32(ma), uint32(mi)), in}, true
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

// pollInterval is how long the reader waits for a wakeup before it reads
// the ring anyway: events wake it only when WAKE_BYTES (kvh.bpf.c) are
// unread, so this bounds how late a quiet ring's events arrive.
const pollInterval = 5 * time.Millisecond

// eventBatches and maxBatch bound what waits for the receiver: up to
// eventBatches x maxBatch events (256k) before the reader counts drops.
const (
	eventBatches = 1024
	maxBatch     = 256
)

// read drains the ring into the events channel, a batch at a time: one
// record buffer is reused, the ring is read until empty (or a batch is
// full) after each wakeup or poll, and the batch is handed on with one
// channel send — per-event sends cost more than the rest of the reader.
func (w *Witness) read() {
	defer w.wg.Done()
	defer close(w.events)
	var rec ringbuf.Record
	var batch []Event
	flush := func() {
		if len(batch) == 0 {
			return
		}
		select {
		case w.events <- batch:
		default:
			w.dropped.Add(uint64(len(batch)))
		}
		batch = nil
	}
	w.reader.SetDeadline(time.Now().Add(pollInterval))
	for {
		if len(batch) > 0 && w.reader.AvailableBytes() == 0 {
			flush() // the ring is empty: hand on what was read
		}
		if err := w.reader.ReadInto(&rec); err != nil {
			flush()
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ringbuf.ErrFlushed) {
				select {
				case <-w.quit: // Close flushed the ring: everything in it has been read
					return
				default:
				}
				w.reader.SetDeadline(time.Now().Add(pollInterval))
				continue
			}
			if errors.Is(err, ringbuf.ErrClosed) {
				return
			}
			continue
		}
		ev, ok := decode(rec.RawSample)
		if !ok {
			continue
		}
		if batch == nil {
			batch = make([]Event, 0, maxBatch)
		}
		batch = append(batch, ev)
		if len(batch) == maxBatch {
			flush()
		}
	}
}

// decode reads one struct event (kvh.bpf.c).
func decode(b []byte) (Event, bool) {
	if len(b) < 48 {
		return Event{}, false
	}
	fn := binary.LittleEndian.Uint16(b[40:])
	kind := b[42]
	ev := Event{
		TGID: binary.LittleEndian.Uint32(b[0:]), TID: binary.LittleEndian.Uint32(b[4:]),
		Cgroup: binary.LittleEndian.Uint64(b[8:]), Ptr: binary.LittleEndian.Uint64(b[16:]),
		Size: binary.LittleEndian.Uint64(b[24:]), TS: binary.LittleEndian.Uint64(b[32:]),
		Free: kind == 1, Import: kind == 2, Context: kind == 3,
	}
	if fn >= 1 && int(fn) <= len(fnNames) {
		ev.Fn = fnNames[fn-1]
	}
	return ev, true
}

// Close detaches every probe, delivers what is still in the ring and stops
// the reader.
func (w *Witness) Close() error {
	close(w.quit)
	w.mu.Lock()
	for _, l := range w.links {
		l.Close()
	}
	w.links = nil
	w.mu.Unlock()
	if err := w.reader.Flush(); err != nil {
		w.reader.Close()
	}
	w.wg.Wait()
	w.reader.Close()
	w.mu.Lock()
	w.closed = true
	w.coll.Close()
	w.mu.Unlock()
	return nil
}
