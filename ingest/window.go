package ingest

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"time"

	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/wire"
)

// The trail's granularity. Everything an auditor must be able to point at
// is a record of its own: a violation, an action, a quarantine, a free
// that failed the coverage threshold or the verify floor, and every buffer
// of trail_event_min_bytes or more (allocate, attest, free in the ledger).
// Routine events below that size — allocations, and frees that passed —
// are counted exactly per connection in event_window records (counts,
// bytes, zeroed bytes, minimum coverage, seq range) with a SHA-256 over
// their wire records, so a client's own log of them can be checked.

// windowSpan is how long one event_window spans at most.
const windowSpan = time.Second

// entry is a live buffer of a connection: in the ledger (h != 0), or
// summarised (h == 0, its size kept for the window).
type entry struct {
	h     tracer.Handle
	bytes uint64
}

// window is a connection's open event_window; its goroutine owns it.
type window struct {
	rec    trailevent.EventWindow
	digest hash.Hash
	open   bool
	// per packet, for the ledger's aggregates
	allocs  int64
	retired int64
	frees   []tracer.SummarisedFree
}

func (w *window) start(c *conn, now time.Time, seq uint64) {
	if w.digest == nil {
		w.digest = sha256.New()
	}
	w.digest.Reset()
	w.rec = trailevent.EventWindow{Ev: trailevent.EvEventWindow, PID: c.id.PID, Tenant: c.id.Tenant, FromNS: now.UnixNano(), FirstSeq: seq, LastSeq: seq, MinCoverage: 100}
	w.open = true
}

// add folds one summarised record (raw: its wire bytes) into the window.
func (w *window) add(c *conn, r *wire.Record, raw []byte, now time.Time) {
	if !w.open {
		w.start(c, now, r.Seq)
	}
	w.rec.ToNS = now.UnixNano()
	w.rec.FirstSeq = min(w.rec.FirstSeq, r.Seq)
	w.rec.LastSeq = max(w.rec.LastSeq, r.Seq)
	w.digest.Write(raw)
}

func (w *window) alloc(c *conn, r *wire.Record, raw []byte, now time.Time) {
	w.add(c, r, raw, now)
	w.rec.Allocs++
	w.rec.AllocBytes += r.Bytes
	w.allocs++
}

func (w *window) free(c *conn, r *wire.Record, raw []byte, zeroed uint64, cov float64, verified bool, now time.Time) {
	w.add(c, r, raw, now)
	w.rec.Frees++
	w.rec.FreeBytes += r.Bytes
	w.rec.Zeroed += zeroed
	if verified {
		w.rec.Verified++
	}
	w.rec.MinCoverage = min(w.rec.MinCoverage, cov)
	w.frees = append(w.frees, tracer.SummarisedFree{Coverage: cov, Duration: time.Duration(r.DurNanos)})
}

// retire counts a summarised buffer that left without a free that passed
// through the window (its process exited, its address was reallocated, or
// a passthrough free released it).
func (w *window) retire(c *conn, now time.Time) {
	if !w.open {
		w.start(c, now, 0)
		w.rec.FirstSeq, w.rec.LastSeq = ^uint64(0), 0
	}
	w.rec.ToNS = now.UnixNano()
	w.rec.Retired++
	w.retired++
}

// due reports whether the window has run its span.
func (w *window) due(now time.Time) bool {
	return w.open && now.UnixNano()-w.rec.FromNS >= int64(windowSpan)
}

// flushCounts hands the packet's counts to the ledger's aggregates.
func (s *Server) flushCounts(w *window) {
	s.cfg.Ledger.Summarised(w.allocs, w.frees, w.retired)
	w.allocs, w.retired, w.frees = 0, 0, w.frees[:0]
}

// closeWindow records the open window.
func (s *Server) closeWindow(w *window) {
	s.flushCounts(w)
	if !w.open {
		return
	}
	w.open = false
	if w.rec.FirstSeq > w.rec.LastSeq { // retirements only
		w.rec.FirstSeq, w.rec.LastSeq = 0, 0
	}
	w.rec.Digest = hex.EncodeToString(w.digest.Sum(nil))
	if err := s.appendQueued(w.rec); err != nil {
		s.cfg.Log.Error("recording an event window", "error", err)
	}
}
