package tracer

import (
	"fmt"
	"sync"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/trailevent"
)

// record is the body of every ledger transition in the trail.
type record = trailevent.Buffer

func (b *buffer) rec(ev string, to State) record {
	from := ""
	if b.state != 0 { // a new buffer has no state yet (State(0).String formats one)
		from = b.state.String()
	}
	return record{Ev: ev, H: uint64(b.h), Kind: b.kind.String(), From: from, To: to.String(),
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
	if !l.encodes {
		// The trail may keep the body: its numbers must not point into
		// the buffer's out fields, which the next record reuses.
		return l.recordBody(r.Ev, detach(r))
	}
	// The trail encodes the body before it returns and keeps no reference:
	// a pooled record saves boxing one (a 256-byte allocation) per record.
	p := recPool.Get().(*record)
	*p = r
	err := l.recordBody(r.Ev, p)
	*p = record{}
	recPool.Put(p)
	return err
}

var recPool = sync.Pool{New: func() any { return new(record) }}

// detach returns r with its optional numbers copied to memory of its own.
func detach(r record) record {
	if r.Coverage != nil {
		v := *r.Coverage
		r.Coverage = &v
	}
	if r.Verified != nil {
		v := *r.Verified
		r.Verified = &v
	}
	if r.MaxReuse != nil {
		v := *r.MaxReuse
		r.MaxReuse = &v
	}
	return r
}

// encodesBody reports whether t encodes a body before Append or
// AppendAsync returns and keeps no reference to it.
func encodesBody(t Trail) bool {
	_, ok := t.(*forensic.Log)
	return ok
}

// recordBody is record with the body as the trail receives it.
func (l *Ledger) recordBody(ev string, r any) error {
	if l.async != nil {
		return l.async.AppendAsync(r)
	}
	if l.queue != nil && !barrier(ev) {
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
