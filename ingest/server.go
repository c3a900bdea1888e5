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
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// Trail records the server's own events (connections, drops). *forensic.Log
// satisfies it.
type Trail interface {
	Append(body any) (uint64, error)
}

// Config wires a Server.
type Config struct {
	Ledger        *tracer.Ledger // required
	Trail         Trail          // required
	Violations    violation.Sink // required
	Peers         *Peers         // required: filled with every connection
	Metrics       *Metrics       // required
	Log           hclog.Logger
	ProcRoot      string // default /proc
	DropThreshold uint64 // dropped events per process before it is a violation (default 1000)
	MaxConns      int    // default 4096
	MaxErrors     int    // malformed packets before a connection is closed (default 16)
	// WriteTimeout bounds a write to a client (a deny); default 1s.
	WriteTimeout time.Duration
	// Attested, when set, is told of every attested free (the witness
	// correlator joins them).
	Attested func(pid int, ptr uint64, at time.Time)
}

// Server accepts interposer connections.
type Server struct {
	cfg   Config
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
}

// Listen binds the interposer socket: it creates its directory 0750,
// replaces a stale socket (never a live one, nor anything that is not a
// socket) and sets its mode (default 0660).
func Listen(path string, mode os.FileMode) (*net.UnixListener, error) {
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
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// New returns a Server that will accept on ln (from Listen).
func New(ln *net.UnixListener, cfg Config) (*Server, error) {
	if ln == nil || cfg.Ledger == nil || cfg.Trail == nil || cfg.Metrics == nil || cfg.Violations == nil || cfg.Peers == nil {
		return nil, errors.New("ingest: listener, ledger, trail, violations, peers and metrics are required")
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
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
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
		cn := &conn{c: c, id: Identify(s.cfg.ProcRoot, int(cred.Pid), cred.Uid), handles: map[uint64]tracer.Handle{}}
		s.mu.Lock()
		if len(s.conns) >= s.cfg.MaxConns {
			s.mu.Unlock()
			s.cfg.Metrics.IngestErrors.WithLabelValues("too_many_connections").Inc()
			log.Warn("connection refused: too many", "pid", cred.Pid)
			c.Close()
			continue
		}
		s.conns[cn] = struct{}{}
		s.mu.Unlock()
		s.cfg.Peers.add(cn.id.PID)
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
// Each write has a deadline and happens outside the server's lock: a client
// that never reads delays Deny by WriteTimeout at most, and nothing else.
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
	msg := wire.Control(wire.CtlDeny)
	for _, c := range cs {
		// One SOCK_SEQPACKET write is one whole packet: concurrent writers
		// cannot interleave, so no per-connection lock is needed.
		c.c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := c.c.Write(msg); err != nil {
			return fmt.Errorf("deny to pid %d: %w", pid, err)
		}
	}
	return nil
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
	s.cfg.Peers.remove(c.id.PID)
	s.cfg.Metrics.Connected.Dec()
	// The process is gone (or gave up its connection): its remaining device
	// memory went back to the driver with it.
	for _, h := range c.handles {
		if err := s.cfg.Ledger.Retire(h, "process exited with the buffer allocated"); err != nil {
			log.Error("retiring buffer", "handle", h, "error", err)
		}
	}
	if _, err := s.cfg.Trail.Append(trailevent.ProcessDisconnected{Ev: trailevent.EvProcessDisconnected, PID: c.id.PID, Tenant: c.id.Tenant, Open: len(c.handles)}); err != nil {
		log.Error("recording disconnect", "error", err)
	}
}

func (s *Server) violation(c *conn, k violation.Kind, detail string) {
	s.cfg.Violations.Emit(violation.Violation{Kind: k, PID: c.id.PID, Tenant: c.id.Tenant, Detail: detail, Source: "ingest"})
}

func (s *Server) record(c *conn, r *wire.Record) error {
	led := s.cfg.Ledger
	switch r.Type {
	case wire.Hello:
		mode := []string{"enforce", "observe", "off"}[min(int(r.Result), 2)]
		_, err := s.cfg.Trail.Append(trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: c.id, Claimed: claim(r.Tenant, c.id.Tenant), Mode: mode, Verify: wire.VerifyName(r.Verify)})
		return err
	case wire.Drops:
		c.dropped += r.Count
		s.cfg.Metrics.Dropped.Add(float64(r.Count))
		if _, err := s.cfg.Trail.Append(trailevent.InterposerDrops{Ev: trailevent.EvInterposerDrops, PID: c.id.PID, Tenant: c.id.Tenant, Count: r.Count}); err != nil {
			return err
		}
		if c.dropped >= s.cfg.DropThreshold && c.dropped-r.Count < s.cfg.DropThreshold {
			s.violation(c, violation.DroppedEvents, strconv.FormatUint(c.dropped, 10)+" events lost")
		}
		return nil
	case wire.Alloc:
		if r.Flags&wire.FlagImporter != 0 {
			return nil // memory another process owns
		}
		if old, ok := c.handles[r.Ptr]; ok {
			if err := led.Retire(old, "address reallocated before its free was reported"); err != nil {
				return err
			}
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
		if s.cfg.Attested != nil {
			s.cfg.Attested(c.id.PID, r.Ptr, time.Now())
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
			s.violation(c, violation.QuarantinedBuffer, fmt.Sprintf("%s of %d bytes at %s", reason, r.Bytes, wire.FnName(r.Fn)))
			return nil
		}
		if err := led.Free(h); err != nil {
			if errors.Is(err, tracer.ErrFreeWithoutSanitize) {
				s.cfg.Metrics.Frees.WithLabelValues("failed").Inc()
				s.violation(c, violation.FreeWithoutSanitize, fmt.Sprintf("%d of %d bytes verified zero at %s", r.Zeroed, r.Bytes, wire.FnName(r.Fn)))
				return nil
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
