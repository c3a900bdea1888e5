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

// offered takes n tokens for events the process offered but its interposer
// dropped: they count against its max_event_rate as much as those that
// arrived. It reports false when the bucket could not cover them — the
// process offered more than its cap, which is the tenant's doing.
func (p *process) offered(now time.Time, rate float64, n uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refillLocked(now, rate)
	p.tokens -= float64(n)
	if p.tokens < 0 {
		p.tokens = 0
		return false
	}
	return true
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
