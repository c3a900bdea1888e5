package ingest

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
)

// process is what the server keeps per connected process (by pidfd key),
// shared by its connections: the caps are per process, not per socket.
type process struct {
	h   *proc.Handle
	key string
	id  Identity

	conns  int  // open connections; guarded by Server.mu
	denied bool // a deny was sent; guarded by Server.mu

	live     atomic.Int64  // live buffers registered in the ledger
	flooding atomic.Bool   // a flood window is open (lets the hot path skip mu)
	received atomic.Uint64 // records with a seq received, over all its connections (the account)
	reported atomic.Uint64 // drops its interposer reported in DROPS records

	mu      sync.Mutex
	tokens  float64 // event-rate token bucket
	last    time.Time
	flood   *trailevent.FloodSummary // the open window of events past a cap
	flagged map[violation.Kind]time.Time
	account *os.File // the interposer's counters page, from its first HELLO that had one

	// The gap its interposer claims (dropped + lost, from DROPS records
	// and its counters page, both written by the tenant): the largest
	// claim charged to max_event_rate so far, and of it what the bucket
	// covered — all that may excuse a witnessed free as an evidence gap.
	gapCharged, gapCredible uint64
}

// setAccount keeps f as the process's counters page unless it has one
// (a later one is closed: the first is the process's own).
func (p *process) setAccount(f *os.File) {
	if f == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.account != nil {
		f.Close()
		return
	}
	p.account = f
}

// takeAccount hands over the counters page.
func (p *process) takeAccount() *os.File {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.account
	p.account = nil
	return f
}

// chargeGap charges the interposer's claimed gap (events given a seq that
// never arrived: dropped or lost, a running total) against max_event_rate:
// events offered and dropped count against the cap as much as those that
// arrived. Only the part of a claim not charged before is taken. It returns
// how much of the claims so far the bucket covered — the credible gap —
// and whether this claim went past the cap, which is the tenant's doing: a
// counters page or a DROPS record is written by the tenant and could claim
// anything.
func (p *process) chargeGap(now time.Time, rate float64, claimed uint64) (credible uint64, over bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if claimed > p.gapCharged {
		delta := claimed - p.gapCharged
		p.refillLocked(now, rate)
		covered := min(delta, uint64(max(p.tokens, 0)))
		p.tokens -= float64(covered)
		p.gapCredible += covered
		p.gapCharged = claimed
		over = covered < delta
	}
	return p.gapCredible, over
}

// floodWindow is how long one flood_summary record spans at most.
const floodWindow = time.Second

// reflag is how often one process is reported again for the same cap.
const reflag = 10 * time.Second

// refillLocked adds the tokens earned since the last event, up to one
// second's worth (the burst max_event_rate allows); the first event starts
// with a full bucket.
func (p *process) refillLocked(now time.Time, rate float64) {
	if p.last.IsZero() {
		p.tokens = rate
	} else {
		p.tokens = min(rate, p.tokens+now.Sub(p.last).Seconds()*rate)
	}
	p.last = now
}

// admitN takes up to n tokens for a packet of n events at now and returns
// how many of them are admitted: the first ones, one token each (over
// max_event_rate for the rest; a burst of one second's worth is allowed).
func (p *process) admitN(now time.Time, rate float64, n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refillLocked(now, rate)
	k := min(n, int(p.tokens))
	p.tokens -= float64(k)
	return k
}

// count adds r, which went past capName, to the open flood window, and
// returns the previous window to record when it had run floodWindow. A
// window closes only with time (or the connection), not when one record
// gets through: a process hovering at its cap costs one record a second.
func (p *process) count(r *wire.Record, capName string, now time.Time) (closed *trailevent.FloodSummary) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flood != nil && now.Sub(time.Unix(0, p.flood.FromNS)) >= floodWindow {
		closed = p.flood
		p.flood = nil // reopened below
	}
	if p.flood == nil {
		p.flooding.Store(true)
		p.flood = &trailevent.FloodSummary{Ev: trailevent.EvFloodSummary, PID: p.id.PID, Tenant: p.id.Tenant, FromNS: now.UnixNano()}
	}
	f := p.flood
	f.ToNS = now.UnixNano()
	f.Events++
	if capName == capRate {
		f.OverRate++
	} else {
		f.OverLive++
	}
	switch r.Type {
	case wire.Alloc:
		f.Allocs++
		f.AllocBytes += r.Bytes
	case wire.Free, wire.Quarantine:
		f.Frees++
		f.FreeBytes += r.Bytes
		if r.Flags&wire.FlagVerified == 0 {
			f.Unverified++
		}
	default:
		f.Other++
	}
	return closed
}

// The caps a flood goes past.
const (
	capRate = "max_event_rate"
	capLive = "max_live_buffers"
)

// closeOld returns the open window to record once it has run floodWindow
// (a flood that has ended is recorded within a second of the next record).
func (p *process) closeOld(now time.Time) *trailevent.FloodSummary {
	if !p.flooding.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flood == nil || now.Sub(time.Unix(0, p.flood.FromNS)) < floodWindow {
		return nil
	}
	f := p.flood
	p.flood = nil
	p.flooding.Store(false)
	return f
}

// endFlood returns the open window, if any, to record (the connection ends).
func (p *process) endFlood() *trailevent.FloodSummary {
	if !p.flooding.Load() {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.flood
	p.flood = nil
	p.flooding.Store(false)
	return f
}

// shouldFlag reports whether a violation of kind is due (at most one per
// reflag per process and kind).
func (p *process) shouldFlag(kind violation.Kind, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.flagged == nil {
		p.flagged = map[violation.Kind]time.Time{}
	}
	if last, ok := p.flagged[kind]; ok && now.Sub(last) < reflag {
		return false
	}
	p.flagged[kind] = now
	return true
}
