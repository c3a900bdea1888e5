package ingest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/action"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// Config wires a Server.
type Config struct {
	Socket        string
	SocketMode    os.FileMode // default 0660
	Ledger        *tracer.Ledger
	Trail         action.Trail
	Enforcer      *action.Enforcer
	Metrics       *Metrics
	Log           hclog.Logger
	ProcRoot      string // default /proc
	DropThreshold uint64 // dropped events per process before it is a violation (default 1000)
	MaxConns      int    // default 4096
	MaxErrors     int    // malformed packets before a connection is closed (default 16)
	// Correlator, when set, is told of every attested free (the witness joins them).
	Correlator *Correlator
}

// Server accepts interposer connections.
type Server struct {
	cfg   Config
	seen  sync.Map // pid -> struct{}: processes that ever connected
	ln    *net.UnixListener
	mu    sync.Mutex
	conns map[*conn]struct{}
	wg    sync.WaitGroup
	quit  chan struct{}
}

type conn struct {
	c       *net.UnixConn
	id      Identity
	handles map[uint64]tracer.Handle
	dropped uint64
	writeMu sync.Mutex
}

// New listens on cfg.Socket (creating its directory 0750, replacing a stale
// socket, mode 0660).
func New(cfg Config) (*Server, error) {
	if cfg.Ledger == nil || cfg.Trail == nil || cfg.Metrics == nil || cfg.Enforcer == nil {
		return nil, errors.New("ingest: ledger, trail, metrics and enforcer are required")
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = 0o660
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.DropThreshold == 0 {
		cfg.DropThreshold = 1000
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 4096
	}
	if cfg.MaxErrors == 0 {
		cfg.MaxErrors = 16
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o750); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if st, err := os.Lstat(cfg.Socket); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", cfg.Socket)
		}
		if c, err := net.Dial("unixpacket", cfg.Socket); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another agent", cfg.Socket)
		}
		os.Remove(cfg.Socket)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: cfg.Socket, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Socket, err)
	}
	if err := os.Chmod(cfg.Socket, cfg.SocketMode); err != nil {
		ln.Close()
		return nil, err
	}
	return &Server{cfg: cfg, ln: ln, conns: map[*conn]struct{}{}, quit: make(chan struct{})}, nil
}

// Serve accepts connections until Close.
func (s *Server) Serve() error {
	log := s.cfg.Log
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
			log.Error("accept", "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		cred, err := peercred(c)
		if err != nil {
			s.cfg.Metrics.IngestErrors.WithLabelValues("no_peercred").Inc()
			c.Close()
			continue
		}
		s.mu.Lock()
		if len(s.conns) >= s.cfg.MaxConns {
			s.mu.Unlock()
			s.cfg.Metrics.IngestErrors.WithLabelValues("too_many_connections").Inc()
			log.Warn("connection refused: too many", "pid", cred.Pid)
			c.Close()
			continue
		}
		cn := &conn{c: c, id: Identify(s.cfg.ProcRoot, int(cred.Pid), cred.Uid), handles: map[uint64]tracer.Handle{}}
		s.seen.Store(cn.id.PID, struct{}{})
		s.conns[cn] = struct{}{}
		s.mu.Unlock()
		s.cfg.Metrics.Connected.Inc()
		s.wg.Add(1)
		go s.handle(cn)
	}
}

func peercred(c *net.UnixConn) (*unix.Ucred, error) {
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

// Close stops accepting, closes connections and waits for their handlers.
func (s *Server) Close() {
	close(s.quit)
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Deny tells every interposer connected from pid to refuse new allocations.
func (s *Server) Deny(pid int) error {
	s.mu.Lock()
	var cs []*conn
	for c := range s.conns {
		if c.id.PID == pid {
			cs = append(cs, c)
		}
	}
	s.mu.Unlock()
	if len(cs) == 0 {
		return fmt.Errorf("pid %d has no interposer connection", pid)
	}
	for _, c := range cs {
		c.writeMu.Lock()
		_, err := c.c.Write(wire.Control(wire.CtlDeny))
		c.writeMu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// SeenPID reports whether pid ever had an interposer connection.
func (s *Server) SeenPID(pid int) bool {
	_, ok := s.seen.Load(pid)
	return ok
}

// Connected reports whether pid has an interposer connection.
func (s *Server) Connected(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.id.PID == pid {
			return true
		}
	}
	return false
}

type connRecord struct {
	Ev       string    `json:"ev"`
	Identity *Identity `json:"identity,omitempty"`
	PID      int       `json:"pid,omitempty"`
	Tenant   string    `json:"tenant,omitempty"`
	Claimed  string    `json:"claimed_tenant,omitempty"`
	Mode     string    `json:"mode,omitempty"`
	Verify   string    `json:"verify,omitempty"`
	Count    uint64    `json:"count,omitempty"`
	Open     int       `json:"open_buffers,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

func (s *Server) handle(c *conn) {
	defer s.wg.Done()
	log := s.cfg.Log.With("pid", c.id.PID, "tenant", c.id.Tenant)
	buf := make([]byte, wire.RecordSize*wire.MaxBatch+1)
	errs := 0
	for {
		n, err := c.c.Read(buf)
		if err != nil || n == 0 {
			break
		}
		recs, err := wire.Decode(buf[:n])
		if err != nil {
			errs++
			s.cfg.Metrics.IngestErrors.WithLabelValues("malformed").Inc()
			if errs <= 3 {
				log.Warn("malformed packet", "bytes", n, "error", err)
			}
			if errs >= s.cfg.MaxErrors {
				log.Warn("closing connection after repeated malformed packets")
				break
			}
			continue
		}
		for i := range recs {
			s.cfg.Metrics.Events.Inc()
			if err := s.record(c, &recs[i]); err != nil {
				log.Error("handling record", "type", recs[i].Type, "error", err)
			}
		}
	}
	c.c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.cfg.Metrics.Connected.Dec()
	// The process is gone (or gave up its connection): its remaining device
	// memory went back to the driver with it.
	for _, h := range c.handles {
		s.cfg.Ledger.Retire(h, "process exited with the buffer allocated")
	}
	s.cfg.Trail.Append(connRecord{Ev: "process_disconnected", PID: c.id.PID, Tenant: c.id.Tenant, Open: len(c.handles)})
}

func (s *Server) record(c *conn, r *wire.Record) error {
	led := s.cfg.Ledger
	switch r.Type {
	case wire.Hello:
		id := c.id
		mode := []string{"enforce", "observe", "off"}[min(int(r.Result), 2)]
		_, err := s.cfg.Trail.Append(connRecord{Ev: "process_connected", Identity: &id, Claimed: claim(r.Tenant, id.Tenant), Mode: mode, Verify: wire.VerifyName(r.Verify)})
		return err
	case wire.Drops:
		c.dropped += r.Count
		s.cfg.Metrics.Dropped.Add(float64(r.Count))
		if _, err := s.cfg.Trail.Append(connRecord{Ev: "interposer_drops", PID: c.id.PID, Tenant: c.id.Tenant, Count: r.Count}); err != nil {
			return err
		}
		if c.dropped >= s.cfg.DropThreshold && c.dropped-r.Count < s.cfg.DropThreshold {
			_, err := s.cfg.Enforcer.Handle(action.Violation{Kind: action.DroppedEvents, PID: c.id.PID, Tenant: c.id.Tenant, Detail: strconv.FormatUint(c.dropped, 10) + " events lost"})
			return err
		}
		return nil
	case wire.Alloc:
		if r.Flags&wire.FlagImporter != 0 {
			return nil // memory another process owns
		}
		if old, ok := c.handles[r.Ptr]; ok {
			led.Retire(old, "address reallocated before its free was reported")
		}
		h, err := led.RegisterRemote(c.tags(r), int64(r.Bytes), tracer.AllocOptions{})
		if err != nil {
			return err
		}
		c.handles[r.Ptr] = h
		return nil
	case wire.Free, wire.Quarantine:
		h, known := c.handles[r.Ptr]
		if r.Result == wire.ResPassthrough || !known {
			s.cfg.Metrics.Frees.WithLabelValues("passthrough").Inc()
			return nil
		}
		delete(c.handles, r.Ptr)
		if s.cfg.Correlator != nil {
			s.cfg.Correlator.Attested(c.id.PID, r.Ptr, time.Now())
		}
		verified := r.Flags&wire.FlagVerified != 0
		method := fmt.Sprintf("%s+%s", wire.FnName(r.Fn), wire.VerifyName(r.Verify))
		if err := led.Attest(h, tracer.Attestation{Bytes: int64(r.Bytes), Zeroed: int64(r.Zeroed), Verified: verified, Method: method, Seed: r.Seed, Duration: time.Duration(r.DurNanos)}); err != nil {
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
			_, err := s.cfg.Enforcer.Handle(action.Violation{Kind: action.QuarantinedBuffer, PID: c.id.PID, Tenant: c.id.Tenant, Detail: fmt.Sprintf("%s of %d bytes at %s", reason, r.Bytes, wire.FnName(r.Fn))})
			return err
		}
		if err := led.Free(h); err != nil {
			if errors.Is(err, tracer.ErrFreeWithoutSanitize) {
				s.cfg.Metrics.Frees.WithLabelValues("failed").Inc()
				_, aerr := s.cfg.Enforcer.Handle(action.Violation{Kind: action.FreeWithoutSanitize, PID: c.id.PID, Tenant: c.id.Tenant, Detail: fmt.Sprintf("%d of %d bytes verified zero at %s", r.Zeroed, r.Bytes, wire.FnName(r.Fn))})
				return aerr
			}
			return err
		}
		s.cfg.Metrics.Frees.WithLabelValues("ok").Inc()
		s.cfg.Metrics.ZeroizedBytes.Add(float64(r.Zeroed))
		return nil
	}
	return nil
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
