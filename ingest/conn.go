package ingest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// conn is one interposer connection; its state is owned by its goroutine
// except kickMu/kicked.
type conn struct {
	c       *net.UnixConn
	p       *process
	id      Identity
	opened  time.Time
	handles map[uint64]entry
	win     window
	live    int64 // this packet's change to Server.live, applied once per packet
	zeroed  int64 // this packet's zeroized bytes (the metric, added once per packet)
	freesOK int64 // this packet's frees that passed (the metric, added once per packet)
	dropped uint64
	floor   floor // what the agent asked of the interposer at accept
	acked   bool  // the interposer answered the floor
	ackSeq  uint64
	ackAt   time.Time

	denySent bool // a deny was written (or is being written); guarded by Server.mu

	kickMu sync.Mutex
	kicked string // why the agent ended the connection
}

// kick ends the connection from the agent's side, for reason.
func (c *conn) kick(reason string) {
	c.kickMu.Lock()
	if c.kicked == "" {
		c.kicked = reason
	}
	c.kickMu.Unlock()
	c.c.Close()
}

func (c *conn) reason() string {
	c.kickMu.Lock()
	defer c.kickMu.Unlock()
	return c.kicked
}

// readQueued reads one packet that is already queued, without waiting:
// io.EOF when none is.
func readQueued(c *net.UnixConn, buf, oob []byte) (n, oobn int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	if cerr := rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, err = unix.Recvmsg(int(fd), buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		return true // never wait for more
	}); cerr != nil {
		return 0, 0, cerr
	}
	if errors.Is(err, unix.EAGAIN) {
		return 0, 0, io.EOF
	}
	return n, oobn, err
}

// packet is a read buffer and the records decoded from it: 20 KiB and
// about 12 KiB. A connection holds one only while it handles a packet (a
// connection waiting for its client holds none, see readPacket), and at
// most maxPackets are held at once, so the agent's memory does not grow by
// a packet per connection when every client sends at once: a handler past
// the bound waits for one, as it would for a CPU.
type packet struct {
	buf  []byte
	recs []wire.Record
}

const maxPackets = 256

var (
	packets     = sync.Pool{New: func() any { return &packet{buf: make([]byte, wire.RecordSize*wire.MaxBatch+1)} }}
	packetSlots = make(chan struct{}, maxPackets)
)

func getPacket() *packet {
	packetSlots <- struct{}{}
	return packets.Get().(*packet)
}

func putPacket(pk *packet) {
	packets.Put(pk)
	<-packetSlots
}

// readPacket waits for c's next packet and reads it into a pooled packet
// (the extra byte of the buffer shows a packet too long for it: its size
// is then not a whole number of records). It never waits for a packet
// slot while holding c's descriptor (a Close would wait on it): with none
// free it leaves the descriptor, waits for one, and reads again.
func readPacket(c *net.UnixConn, oob []byte) (pk *packet, n, oobn int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, 0, 0, err
	}
	held := false // a slot taken outside the descriptor, for the next read
	for {
		full := false
		cerr := rc.Read(func(fd uintptr) bool {
			if !held {
				select {
				case packetSlots <- struct{}{}:
				default:
					full = true
					return true
				}
			}
			held = false
			pk = packets.Get().(*packet)
			for {
				n, oobn, _, _, err = unix.Recvmsg(int(fd), pk.buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
				if err != unix.EINTR {
					break
				}
			}
			if err == unix.EAGAIN {
				putPacket(pk)
				pk = nil
				return false // wait for the next one
			}
			return true
		})
		switch {
		case cerr != nil:
			if held {
				<-packetSlots
			}
			if pk != nil {
				putPacket(pk)
			}
			return nil, 0, 0, cerr
		case full:
			packetSlots <- struct{}{}
			held = true
		default:
			return pk, n, oobn, err
		}
	}
}

// handle serves c on setup's goroutine until it closes.
func (s *Server) handle(c *conn) {
	defer s.wg.Done()
	log := s.cfg.Log.With("pid", c.id.PID, "tenant", c.id.Tenant)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var dec wire.Decoder // keeps the connection's strings; records go into the packet
	var pk *packet       // the packet being handled: back to the pool when the next is read
	defer func() {
		if pk != nil {
			putPacket(pk)
		}
	}()
	errs := 0
	// A process that exited sends nothing more: read what it queued, then
	// close (a live process it handed the socket to gets nothing more
	// under the dead one's name).
	exited := c.p.h.IsExited()
	for {
		if pk != nil {
			putPacket(pk)
			pk = nil
		}
		var n, oobn int
		var err error
		if exited {
			pk = getPacket()
			n, oobn, err = readQueued(c.c, pk.buf, oob)
		} else {
			pk, n, oobn, err = readPacket(c.c, oob)
		}
		var fds []int
		if oobn > 0 {
			fds = takeFDs(oob[:oobn])
		}
		if errors.Is(err, syscall.ECONNRESET) {
			// A client that closed with our messages unread resets the
			// connection, but the records it sent before are still
			// queued: read them (the error is reported once).
			continue
		}
		if err != nil || n == 0 {
			break
		}
		recs, err := dec.DecodeInto(pk.recs, pk.buf[:n])
		if err == nil {
			pk.recs = recs
		}
		if len(fds) > 0 {
			// The counters page comes with a HELLO, and only one is kept;
			// any other fd is closed.
			if err == nil && len(recs) == 1 && recs[0].Type == wire.Hello {
				if f, aerr := openAccount(fds[0]); aerr == nil {
					c.p.setAccount(f)
				} else {
					log.Warn("refused a counters page", "error", aerr)
				}
				fds = fds[1:]
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		if err != nil {
			errs++
			s.cfg.Metrics.IngestErrors.WithLabelValues("malformed").Inc()
			if errs <= 3 {
				log.Warn("malformed packet", "bytes", n, "error", err)
			}
			if errs >= s.cfg.MaxErrors {
				c.kick(fmt.Sprintf("%d malformed packets", errs))
				break
			}
			continue
		}
		now := time.Now()
		pol := s.cfg.Policy()
		// Counted once per packet: these are shared by every connection.
		s.cfg.Metrics.Events.Add(float64(len(recs)))
		hyg, seqd := 0, 0
		for i := range recs {
			switch recs[i].Type {
			case wire.Alloc, wire.Free, wire.Quarantine:
				hyg++
				seqd++
			case wire.FloorAck:
				seqd++
			}
		}
		s.cfg.Metrics.Hygiene.Add(float64(hyg))
		c.p.received.Add(uint64(seqd))
		admitted := c.p.admitN(now, pol.MaxEventRate, len(recs))
		if c.win.due(now) {
			s.closeWindow(&c.win)
		}
		for i := range recs {
			r := &recs[i]
			if err := validate(r); err != nil {
				errs++
				s.cfg.Metrics.IngestErrors.WithLabelValues("absurd_value").Inc()
				if errs <= 3 {
					log.Warn("record refused", "type", r.Type, "error", err)
				}
				continue
			}
			if i >= admitted {
				s.flood(c, r, violation.EventRateLimit, capRate, fmt.Sprintf("more than %g events/s", pol.MaxEventRate), now)
				continue
			}
			if r.Type == wire.Alloc && r.Flags&wire.FlagImporter == 0 {
				over := ""
				if c.p.live.Load() >= int64(pol.MaxLiveBuffers) {
					over = fmt.Sprintf("more than %d live buffers", pol.MaxLiveBuffers)
				} else if s.live.Load()+c.live >= int64(pol.MaxLiveBuffersNode) {
					over = fmt.Sprintf("the node holds %d live buffers, max_live_buffers_node", pol.MaxLiveBuffersNode)
				}
				if _, replaces := c.handles[r.Ptr]; over != "" && !replaces {
					s.flood(c, r, violation.LiveBufferLimit, capLive, over, now)
					continue
				}
			}
			if f := c.p.closeOld(now); f != nil {
				s.recordFlood(f)
			}
			if err := s.record(c, r, pk.buf[i*wire.RecordSize:(i+1)*wire.RecordSize], pol, now); err != nil {
				log.Error("handling record", "type", r.Type, "error", err)
			}
		}
		s.endPacket(c)
		if errs >= s.cfg.MaxErrors {
			c.kick(fmt.Sprintf("%d malformed packets or records", errs))
			break
		}
	}
	if pk != nil {
		putPacket(pk) // before disconnect, which waits for the server's lock
		pk = nil
	}
	c.c.Close()
	s.disconnect(c, log)
}

// endPacket applies what a packet changed in the shared counters, once.
func (s *Server) endPacket(c *conn) {
	if c.live != 0 {
		s.live.Add(c.live)
		c.live = 0
	}
	if c.zeroed != 0 {
		s.cfg.Metrics.ZeroizedBytes.Add(float64(c.zeroed))
		c.zeroed = 0
	}
	if c.freesOK != 0 {
		s.cfg.Metrics.freesOK.Add(float64(c.freesOK))
		c.freesOK = 0
	}
	s.flushCounts(&c.win)
}

// flood counts a record the process sent past a cap, records each closed
// window, and reports the process (at most once per reflag).
func (s *Server) flood(c *conn, r *wire.Record, kind violation.Kind, capName, detail string, now time.Time) {
	s.cfg.Metrics.Flooded.WithLabelValues(capName).Inc()
	if f := c.p.count(r, capName, now); f != nil {
		s.recordFlood(f)
	}
	if c.p.shouldFlag(kind, now) {
		s.cfg.Violations.Emit(violation.Violation{Kind: kind, PID: c.id.PID, Tenant: c.id.Tenant, Source: "ingest", Process: c.p.h,
			Detail: detail + "; the excess is summarised in flood_summary records"})
	}
}

func (s *Server) recordFlood(f *trailevent.FloodSummary) {
	if _, err := s.cfg.Trail.Append(*f); err != nil {
		s.cfg.Log.Error("recording a flood summary", "error", err)
	}
}

func (s *Server) disconnect(c *conn, log interface{ Error(string, ...any) }) {
	if f := c.p.endFlood(); f != nil {
		s.recordFlood(f)
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.perUID[c.id.UID]--
	if s.perUID[c.id.UID] <= 0 {
		delete(s.perUID, c.id.UID)
	}
	last := false
	if c.p.conns--; c.p.conns <= 0 {
		delete(s.procs, c.p.key)
		if s.byPID[int32(c.p.h.PID)] == c.p {
			delete(s.byPID, int32(c.p.h.PID))
		}
		s.carryLocked(c.p)
		last = true
	}
	s.mu.Unlock()
	s.cfg.Peers.remove(c.p.h)
	s.cfg.Metrics.Connected.Dec()
	// The process is gone (or gave up its connection): its remaining device
	// memory went back to the driver with it.
	now := time.Now()
	for _, e := range c.handles {
		c.p.live.Add(-1)
		s.live.Add(-1)
		if e.h == 0 {
			c.win.retire(c, now)
			continue
		}
		if err := s.cfg.Ledger.Retire(e.h, "process exited with the buffer allocated"); err != nil {
			log.Error("retiring buffer", "handle", e.h, "error", err)
		}
	}
	s.endPacket(c)
	s.closeWindow(&c.win)
	if _, err := s.cfg.Trail.Append(trailevent.ProcessDisconnected{Ev: trailevent.EvProcessDisconnected, PID: c.id.PID, Tenant: c.id.Tenant, Open: len(c.handles), Reason: c.reason()}); err != nil {
		log.Error("recording disconnect", "error", err)
	}
	if last {
		s.settle(c.p)
	}
}

func (s *Server) violation(c *conn, k violation.Kind, detail string) {
	s.cfg.Violations.Emit(violation.Violation{Kind: k, PID: c.id.PID, Tenant: c.id.Tenant, Detail: detail, Source: "ingest", Process: c.p.h})
}

// unknownFailure judges a failed zeroize or verify the interposer reports
// for memory whose allocation the agent never saw (its record was lost, or
// the memory is one libkvh could not see allocated, as a graph it could not
// walk): no ledger entry to attest, but a hygiene failure all the same, and
// it is not dropped with the unknown pointer. Once per kind and reflag per
// process, as the other interposer-reported failures.
func (s *Server) unknownFailure(c *conn, r *wire.Record, now time.Time) {
	kind, what := violation.FreeWithoutSanitize, "released"
	if r.Type == wire.Quarantine {
		kind, what = violation.QuarantinedBuffer, "kept from the driver"
	}
	if !c.p.shouldFlag(kind, now) {
		return
	}
	why := "zeroize failed"
	if r.Result == wire.ResVerifyFailed {
		why = "verify failed"
	}
	s.cfg.Metrics.Frees.WithLabelValues("failed").Inc()
	s.violation(c, kind, fmt.Sprintf("%s: %s, %d bytes at %#x %s, an allocation the agent never saw", wire.FnName(r.Fn), why, r.Bytes, r.Ptr, what))
}

func (s *Server) record(c *conn, r *wire.Record, raw []byte, pol policy.Config, now time.Time) error {
	led := s.cfg.Ledger
	switch r.Type {
	case wire.Hello:
		mode := []string{"enforce", "observe", "off"}[min(int(r.Result), 2)]
		_, err := s.cfg.Trail.Append(trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: c.id, Claimed: claim(r.Tenant, c.id.Tenant), Mode: mode, Verify: wire.VerifyName(r.Verify)})
		return err
	case wire.FloorAck:
		got := floor{verify: r.Verify, doublePass: r.Flags&wire.FlagDoublePass != 0, samples: uint16(min(r.Count, 65535))}
		if c.acked {
			return nil // one floor, one acknowledgement: a second cannot move the settle window
		}
		c.acked, c.ackSeq, c.ackAt = true, r.Seq, time.Now()
		if !got.meets(c.floor) {
			s.violation(c, violation.VerifyBelowFloor, fmt.Sprintf("the interposer applied %v, below the floor %v", got, c.floor))
		}
		return nil
	case wire.Drops:
		// An evidence gap: the agent was absent or slow, and libkvh zeroized
		// those buffers anyway. Not the tenant's violation — unless what it
		// offered, dropped or not, went past its own max_event_rate.
		c.dropped += r.Count
		reported := c.p.reported.Add(r.Count)
		s.cfg.Metrics.Dropped.Add(float64(r.Count))
		if err := s.appendQueued(trailevent.InterposerDrops{Ev: trailevent.EvInterposerDrops, PID: c.id.PID, Tenant: c.id.Tenant, Count: r.Count}); err != nil {
			return err
		}
		s.chargeGap(c.p, reported, time.Now())
		if c.dropped >= s.cfg.DropThreshold && c.dropped-r.Count < s.cfg.DropThreshold {
			log := s.cfg.Log
			log.Warn("an interposer is dropping events: the agent is not keeping up (an evidence gap, not a violation)", "pid", c.id.PID, "tenant", c.id.Tenant, "dropped", c.dropped)
		}
		return nil
	case wire.Alloc:
		if r.Flags&wire.FlagImporter != 0 {
			return nil // memory another process owns
		}
		if old, ok := c.handles[r.Ptr]; ok {
			delete(c.handles, r.Ptr)
			c.p.live.Add(-1)
			c.live--
			if old.h == 0 {
				c.win.retire(c, now)
			} else if err := led.Retire(old.h, "address reallocated before its free was reported"); err != nil {
				return err
			}
		}
		c.p.live.Add(1)
		c.live++
		if summarised(pol, c.id.Tenant, r.Bytes) {
			c.handles[r.Ptr] = entry{bytes: r.Bytes}
			c.win.alloc(c, r, raw, now)
			return nil
		}
		h, err := led.RegisterRemote(c.tags(r), int64(r.Bytes), tracer.AllocOptions{})
		if err != nil {
			c.p.live.Add(-1)
			c.live--
			return err
		}
		c.handles[r.Ptr] = entry{h: h, bytes: r.Bytes}
		return nil
	case wire.Free, wire.Quarantine:
		e, known := c.handles[r.Ptr]
		if r.Result == wire.ResPassthrough || !known {
			s.cfg.Metrics.Frees.WithLabelValues("passthrough").Inc()
			if known { // released without zeroize by design (memory shared with another owner): not left open
				delete(c.handles, r.Ptr)
				c.p.live.Add(-1)
				c.live--
				if e.h == 0 {
					c.win.retire(c, now)
					return nil
				}
				return led.Retire(e.h, "released by a passthrough free (memory another owner still holds)")
			}
			if r.Result == wire.ResZeroizeFailed || r.Result == wire.ResVerifyFailed {
				s.unknownFailure(c, r, now)
			}
			return nil
		}
		delete(c.handles, r.Ptr)
		c.p.live.Add(-1)
		c.live--
		if s.cfg.Attested != nil {
			s.cfg.Attested(c.id.PID, r.Ptr, now)
		}
		verified := r.Flags&wire.FlagVerified != 0
		zeroed := s.judgeFloor(c, r, verified, now)
		h := e.h
		if h == 0 {
			// A summarised buffer: a free that passes joins the window;
			// anything else is brought into the ledger, to be recorded
			// and judged one by one.
			cov := 100.0
			if e.bytes > 0 {
				cov = float64(min(uint64(max(zeroed, 0)), e.bytes)) * 100 / float64(e.bytes)
			}
			if r.Type == wire.Free && cov >= pol.For(c.id.Tenant).CoverageThreshold {
				c.win.free(c, r, raw, uint64(zeroed), cov, verified, now)
				c.freesOK++
				c.zeroed += zeroed
				return nil
			}
			var err error
			if h, err = led.RegisterRemote(c.tags(r), int64(e.bytes), tracer.AllocOptions{}); err != nil {
				return err
			}
		}
		method := fmt.Sprintf("%s+%s", wire.FnName(r.Fn), wire.VerifyName(r.Verify))
		if err := led.Attest(h, tracer.Attestation{Bytes: int64(r.Bytes), Zeroed: zeroed, Verified: verified, Method: method, Seed: r.Seed, Duration: time.Duration(r.DurNanos)}); err != nil {
			return err
		}
		if r.Type == wire.Quarantine {
			reason := "interposer: zeroize failed"
			if r.Result == wire.ResVerifyFailed {
				reason = "interposer: verify failed"
			}
			if err := led.Quarantine(h, reason); err != nil {
				return err
			}
			s.cfg.Metrics.Frees.WithLabelValues("quarantined").Inc()
			s.cfg.Metrics.Quarantined.Inc()
			s.violation(c, violation.QuarantinedBuffer, fmt.Sprintf("%s of %d bytes at %s", reason, r.Bytes, wire.FnName(r.Fn)))
			return nil
		}
		if err := led.Free(h); err != nil {
			if errors.Is(err, tracer.ErrFreeWithoutSanitize) {
				// The ledger reported the violation; count what happened.
				s.cfg.Metrics.Frees.WithLabelValues("failed").Inc()
				return nil
			}
			return err
		}
		c.freesOK++
		c.zeroed += zeroed
		return nil
	}
	return nil
}

// summarised reports whether an allocation of size is counted in the
// connection's event_window rather than in the ledger one by one: below
// trail_event_min_bytes, for a tenant without a TTL (the ledger's sweeper
// enforces TTLs on the buffers it holds).
func summarised(pol policy.Config, tenant string, size uint64) bool {
	return pol.TrailEventMinBytes > 0 && size < uint64(pol.TrailEventMinBytes) && pol.For(tenant).TTLSec == nil
}

func (c *conn) tags(r *wire.Record) tracer.Tags {
	return tracer.Tags{Tenant: c.id.Tenant, Request: r.Request, PID: c.id.PID, Device: strconv.Itoa(int(r.Device)), Framework: wire.KindName(r.MemKind), Claimed: claim(r.Tenant, c.id.Tenant)}
}

// claim returns the client's claimed tenant when it differs from the
// kernel-derived one.
func claim(claimed, actual string) string {
	if claimed == actual {
		return ""
	}
	return claimed
}

// The floor reaches an interposer asynchronously. A free is judged by the
// interposer's own settings when it was emitted before the acknowledgement
// (its seq), or within floorSettle after it (a free that read the old
// setting before the floor was applied may be emitted just after), or, with
// no acknowledgement, within floorGrace of connecting.
const (
	floorGrace  = 2 * time.Second
	floorSettle = 100 * time.Millisecond
)

// judgeFloor returns the bytes of a free that count as covered: only
// verified bytes, once the floor applies (unless the floor is verify off).
// A free below the floor after the interposer acknowledged it, or after
// the grace, is a verify_below_floor violation (once per process and
// reflag).
//
// now is the packet's time: a clock read per free here was a tenth of the
// agent's CPU in BenchmarkAgentIngest's profile.
func (s *Server) judgeFloor(c *conn, r *wire.Record, verified bool, now time.Time) int64 {
	// The exemptions hold only within the grace after connecting: a claimed
	// seq (2^64-1, say) cannot exempt a connection's frees for ever.
	applies := now.Sub(c.opened) > floorGrace ||
		c.acked && r.Seq > c.ackSeq && now.Sub(c.ackAt) > floorSettle
	got := floor{verify: r.Verify, doublePass: r.Flags&wire.FlagDoublePass != 0, samples: c.floor.samples}
	if applies && !got.meets(c.floor) && c.p.shouldFlag(violation.VerifyBelowFloor, now) {
		s.violation(c, violation.VerifyBelowFloor, fmt.Sprintf("%s zeroized with %v, below the floor %v", wire.FnName(r.Fn), got, c.floor))
	}
	if verified || c.floor.verify == wire.VerifyOff || !applies {
		return int64(r.Zeroed)
	}
	return 0
}

// floor is a verification strength: mode, double pass, samples (which
// matter only in sample mode).
type floor struct {
	verify     uint8
	doublePass bool
	samples    uint16
}

func floorOf(p policy.Config) floor {
	f := floor{doublePass: p.DoublePass, samples: uint16(min(max(p.VerifySamples, 0), 65535))}
	switch p.VerifyMode {
	case "sample":
		f.verify = wire.VerifySample
	case "full":
		f.verify = wire.VerifyFull
	}
	return f
}

// meets reports whether f is at least as strict as want.
func (f floor) meets(want floor) bool {
	if f.verify < want.verify || want.doublePass && !f.doublePass {
		return false
	}
	return !(want.verify == wire.VerifySample && f.verify == wire.VerifySample && f.samples < want.samples)
}

func (f floor) String() string {
	s := wire.VerifyName(f.verify)
	if f.verify == wire.VerifySample {
		s += fmt.Sprintf("(%d samples)", f.samples)
	}
	if f.doublePass {
		s += "+double-pass"
	}
	return s
}
