package ingest_test

// Attacks by a hostile tenant on the socket server, in process: a real
// server, trail and ledger, with violations collected instead of acted on.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/proc/proctest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// The test binary doubles as a hostile process: KVH_INGEST_ATTACK selects
// the role before any test runs.
func init() {
	switch os.Getenv("KVH_INGEST_ATTACK") {
	case "hold":
		attackHold()
	case "sleep":
		time.Sleep(30 * time.Second)
		os.Exit(0)
	case "victim":
		attackVictim()
	}
}

// attackHold opens KVH_N connections to KVH_SOCK, hands them to a child
// that keeps them open, prints both pids and exits: its pid is free for
// another process while its connections live on.
func attackHold() {
	n, _ := strconv.Atoi(os.Getenv("KVH_N"))
	var files []*os.File
	for i := 0; i < n; i++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_SOCK"), Net: "unixpacket"})
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil { // the floor: the agent has accepted it
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		f, _ := c.File()
		files = append(files, f)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KVH_INGEST_ATTACK=sleep")
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("PARENT", os.Getpid())
	fmt.Println("CHILD", cmd.Process.Pid)
	os.Exit(0)
}

// attackVictim is an ordinary process: it connects once and says whether
// the agent took it (it sends the floor first) or closed it.
func attackVictim() {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_SOCK"), Net: "unixpacket"})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		fmt.Println("REFUSED")
	} else {
		fmt.Println("ACCEPTED")
	}
	os.Exit(0)
}

// sink collects violations.
type sink struct {
	mu sync.Mutex
	vs []violation.Violation
}

func (s *sink) Emit(v violation.Violation) {
	s.mu.Lock()
	s.vs = append(s.vs, v)
	s.mu.Unlock()
}

func (s *sink) all() []violation.Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]violation.Violation(nil), s.vs...)
}

type harness struct {
	srv   *ingest.Server
	sock  string
	sink  *sink
	peers *ingest.Peers
	trail *forensic.Log
}

type deferredHarness struct {
	harness
	m     *ingest.Metrics
	start func()
}

// newDeferredHarness is newHarness whose server accepts only once start is
// called: connections made before wait in the listen backlog, as they do
// for an agent that is busy (or stopped).
func newDeferredHarness(t testing.TB, pol policy.Config, cfg ingest.Config) *deferredHarness {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := forensic.GenerateKeys(dir, "kvh-test"); err != nil {
		t.Fatal(err)
	}
	signer, err := forensic.LoadSigner(filepath.Join(dir, forensic.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	trail, err := forensic.Open(filepath.Join(dir, "trail"), forensic.Options{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	sk := &sink{}
	led, err := tracer.New(tracer.Options{Trail: trail, AsyncTrail: true, Policy: pol, Violations: sk})
	if err != nil {
		t.Fatal(err)
	}
	h := &deferredHarness{harness: harness{sock: filepath.Join(dir, "kvh.sock"), sink: sk, peers: ingest.NewPeers(), trail: trail}}
	ln, err := ingest.Listen(h.sock, 0o666, -1)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = ingest.NewMetrics(prometheus.NewRegistry())
	}
	h.m = cfg.Metrics
	cfg.Ledger, cfg.Trail, cfg.Violations, cfg.Peers, cfg.Policy = led, trail, sk, h.peers, led.Policy
	h.srv, err = ingest.New(ln, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.start = func() { go h.srv.Serve() }
	t.Cleanup(func() { h.srv.Close(); trail.Close() })
	return h
}

func newHarness(t testing.TB, pol policy.Config, cfg ingest.Config) *harness {
	t.Helper()
	h := newDeferredHarness(t, pol, cfg)
	h.start()
	return &h.harness
}

// Attack: the per-process connection cap was counted by pid. A process
// opens its 8 connections, hands them to a child and exits; the next
// process to get its pid (anyone's, any tenant's) is refused as "over its
// cap" and reported as a connection_limit violator, by its own pidfd, so
// the enforcer would deny, freeze or kill it.
func TestAttackPerProcessCapChargedToPIDReuser(t *testing.T) {
	proctest.NeedRoot(t)
	h := newHarness(t, policy.Default(), ingest.Config{MaxConnsPerProcess: 8})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KVH_INGEST_ATTACK=hold", "KVH_N=8", "KVH_SOCK="+h.sock)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("holder: %v %s", err, out)
	}
	var parent, child int
	for _, l := range strings.Split(string(out), "\n") {
		fmt.Sscanf(l, "PARENT %d", &parent)
		fmt.Sscanf(l, "CHILD %d", &child)
	}
	if parent == 0 || child == 0 {
		t.Fatalf("holder said %q", out)
	}
	if p, err := os.FindProcess(child); err == nil {
		defer p.Kill()
	}
	victim := proctest.StartAt(t, parent, func() *exec.Cmd {
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), "KVH_INGEST_ATTACK=victim", "KVH_SOCK="+h.sock)
		c.Stdout = &strings.Builder{}
		return c
	})
	victim.Wait()
	said := victim.Stdout.(*strings.Builder).String()
	for _, v := range h.sink.all() {
		if v.Kind == violation.ConnectionLimit && v.Process != nil && v.Process.PID == parent {
			t.Errorf("the process that reused pid %d was reported over its connection cap: %+v", parent, v)
		}
	}
	if !strings.Contains(said, "ACCEPTED") {
		t.Fatalf("the process that reused pid %d was refused: it said %q", parent, said)
	}
}

// Attack: every violation is a deny, and every deny was written again to
// every connection of the process. A process whose connections never read
// fills their buffers with a few hundred cheap violations; from then on
// each deny blocks the enforcer for WriteTimeout per connection (8 s with
// 8 connections and the defaults: past the 5 s action timeout), so one
// tenant stalls enforcement for every other.
func TestAttackRepeatedDenyStallsTheEnforcer(t *testing.T) {
	const wt = 200 * time.Millisecond
	h := newHarness(t, policy.Default(), ingest.Config{WriteTimeout: wt})
	for i := 0; i < 8; i++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.sock, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // never read
	}
	for i := 0; i < 200 && h.peers.Process(os.Getpid()) == nil; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	hd := h.peers.Process(os.Getpid())
	if hd == nil {
		t.Fatal("not connected")
	}
	var worst time.Duration
	for i := 0; i < 1000; i++ { // one deny per violation the process provokes
		start := time.Now()
		h.srv.Deny(hd)
		worst = max(worst, time.Since(start))
	}
	if worst >= wt {
		t.Fatalf("one deny blocked the enforcer for %v (write timeout %v)", worst, wt)
	}
}

// A forged acknowledgement with the largest seq, or a stream of them, must
// not exempt a connection's frees from the floor for ever.
func TestAttackFloorAckSeqMax(t *testing.T) {
	pol := policy.Default()
	pol.VerifyMode = "full"
	h := newHarness(t, pol, ingest.Config{})
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: h.sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(wire.Record{Type: wire.FloorAck, Seq: ^uint64(0), Verify: wire.VerifyFull}.Encode())
	time.Sleep(2500 * time.Millisecond) // past the grace after connecting
	c.Write(wire.Record{Type: wire.FloorAck, Seq: ^uint64(0), Verify: wire.VerifyFull}.Encode())
	c.Write(append(wire.Record{Type: wire.Alloc, Seq: 2, Ptr: 0x5000, Bytes: 4096}.Encode(),
		wire.Record{Type: wire.Free, Seq: 3, Ptr: 0x5000, Bytes: 4096, Zeroed: 4096, Verify: wire.VerifyOff, Fn: 4}.Encode()...))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, v := range h.sink.all() {
			if v.Kind == violation.VerifyBelowFloor {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("a forged acknowledgement exempted an unverified free: %+v", h.sink.all())
}
