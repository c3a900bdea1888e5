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
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/zeroize"
)

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

	violations violation.Sink
	async      asyncTrail
	queue      asyncTrail // without AsyncTrail: for the records that are not barriers (see Options)
	encodes    bool       // the trail encodes a body before Append returns (encodesBody)
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
	l := &Ledger{trail: opts.Trail, alloc: opts.Allocator, faults: opts.Faults, log: opts.Logger, now: opts.Now, pol: opts.Policy, violations: opts.Violations, encodes: encodesBody(opts.Trail)}
	for i := range l.shards {
		l.shards[i].m = map[Handle]*buffer{}
	}
	if opts.AsyncTrail {
		a, ok := opts.Trail.(asyncTrail)
		if !ok {
			return nil, errors.New("tracer: AsyncTrail needs a trail with AppendAsync")
		}
		l.async = a
	} else if a, ok := opts.Trail.(asyncTrail); ok {
		l.queue = a
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
	if _, err := l.trail.Append(trailevent.Policy{Ev: trailevent.EvPolicy, Reason: "reload", Policy: p}); err != nil {
		return fmt.Errorf("recording policy change: %w", err)
	}
	l.polMu.Lock()
	l.pol = p
	l.polMu.Unlock()
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
	b.out.maxReuse = b.pol.MaxReuse
	r.MaxReuse = &b.out.maxReuse
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
// MarkInUse. It fails for remote, quarantined and unknown buffers. The
// memory stays the ledger's: after Free it goes back to the Allocator,
// which may hand it to a later buffer of any tenant (Pool does), so an
// owner must not keep the slice past Free. Its capacity is its length:
// only those bytes are sanitized.
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
	return b.mem[:len(b.mem):len(b.mem)], nil
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
		return l.violate(b, violation.TTLExpired, "")
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

// violate quarantines b for kind and returns an ErrPolicyViolation.
func (l *Ledger) violate(b *buffer, kind violation.Kind, detail string) error {
	if err := l.quarantine(b, string(kind)); err != nil {
		return err
	}
	l.emit(b, kind, detail)
	return fmt.Errorf("%w: %s: %s", ErrPolicyViolation, b.h, kind)
}

// emit counts a violation and hands it to the sink, which never blocks:
// b.mu is held.
func (l *Ledger) emit(b *buffer, kind violation.Kind, detail string) {
	l.agg.violation(string(kind))
	if l.violations == nil {
		return
	}
	d := fmt.Sprintf("%s of %d bytes", b.h, b.size)
	if detail != "" {
		d += ": " + detail
	}
	l.violations.Emit(violation.Violation{Kind: kind, PID: b.tags.PID, Tenant: b.tags.Tenant, Detail: d, Source: "ledger"})
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
		return l.violate(b, violation.ReuseWithoutSanitize, "")
	}
	if b.pol.MaxReuse >= 0 && b.reuse > b.pol.MaxReuse {
		return l.violate(b, violation.ReuseLimit, "")
	}
	if tags != nil {
		b.tags = *tags
	}
	r := b.rec("reuse", Allocated)
	r.Reuse = b.reuse
	b.out.maxReuse = b.pol.MaxReuse
	r.MaxReuse = &b.out.maxReuse
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

// Free retires a sanitized buffer. Below the coverage threshold (or never
// sanitized since the last write) the buffer is quarantined and
// ErrFreeWithoutSanitize returned. A second Free of a freed handle is a
// logged no-op; a quarantined buffer must be Released instead.
func (l *Ledger) Free(h Handle) error {
	b, err := l.get(h)
	if err != nil {
		if errors.Is(err, ErrUnknownHandle) && l.wasRetired(h) {
			if err := l.record(record{Ev: trailevent.EvDoubleFree, H: uint64(h)}); err != nil {
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
		l.emit(b, violation.FreeWithoutSanitize, fmt.Sprintf("%s (threshold %.4f)", reason, th))
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
	b.out.cov = b.coverage
	r.Coverage = &b.out.cov
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
					if l.violate(b, violation.TTLExpired, "") != nil {
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

// SummarisedFree is one free counted in a summary: its attested coverage
// (percent) and zeroize duration.
type SummarisedFree struct {
	Coverage float64
	Duration time.Duration
}

// Summarised counts routine remote events that the caller records in its
// own exact summaries (ingest's event_window records) rather than in the
// ledger one by one: allocations, frees that passed, and buffers retired
// with their process. The metrics and exports count them like any other;
// nothing here is written to the trail.
func (l *Ledger) Summarised(allocs int64, frees []SummarisedFree, retired int64) {
	if allocs == 0 && len(frees) == 0 && retired == 0 {
		return
	}
	l.agg.summarised(allocs, frees, retired)
}
