package ingest

import (
	"fmt"
	"sync"
	"time"

	"github.com/kvhygiene/kvh/action"
	"github.com/prometheus/client_golang/prometheus"
)

// Witnessed is a call the eBPF witness saw in the driver library.
type Witnessed struct {
	PID  int
	Ptr  uint64
	Fn   string
	Free bool
	At   time.Time
}

// Correlator joins witnessed frees with interposer attestations: a free the
// witness saw with no attestation from the same process for the same
// pointer within the window is an unattested_free; a process the witness
// sees using the driver with no interposer connection is an
// uncovered_process. Safe for concurrent use.
type Correlator struct {
	Server  *Server
	Window  time.Duration
	Matched prometheus.Counter
	Unatt   prometheus.Counter
	Covered prometheus.Gauge // uncovered processes seen

	mu         sync.Mutex
	attested   map[[2]uint64][]time.Time // (pid, ptr) -> attestations not yet matched (addresses are reused)
	pending    []Witnessed
	uncovered  map[int]time.Time // pid -> first seen without a connection
	flagged    map[int]bool      // uncovered pids already reported
	lastFlag   map[int]time.Time // pid -> last unattested_free violation
	suppressed map[int]int       // unattested frees since lastFlag
}

func (c *Correlator) init() {
	if c.attested == nil {
		c.attested = map[[2]uint64][]time.Time{}
		c.uncovered = map[int]time.Time{}
		c.flagged = map[int]bool{}
		c.lastFlag = map[int]time.Time{}
		c.suppressed = map[int]int{}
	}
}

// Attested notes an interposer attestation (called by the Server).
func (c *Correlator) Attested(pid int, ptr uint64, at time.Time) {
	c.mu.Lock()
	c.init()
	key := [2]uint64{uint64(pid), ptr}
	c.attested[key] = append(c.attested[key], at)
	c.mu.Unlock()
}

// Witness takes one witnessed call.
func (c *Correlator) Witness(ev Witnessed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.init()
	if _, seen := c.uncovered[ev.PID]; !seen && !c.flagged[ev.PID] {
		c.uncovered[ev.PID] = ev.At
	}
	// Only frees at the point the interposer zeroizes are joined; a release
	// of a VMM handle follows an unmap that was.
	if ev.Free && ev.Fn != "cuMemRelease" {
		c.pending = append(c.pending, ev)
	}
}

// Check settles everything older than the window; the agent calls it on a ticker.
func (c *Correlator) Check(now time.Time) {
	c.mu.Lock()
	c.init()
	var violations []action.Violation
	keep := c.pending[:0]
	for _, ev := range c.pending {
		if now.Sub(ev.At) < c.Window {
			keep = append(keep, ev)
			continue
		}
		key := [2]uint64{uint64(ev.PID), ev.Ptr}
		if ats := c.attested[key]; len(ats) > 0 {
			if len(ats) == 1 {
				delete(c.attested, key)
			} else {
				c.attested[key] = ats[1:]
			}
			c.Matched.Inc()
			continue
		}
		c.Unatt.Inc()
		if last, ok := c.lastFlag[ev.PID]; ok && now.Sub(last) < 10*time.Second {
			c.suppressed[ev.PID]++
			continue
		}
		c.lastFlag[ev.PID] = now
		detail := fmt.Sprintf("%s(%#x) with no zeroize attestation within %v", ev.Fn, ev.Ptr, c.Window)
		if n := c.suppressed[ev.PID]; n > 0 {
			detail += fmt.Sprintf(" (and %d more since the last report)", n)
			c.suppressed[ev.PID] = 0
		}
		violations = append(violations, action.Violation{Kind: action.UnattestedFree, PID: ev.PID, Detail: detail})
	}
	c.pending = keep
	for pid, first := range c.uncovered {
		if now.Sub(first) < c.Window {
			continue
		}
		delete(c.uncovered, pid)
		if c.Server.Connected(pid) || c.Server.SeenPID(pid) {
			continue
		}
		c.flagged[pid] = true
		c.Covered.Inc()
		violations = append(violations, action.Violation{Kind: action.UncoveredProcess, PID: pid, Detail: "calls the CUDA driver without the kvh interposer"})
	}
	// Attestations the witness never matched (a library it does not probe)
	// are kept a few windows, not forever.
	for k, ats := range c.attested {
		if now.Sub(ats[len(ats)-1]) > 3*c.Window {
			delete(c.attested, k)
		}
	}
	c.mu.Unlock()
	for _, v := range violations {
		id := Identify(c.Server.cfg.ProcRoot, v.PID, 0)
		v.Tenant = id.Tenant
		c.Server.cfg.Enforcer.Handle(v)
	}
}
