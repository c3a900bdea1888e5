package ingest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// Trail records the server's own events (connections, drops, floods).
// *forensic.Log satisfies it.
type Trail interface {
	Append(body any) (uint64, error)
}

// queuedTrail is a Trail that can queue a record without waiting for it
// to be durable (*forensic.Log): see appendQueued.
type queuedTrail interface {
	AppendAsync(body any) error
}

// appendQueued records a routine summary (an event window, an interposer's
// drop report) without waiting for it to be durable when the trail can
// queue: it becomes durable, in order, with the trail's next group commit,
// as the ledger's per-event records do in the agent (tracer's AsyncTrail).
// A connection's reader that waited for an fdatasync once a second for its
// window, or for each drop report in an overload, left its interposer's
// ring to fill behind a slow disk; anything that waits on the trail later
// (an action, a process account) still finds these records on disk first.
func (s *Server) appendQueued(body any) error {
	if q, ok := s.cfg.Trail.(queuedTrail); ok {
		return q.AppendAsync(body)
	}
	_, err := s.cfg.Trail.Append(body)
	return err
}

// Config wires a Server.
type Config struct {
	Ledger     *tracer.Ledger       // required
	Trail      Trail                // required
	Violations violation.Sink       // required
	Peers      *Peers               // required: filled with every connection
	Metrics    *Metrics             // required
	Policy     func() policy.Config // required: caps, claims, the verify floor
	Log        hclog.Logger
	ProcRoot   string // default /proc
	// Pods is the orchestrator's word on a process's pod (the NRI plugin);
	// nil: identity from the cgroup alone.
	Pods Pods
	// DropThreshold is the dropped events per connection past which the
	// agent logs that it is not keeping up (default 1000). Drops are an
	// evidence gap, never a tenant's violation: a tenant is flagged only
	// when what it offers, dropped or not, exceeds its max_event_rate.
	DropThreshold uint64
	// MaxConns caps connections in all (default 4096), MaxConnsPerUID per
	// uid (default 1024) and MaxConnsPerProcess per process (default 8), so
	// that one tenant cannot lock the others out.
	MaxConns, MaxConnsPerUID, MaxConnsPerProcess int
	// MaxErrors is the malformed packets before a connection is closed (default 16).
	MaxErrors int
	// WriteTimeout bounds a write to a client (a deny); a client that does
	// not read within it is disconnected. Default 1s.
	WriteTimeout time.Duration
	// Attested, when set, is told of every attested free (the witness
	// correlator joins them).
	Attested func(pid int, ptr uint64, at time.Time)
}

// Server accepts interposer connections.
type Server struct {
	cfg     Config
	ln      *net.UnixListener
	mu      sync.Mutex // guards conns, procs, perUID, pending, closed, denied, limits; never held across I/O
	conns   map[*conn]struct{}
	procs   map[string]*process // by pidfd key
	byPID   map[int32]*process  // the same, by pid: the accept loop's cheap per-process cap
	perUID  map[uint32]int      // connections and reservations, by uid
	pending int                 // connections accepted and not yet set up
	closed  bool
	denied  map[string]bool      // processes denied, by key (their children inherit it)
	limits  map[string]time.Time // last connection_limit violation, by process key and by uid
	carry   map[string]carried   // accounts of processes that disconnected alive, by key
	settled map[int]settled      // closed accounts, by pid, kept a while for the witness correlator
	wg      sync.WaitGroup
	quit    chan struct{}
	live    atomic.Int64 // live buffers of every connection (max_live_buffers_node)
}

// Listen binds the interposer socket: it creates its directory 0750,
// replaces a stale socket (never a live one, nor anything that is not a
// socket) and sets its mode (default 0660) and, when gid >= 0, its group.
// The socket's security rests on kernel identity and the server's caps,
// not on who may connect: a group lets non-root serving processes in.
func Listen(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	if mode == 0 {
		mode = 0o660
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another agent", path)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket group: %w", err)
		}
		// The directory must let the group reach the socket.
		if err := os.Lchown(filepath.Dir(path), -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket directory group: %w", err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	// A mode that lets others in (0666) is of no use if they cannot reach
	// the socket: let them through the directory (search only, no listing).
	if mode&0o006 != 0 {
		if st, err := os.Stat(filepath.Dir(path)); err == nil && st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(filepath.Dir(path), st.Mode().Perm()|0o001); err != nil {
				ln.Close()
				return nil, fmt.Errorf("socket directory: %w", err)
			}
		}
	}
	return ln, nil
}

// New returns a Server that will accept on ln (from Listen).
func New(ln *net.UnixListener, cfg Config) (*Server, error) {
	if ln == nil || cfg.Ledger == nil || cfg.Trail == nil || cfg.Metrics == nil || cfg.Violations == nil || cfg.Peers == nil || cfg.Policy == nil {
		return nil, errors.New("ingest: listener, ledger, trail, violations, peers, policy and metrics are required")
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.DropThreshold == 0 {
		cfg.DropThreshold = 1000
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 1024
	}
	if cfg.MaxConnsPerUID <= 0 {
		cfg.MaxConnsPerUID = 256
	}
	if cfg.MaxConnsPerProcess <= 0 {
		cfg.MaxConnsPerProcess = 8
	}
	if cfg.MaxErrors <= 0 {
		cfg.MaxErrors = 16
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	return &Server{cfg: cfg, ln: ln, conns: map[*conn]struct{}{}, procs: map[string]*process{}, byPID: map[int32]*process{}, perUID: map[uint32]int{},
		denied: map[string]bool{}, limits: map[string]time.Time{}, carry: map[string]carried{}, settled: map[int]settled{}, quit: make(chan struct{})}, nil
}

// Serve accepts connections until Close.
func (s *Server) Serve() error {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.quit:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.cfg.Log.Error("accept", "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.accept(c)
	}
}

// accept applies the node's and the uid's connection caps, which need only
// SO_PEERCRED, and hands the connection to its goroutine, which identifies
// the process and applies the per-process cap. A refusal costs one
// getsockopt and a map lookup, and nothing on this goroutine reads /proc or
// writes to a client, so neither a flood of connections nor a process whose
// /proc is slow to read can hold the accept loop (or the backlog) against
// other tenants.
func (s *Server) accept(c *net.UnixConn) {
	now := time.Now()
	cred, err := peerCred(c)
	if err != nil {
		s.cfg.Metrics.IngestErrors.WithLabelValues("peer_gone").Inc()
		c.Close()
		return
	}
	s.mu.Lock()
	refuse := s.overCapLocked(cred.Uid)
	var at *process // a process already at its cap
	if p := s.byPID[cred.Pid]; refuse == "" && p != nil && p.conns >= s.cfg.MaxConnsPerProcess && p.h.Alive() {
		// The process that holds this pid is alive, so it is the one that
		// connected (a live process's pid is not another's): refused here
		// for a getsockopt and a map lookup, so that a process flooding the
		// socket is drained as fast as it connects and the backlog stays
		// open to others.
		at, refuse = p, fmt.Sprintf("the process holds %d connections, its cap", p.conns)
	}
	if refuse == "" && !s.closed {
		// Reserved now, so that a flood is refused here, before any
		// goroutine starts for it.
		s.pending++
		s.perUID[cred.Uid]++
		s.wg.Add(1)
	}
	closed := s.closed
	s.mu.Unlock()
	switch {
	case closed:
		c.Close()
	case at != nil:
		s.refuse(c, cred, at.h, at.key, refuse, now)
	case refuse != "":
		s.refuse(c, cred, nil, "uid:"+strconv.FormatUint(uint64(cred.Uid), 10), refuse, now)
	default:
		go s.setup(c, cred, now)
	}
}

// setup identifies a connection's process by a pidfd (never by its pid
// alone: the pid of a process that has exited is another's tomorrow),
// applies the per-process cap to that process, sends the verify floor, and
// serves the connection.
func (s *Server) setup(c *net.UnixConn, cred *unix.Ucred, now time.Time) {
	release := func() {
		s.mu.Lock()
		s.pending--
		if s.perUID[cred.Uid]--; s.perUID[cred.Uid] <= 0 {
			delete(s.perUID, cred.Uid)
		}
		s.mu.Unlock()
		s.wg.Done()
	}
	h, err := peerHandle(c, cred, now, s.cfg.ProcRoot)
	if errors.Is(err, proc.ErrGone) {
		// The process connected, reported and exited before we got here
		// (a short-lived process, or an agent that fell behind): what it
		// sent is queued in the socket and is read like any other
		// connection's, under the pid and uid the kernel gave it. Nothing
		// can be done to it, and /proc no longer says who it was.
		s.cfg.Metrics.IngestErrors.WithLabelValues("peer_gone").Inc()
		s.cfg.Log.Debug("connection from a process that has exited: reading what it sent", "pid", cred.Pid, "error", err)
		h, err = proc.Exited(int(cred.Pid)), nil
	}
	if err != nil {
		s.cfg.Log.Warn("connection refused: its peer cannot be named", "error", err)
		c.Close()
		release()
		return
	}
	// The cap first, before /proc is read: a process's excess connections
	// cost a pidfd each, nothing more.
	s.mu.Lock()
	p := s.procs[h.Key()]
	over := p != nil && p.conns >= s.cfg.MaxConnsPerProcess
	s.mu.Unlock()
	if over {
		s.refuse(c, cred, h, h.Key(), fmt.Sprintf("the process holds %d connections, its cap", s.cfg.MaxConnsPerProcess), now)
		release()
		return
	}
	pol := s.cfg.Policy()
	id := identifyHandle(s.cfg.ProcRoot, h, cred.Uid, pol.TrustTenantClaims, s.cfg.Pods)
	parentKey := ""
	if ppid, err := proc.Parent(s.cfg.ProcRoot, h.PID); err == nil && ppid > 1 && h.Alive() {
		parentKey, _ = proc.KeyOf(s.cfg.ProcRoot, ppid)
	}

	s.mu.Lock()
	var cn *conn
	inherit, inheritWhy, refuse := false, "", ""
	p = s.procs[h.Key()]
	switch {
	case s.closed:
		refuse = "the agent is stopping"
	case p != nil && p.conns >= s.cfg.MaxConnsPerProcess:
		refuse = fmt.Sprintf("the process holds %d connections, its cap", p.conns)
	default:
		if p == nil {
			p = &process{h: h, key: h.Key(), id: id}
			s.procs[p.key] = p
			if !h.IsExited() { // the pid may already name another process
				s.byPID[int32(h.PID)] = p
			}
			s.adoptLocked(p)
		}
		p.conns++
		switch {
		case s.denied[p.key]: // denied before, and reconnecting
			p.denied, inherit, inheritWhy = true, true, "the process was denied before it reconnected"
		case !p.denied && parentKey != "" && s.denied[parentKey]:
			p.denied, s.denied[p.key], inherit, inheritWhy = true, true, true, "inherited: parent process "+parentKey+" is denied"
		}
		cn = &conn{c: c, p: p, id: p.id, handles: map[uint64]entry{}, opened: now, floor: floorOf(pol), denySent: inherit}
		s.conns[cn] = struct{}{}
		s.pending-- // the reservation is now a connection
	}
	s.mu.Unlock()
	if cn == nil {
		if !s.isClosed() {
			s.refuse(c, cred, h, h.Key(), refuse, now)
		} else {
			c.Close()
		}
		release()
		return
	}
	if !h.IsExited() {
		// An exited peer's pid may already name another process, which
		// must not lose (or take) its place among the connected.
		s.cfg.Peers.add(h)
	}
	s.cfg.Metrics.Connected.Inc()
	// The floor first: the interposer verifies at least as strictly as the
	// policy asks, whatever it was started with.
	if !h.IsExited() {
		s.write(cn, wire.Floor(cn.floor.verify, cn.floor.doublePass, cn.floor.samples))
	}
	if inherit {
		s.inheritDeny(cn, inheritWhy)
	}
	s.handle(cn)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// overCapLocked applies the caps that need only the kernel's uid: the
// node's and the uid's (connections being set up count).
func (s *Server) overCapLocked(uid uint32) string {
	switch {
	case len(s.conns)+s.pending >= s.cfg.MaxConns:
		return fmt.Sprintf("the node's %d connections are taken", s.cfg.MaxConns)
	case s.perUID[uid] >= s.cfg.MaxConnsPerUID:
		return fmt.Sprintf("uid %d holds %d connections, its cap", uid, s.perUID[uid])
	}
	return ""
}

// refuse closes a connection over a cap, counts it, and reports the process
// (at most once per reflag per key — the process, or the uid — and per
// uid). h is the process when it is known; otherwise it is identified;
// either way off the accept loop.
func (s *Server) refuse(c *net.UnixConn, cred *unix.Ucred, h *proc.Handle, key, why string, now time.Time) {
	s.cfg.Metrics.IngestErrors.WithLabelValues("too_many_connections").Inc()
	if !s.flagLimit(key, cred.Uid, now) {
		c.Close()
		return
	}
	s.cfg.Log.Warn("connection refused", "pid", cred.Pid, "uid", cred.Uid, "reason", why)
	report := func() {
		defer c.Close()
		if h == nil {
			var err error
			if h, err = peerHandle(c, cred, now, s.cfg.ProcRoot); err != nil {
				return
			}
		}
		id := identifyHandle(s.cfg.ProcRoot, h, cred.Uid, s.cfg.Policy().TrustTenantClaims, s.cfg.Pods)
		s.cfg.Violations.Emit(violation.Violation{Kind: violation.ConnectionLimit, PID: h.PID, Tenant: id.Tenant, Detail: "connection refused: " + why, Source: "ingest", Process: h, At: now})
	}
	// Off the accept loop, and waited for by Close (registered before it
	// can start waiting, or not at all).
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		c.Close()
		return
	}
	go func() {
		defer s.wg.Done()
		report()
	}()
}

// flagLimit reports whether a connection_limit violation is due for this
// key: at most one per key and one per uid every reflag, so a flood of
// refused connections is not a flood of violations.
func (s *Server) flagLimit(key string, uid uint32, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.limits) > 65536 { // bounded: forget the oldest episode
		for k, t := range s.limits {
			if now.Sub(t) >= reflag {
				delete(s.limits, k)
			}
		}
	}
	ukey := fmt.Sprintf("uid:%d", uid)
	for _, k := range []string{key, ukey} {
		if t, ok := s.limits[k]; ok && now.Sub(t) < reflag {
			return false
		}
	}
	s.limits[key], s.limits[ukey] = now, now
	return true
}

// peerCred returns the connection's SO_PEERCRED.
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, cerr
}

// peerHandle returns a pidfd for the connection's process.
func peerHandle(c *net.UnixConn, cred *unix.Ucred, accepted time.Time, procRoot string) (*proc.Handle, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var h *proc.Handle
	var herr error
	if err := rc.Control(func(fd uintptr) { h, herr = proc.FromSocket(int(fd), int(cred.Pid), accepted, procRoot) }); err != nil {
		return nil, err
	}
	return h, herr
}

// Close stops accepting, closes connections and waits for their handlers.
func (s *Server) Close() {
	close(s.quit)
	s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.closeCarried()
}

// Deny tells every interposer connected from h's process to refuse new
// allocations, and remembers it so the process's children are denied when
// they connect. Each connection is told once (a deny is not lifted): a
// process that provokes a violation per record cannot have the agent write
// to its connections until they fill, and so cannot make the enforcer wait
// on its writes. Each write has a deadline and happens outside the server's
// lock: a client that does not read within WriteTimeout is disconnected.
func (s *Server) Deny(h *proc.Handle) error {
	s.pruneDenied()
	s.mu.Lock()
	s.denied[h.Key()] = true
	var cs []*conn
	n := 0
	for c := range s.conns {
		if c.p.key == h.Key() {
			n++
			c.p.denied = true
			if !c.denySent {
				c.denySent = true
				cs = append(cs, c)
			}
		}
	}
	s.mu.Unlock()
	if n == 0 {
		return fmt.Errorf("%v has no interposer connection (its children will be denied when they connect)", h)
	}
	for _, c := range cs {
		if err := s.write(c, wire.Control(wire.CtlDeny)); err != nil {
			return fmt.Errorf("deny to %v: %w", h, err)
		}
	}
	return nil
}

// maxDenied bounds the remembered denied processes; past it, those that
// have exited are forgotten.
const maxDenied = 4096

func (s *Server) pruneDenied() {
	s.mu.Lock()
	if len(s.denied) < maxDenied {
		s.mu.Unlock()
		return
	}
	keys := make([]string, 0, len(s.denied))
	for k := range s.denied {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	var gone []string
	for _, k := range keys {
		pid, _, _ := strings.Cut(k, "@")
		n, _ := strconv.Atoi(pid)
		if now, err := proc.KeyOf(s.cfg.ProcRoot, n); err != nil || now != k {
			gone = append(gone, k)
		}
	}
	s.mu.Lock()
	for _, k := range gone {
		delete(s.denied, k)
	}
	s.mu.Unlock()
}

// inheritDeny denies a new connection of a process that was denied, or
// whose parent was, and records it (the action was the enforcer's; this
// carries it to the new connection).
func (s *Server) inheritDeny(c *conn, why string) {
	result := "denied new allocations"
	if err := s.write(c, wire.Control(wire.CtlDeny)); err != nil {
		result = "error: " + err.Error()
	}
	if _, err := s.cfg.Trail.Append(trailevent.Action{Ev: trailevent.EvAction, Action: policy.ActionDeny, PID: c.id.PID, Tenant: c.id.Tenant,
		Result: result, Reason: why}); err != nil {
		s.cfg.Log.Error("recording an inherited deny", "error", err)
	}
}

// write sends one control packet to a client with a deadline; a client that
// does not take it in time is disconnected (its handler records why).
func (s *Server) write(c *conn, msg []byte) error {
	// One SOCK_SEQPACKET write is one whole packet: concurrent writers
	// cannot interleave, so no per-connection lock is needed.
	c.c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	_, err := c.c.Write(msg)
	switch {
	case err == nil:
	case errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET):
		// The client closed its end (it exited): what it sent before is
		// still queued, and its handler reads it to the end.
	default:
		c.kick("did not read the agent's messages within " + s.cfg.WriteTimeout.String())
	}
	return err
}
