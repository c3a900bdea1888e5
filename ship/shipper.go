package ship

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/violation"
	"github.com/minio/minio-go/v7"
)

// Config configures a Shipper.
type Config struct {
	// TrailDir is the trail directory the agent writes.
	TrailDir string
	// Node is where this node's trail goes: s3://bucket/prefix/<node>.
	Node Location
	// Client talks to the object store.
	Client *minio.Client
	// Retention is how long each object stays locked (compliance mode). It
	// is asked before every upload, so a policy reload takes effect.
	Retention func() time.Duration
	// Interval between rounds (default 5s).
	Interval time.Duration
	// MaxBackoff caps the wait after failed rounds (default 2m).
	MaxBackoff time.Duration
	// MaxBacklogAge: when bytes have waited longer than this to be shipped,
	// a shipping_backlog violation goes to Violations (once, until the
	// backlog drains). Zero disables it.
	MaxBacklogAge time.Duration
	// ChunkBytes caps one object (default 8 MiB).
	ChunkBytes int64
	// OpTimeout bounds one request to the store (default 60s).
	OpTimeout  time.Duration
	Violations violation.Sink
	Metrics    *Metrics
	Log        hclog.Logger
}

// Stats is a snapshot of the shipper's progress.
type Stats struct {
	BacklogBytes    int64         // bytes in the trail not yet in the store
	OldestUnshipped time.Duration // how long the oldest of them has waited (0: none)
	LastShippedSeq  int64         // the newest shipped checkpoint covers seqs up to this (-1: none)
	Objects         uint64        // chunks uploaded by this process
	Bytes           uint64        // bytes uploaded by this process
	Errors          uint64        // failed rounds
	Generations     uint64        // files found changed behind the shipper (new generations)
	LastError       string
}

// Shipper copies a trail directory to object storage.
type Shipper struct {
	cfg    Config
	st     *state
	locked bool // the bucket's Object Lock was checked
	// unsure: the store may hold chunks past the state's offsets (after a
	// start, or an upload whose answer was lost); the next round asks for
	// each chunk before sending it.
	unsure  bool
	unsaved int // chunks shipped since the state was last saved

	mu    sync.Mutex
	stats Stats
	since time.Time // state.BacklogSince, for Stats
	// reported: a backlog violation was emitted for the current backlog
	reported bool
}

// ErrNoObjectLock is returned when the bucket does not have Object Lock.
var ErrNoObjectLock = errors.New("the bucket does not have Object Lock enabled: shipped trails could be deleted or overwritten; create the bucket with Object Lock (versioning on)")

// New checks cfg and loads the shipping state from the trail directory.
func New(cfg Config) (*Shipper, error) {
	if cfg.TrailDir == "" || cfg.Client == nil || cfg.Node.Bucket == "" {
		return nil, errors.New("ship: a trail directory, a destination and a client are required")
	}
	if cfg.Node.Prefix == "" {
		return nil, errors.New("ship: the destination needs a node name under the bucket")
	}
	if cfg.Retention == nil {
		return nil, errors.New("ship: a retention period is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Minute
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = 8 << 20
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	st, moved, err := loadState(cfg.TrailDir, cfg.Node.String())
	if err != nil {
		return nil, err
	}
	if moved {
		cfg.Log.Warn("shipping destination changed: the whole trail is shipped to the new one", "dest", cfg.Node.String())
	}
	s := &Shipper{cfg: cfg, st: st, unsure: true}
	s.stats.LastShippedSeq = -1
	s.since = st.BacklogSince
	if cp := st.Files[checkpointFile]; cp != nil && cp.Attests > 0 {
		s.stats.LastShippedSeq = int64(cp.Attests) - 1
	}
	if cfg.Metrics != nil {
		cfg.Metrics.bind(s)
	}
	return s, nil
}

// Stats returns a snapshot.
func (s *Shipper) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.stats
	if since := s.backlogSince(); !since.IsZero() {
		out.OldestUnshipped = time.Since(since)
	}
	return out
}

func (s *Shipper) backlogSince() time.Time { return s.since }

// Run ships in rounds until ctx ends: every Interval after a round that
// shipped everything it found, sooner-to-later backoff after one that failed.
func (s *Shipper) Run(ctx context.Context) {
	fails := 0
	for {
		err := s.Round(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := s.cfg.Interval
		if err != nil {
			fails++
			wait = min(s.cfg.MaxBackoff, time.Second<<min(fails-1, 16))
			wait = wait/2 + rand.N(wait/2+1)
			s.cfg.Log.Warn("trail shipping failed; retrying", "dest", s.cfg.Node.String(), "error", err, "retry_in", wait.Round(time.Millisecond))
		} else {
			if fails > 0 {
				s.cfg.Log.Info("trail shipping resumed", "dest", s.cfg.Node.String())
			}
			fails = 0
		}
		s.checkBacklog()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// checkBacklog emits a shipping_backlog violation once the backlog is older
// than MaxBacklogAge, once per backlog.
func (s *Shipper) checkBacklog() {
	st := s.Stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.OldestUnshipped == 0 {
		s.reported = false
		return
	}
	if s.cfg.MaxBacklogAge <= 0 || st.OldestUnshipped < s.cfg.MaxBacklogAge || s.reported || s.cfg.Violations == nil {
		return
	}
	s.reported = true
	s.cfg.Violations.Emit(violation.Violation{Kind: violation.ShippingBacklog, Source: "ship",
		Detail: fmt.Sprintf("trail bytes have waited %s to be shipped to %s (limit %s; %d bytes unshipped; last error: %s)",
			st.OldestUnshipped.Round(time.Second), s.cfg.Node, s.cfg.MaxBacklogAge, st.BacklogBytes, orNone(st.LastError))})
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Round ships whatever the trail holds that the store does not. Run calls
// it; call it directly only when Run is not running (a final round at stop).
func (s *Shipper) Round(ctx context.Context) error {
	start := time.Now()
	err := s.round(ctx)
	backlog := s.backlog()
	s.mu.Lock()
	s.stats.BacklogBytes = backlog
	if err != nil {
		s.stats.Errors++
		s.stats.LastError = err.Error()
		if s.st.BacklogSince.IsZero() {
			s.st.BacklogSince = start
		}
	} else {
		s.stats.LastError = ""
		s.st.BacklogSince = time.Time{}
		s.unsure = false // everything up to the state's offsets is known to be there
	}
	s.since = s.st.BacklogSince
	s.mu.Unlock()
	if serr := s.st.save(s.cfg.TrailDir); serr != nil && err == nil {
		err = fmt.Errorf("saving shipping state: %w", serr)
	}
	if m := s.cfg.Metrics; m != nil {
		m.rounds.Inc()
		if err != nil {
			m.errors.Inc()
		} else {
			m.lastSuccess.SetToCurrentTime()
		}
	}
	return err
}

type localFile struct {
	name  string
	index uint64 // segments: from the name
	size  int64
	ino   uint64
	f     *os.File
}

func (s *Shipper) list() ([]*localFile, *localFile, error) {
	ents, err := os.ReadDir(s.cfg.TrailDir)
	if err != nil {
		return nil, nil, err
	}
	var segs []*localFile
	var ck *localFile
	for _, e := range ents {
		if !shippable(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		lf := &localFile{name: e.Name()}
		if e.Name() != checkpointFile {
			lf.index, _ = strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(e.Name(), "seg-"), ".jsonl"), 10, 64)
			segs = append(segs, lf)
		} else {
			ck = lf
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].index < segs[j].index })
	return segs, ck, nil
}

// open opens lf (no link followed) and judges its generation: a file that
// is shorter than what was shipped, another inode, or other bytes before
// the shipped offset starts a new generation from offset 0.
func (s *Shipper) open(lf *localFile) (*fileState, error) {
	path := filepath.Join(s.cfg.TrailDir, lf.name)
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	lf.f = os.NewFile(uintptr(fd), path)
	fi, err := lf.f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	lf.size = fi.Size()
	lf.ino = fi.Sys().(*syscall.Stat_t).Ino
	fs := s.st.Files[lf.name]
	if fs == nil {
		fs = &fileState{Gen: 1, Ino: lf.ino}
		s.st.Files[lf.name] = fs
		return fs, nil
	}
	why := ""
	switch {
	case fs.Ino != lf.ino:
		why = "replaced (another inode)"
	case lf.size < fs.Off:
		why = fmt.Sprintf("truncated to %d bytes, %d were shipped", lf.size, fs.Off)
	case fs.Off > 0:
		sum, err := tailSum(lf.f, fs.Off)
		if err != nil {
			return nil, err
		}
		if sum != fs.Tail {
			why = "rewritten before the shipped offset"
		}
	}
	if why != "" {
		s.cfg.Log.Error("a trail file changed after it was shipped: shipping it again as a new generation; the shipped one stays locked in the store",
			"file", lf.name, "found", why, "generation", fs.Gen+1)
		*fs = fileState{Gen: fs.Gen + 1, Ino: lf.ino}
		s.mu.Lock()
		s.stats.Generations++
		s.mu.Unlock()
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.generations.Inc()
		}
	}
	return fs, nil
}

const tailLen = 4096

func tailSum(f *os.File, off int64) (string, error) {
	n := min(off, tailLen)
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off-n); err != nil {
		return "", err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
}

func (s *Shipper) round(ctx context.Context) error {
	if !s.locked {
		if err := s.checkLock(ctx); err != nil {
			return err
		}
		s.locked = true
	}
	segs, ck, err := s.list()
	if err != nil {
		return err
	}
	defer func() {
		for _, lf := range append(segs, ck) {
			if lf != nil && lf.f != nil {
				lf.f.Close()
			}
		}
	}()
	if ck == nil {
		return nil // nothing is sealed yet
	}
	// Checkpoints first: what they attest bounds what is shipped of the segments.
	ckState, err := s.open(ck)
	if err != nil {
		return err
	}
	ckData, err := readComplete(ck.f, ckState.Off, ck.size, 4*s.cfg.ChunkBytes)
	if err != nil {
		return err
	}
	attests := ckState.Attests
	for _, line := range bytes.Split(ckData, []byte("\n")) {
		var cl struct {
			Size uint64 `json:"size"`
		}
		if len(line) > 0 && json.Unmarshal(line, &cl) == nil {
			attests = max(attests, cl.Size)
		}
	}
	for i, lf := range segs {
		fs, err := s.open(lf)
		if err != nil {
			return err
		}
		final := i < len(segs)-1
		done, err := s.shipSegment(ctx, lf, fs, attests, final)
		if err != nil {
			return err
		}
		if !done {
			break // later segments hold later records
		}
	}
	for off := int64(0); off < int64(len(ckData)); {
		n := cutLines(ckData[off:], s.cfg.ChunkBytes)
		shipped, err := s.ship(ctx, ck, ckState, ckData[off:off+int64(n)])
		if err != nil {
			return err
		}
		off += shipped
	}
	if attests > ckState.Attests {
		ckState.Attests = attests
		s.mu.Lock()
		s.stats.LastShippedSeq = int64(attests) - 1
		s.mu.Unlock()
		if s.cfg.Metrics != nil {
			s.cfg.Metrics.lastSeq.Set(float64(attests) - 1)
		}
	}
	return nil
}

// checkLock refuses a bucket without Object Lock.
func (s *Shipper) checkLock(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	enabled, _, _, _, err := s.cfg.Client.GetObjectLockConfig(ctx, s.cfg.Node.Bucket)
	if err != nil {
		var er minio.ErrorResponse
		if errors.As(err, &er) && er.Code == "ObjectLockConfigurationNotFoundError" {
			return fmt.Errorf("%s: %w", s.cfg.Node.Bucket, ErrNoObjectLock)
		}
		return fmt.Errorf("reading the Object Lock configuration of bucket %s: %w", s.cfg.Node.Bucket, err)
	}
	if enabled != "Enabled" {
		return fmt.Errorf("%s: %w", s.cfg.Node.Bucket, ErrNoObjectLock)
	}
	return nil
}

// shipSegment ships lf's bytes past the shipped offset whose records have
// seq < attests; a final segment (a later one exists) whose every complete
// line is shipped also ships its incomplete tail (a torn write the next
// segment declares). It reports whether the whole file is now shipped.
func (s *Shipper) shipSegment(ctx context.Context, lf *localFile, fs *fileState, attests uint64, final bool) (bool, error) {
	for fs.Off < lf.size {
		data, err := readComplete(lf.f, fs.Off, lf.size, s.cfg.ChunkBytes)
		if err != nil {
			return false, err
		}
		cut, stopped := 0, false
		for cut < len(data) {
			nl := bytes.IndexByte(data[cut:], '\n')
			if seq, ok := lineSeq(data[cut : cut+nl]); ok && seq >= attests {
				stopped = true
				break
			}
			cut += nl + 1
		}
		if len(data) == 0 && final && lf.size-fs.Off <= s.cfg.ChunkBytes {
			// Only an incomplete final line is left: the torn tail of a
			// segment that is never written again (the next declares it).
			data = make([]byte, lf.size-fs.Off)
			if _, err := lf.f.ReadAt(data, fs.Off); err != nil {
				return false, err
			}
			cut = len(data)
		}
		if cut == 0 {
			return false, nil // nothing more is covered by a checkpoint yet
		}
		n, err := s.ship(ctx, lf, fs, data[:cut])
		if err != nil {
			return false, err
		}
		if stopped && n == int64(cut) {
			return false, nil
		}
	}
	return true, nil
}

// lineSeq reads a record's seq from the start of its line ({"v":1,"seq":N,...).
func lineSeq(line []byte) (uint64, bool) {
	i := bytes.Index(line[:min(len(line), 32)], []byte(`"seq":`))
	if i < 0 {
		return 0, false
	}
	j := i + len(`"seq":`)
	k := j
	for k < len(line) && line[k] >= '0' && line[k] <= '9' {
		k++
	}
	n, err := strconv.ParseUint(string(line[j:k]), 10, 64)
	return n, err == nil
}

// readComplete reads from off up to limit bytes of f (of size size), cut
// after the last newline.
func readComplete(f *os.File, off, size, limit int64) ([]byte, error) {
	n := min(size-off, limit)
	if n <= 0 {
		return nil, nil
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	i := bytes.LastIndexByte(b, '\n')
	return b[:i+1], nil
}

// cutLines returns how many bytes of b, whole lines, fit in limit (at
// least one line).
func cutLines(b []byte, limit int64) int {
	if int64(len(b)) <= limit {
		return len(b)
	}
	i := bytes.LastIndexByte(b[:limit], '\n')
	if i < 0 {
		return bytes.IndexByte(b, '\n') + 1
	}
	return i + 1
}

// ship uploads data as the chunk of lf at fs.Off and advances fs past it.
// After a start or a failed upload (s.unsure) the store is asked first:
// a chunk an earlier run uploaded without recording it is taken as it is
// (its length may differ from data's: the cut depends on when it was made),
// never uploaded again. It returns how far fs advanced.
func (s *Shipper) ship(ctx context.Context, lf *localFile, fs *fileState, data []byte) (int64, error) {
	key := chunkKey(s.cfg.Node, lf.name, fs.Gen, fs.Off)
	n := int64(0)
	if s.unsure {
		var err error
		if n, err = s.present(ctx, key, lf, fs.Off); err != nil {
			return 0, err
		}
	}
	if n == 0 {
		sum := sha256.Sum256(data)
		octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
		_, err := s.cfg.Client.PutObject(octx, s.cfg.Node.Bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
			ContentType:     "application/x-ndjson",
			Mode:            minio.Compliance,
			RetainUntilDate: time.Now().Add(s.cfg.Retention()).UTC(),
			SendContentMd5:  true,
			UserMetadata:    map[string]string{"kvh-sha256": hex.EncodeToString(sum[:])},
		})
		cancel()
		if err != nil {
			s.unsure = true // the answer may be what was lost
			return 0, fmt.Errorf("uploading %s: %w", key, err)
		}
		n = int64(len(data))
		s.mu.Lock()
		s.stats.Objects++
		s.stats.Bytes += uint64(n)
		s.mu.Unlock()
		if m := s.cfg.Metrics; m != nil {
			m.objects.Inc()
			m.bytes.Add(float64(n))
		}
	}
	fs.Off += n
	t, err := tailSum(lf.f, fs.Off)
	if err != nil {
		return n, err
	}
	fs.Tail = t
	if s.unsaved++; s.unsaved >= saveEvery {
		s.unsaved = 0
		if err := s.st.save(s.cfg.TrailDir); err != nil {
			return n, fmt.Errorf("saving shipping state: %w", err)
		}
	}
	return n, nil
}

// saveEvery bounds the chunks shipped between two saves of the state (a
// round also saves at its end): what a crash loses is looked for, not sent.
const saveEvery = 16

// present returns the size of the object at key when the store has it and
// it holds exactly the node's bytes from off (0 when it is absent). An
// object there with other bytes is an error: it is never overwritten.
func (s *Shipper) present(ctx context.Context, key string, lf *localFile, off int64) (int64, error) {
	octx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	info, err := s.cfg.Client.StatObject(octx, s.cfg.Node.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if r := minio.ToErrorResponse(err); r.StatusCode == 404 || r.Code == "NoSuchKey" {
			return 0, nil
		}
		return 0, fmt.Errorf("checking for %s: %w", key, err)
	}
	want := ""
	for k, v := range info.UserMetadata {
		if strings.EqualFold(k, "kvh-sha256") {
			want = v
		}
	}
	if info.Size > 0 && off+info.Size <= lf.size {
		b := make([]byte, info.Size)
		if _, err := lf.f.ReadAt(b, off); err != nil {
			return 0, err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) == want {
			return info.Size, nil
		}
	}
	return 0, fmt.Errorf("%s is already in the store with other bytes than %s holds from offset %d: it is never overwritten (verify the node)", key, lf.name, off)
}

// backlog is the bytes of shippable files not yet shipped.
func (s *Shipper) backlog() int64 {
	segs, ck, err := s.list()
	if err != nil {
		return 0
	}
	var n int64
	for _, lf := range append(segs, ck) {
		if lf == nil {
			continue
		}
		fi, err := os.Lstat(filepath.Join(s.cfg.TrailDir, lf.name))
		if err != nil {
			continue
		}
		off := int64(0)
		if fs := s.st.Files[lf.name]; fs != nil && fs.Ino == fi.Sys().(*syscall.Stat_t).Ino && fs.Off <= fi.Size() {
			off = fs.Off
		}
		n += fi.Size() - off
	}
	return n
}
