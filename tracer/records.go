package tracer

import (
	"fmt"
)

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

// record writes one transition record, waiting for durability unless the
// ledger was built with AsyncTrail.
func (l *Ledger) record(r record) error {
	if l.async != nil {
		return l.async.AppendAsync(r)
	}
	_, err := l.trail.Append(r)
	return err
}
