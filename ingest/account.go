package ingest

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/kvhygiene/kvh/trailevent"
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
// leaves carry (s.mu held; reading the page is one pread).
func (s *Server) settleLocked(c carried) {
	now := time.Now()
	if len(s.settled) >= maxCarried {
		for pid, o := range s.settled {
			if now.Sub(o.at) >= settledFor {
				delete(s.settled, pid)
			}
		}
	}
	if len(s.settled) >= 4*maxCarried {
		return
	}
	st := settled{received: c.received, gap: c.reported, at: now}
	if c.account != nil {
		if e, d, err := readAccount(c.account); err == nil {
			st.emitted, st.gap = e, max(d, c.reported)
			if e > c.received+st.gap {
				st.gap = e - c.received // what did not arrive was dropped or lost
			}
		}
	}
	s.settled[c.p.id.PID] = st
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
	s.mu.Lock()
	c, ok := s.carry[p.key]
	if ok && c.p == p && !p.h.Alive() {
		delete(s.carry, p.key)
		s.settleLocked(c)
	} else {
		ok = false
	}
	var stale []carried
	if len(s.carry) > maxCarried {
		for k, o := range s.carry {
			if !o.p.h.Alive() {
				stale = append(stale, o)
				delete(s.carry, k)
				s.settleLocked(o)
			}
		}
	}
	s.mu.Unlock()
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
	if got := c.received + dropped; got <= emitted {
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
// disconnected) process pid now: what its interposer emitted and counted
// dropped (from its counters page; without one, emitted is unknown and
// dropped is what it reported), and what the agent received.
func (s *Server) Progress(pid int) (emitted, received, dropped uint64, ok bool) {
	s.mu.Lock()
	if o, found := s.settled[pid]; found && time.Since(o.at) < settledFor {
		emitted, received, dropped, ok = o.emitted, o.received, o.gap, true
	}
	var files []*os.File
	var ps []*process
	for _, p := range s.procs {
		if p.id.PID == pid {
			ps = append(ps, p)
		}
	}
	for _, c := range s.carry {
		if c.p.id.PID == pid {
			ok = true
			if c.account != nil {
				files = append(files, c.account)
			}
			received += c.received
			dropped = max(dropped, c.reported)
		}
	}
	s.mu.Unlock()
	for _, p := range ps {
		ok = true
		p.mu.Lock()
		if p.account != nil {
			files = append(files, p.account)
		}
		p.mu.Unlock()
		received += p.received.Load()
		dropped = max(dropped, p.reported.Load())
	}
	for _, f := range files {
		if e, d, err := readAccount(f); err == nil {
			emitted, dropped = max(emitted, e), max(dropped, d)
		}
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
