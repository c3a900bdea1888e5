package libkvhtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvhygiene/kvh/wire"
	"golang.org/x/sys/unix"
)

// Root is the repository root (this file's ../..).
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildOnce sync.Once
	buildErr  error
)

// Build runs `make interpose fakecuda` once per test binary. go test runs
// packages in parallel, and several build the same C targets: a lock file
// makes them take turns, so none links against a library another is writing.
func Build() error {
	buildOnce.Do(func() {
		if err := os.MkdirAll(filepath.Join(Root(), "build"), 0o755); err != nil {
			buildErr = err
			return
		}
		lock, err := os.OpenFile(filepath.Join(Root(), "build", ".make.lock"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			buildErr = err
			return
		}
		defer lock.Close()
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			buildErr = fmt.Errorf("locking the build: %w", err)
			return
		}
		defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
		cmd := exec.Command("make", "-s", "interpose", "fakecuda")
		cmd.Dir = Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("make interpose fakecuda: %v\n%s", err, out)
		}
	})
	return buildErr
}

// Lib is the libkvh.so under test: build/lib/libkvh.so, or $KVH_TEST_LIB
// when set (make cover points it at a twin built with gcov's --coverage).
func Lib() string {
	if p := os.Getenv("KVH_TEST_LIB"); p != "" {
		return p
	}
	return filepath.Join(Root(), "build", "lib", "libkvh.so")
}

// Paths of the other built artefacts.
func LibASan() string { return filepath.Join(Root(), "build", "lib", "libkvh-asan.so") }
func FakeDir() string { return filepath.Join(Root(), "build", "fakecuda") }
func Client(way string) string {
	return filepath.Join(FakeDir(), "client_"+way)
}

// Got is a record with the kernel's word on who sent it.
type Got struct {
	wire.Record
	PeerPID int32
	PeerUID uint32
}

// Listener is a stand-in agent: it accepts SOCK_SEQPACKET connections and
// keeps every record with the sender's SO_PEERCRED pid.
type Listener struct {
	Path  string
	ln    *net.UnixListener
	mu    sync.Mutex
	recs  []Got
	errs  int
	deny  bool // send a deny control message to every new connection
	mute  bool // accept but never read (an agent that stalls)
	greet func(n int, pid int32) [][]byte
	conns []*net.UnixConn
	limit int           // records a packet may carry (0: wire.MaxBatch); more is refused, as an older agent refuses it
	slow  time.Duration // a pause after each packet read (an agent that reads, but slowly)
	maxPk int           // the most records one packet carried
}

// Listen starts a Listener on a socket in dir.
func Listen(dir string) (*Listener, error) {
	l := &Listener{Path: filepath.Join(dir, "kvh.sock")}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: l.Path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	l.ln = ln
	go l.accept()
	return l, nil
}

func (l *Listener) accept() {
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			return
		}
		l.mu.Lock()
		n := len(l.conns)
		l.conns = append(l.conns, c)
		deny, mute, greet := l.deny, l.mute, l.greet
		l.mu.Unlock()
		var cred *unix.Ucred
		if rc, err := c.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		}
		if deny {
			c.Write(wire.Control(wire.CtlDeny))
		}
		if greet != nil {
			pid := int32(0)
			if cred != nil {
				pid = cred.Pid
			}
			for _, msg := range greet(n, pid) {
				c.Write(msg)
			}
		}
		if mute {
			continue
		}
		go l.read(c, cred)
	}
}

func (l *Listener) read(c *net.UnixConn, cred *unix.Ucred) {
	buf := make([]byte, wire.RecordSize*wire.MaxBatch+1)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		recs, err := wire.Decode(buf[:n])
		l.mu.Lock()
		l.maxPk = max(l.maxPk, n/wire.RecordSize)
		if l.limit > 0 && n/wire.RecordSize > l.limit {
			recs, err = nil, wire.ErrTooMany
		}
		if err != nil {
			l.errs++
		}
		slow := l.slow
		for _, r := range recs {
			g := Got{Record: r}
			if cred != nil {
				g.PeerPID, g.PeerUID = cred.Pid, cred.Uid
			}
			l.recs = append(l.recs, g)
		}
		l.mu.Unlock()
		time.Sleep(slow)
	}
}

// SetLimit makes the listener refuse packets of more than n records, as an
// agent from before the FLOOR's max_batch did above wire.BaseBatch.
func (l *Listener) SetLimit(n int) { l.mu.Lock(); l.limit = n; l.mu.Unlock() }

// SetSlow makes the listener pause d after each packet it reads.
func (l *Listener) SetSlow(d time.Duration) { l.mu.Lock(); l.slow = d; l.mu.Unlock() }

// MaxPacket is the most records one packet carried; Errs counts the
// packets refused (malformed, or over the limit).
func (l *Listener) MaxPacket() int { l.mu.Lock(); defer l.mu.Unlock(); return l.maxPk }
func (l *Listener) Errs() int      { l.mu.Lock(); defer l.mu.Unlock(); return l.errs }

// Broadcast writes msg to every connection accepted so far.
func (l *Listener) Broadcast(msg []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Write(msg)
	}
}

// SetDeny makes the listener deny allocations to every new connection.
func (l *Listener) SetDeny(v bool) { l.mu.Lock(); l.deny = v; l.mu.Unlock() }

// SetGreeting makes the listener send greet's control messages to each new
// connection: n counts connections from 0, pid is the peer's (SO_PEERCRED).
func (l *Listener) SetGreeting(greet func(n int, pid int32) [][]byte) {
	l.mu.Lock()
	l.greet = greet
	l.mu.Unlock()
}

// SetFloor makes the listener send a verify floor to every new connection.
func (l *Listener) SetFloor(verify uint8, doublePass bool, samples uint16) {
	msg := wire.Floor(verify, doublePass, samples)
	l.SetGreeting(func(int, int32) [][]byte { return [][]byte{msg} })
}

// SetMute makes the listener accept but never read (an agent that stalls).
func (l *Listener) SetMute(v bool) { l.mu.Lock(); l.mute = v; l.mu.Unlock() }

// Records returns what was received so far.
func (l *Listener) Records() []Got {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Got(nil), l.recs...)
}

// WaitFor polls until pred holds over the records, or d passes.
func (l *Listener) WaitFor(d time.Duration, pred func([]Got) bool) ([]Got, bool) {
	deadline := time.Now().Add(d)
	for {
		r := l.Records()
		if pred(r) {
			return r, true
		}
		if time.Now().After(deadline) {
			return r, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Close stops the listener.
func (l *Listener) Close() {
	l.ln.Close()
	l.mu.Lock()
	for _, c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
}

// Run is one client run.
type Run struct {
	Stdout, Stderr string
	PID            int
	Err            error
	Wall           time.Duration
}

// Value returns the integer after "KEY " in the client's output (-1 if absent).
func (r Run) Value(key string) int {
	for _, line := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == key {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

// Exec runs a client with env (preload, when set, goes into LD_PRELOAD).
func Exec(way string, preload string, env []string, args ...string) Run {
	return Start(way, preload, env, args...).Wait()
}

// ExecAs is Exec as another user (the caller must be root).
//
// The client, the fake libraries and the preload are copied into a fresh
// directory that uid can reach: the checkout may sit under a directory only
// root can enter (a CI clone in a 0700 temporary directory).
func ExecAs(uid, gid uint32, way string, preload string, env []string, args ...string) Run {
	dir, err := os.MkdirTemp("", "kvh-as-")
	if err != nil {
		return Run{Err: err}
	}
	defer os.RemoveAll(dir)
	copyTo := func(src, name string) string {
		dst := filepath.Join(dir, name)
		if b, rerr := os.ReadFile(src); rerr != nil {
			err = rerr
		} else if werr := os.WriteFile(dst, b, 0o755); werr != nil {
			err = werr
		}
		return dst
	}
	client := copyTo(Client(way), filepath.Base(Client(way)))
	for _, lib := range []string{"libcuda.so.1", "libcudart.so.12"} {
		copyTo(filepath.Join(FakeDir(), lib), lib)
	}
	over := []string{"LD_LIBRARY_PATH=" + dir}
	if preload != "" {
		over = append(over, "LD_PRELOAD="+copyTo(preload, filepath.Base(preload)))
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		return Run{Err: fmt.Errorf("copying the client for uid %d: %w", uid, err)}
	}
	p := command(way, preload, append(env, over...), args...) // later entries win
	p.cmd.Path, p.cmd.Args[0] = client, client
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	return p.start().Wait()
}

// Proc is a client started with Start.
type Proc struct {
	cmd      *exec.Cmd
	out, err bytes.Buffer
	began    time.Time
	startErr error
	done     chan error
}

// PID is the client's pid (0 if it did not start).
func (p *Proc) PID() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Start starts a client as Exec does and returns without waiting for it.
func Start(way string, preload string, env []string, args ...string) *Proc {
	return command(way, preload, env, args...).start()
}

func command(way string, preload string, env []string, args ...string) *Proc {
	p := &Proc{cmd: exec.Command(Client(way), args...), done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+FakeDir())
	if preload != "" {
		p.cmd.Env = append(p.cmd.Env, "LD_PRELOAD="+preload)
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.err
	p.cmd.WaitDelay = time.Second // a killed client's children may hold its output open
	return p
}

func (p *Proc) start() *Proc {
	p.began = time.Now()
	if p.startErr = p.cmd.Start(); p.startErr == nil {
		go func() { p.done <- p.cmd.Wait() }()
	}
	return p
}

// Wait waits for the client (two minutes at most: then it is killed).
func (p *Proc) Wait() Run {
	err := p.startErr
	if err == nil {
		select {
		case err = <-p.done:
		case <-time.After(2 * time.Minute):
			p.cmd.Process.Kill()
			<-p.done
			err = errors.New("client timed out (blocked?)")
		}
	}
	return Run{Stdout: p.out.String(), Stderr: p.err.String(), PID: p.PID(), Err: err, Wall: time.Since(p.began)}
}

// ASanPreload is the LD_PRELOAD value for the sanitizer build: the ASan
// runtime must come first.
func ASanPreload() (string, error) {
	out, err := exec.Command("gcc", "-print-file-name=libasan.so").Output()
	if err != nil {
		return "", err
	}
	rt := strings.TrimSpace(string(out))
	if !filepath.IsAbs(rt) {
		return "", fmt.Errorf("no ASan runtime (%s)", rt)
	}
	return rt + " " + LibASan(), nil
}

// CopyFakeDriver copies the fake libcuda.so.1 into dir: the same library at
// another path and inode, as a container image layer would hold it.
func CopyFakeDriver(dir string) error {
	b, err := os.ReadFile(filepath.Join(FakeDir(), "libcuda.so.1"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "libcuda.so.1"), b, 0o755)
}

// StartOnCopiedDriver copies the fake driver into dir and starts the "deny"
// client on that copy (no LD_PRELOAD): a process that keeps allocating and
// freeing for about five seconds through a library at another inode. The
// caller kills and waits for it.
func StartOnCopiedDriver(dir string) (*exec.Cmd, error) {
	if err := CopyFakeDriver(dir); err != nil {
		return nil, err
	}
	cmd := exec.Command(Client("deny"))
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir)
	return cmd, cmd.Start()
}
