package ingest

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"time"

	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// The event account: libkvh keeps its process's counts (records given a
// seq, records dropped) in a sealed memfd page it passes with its HELLO
// (struct kvh_counters). The agent counts what it received, and when the
// process's last connection ends and the process has exited, it reads the
// page — after the process is gone and behind any backlog — and closes the
// account in a process_account record: emitted = received + dropped + lost.
// Drops and losses are an evidence gap (libkvh zeroized those buffers
// anyway), never a violation of the tenant's.

// exitWait bounds how long a disconnect waits for the process to finish
// exiting (its socket closes before the kernel reports it gone).
const exitWait = time.Second

// exitedGrace is how long the account of a process that had exited before
// its connection was set up stays open for its other connections.
const exitedGrace = 500 * time.Millisecond

// maxCarried bounds the accounts of processes that disconnected alive.
const maxCarried = 1024

// openAccount checks an fd received with a HELLO and keeps it: a regular
// file (a memfd) of at least a page's counters, sealed against shrinking
// (so reading it cannot fault and nothing else can be passed off as one).
func openAccount(fd int) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < wire.CountersSize {
		unix.Close(fd)
		return nil, fmt.Errorf("not a counters page (mode %#o, %d bytes)", st.Mode, st.Size)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		unix.Close(fd)
		return nil, errors.New("counters page is not sealed against shrinking")
	}
	return os.NewFile(uintptr(fd), "kvh-account"), nil
}

// readAccount reads the page's counts now.
func readAccount(f *os.File) (emitted, dropped uint64, err error) {
	var b [wire.CountersSize]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, 0, err
	}
	return wire.DecodeCounters(b[:])
}

// takeFDs returns the fds in a packet's ancillary data (SCM_RIGHTS).
func takeFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if f, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

// settledFor is how long a closed account answers Progress: the witness
// correlator judges a process's last frees after it has exited.
const settledFor = time.Minute

// settled is a closed account.
type settled struct {
	emitted, received, gap uint64 // gap: dropped + lost
	at                     time.Time
}

// settleLocked keeps a closing account for Progress, from the moment it
// leaves carry (s.mu held; reading the page is one pread). Its gap is the
// credible part of what the page claims (chargeGap); a claim past the rate
// cap comes back as the violation to emit once s.mu is released.
func (s *Server) settleLocked(c carried) *violation.Violation {
	now := time.Now()
	if len(s.settled) >= maxCarried {
		for pid, o := range s.settled {
			if now.Sub(o.at) >= settledFor {
				delete(s.settled, pid)
			}
		}
	}
	if len(s.settled) >= 4*maxCarried {
		return nil
	}
	st := settled{received: c.received, at: now}
	claimed := c.reported
	if c.account != nil {
		if e, d, err := readAccount(c.account); err == nil {
			st.emitted, claimed = e, max(d, c.reported)
			if e > c.received+claimed {
				claimed = e - c.received // what did not arrive was dropped or lost
			}
		}
	}
	credible, over := c.p.chargeGap(now, s.cfg.Policy().MaxEventRate, claimed)
	st.gap = credible
	s.settled[c.p.id.PID] = st
	if over && c.p.shouldFlag(violation.EventRateLimit, now) {
		v := s.gapViolation(c.p, claimed, now)
		return &v
	}
	return nil
}

// chargeGap charges the gap p's interposer claims so far (a DROPS record's
// running total) to p's max_event_rate, and reports a claim past it.
func (s *Server) chargeGap(p *process, claimed uint64, now time.Time) {
	if _, over := p.chargeGap(now, s.cfg.Policy().MaxEventRate, claimed); over && p.shouldFlag(violation.EventRateLimit, now) {
		s.cfg.Violations.Emit(s.gapViolation(p, claimed, now))
	}
}

func (s *Server) gapViolation(p *process, claimed uint64, now time.Time) violation.Violation {
	return violation.Violation{Kind: violation.EventRateLimit, PID: p.id.PID, Tenant: p.id.Tenant, Source: "ingest", Process: p.h, At: now,
		Detail: fmt.Sprintf("offered more than %g events/s: its interposer claims %d events dropped or lost, past what the cap allows (only that part is an evidence gap)", s.cfg.Policy().MaxEventRate, claimed)}
}

// carried is the account of a process whose connections all ended while it
// was alive: a new connection of the same process takes it up.
type carried struct {
	received, reported uint64
	account            *os.File
	p                  *process
}

// leave hands the account of a process whose last connection ended to
// settle, or to carry when the process lives on (s.mu held).
func (s *Server) carryLocked(p *process) {
	s.carry[p.key] = carried{received: p.received.Load(), reported: p.reported.Load(), account: p.takeAccount(), p: p}
}

// adopt gives a new process entry the account its earlier connections left
// (s.mu held).
func (s *Server) adoptLocked(p *process) {
	c, ok := s.carry[p.key]
	if !ok {
		return
	}
	delete(s.carry, p.key)
	p.received.Store(c.received)
	p.reported.Store(c.reported)
	p.setAccount(c.account)
}

// settle closes the account of a process whose last connection ended: once
// it has exited (waiting up to exitWait), the account is recorded; a
// process still alive keeps it carried for its next connection.
func (s *Server) settle(p *process) {
	for deadline := time.Now().Add(exitWait); p.h.Alive() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if p.h.IsExited() {
		// Its other connections, if it had several, wait in the listen
		// backlog behind this one: they adopt the carried account, and the
		// last of them closes it.
		time.Sleep(exitedGrace)
	}
	var vs []*violation.Violation
	s.mu.Lock()
	c, ok := s.carry[p.key]
	if ok && c.p == p && !p.h.Alive() {
		delete(s.carry, p.key)
		vs = append(vs, s.settleLocked(c))
	} else {
		ok = false
	}
	var stale []carried
	if len(s.carry) > maxCarried {
		for k, o := range s.carry {
			if !o.p.h.Alive() {
				stale = append(stale, o)
				delete(s.carry, k)
				vs = append(vs, s.settleLocked(o))
			}
		}
	}
	s.mu.Unlock()
	for _, v := range vs {
		if v != nil {
			s.cfg.Violations.Emit(*v)
		}
	}
	if ok {
		s.closeAccount(c, true)
	}
	for _, o := range stale {
		s.closeAccount(o, true)
	}
}

// closeAccount records a process's account and counts its gap.
func (s *Server) closeAccount(c carried, exited bool) {
	p := c.p
	rec := trailevent.ProcessAccount{Ev: trailevent.EvProcessAccount, PID: p.id.PID, Tenant: p.id.Tenant, Received: c.received, Reported: c.reported, Exited: exited}

	if c.account == nil {
		// An interposer without a page (an older libkvh): what it reported
		// is all that is known.
		rec.Dropped = c.reported
		s.appendAccount(rec)
		return
	}
	emitted, dropped, err := readAccount(c.account)
	c.account.Close()
	if err != nil {
		s.cfg.Log.Warn("reading an interposer's counters page", "pid", p.id.PID, "error", err)
		rec.Dropped = c.reported
		s.appendAccount(rec)
		return
	}
	rec.Emitted, rec.Dropped = emitted, dropped
	// The page is the tenant's: its counts may not add up, and their sum
	// may pass 2^64 (then the excess saturates rather than wraps to a loss).
	if got, carry := bits.Add64(c.received, dropped, 0); carry != 0 {
		rec.Excess = math.MaxUint64
	} else if got <= emitted {
		rec.Lost = emitted - got
	} else {
		rec.Excess = got - emitted
	}
	if dropped > c.reported {
		s.cfg.Metrics.Dropped.Add(float64(dropped - c.reported)) // never reported on the wire
	}
	s.cfg.Metrics.Lost.Add(float64(rec.Lost))
	if rec.Lost > 0 || rec.Excess > 0 {
		s.cfg.Log.Warn("event account does not close on the wire", "pid", p.id.PID, "tenant", p.id.Tenant,
			"emitted", emitted, "received", c.received, "dropped", dropped, "lost", rec.Lost, "excess", rec.Excess)
	}
	s.appendAccount(rec)
}

func (s *Server) appendAccount(rec trailevent.ProcessAccount) {
	s.cfg.Metrics.Accounts.Inc()
	if _, err := s.cfg.Trail.Append(rec); err != nil {
		s.cfg.Log.Error("recording a process account", "error", err)
	}
}

// Progress returns the event account of the connected (or recently
// disconnected) process pid now: what its interposer emitted (from its
// counters page; without one, unknown), what the agent received, and the
// credible part of what it claims dropped (its page's count, or what it
// reported), charged to its max_event_rate as it is read: the page is the
// tenant's to write, and a claim past its cap is an event_rate_limit
// violation that excuses nothing beyond the cap.
func (s *Server) Progress(pid int) (emitted, received, dropped uint64, ok bool) {
	type claim struct {
		p        *process
		reported uint64
		account  *os.File
	}
	var cs []claim
	s.mu.Lock()
	if o, found := s.settled[pid]; found && time.Since(o.at) < settledFor {
		emitted, received, dropped, ok = o.emitted, o.received, o.gap, true
	}
	var ps []*process
	for _, p := range s.procs {
		if p.id.PID == pid {
			ps = append(ps, p)
		}
	}
	for _, c := range s.carry {
		if c.p.id.PID == pid {
			ok = true
			received += c.received
			cs = append(cs, claim{c.p, c.reported, c.account})
		}
	}
	s.mu.Unlock()
	for _, p := range ps {
		ok = true
		p.mu.Lock()
		f := p.account
		p.mu.Unlock()
		received += p.received.Load()
		cs = append(cs, claim{p, p.reported.Load(), f})
	}
	now := time.Now()
	for _, c := range cs {
		claimed := c.reported
		if c.account != nil {
			if e, d, err := readAccount(c.account); err == nil {
				emitted, claimed = max(emitted, e), max(claimed, d)
			}
		}
		credible, over := c.p.chargeGap(now, s.cfg.Policy().MaxEventRate, claimed)
		if over && c.p.shouldFlag(violation.EventRateLimit, now) {
			s.cfg.Violations.Emit(s.gapViolation(c.p, claimed, now))
		}
		dropped = max(dropped, credible)
	}
	return emitted, received, dropped, ok
}

// closeCarried records the accounts still carried when the server stops.
func (s *Server) closeCarried() {
	s.mu.Lock()
	cs := make([]carried, 0, len(s.carry))
	for k, c := range s.carry {
		cs = append(cs, c)
		delete(s.carry, k)
	}
	s.mu.Unlock()
	for _, c := range cs {
		s.closeAccount(c, !c.p.h.Alive())
	}
}
