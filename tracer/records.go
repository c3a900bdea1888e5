package tracer

import (
	"fmt"

	"github.com/kvhygiene/kvh/trailevent"
)

// record is the body of every ledger transition in the trail.
type record = trailevent.Buffer

func (b *buffer) rec(ev string, to State) record {
	return record{Ev: ev, H: uint64(b.h), Kind: b.kind.String(), From: b.state.String(), To: to.String(),
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

// record writes one transition record, waiting for durability unless the
// ledger was built with AsyncTrail, or the record is not a barrier (see
// Options.AsyncTrail).
func (l *Ledger) record(r record) error {
	if l.async != nil {
		return l.async.AppendAsync(r)
	}
	if l.queue != nil && !barrier(r.Ev) {
		return l.queue.AppendAsync(r)
	}
	_, err := l.trail.Append(r)
	return err
}

// barrier reports whether a transition must be durable, with all before
// it, before the ledger returns: memory leaves the ledger or is kept from
// use.
func barrier(ev string) bool {
	switch ev {
	case trailevent.EvFree, trailevent.EvRelease, trailevent.EvRetire, trailevent.EvQuarantine, trailevent.EvDoubleFree:
		return true
	}
	return false
}
