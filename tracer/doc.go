// Package tracer is the hygiene ledger: the seed's CacheTracer, done right.
//
// A Ledger tracks buffers — local ones (host memory it owns and zeroizes
// itself) and remote ones (memory in another process, attested by the
// interposer) — through one state machine:
//
//	allocated → (bound) → in_use → sanitizing → sanitized → freed
//	     any live state ──────────────────────→ quarantined (sticky)
//	sanitized → allocated (Reuse, counted against max reuse)
//	sanitized → in_use    (a write; coverage resets)
//	quarantined → freed   (Release, only after a fresh sanitize that passes)
//
// Every transition is one trail record, appended (durably) before the
// transition takes effect; if the trail refuses, the transition does not
// happen. Illegal transitions return ErrIllegalTransition and change nothing;
// unknown or retired handles return ErrUnknownHandle, except a second Free of
// a recently freed handle, which is a logged no-op.
//
// Memory stays bounded: freed buffers are retired into exact aggregates
// (counts, coverage min/sum) and a streaming duration histogram.
//
// Locking: each buffer has its own mutex, held across its trail append so the
// trail's order for one buffer is its state order; the registry is sharded;
// aggregates have their own mutex, never held while appending.
package tracer
