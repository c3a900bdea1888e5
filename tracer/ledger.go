package tracer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/zeroize"
)

// Trail is where transitions are recorded; *forensic.Log satisfies it.
// Append must return only once the record is durable.
type Trail interface {
	Append(body any) (uint64, error)
}

// Allocator provides host memory for local buffers. Put receives only memory
// that was zeroized and verified; quarantined memory is never returned.
type Allocator interface {
	Get(n int) []byte
	Put(b []byte)
}

type heap struct{}

func (heap) Get(n int) []byte { return make([]byte, n) }
func (heap) Put([]byte)       {}

// Tags label a buffer; they are written in every record about it.
type Tags struct {
	Tenant    string `json:"tenant,omitempty"`
	Request   string `json:"request,omitempty"`
	Model     string `json:"model,omitempty"`
	Device    string `json:"device,omitempty"`
	Framework string `json:"framework,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Stream    string `json:"stream,omitempty"`
	// Claimed is a tenant the buffer's owner claimed for itself (e.g. an
	// engine tagging requests), recorded beside the kernel-derived Tenant.
	Claimed string `json:"claimed_tenant,omitempty"`
}

// Kind says who owns a buffer's memory.
type Kind uint8

const (
	Local  Kind = iota + 1 // host memory the ledger owns and zeroizes
	Remote                 // memory in another process, attested by the interposer
)

func (k Kind) String() string {
	if k == Remote {
		return "remote"
	}
	return "local"
}

// Handle names a buffer. Handles are never reused.
type Handle uint64

func (h Handle) String() string { return fmt.Sprintf("b-%d", uint64(h)) }

// Attestation is a remote buffer's sanitize step, as the interposer reports it.
type Attestation struct {
	Bytes    int64         // bytes the zeroize covered
	Zeroed   int64         // bytes verified zero (or zeroed, when unverified)
	Verified bool          // a verification ran and passed
	Method   string        // e.g. "memset+full", "memsetD8Async+sample"
	Seed     uint64        // sample seed, when sampled
	Duration time.Duration // zeroize plus verify
}

// Options configure a Ledger.
type Options struct {
	Trail     Trail           // required
	Policy    policy.Config   // validated by New
	Allocator Allocator       // local memory; default: the Go heap
	Faults    *zeroize.Faults // test seam for local sanitize
	Logger    hclog.Logger
	Now       func() time.Time
	// AsyncTrail queues transition records without waiting for each to be
	// durable (the trail must implement AppendAsync; *forensic.Log does).
	// Records stay in transition order, and anything that waits on the trail
	// later (an Append, a Sync) waits for them: the agent uses this so that a
	// connection's events are not serialised on fdatasync, while every action
	// it takes is still recorded, durably, after the verdict it rests on.
	AsyncTrail bool
	// OnViolation, when set, is told of every policy violation after it is
	// recorded (the agent's enforcer acts on it). It runs with the buffer's
	// lock held and must not call back into the Ledger.
	OnViolation func(tags Tags, kind, reason string)
	// RetiredWindow is how many freed handles are remembered so that a second
	// Free is recognised as a double free (default 65536).
	RetiredWindow int
}

// AllocOptions override the policy for one buffer.
type AllocOptions struct {
	TTLSec   *float64
	MaxReuse *int
}

type buffer struct {
	mu       sync.Mutex
	h        Handle
	kind     Kind
	tags     Tags
	size     int64
	mem      []byte
	state    State
	created  time.Time
	firstUse time.Time
	reuse    int
	coverage float64
	covered  bool // sanitized or attested since the last write
	clean    bool // a passing sanitize since it was quarantined
	pol      policy.Effective
	async    chan struct{}
	result   zeroize.Result
}

const shards = 64

type shard struct {
	mu sync.RWMutex
	m  map[Handle]*buffer
}

// Ledger is the hygiene ledger. Its methods are safe for concurrent use.
type Ledger struct {
	trail  Trail
	alloc  Allocator
	faults *zeroize.Faults
	log    hclog.Logger
	now    func() time.Time

	polMu sync.RWMutex
	pol   policy.Config

	next   atomic.Uint64
	shards [shards]shard

	retMu   sync.Mutex
	retired map[Handle]struct{}
	retRing []Handle
	retPos  int

	agg aggregates

	onViolation func(tags Tags, kind, reason string)
	async       asyncTrail
}

type asyncTrail interface {
	AppendAsync(body any) error
}

// record writes one transition record, waiting for durability unless the
// ledger was built with AsyncTrail.
func (l *Ledger) record(r record) error {
	if l.async != nil {
		return l.async.AppendAsync(r)
	}
	_, err := l.trail.Append(r)
	return err
}

// New returns a Ledger writing to opts.Trail.
func New(opts Options) (*Ledger, error) {
	if opts.Trail == nil {
		return nil, errors.New("tracer: a trail is required: every transition is recorded")
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("tracer: policy: %w", err)
	}
	if opts.Allocator == nil {
		opts.Allocator = heap{}
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RetiredWindow <= 0 {
		opts.RetiredWindow = 65536
	}
	l := &Ledger{trail: opts.Trail, alloc: opts.Allocator, faults: opts.Faults, log: opts.Logger, now: opts.Now, pol: opts.Policy, onViolation: opts.OnViolation}
	for i := range l.shards {
		l.shards[i].m = map[Handle]*buffer{}
	}
	if opts.AsyncTrail {
		a, ok := opts.Trail.(asyncTrail)
		if !ok {
			return nil, errors.New("tracer: AsyncTrail needs a trail with AppendAsync")
		}
		l.async = a
	}
	l.retired = make(map[Handle]struct{}, opts.RetiredWindow)
	l.retRing = make([]Handle, opts.RetiredWindow)
	l.agg.init()
	return l, nil
}

// Policy returns the current policy.
func (l *Ledger) Policy() policy.Config {
	l.polMu.RLock()
	defer l.polMu.RUnlock()
	return l.pol
}

// SetPolicy replaces the policy for buffers allocated from now on (and the
// free threshold of all), recording the change in the trail.
func (l *Ledger) SetPolicy(p policy.Config) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if _, err := l.trail.Append(record{Ev: "policy", Reason: fmt.Sprintf("coverage_threshold=%v verify=%s max_reuse=%d on_violation=%s", p.CoverageThreshold, p.VerifyMode, p.MaxReuse, p.OnViolation)}); err != nil {
		return fmt.Errorf("recording policy change: %w", err)
	}
	l.polMu.Lock()
	l.pol = p
	l.polMu.Unlock()
	return nil
}

// record is the body of every ledger record in the trail.
type record struct {
	Ev        string   `json:"ev"`
	H         Handle   `json:"h,omitempty"`
	Kind      string   `json:"buf,omitempty"`
	From      string   `json:"from,omitempty"`
	To        string   `json:"to,omitempty"`
	Tenant    string   `json:"tenant,omitempty"`
	Request   string   `json:"request,omitempty"`
	Model     string   `json:"model,omitempty"`
	Device    string   `json:"device,omitempty"`
	Framework string   `json:"framework,omitempty"`
	PID       int      `json:"pid,omitempty"`
	Stream    string   `json:"stream,omitempty"`
	Claimed   string   `json:"claimed_tenant,omitempty"`
	Bytes     int64    `json:"bytes,omitempty"`
	Coverage  *float64 `json:"coverage_pct,omitempty"`
	Verified  *bool    `json:"verified,omitempty"`
	Method    string   `json:"method,omitempty"`
	Seed      uint64   `json:"seed,omitempty"`
	DurNS     int64    `json:"duration_ns,omitempty"`
	Reuse     int      `json:"reuse_count,omitempty"`
	MaxReuse  *int     `json:"max_reuse,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Metric    string   `json:"metric,omitempty"`
	Value     float64  `json:"value,omitempty"`
	Mean      float64  `json:"mean,omitempty"`
	Std       float64  `json:"std,omitempty"`
	Z         float64  `json:"z,omitempty"`
}

func (b *buffer) rec(ev string, to State) record {
	return record{Ev: ev, H: b.h, Kind: b.kind.String(), From: b.state.String(), To: to.String(),
		Tenant: b.tags.Tenant, Request: b.tags.Request, Model: b.tags.Model, Device: b.tags.Device,
		Framework: b.tags.Framework, PID: b.tags.PID, Stream: b.tags.Stream, Claimed: b.tags.Claimed}
}

// commit records r, then moves b to state to. b.mu is held.
func (l *Ledger) commit(b *buffer, r record, to State) error {
	if err := l.record(r); err != nil {
		return fmt.Errorf("recording %s of %s: %w", r.Ev, b.h, err)
	}
	l.agg.move(b.state, to)
	b.state = to
	return nil
}

func (l *Ledger) shard(h Handle) *shard { return &l.shards[uint64(h)%shards] }

// get returns the live buffer for h, locked.
func (l *Ledger) get(h Handle) (*buffer, error) {
	s := l.shard(h)
	s.mu.RLock()
	b := s.m[h]
	s.mu.RUnlock()
	if b == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownHandle, h)
	}
	b.mu.Lock()
	if b.state == Freed { // retired between lookup and lock
		b.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrUnknownHandle, h)
	}
	return b, nil
}

// Allocate creates a local buffer of size bytes.
func (l *Ledger) Allocate(tags Tags, size int, o AllocOptions) (Handle, error) {
	if size < 0 {
		return 0, fmt.Errorf("negative size %d", size)
	}
	return l.register(tags, int64(size), Local, o)
}

// RegisterRemote records an allocation made in another process.
func (l *Ledger) RegisterRemote(tags Tags, size int64, o AllocOptions) (Handle, error) {
	if size < 0 {
		return 0, fmt.Errorf("negative size %d", size)
	}
	return l.register(tags, size, Remote, o)
}

func (l *Ledger) register(tags Tags, size int64, kind Kind, o AllocOptions) (Handle, error) {
	pol := l.Policy()
	b := &buffer{h: Handle(l.next.Add(1)), kind: kind, tags: tags, size: size, created: l.now(), pol: pol.For(tags.Tenant)}
	if o.TTLSec != nil {
		b.pol.TTLSec = o.TTLSec
	}
	if o.MaxReuse != nil {
		b.pol.MaxReuse = *o.MaxReuse
	}
	r := b.rec("allocate", Allocated)
	r.From, r.Bytes = "", size
	mr := b.pol.MaxReuse
	r.MaxReuse = &mr
	if err := l.record(r); err != nil {
		return 0, fmt.Errorf("recording allocate: %w", err)
	}
	if kind == Local {
		b.mem = l.alloc.Get(int(size))
	}
	b.state = Allocated
	l.agg.allocated(b)
	s := l.shard(b.h)
	s.mu.Lock()
	s.m[b.h] = b
	s.mu.Unlock()
	return b.h, nil
}

// Buffer returns a local buffer's memory, for the owner to write after
// MarkInUse. It fails for remote, quarantined and unknown buffers.
func (l *Ledger) Buffer(h Handle) ([]byte, error) {
	b, err := l.get(h)
	if err != nil {
		return nil, err
	}
	defer b.mu.Unlock()
	switch {
	case b.kind != Local:
		return nil, fmt.Errorf("%s is remote", h)
	case b.state == Quarantined:
		return nil, fmt.Errorf("%w: %s", ErrQuarantined, h)
	}
	return b.mem, nil
}

// State returns a live buffer's state.
func (l *Ledger) State(h Handle) (State, error) {
	b, err := l.get(h)
	if err != nil {
		return 0, err
	}
	defer b.mu.Unlock()
	return b.state, nil
}

// Coverage returns the last attested coverage percent (0 before any).
func (l *Ledger) Coverage(h Handle) (float64, error) {
	b, err := l.get(h)
	if err != nil {
		return 0, err
	}
	defer b.mu.Unlock()
	return b.coverage, nil
}

// Bind associates a buffer with a stream.
func (l *Ledger) Bind(h Handle, stream string) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.state != Allocated && b.state != Bound {
		return illegal("bind", b.state)
	}
	b.tags.Stream = stream
	return l.commit(b, b.rec("bind", Bound), Bound)
}

// MarkInUse records a write. A write after sanitize resets coverage. A buffer
// past its TTL is quarantined instead, and the error wraps ErrPolicyViolation.
func (l *Ledger) MarkInUse(h Handle) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	switch b.state {
	case Allocated, Bound, InUse, Sanitized:
	case Quarantined:
		return fmt.Errorf("%w: %s", ErrQuarantined, h)
	default:
		return illegal("mark_in_use", b.state)
	}
	now := l.now()
	first := b.firstUse
	if first.IsZero() {
		first = now
	}
	if l.expired(b, now, first) {
		return l.violate(b, "ttl_expired")
	}
	b.firstUse = first
	b.coverage, b.covered = 0, false
	return l.commit(b, b.rec("write", InUse), InUse)
}

// expired applies the TTL policy; first is the first-use time to assume.
func (l *Ledger) expired(b *buffer, now, first time.Time) bool {
	ttl := b.pol.TTLSec
	if ttl == nil {
		return false
	}
	if *ttl <= 0 {
		return b.pol.TTLFrom == policy.TTLFromAllocation || !first.IsZero()
	}
	start := b.created
	if b.pol.TTLFrom == policy.TTLFromFirstUse {
		if first.IsZero() {
			return false
		}
		start = first
	}
	return now.Sub(start).Seconds() > *ttl
}

// violate quarantines b for reason and returns an ErrPolicyViolation.
func (l *Ledger) violate(b *buffer, reason string) error {
	if err := l.quarantine(b, reason); err != nil {
		return err
	}
	l.agg.violation(reason)
	if l.onViolation != nil {
		l.onViolation(b.tags, reason, fmt.Sprintf("%s of %d bytes", b.h, b.size))
	}
	return fmt.Errorf("%w: %s: %s", ErrPolicyViolation, b.h, reason)
}

// Reuse hands a sanitized buffer to a new request (tags, when non-nil,
// replace the old ones). It counts against the buffer's max reuse; reusing a
// buffer that was not sanitized is itself a violation.
func (l *Ledger) Reuse(h Handle, tags *Tags) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.state == Quarantined {
		return fmt.Errorf("%w: %s", ErrQuarantined, h)
	}
	if b.state == Sanitizing || b.state == Freed {
		return illegal("reuse", b.state)
	}
	b.reuse++
	l.agg.reused()
	if b.state != Sanitized || b.coverage < b.pol.CoverageThreshold {
		return l.violate(b, "reuse_without_sanitize")
	}
	if b.pol.MaxReuse >= 0 && b.reuse > b.pol.MaxReuse {
		return l.violate(b, "reuse_limit_exceeded")
	}
	if tags != nil {
		b.tags = *tags
	}
	r := b.rec("reuse", Allocated)
	r.Reuse = b.reuse
	mr := b.pol.MaxReuse
	r.MaxReuse = &mr
	if err := l.commit(b, r, Allocated); err != nil {
		return err
	}
	b.coverage, b.covered, b.firstUse, b.created = 0, false, time.Time{}, l.now()
	return nil
}

// Quarantine moves a live buffer to quarantine, for reason. It is sticky:
// only Release (after a fresh sanitize that passes) ends it.
func (l *Ledger) Quarantine(h Handle, reason string) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.state == Sanitizing {
		return illegal("quarantine", b.state)
	}
	return l.quarantine(b, reason)
}

func (l *Ledger) quarantine(b *buffer, reason string) error {
	r := b.rec("quarantine", Quarantined)
	r.Reason = reason
	if err := l.commit(b, r, Quarantined); err != nil {
		return err
	}
	b.clean = false
	l.agg.quarantined(reason)
	l.log.Warn("buffer quarantined", "handle", b.h, "tenant", b.tags.Tenant, "reason", reason)
	return nil
}

func (l *Ledger) sanitizeOptions() zeroize.Options {
	p := l.Policy()
	v, _ := zeroize.ParseVerify(p.VerifyMode)
	return zeroize.Options{Verify: v, Samples: p.VerifySamples, DoublePass: p.DoublePass, Faults: l.faults}
}

// Sanitize zeroizes and verifies a local buffer synchronously (one record)
// and returns the result; Coverage then reports its coverage. A quarantined
// buffer may be sanitized (it stays quarantined) so that it can be released.
func (l *Ledger) Sanitize(h Handle) (zeroize.Result, error) {
	b, err := l.get(h)
	if err != nil {
		return zeroize.Result{}, err
	}
	defer b.mu.Unlock()
	if err := l.canSanitize(b); err != nil {
		return zeroize.Result{}, err
	}
	res := zeroize.Sanitize(b.mem, l.sanitizeOptions())
	return res, l.finishSanitize(b, res, "sanitize")
}

func (l *Ledger) canSanitize(b *buffer) error {
	if b.kind != Local {
		return fmt.Errorf("%w: %s is remote: its sanitize step is an attestation", ErrIllegalTransition, b.h)
	}
	switch b.state {
	case Allocated, Bound, InUse, Sanitized, Quarantined:
		return nil
	}
	return illegal("sanitize", b.state)
}

// finishSanitize records a sanitize result and applies it. b.mu is held.
func (l *Ledger) finishSanitize(b *buffer, res zeroize.Result, ev string) error {
	to := Sanitized
	if b.state == Quarantined {
		to = Quarantined
	}
	cov := res.CoveragePct()
	r := b.rec(ev, to)
	r.Bytes, r.Coverage, r.Method, r.Seed, r.DurNS = int64(res.Bytes), &cov, res.Method, res.Seed, res.Duration.Nanoseconds()
	r.Verified = &res.Verified
	if err := l.commit(b, r, to); err != nil {
		return err
	}
	l.applyCoverage(b, cov, res.Duration)
	return nil
}

func (l *Ledger) applyCoverage(b *buffer, cov float64, d time.Duration) {
	b.coverage, b.covered = cov, true
	l.agg.coverageObserved(cov)
	if b.state == Quarantined {
		b.clean = cov >= l.threshold(b)
	}
	l.agg.sanitized(d)
	l.anomaly(b, d)
}

func (l *Ledger) threshold(b *buffer) float64 { return b.pol.CoverageThreshold }

// SanitizeAsync starts zeroizing a local buffer and returns at once; the
// buffer is Sanitizing (refusing writes and frees) until it completes, when
// it becomes Sanitized. Wait returns the result.
func (l *Ledger) SanitizeAsync(h Handle) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if err := l.canSanitize(b); err != nil {
		return err
	}
	if b.state == Quarantined {
		return fmt.Errorf("%w: sanitize a quarantined buffer synchronously", ErrQuarantined)
	}
	if err := l.commit(b, b.rec("sanitize_start", Sanitizing), Sanitizing); err != nil {
		return err
	}
	b.async = make(chan struct{})
	opts := l.sanitizeOptions()
	mem := b.mem
	go func() {
		res := zeroize.Sanitize(mem, opts)
		b.mu.Lock()
		b.result = res
		if err := l.finishSanitize(b, res, "sanitize_end"); err != nil {
			l.log.Error("recording sanitize_end", "handle", b.h, "error", err)
		}
		done := b.async
		b.mu.Unlock()
		close(done)
	}()
	return nil
}

// Wait waits for an asynchronous sanitize and returns its result. Waiting on
// a buffer with no sanitize in flight is an error (the seed marked it
// sanitized anyway).
func (l *Ledger) Wait(h Handle) (zeroize.Result, error) {
	b, err := l.get(h)
	if err != nil {
		return zeroize.Result{}, err
	}
	done := b.async
	b.mu.Unlock()
	if done == nil {
		return zeroize.Result{}, fmt.Errorf("%w: wait without sanitize on %s", ErrIllegalTransition, h)
	}
	<-done
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.async == done {
		b.async = nil
	}
	return b.result, nil
}

// Attest records a remote buffer's sanitize step. Coverage is the verified
// (or, unverified, zeroed) bytes over the buffer's size.
func (l *Ledger) Attest(h Handle, a Attestation) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.kind != Remote {
		return fmt.Errorf("%w: %s is local: use Sanitize", ErrIllegalTransition, h)
	}
	switch b.state {
	case Allocated, Bound, InUse, Sanitized, Quarantined:
	default:
		return illegal("attest", b.state)
	}
	cov := 100.0
	if b.size > 0 {
		cov = float64(min(max(a.Zeroed, 0), b.size)) * 100 / float64(b.size)
	}
	to := Sanitized
	if b.state == Quarantined {
		to = Quarantined
	}
	r := b.rec("attest", to)
	r.Bytes, r.Coverage, r.Method, r.Seed, r.DurNS, r.Verified = a.Bytes, &cov, a.Method, a.Seed, a.Duration.Nanoseconds(), &a.Verified
	if err := l.commit(b, r, to); err != nil {
		return err
	}
	l.applyCoverage(b, cov, a.Duration)
	return nil
}

// Free retires a sanitized buffer. Below the coverage threshold (or never
// sanitized since the last write) the buffer is quarantined and
// ErrFreeWithoutSanitize returned. A second Free of a freed handle is a
// logged no-op; a quarantined buffer must be Released instead.
func (l *Ledger) Free(h Handle) error {
	b, err := l.get(h)
	if err != nil {
		if errors.Is(err, ErrUnknownHandle) && l.wasRetired(h) {
			if err := l.record(record{Ev: "double_free", H: h}); err != nil {
				return fmt.Errorf("recording double free: %w", err)
			}
			l.agg.doubleFree()
			l.log.Warn("double free ignored", "handle", h)
			return nil
		}
		return err
	}
	defer b.mu.Unlock()
	switch b.state {
	case Quarantined:
		return fmt.Errorf("%w: %s: release it after a passing sanitize", ErrQuarantined, h)
	case Sanitizing:
		return illegal("free", b.state)
	}
	th := l.threshold(b)
	if b.state != Sanitized || !b.covered || b.coverage < th {
		reason := fmt.Sprintf("coverage %.4f below threshold", b.coverage)
		if !b.covered {
			reason = "free without sanitize"
		}
		if err := l.quarantine(b, reason); err != nil {
			return err
		}
		l.agg.violation("free_without_sanitize")
		l.agg.freeRefused()
		return fmt.Errorf("%w: %s (%s, threshold %.4f)", ErrFreeWithoutSanitize, h, reason, th)
	}
	return l.retire(b, "free")
}

// Release ends a quarantine: the buffer must have been sanitized since it was
// quarantined, with coverage at or above the threshold.
func (l *Ledger) Release(h Handle, reason string) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.state != Quarantined {
		return illegal("release", b.state)
	}
	if !b.clean || b.coverage < l.threshold(b) {
		return fmt.Errorf("%w: %s needs a fresh sanitize at or above %.4f%% before release", ErrQuarantined, h, l.threshold(b))
	}
	l.agg.release()
	return l.retireWith(b, "release", reason)
}

// Retire ends a remote buffer whose owner is gone (the process exited, so its
// memory went back to the driver with it) without a sanitize gate. It is
// recorded as "retire" with the reason and counted apart from frees.
func (l *Ledger) Retire(h Handle, reason string) error {
	b, err := l.get(h)
	if err != nil {
		return err
	}
	defer b.mu.Unlock()
	if b.kind != Remote {
		return fmt.Errorf("%w: %s is local: free it", ErrIllegalTransition, h)
	}
	l.agg.retiredOrphan()
	return l.retireWith(b, "retire", reason)
}

func (l *Ledger) retire(b *buffer, ev string) error { return l.retireWith(b, ev, "") }

func (l *Ledger) retireWith(b *buffer, ev, reason string) error {
	from := b.state
	r := b.rec(ev, Freed)
	r.Reason = reason
	cov := b.coverage
	r.Coverage = &cov
	if err := l.commit(b, r, Freed); err != nil {
		return err
	}
	s := l.shard(b.h)
	s.mu.Lock()
	delete(s.m, b.h)
	s.mu.Unlock()
	l.remember(b.h)
	if ev != "retire" {
		l.agg.retired(b, from)
	}
	if b.mem != nil {
		l.alloc.Put(b.mem)
		b.mem = nil
	}
	return nil
}

func (l *Ledger) remember(h Handle) {
	l.retMu.Lock()
	defer l.retMu.Unlock()
	if old := l.retRing[l.retPos]; old != 0 {
		delete(l.retired, old)
	}
	l.retRing[l.retPos] = h
	l.retPos = (l.retPos + 1) % len(l.retRing)
	l.retired[h] = struct{}{}
}

func (l *Ledger) wasRetired(h Handle) bool {
	l.retMu.Lock()
	defer l.retMu.Unlock()
	_, ok := l.retired[h]
	return ok
}

// Sweep enforces TTLs on every live buffer now, not only on the next call,
// and returns how many it quarantined.
func (l *Ledger) Sweep() int {
	now := l.now()
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.RLock()
		bs := make([]*buffer, 0, len(s.m))
		for _, b := range s.m {
			bs = append(bs, b)
		}
		s.mu.RUnlock()
		for _, b := range bs {
			b.mu.Lock()
			switch b.state {
			case Allocated, Bound, InUse: // sanitized buffers hold no tenant data
				if l.expired(b, now, b.firstUse) && (b.pol.TTLFrom == policy.TTLFromAllocation || !b.firstUse.IsZero()) {
					if l.violate(b, "ttl_expired") != nil {
						n++
					}
				}
			}
			b.mu.Unlock()
		}
	}
	return n
}

// Run sweeps every interval until ctx is done.
func (l *Ledger) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.Sweep()
		}
	}
}
