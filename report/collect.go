package report

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/trailevent"
)

// maxOverflowKeys bounds the set that tells apart the keys past a group's
// limit; past it, the report says "at least".
const maxOverflowKeys = 1 << 16

// maxUnknownNames bounds the distinct unknown event names counted by name.
const maxUnknownNames = 64

// collector is the one pass over a trail: every event is folded into
// bounded aggregates and dropped.
type collector struct {
	lim   Limits
	clk   clock
	first time.Time
	ev    Events
	node  Stats
	act   map[string]*series

	tenants   map[string]*Tenant
	tenantOrd []*Tenant
	tenRest   Stats
	tenMore   overflow

	procs   map[int]*Process // the current row of each pid
	procOrd []*Process
	// procRest stands for every process past the limit: it sums them.
	procRest Process
	proMore  overflow
	untimed  uint64

	posture Posture
	hist    History
	unc     series
	unatt   series
	buf     trailevent.Buffer // decodeBuffer's, reused
	intern  interner
}

// overflow counts distinct keys past a limit, exactly up to maxOverflowKeys.
type overflow struct {
	seed    maphash.Seed
	seen    map[uint64]struct{}
	n       uint64
	atLeast bool
}

func (o *overflow) add(key string) {
	if o.seen == nil {
		o.seed, o.seen = maphash.MakeSeed(), map[uint64]struct{}{}
	}
	h := maphash.String(o.seed, key)
	if _, ok := o.seen[h]; ok {
		return
	}
	if len(o.seen) >= maxOverflowKeys {
		o.atLeast = true
		return
	}
	o.seen[h] = struct{}{}
	o.n++
}

func newCollector(lim Limits) *collector {
	return &collector{
		lim:     lim,
		ev:      Events{ByName: map[string]uint64{}, Unknown: map[string]uint64{}, Overflowed: map[string]uint64{}, Schemas: []int{}},
		act:     map[string]*series{},
		tenants: map[string]*Tenant{},
		procs:   map[int]*Process{},
		intern:  interner{},
	}
}

// read runs the pass: forensic.Events for the bodies, the stamps reader in
// step for their timestamps and the structural records. Reading and
// checking lines (forensic) and decoding and folding them (here) cost about
// the same, so they run on two goroutines: Events fills batches of bodies,
// this one folds them in order. At most a few batches are in flight.
func (c *collector) read(dir string) error {
	st, err := openStamps(dir)
	if err != nil {
		return fmt.Errorf("reading the trail's segments: %w", err)
	}
	defer st.close()
	st.other = c.structural
	full, free := make(chan *batch, 4), make(chan *batch, 6)
	done := make(chan struct{})
	var readErr error
	go func() {
		defer close(full)
		b := &batch{}
		readErr = forensic.Events(dir, func(seq uint64, body []byte) error {
			b.add(seq, body)
			if len(b.seqs) < batchLen {
				return nil
			}
			select {
			case full <- b:
			case <-done:
				return errStopped
			}
			select {
			case b = <-free:
				b.reset()
			default:
				b = &batch{}
			}
			return nil
		})
		if readErr == nil && len(b.seqs) > 0 {
			select {
			case full <- b:
			case <-done:
			}
		}
	}()
	var foldErr error
	for b := range full {
		for i := 0; foldErr == nil && i < len(b.seqs); i++ {
			ts, ok, err := st.at(b.seqs[i])
			if err != nil {
				foldErr = err
				close(done) // the reader stops; the loop drains what it sent
				break
			}
			c.add(b.seqs[i], ts, ok && !ts.IsZero(), b.body(i))
		}
		select {
		case free <- b:
		default:
		}
	}
	err = cmp.Or(foldErr, readErr)
	if err == nil {
		err = st.drain()
	}
	if err != nil {
		return fmt.Errorf("reading the trail's events: %w", err)
	}
	return nil
}

var errStopped = errors.New("stopped")

// batchLen is how many bodies a batch holds.
const batchLen = 1024

// batch is bodies copied out of forensic.Events (its slice is reused).
type batch struct {
	seqs []uint64
	ends []int
	buf  []byte
}

func (b *batch) add(seq uint64, body []byte) {
	b.seqs = append(b.seqs, seq)
	b.buf = append(b.buf, body...)
	b.ends = append(b.ends, len(b.buf))
}

func (b *batch) body(i int) []byte {
	start := 0
	if i > 0 {
		start = b.ends[i-1]
	}
	return b.buf[start:b.ends[i]]
}

func (b *batch) reset() { b.seqs, b.ends, b.buf = b.seqs[:0], b.ends[:0], b.buf[:0] }

func (c *collector) stampSeen(ts time.Time) {
	if ts.IsZero() {
		return
	}
	if c.first.IsZero() {
		c.first = ts
	}
	c.clk.bucket(ts) // extends the span to structural records too
}

// structural records the history's non-event records.
func (c *collector) structural(s stamp, body json.RawMessage) {
	c.stampSeen(s.ts)
	lim := c.lim.History
	switch s.kind {
	case forensic.KindSegment:
		var b forensic.SegmentBody
		_ = json.Unmarshal(body, &b)
		if !slices.Contains(c.hist.MACAlgs, b.MACAlg) && len(c.hist.MACAlgs) < maxKinds {
			c.hist.MACAlgs = append(c.hist.MACAlgs, b.MACAlg)
		}
		e := Entry{Kind: s.kind, Seq: s.seq, TS: s.ts, Detail: fmt.Sprintf("segment %d", b.Segment)}
		if b.Torn != nil {
			e.Detail += fmt.Sprintf(", declares %d torn byte(s) at the end of %s", b.Torn.TornLen, b.Torn.File)
		}
		if len(c.hist.Segments) < lim {
			c.hist.Segments = append(c.hist.Segments, e)
		} else {
			c.hist.SegMore++
		}
	case forensic.KindPrune:
		var b forensic.PruneBody
		_ = json.Unmarshal(body, &b)
		if len(c.hist.Prunes) < lim {
			c.hist.Prunes = append(c.hist.Prunes, Prune{Seq: s.seq, TS: s.ts, BeforeSegment: b.BeforeSegment, BeforeSeq: b.BeforeSeq, Reason: b.Reason, Files: len(b.Files)})
		}
	case forensic.KindClose:
		c.hist.Closes++
	case forensic.KindTick:
		c.hist.Ticks++
	case forensic.KindTamper:
		// the verdict's Tamper list has these in full
	case forensic.KindRekey:
		var b forensic.RekeyBody
		_ = json.Unmarshal(body, &b)
		e := Entry{Kind: s.kind, Seq: s.seq, TS: s.ts, Detail: fmt.Sprintf("signing key %s to %s, MAC key %s to %s: %s", vkeyName(b.OldKey), vkeyName(b.NewKey), b.OldMACKeyID, b.NewMACKeyID, b.Reason)}
		if len(c.hist.Rekeys) < lim {
			c.hist.Rekeys = append(c.hist.Rekeys, e)
		}
	default:
		if len(c.hist.Other) < lim {
			c.hist.Other = append(c.hist.Other, Entry{Kind: s.kind, Seq: s.seq, TS: s.ts})
		} else {
			c.hist.OtherMore++
		}
	}
}

func (c *collector) add(seq uint64, ts time.Time, timed bool, body []byte) {
	c.ev.Total++
	b := 0
	if timed {
		c.stampSeen(ts)
		b = c.clk.bucket(ts)
	} else {
		c.untimed++
	}
	var (
		name string
		ev   any
		err  error
	)
	if decodeBuffer(body, &c.buf, c.intern) {
		name, ev = c.buf.Ev, &c.buf
	} else {
		name, ev, err = trailevent.Decode(body)
	}
	switch {
	case errors.Is(err, trailevent.ErrUnknownEvent):
		c.unknown(name)
		return
	case err != nil && name == "":
		c.unknown("(no ev field)")
		return
	case err != nil:
		if c.ev.Malformed == 0 {
			c.ev.FirstMalformed = fmt.Sprintf("seq %d: %v", seq, err)
		}
		c.ev.Malformed++
		return
	}
	c.ev.ByName[name]++ // a known name: the map is bounded by trailevent.Kinds
	switch e := ev.(type) {
	case *trailevent.Buffer:
		c.node.buffer(e)
		c.tenant(e.Tenant).buffer(e)
		if p := c.process(e.PID, e.Tenant); p != nil {
			p.buffer(e)
		}
		if timed {
			switch e.Ev {
			case trailevent.EvAllocate:
				c.activity("allocate", b)
			case trailevent.EvAttest, trailevent.EvSanitize, trailevent.EvSanitizeEnd:
				c.activity("sanitize step", b)
			case trailevent.EvQuarantine:
				c.activity("quarantine", b)
			}
		}
	case *trailevent.Violation:
		c.node.violation(&c.clk, b, timed, e.Kind)
		c.tenant(e.Tenant).violation(&c.clk, b, timed, e.Kind)
		if p := c.process(e.PID, e.Tenant); p != nil {
			p.violation(&c.clk, b, timed, e.Kind)
		}
		if timed {
			switch e.Kind {
			case "uncovered_process":
				c.unc.add(&c.clk, b, 1)
			case "unattested_free":
				c.unatt.add(&c.clk, b, 1)
			}
		}
	case *trailevent.Action:
		c.node.action(e)
		c.tenant(e.Tenant).action(e)
		if p := c.process(e.PID, e.Tenant); p != nil {
			p.action(e)
		}
		if timed {
			c.activity("action", b)
		}
	case *trailevent.ProcessConnected:
		c.connected(e, ts, timed)
	case *trailevent.ProcessDisconnected:
		if p := c.process(e.PID, e.Tenant); p != nil && p.Identity != nil {
			p.closed = true
			if timed {
				t := ts.UTC()
				p.Disconnected = &t
			}
			p.DisconnectReason, p.OpenAtExit = e.Reason, e.Open
		}
	case *trailevent.InterposerDrops:
		c.node.Dropped += e.Count
		c.tenant(e.Tenant).Dropped += e.Count
		if p := c.process(e.PID, e.Tenant); p != nil {
			p.Dropped += e.Count
		}
	case *trailevent.FloodSummary:
		for _, s := range []*Stats{&c.node, c.tenant(e.Tenant), c.process(e.PID, e.Tenant).stats()} {
			if s != nil {
				s.Flooded += e.Events
				s.FloodUnverified += e.Unverified
			}
		}
	case *trailevent.Anomaly:
		c.node.Anomalies++
		c.tenant(e.Tenant).Anomalies++
	case *trailevent.ViolationsOverflow:
		k := capKey(c.ev.Overflowed, e.Kind)
		c.ev.Overflowed[k] += e.Count
	case *trailevent.Posture:
		c.posture.Total++
		switch e.ScrubOnFree {
		case 0:
			c.posture.ScrubDisabled++
		case 1:
		default:
			c.posture.ScrubUnknown++
		}
		if e.Witness {
			c.posture.WitnessOn++
		} else {
			c.posture.WitnessOff++
		}
		if len(c.posture.Records) >= c.lim.History {
			c.posture.More++
			break
		}
		pr := PostureRecord{TS: ts.UTC(), Seq: seq, ScrubOnFree: e.ScrubOnFree, Source: e.Source, NVML: e.NVML, Driver: e.Driver, GPUs: len(e.Devices), Witness: e.Witness}
		for _, d := range e.Devices {
			if d.MIG {
				pr.MIG++
			}
		}
		c.posture.Records = append(c.posture.Records, pr)
	case *trailevent.AgentStart:
		if !slices.Contains(c.ev.Schemas, e.Schema) && len(c.ev.Schemas) < maxKinds {
			c.ev.Schemas = append(c.ev.Schemas, e.Schema)
			slices.Sort(c.ev.Schemas)
		}
		if len(c.hist.Runs) >= c.lim.History {
			c.hist.RunsMore++
			break
		}
		c.hist.Runs = append(c.hist.Runs, Run{Seq: seq, TS: ts.UTC(), Version: e.Version, Host: e.Host, PID: e.PID, Schema: e.Schema})
	case *trailevent.Policy:
		if len(c.hist.Policies) >= c.lim.History {
			c.hist.PolMore++
			break
		}
		p := e.Policy
		c.hist.Policies = append(c.hist.Policies, Policy{Seq: seq, TS: ts.UTC(), Reason: e.Reason, CoverageThreshold: p.CoverageThreshold,
			Verify: p.VerifyMode, OnViolation: p.OnViolation, MaxReuse: p.MaxReuse, TTLSec: p.TTLSec, Overrides: len(p.Tenants)})
	}
}

func (c *collector) unknown(name string) {
	c.ev.UnknownTotal++
	if _, ok := c.ev.Unknown[name]; !ok && len(c.ev.Unknown) >= maxUnknownNames {
		name = otherKey
	}
	c.ev.Unknown[name]++
}

func (c *collector) activity(what string, b int) {
	s := c.act[what]
	if s == nil {
		s = &series{w: c.clk.w}
		c.act[what] = s
	}
	s.add(&c.clk, b, 1)
}

// tenant returns the tenant's counts, or the sum past the limit.
func (c *collector) tenant(name string) *Stats {
	if t := c.tenantRow(name); t != nil {
		return &t.Stats
	}
	return &c.tenRest
}

// tenantRow returns the tenant's row, making it; nil past the limit.
func (c *collector) tenantRow(name string) *Tenant {
	name = orNone(name)
	if t := c.tenants[name]; t != nil {
		return t
	}
	if len(c.tenantOrd) >= c.lim.Tenants {
		c.tenMore.add(name)
		return nil
	}
	t := &Tenant{Name: name}
	c.tenants[name] = t
	c.tenantOrd = append(c.tenantOrd, t)
	return t
}

func pidKey(pid int) string { return fmt.Sprint(pid) }

// process returns the pid's current row, a new one for a pid not seen, or
// nil for records with no pid (in-process local buffers). Past the limit
// it returns a row that sums into the rest.
func (c *collector) process(pid int, tenant string) *Process {
	if pid == 0 {
		return nil
	}
	if p := c.procs[pid]; p != nil {
		return p
	}
	return c.newProcess(pid, tenant)
}

func (c *collector) newProcess(pid int, tenant string) *Process {
	if len(c.procOrd) >= c.lim.Processes {
		c.proMore.add(pidKey(pid))
		return &c.procRest
	}
	p := &Process{PID: pid, Tenant: orNone(tenant)}
	c.procs[pid] = p
	c.procOrd = append(c.procOrd, p)
	return p
}

func (p *Process) stats() *Stats {
	if p == nil {
		return nil
	}
	return &p.Stats
}

func (c *collector) connected(e *trailevent.ProcessConnected, ts time.Time, timed bool) {
	id := e.Identity
	if t := c.tenantRow(id.Tenant); t != nil {
		t.Connections++
	}
	p := c.procs[id.PID]
	if p == nil || p.closed || p.Identity != nil {
		// a new pid, or a pid whose earlier connection ended (or that
		// connected twice): a new row
		delete(c.procs, id.PID)
		p = c.newProcess(id.PID, id.Tenant)
	}
	if p == &c.procRest {
		return
	}
	p.Tenant = orNone(id.Tenant)
	p.Identity = &Identity{UID: id.UID, Comm: id.Comm, TenantSource: id.TenantSource, ClaimedTenant: id.ClaimedTenant,
		PodUID: id.PodUID, ContainerID: id.ContainerID, Mode: e.Mode, Verify: e.Verify}
	if timed {
		t := ts.UTC()
		p.Connected = &t
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// finish turns the aggregates into a Report.
func (c *collector) finish() *Report {
	n := c.clk.buckets()
	r := &Report{Events: c.ev, Posture: c.posture, History: c.hist}
	r.Timeline = Timeline{Start: c.clk.origin.UTC(), WidthSeconds: width(c.clk.w).Seconds(), Buckets: n, Before: c.clk.before, Untimed: c.untimed}
	if c.clk.set {
		r.Period = Period{First: c.first.UTC(), Last: c.clk.last.UTC(), Seconds: c.clk.last.Sub(c.first).Seconds()}
	}
	c.node.finish(&c.clk, n)
	r.Node = c.node
	for _, k := range []string{"allocate", "sanitize step", "quarantine", "action"} {
		if s := c.act[k]; s != nil {
			r.Activity = append(r.Activity, KindSeries{k, s.final(&c.clk, n)})
		}
	}
	r.Posture.Uncovered, r.Posture.Unattested = c.unc.final(&c.clk, n), c.unatt.final(&c.clk, n)

	for _, t := range c.tenantOrd {
		t.finish(&c.clk, n)
	}
	r.Tenants.Rows = slices.Clone(c.tenantOrd)
	slices.SortStableFunc(r.Tenants.Rows, func(a, b *Tenant) int {
		return cmp.Or(cmp.Compare(b.Violations, a.Violations), cmp.Compare(a.Name, b.Name))
	})
	c.tenRest.finish(&c.clk, n)
	r.Tenants.Rest, r.Tenants.More, r.Tenants.MoreAtLeast = c.tenRest, c.tenMore.n, c.tenMore.atLeast

	for _, p := range c.procOrd {
		p.finish(&c.clk, n)
	}
	r.Processes.Rows = slices.Clone(c.procOrd)
	slices.SortStableFunc(r.Processes.Rows, func(a, b *Process) int { return cmp.Compare(b.Violations, a.Violations) })
	c.procRest.finish(&c.clk, n)
	r.Processes.Rest, r.Processes.More, r.Processes.MoreAtLeast = c.procRest.Stats, c.proMore.n, c.proMore.atLeast
	return r
}

// vkeyName is a note verifier key's <name>+<hash>, without the key.
func vkeyName(vkey string) string {
	name, rest, _ := strings.Cut(vkey, "+")
	hash, _, _ := strings.Cut(rest, "+")
	return name + "+" + hash
}
