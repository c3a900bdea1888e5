package tracer

import (
	"fmt"
	"time"

	"github.com/kvhygiene/kvh/zeroize"
)

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
	b.out.cov, b.out.verified = cov, res.Verified
	r.Bytes, r.Coverage, r.Method, r.Seed, r.DurNS, r.Verified = int64(res.Bytes), &b.out.cov, res.Method, res.Seed, res.Duration.Nanoseconds(), &b.out.verified
	if err := l.commit(b, r, to); err != nil {
		return err
	}
	l.applyCoverage(b, cov, res.Duration)
	return nil
}

func (l *Ledger) applyCoverage(b *buffer, cov float64, d time.Duration) {
	b.coverage, b.covered = cov, true
	l.agg.sanitizeObserved(cov, d)
	if b.state == Quarantined {
		b.clean = cov >= l.threshold(b)
	}
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
	b.out.cov, b.out.verified = cov, a.Verified
	r.Bytes, r.Coverage, r.Method, r.Seed, r.DurNS, r.Verified = a.Bytes, &b.out.cov, a.Method, a.Seed, a.Duration.Nanoseconds(), &b.out.verified
	if err := l.commit(b, r, to); err != nil {
		return err
	}
	l.applyCoverage(b, cov, a.Duration)
	return nil
}
