package ingest_test

// Review of "ingest: read what a process sent even when it exited before its
// connection was set up": attacks by a process whose connections are set
// up only after it has exited (proc.Exited handles).

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/proc/proctest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

func init() {
	switch os.Getenv("KVH_EXITED_ATTACK") {
	case "burst":
		exitedBurst()
	case "stay":
		exitedStay()
	case "handoff":
		exitedHandoff()
	case "holder":
		exitedHolder()
	}
}

// exitedBurst opens KVH_N connections to KVH_SOCK; on each it sends a HELLO
// (with a sealed counters page when KVH_PAGE=1, as libkvh does on every
// connection it opens) and KVH_K allocations; it reads nothing unless
// KVH_WAIT=1 (then it waits for each connection's floor: the agent set it
// up while the process was alive). It prints its pid and exits.
func exitedBurst() {
	n, _ := strconv.Atoi(os.Getenv("KVH_N"))
	k, _ := strconv.Atoi(os.Getenv("KVH_K"))
	page := -1
	if os.Getenv("KVH_PAGE") == "1" {
		fd, err := unix.MemfdCreate("kvh-counters", unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		dropped, _ := strconv.ParseUint(os.Getenv("KVH_DROPPED"), 10, 64) // a forged count (0 unless set)
		unix.Pwrite(fd, wire.Counters{Emitted: uint64(n * k), Dropped: dropped}.Encode(), 0)
		unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
		page = fd
	}
	seq := uint64(0)
	var conns []*net.UnixConn
	for i := 0; i < n; i++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_SOCK"), Net: "unixpacket"})
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		hello := wire.Record{Type: wire.Hello, PID: uint32(os.Getpid())}.Encode()
		var oob []byte
		if page >= 0 {
			oob = unix.UnixRights(page)
		}
		if _, _, err := c.WriteMsgUnix(hello, oob, nil); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		for j := 0; j < k; j++ {
			seq++
			r := wire.Record{Type: wire.Alloc, Seq: seq, Ptr: uint64(0x100000 + (i*k+j)*0x1000), Bytes: 1 << 20}
			if _, err := c.Write(r.Encode()); err != nil {
				fmt.Println("ERR", err)
				os.Exit(1)
			}
		}
		conns = append(conns, c)
	}
	if os.Getenv("KVH_WAIT") == "1" {
		for _, c := range conns {
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(buf); err != nil {
				fmt.Println("ERR floor", err)
				os.Exit(1)
			}
		}
		time.Sleep(300 * time.Millisecond) // every record read while it lives
	}
	fmt.Println("PID", os.Getpid())
	os.Exit(0)
}

// exitedStay is an ordinary serving process: it connects, says hello and
// lives on.
func exitedStay() {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_SOCK"), Net: "unixpacket"})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	c.Write(wire.Record{Type: wire.Hello, PID: uint32(os.Getpid())}.Encode())
	fmt.Println("CONNECTED")
	time.Sleep(60 * time.Second)
	os.Exit(0)
}

// runBurst runs the exitedBurst role to its exit and returns its pid.
func runBurst(t *testing.T, sock string, env ...string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), "KVH_EXITED_ATTACK=burst", "KVH_SOCK="+sock), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("burst: %v %s", err, out)
	}
	pid := 0
	for _, l := range strings.Split(string(out), "\n") {
		fmt.Sscanf(l, "PID %d", &pid)
	}
	if pid == 0 {
		t.Fatalf("burst said %q", out)
	}
	return pid
}

func waitHygiene(t *testing.T, m *ingest.Metrics, want float64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if testutil.ToFloat64(m.Hygiene) >= want {
			return
		}
	}
	t.Fatalf("%v of %v records read", testutil.ToFloat64(m.Hygiene), want)
}

// Per-process caps (max_live_buffers, the connection cap, max_event_rate)
// are not asserted here for a process that exited before its connections
// were set up: each of its connections is read only for what it had already
// queued (readQueued) and then closed, so the agent holds at most a socket
// buffer's worth of it at a time, and nothing more can come from it. Its
// connections share one process entry while they overlap and one account
// (TestAttackExitedProcessAccountSplit).

// Evidence double counted: libkvh sends its counters page with the HELLO of
// every connection it opens (a reconnect). A process whose two connections
// are set up after it exited has two process entries, each with the page:
// two process_account records for one process, each with emitted = all it
// emitted and received = one connection's, so each reports the other's
// records as lost. Alive at setup (the control), one account, nothing lost.
func TestAttackExitedProcessAccountSplit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		alive bool
	}{{"alive_at_setup", true}, {"exited_before_setup", false}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newDeferredHarness(t, policy.Default(), ingest.Config{})
			if tc.alive {
				h.start()
				runBurst(t, h.sock, "KVH_N=2", "KVH_K=3", "KVH_PAGE=1", "KVH_WAIT=1")
			} else {
				runBurst(t, h.sock, "KVH_N=2", "KVH_K=3", "KVH_PAGE=1")
				h.start()
			}
			waitHygiene(t, h.m, 6)
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && testutil.ToFloat64(h.m.Accounts) < 1; time.Sleep(20 * time.Millisecond) {
			}
			time.Sleep(1500 * time.Millisecond) // past exitWait: every account that will close has
			accts, lost := testutil.ToFloat64(h.m.Accounts), testutil.ToFloat64(h.m.Lost)
			if accts != 1 || lost != 0 {
				t.Fatalf("one process that emitted 6 records, all received: %v process accounts, %v events counted lost", accts, lost)
			}
		})
	}
}

// Attack on an innocent process: Peers is keyed by pid, one handle per pid.
// A process A opens connections, reports and exits; its pid is reused by an
// ordinary serving process P, which connects. When P's connection is set
// up before A's (the setups run on goroutines, the newest first), A's
// Exited handle replaces P's entry, and A's disconnect deletes it: P, still
// connected, is no longer Connected and Process(pid) is nil. In the agent,
// watchGPU then reports P, which uses a GPU through its interposer, as an
// uncovered_process, and the enforcer acts on it (it started before the
// violation).
func TestAttackExitedPeerUnregistersPIDReuser(t *testing.T) {
	proctest.NeedRoot(t)
	h := newDeferredHarness(t, policy.Default(), ingest.Config{MaxConnsPerUID: 64})
	pid := runBurst(t, h.sock, "KVH_N=7", "KVH_K=1")
	proctest.StartAt(t, pid, func() *exec.Cmd {
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), "KVH_EXITED_ATTACK=stay", "KVH_SOCK="+h.sock)
		return c
	})
	time.Sleep(500 * time.Millisecond) // its connection is queued behind A's
	h.start()
	waitHygiene(t, h.m, 7)
	time.Sleep(500 * time.Millisecond)
	if n := testutil.ToFloat64(h.m.Connected); n != 1 {
		t.Fatalf("%v connections open, want the reuser's one", n)
	}
	if !h.peers.Connected(pid) || h.peers.Process(pid) == nil {
		t.Fatalf("pid %d (reused by a process whose connection is open: the server's connected gauge is 1) is not Connected after the exited peer's connections ended", pid)
	}
	if hd := h.peers.Process(pid); hd.IsExited() {
		t.Fatalf("pid %d's live process is represented by the exited peer's handle", pid)
	}
}

// exitedHandoff connects and says hello (and, with KVH_WAIT=1, waits for the
// floor: set up while it is alive), hands the connection to a child that
// lives on (exitedHolder), prints both pids and exits.
func exitedHandoff() {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_SOCK"), Net: "unixpacket"})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	c.Write(wire.Record{Type: wire.Hello, PID: uint32(os.Getpid())}.Encode())
	if os.Getenv("KVH_WAIT") == "1" {
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			fmt.Println("ERR floor", err)
			os.Exit(1)
		}
	}
	f, _ := c.File()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KVH_EXITED_ATTACK=holder")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("PARENT", os.Getpid())
	fmt.Println("CHILD", cmd.Process.Pid)
	os.Exit(0)
}

// exitedHolder is the process that serves on: after a second it reports,
// on the connection it inherited, a buffer it failed to zeroize, and lives
// on.
func exitedHolder() {
	time.Sleep(time.Second)
	c, err := net.FileConn(os.NewFile(3, "conn"))
	if err != nil {
		os.Exit(1)
	}
	c.Write(wire.Record{Type: wire.Alloc, Seq: 1, Ptr: 0x7000000, Bytes: 1 << 30}.Encode())
	c.Write(wire.Record{Type: wire.Quarantine, Seq: 2, Ptr: 0x7000000, Bytes: 1 << 30, Result: wire.ResZeroizeFailed}.Encode())
	time.Sleep(30 * time.Second)
	os.Exit(0)
}

// podAll puts every process in one pod, tenant team-a (the orchestrator's
// word, as the NRI plugin gives it).
type podAll struct{}

func (podAll) PodOf(containerID, cgroup string) (ingest.Pod, bool) {
	return ingest.Pod{UID: "11111111-2222-3333-4444-555555555555", Namespace: "team-a", Name: "p", Tenant: "team-a", TenantSource: "namespace"}, true
}

// Attack: a process in a pod connects, hands its connection to a child that
// serves on, and exits before the agent sets the connection up. Read for as
// long as the child kept it, everything the child reported would land under
// tenant "uid:<uid>" (tenant_source exited), out of reach of its pod's
// policy and of any action. An exited peer's connection is read only until
// its queue is empty (readQueued) and then closed: the child's
// report a second later is never charged to anyone but its pod (it must
// reconnect, and is then identified as itself). Set up while the parent was
// alive (the control), the same child's report is charged to its pod.
func TestAttackExitedHandoffEscapesPodTenant(t *testing.T) {
	for _, tc := range []struct {
		name  string
		alive bool
	}{{"alive_at_setup", true}, {"exited_before_setup", false}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newDeferredHarness(t, policy.Default(), ingest.Config{Pods: podAll{}})
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "KVH_EXITED_ATTACK=handoff", "KVH_SOCK="+h.sock)
			if tc.alive {
				h.start()
				cmd.Env = append(cmd.Env, "KVH_WAIT=1")
			}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("handoff: %v %s", err, out)
			}
			var parent, child int
			for _, l := range strings.Split(string(out), "\n") {
				fmt.Sscanf(l, "PARENT %d", &parent)
				fmt.Sscanf(l, "CHILD %d", &child)
			}
			if p, err := os.FindProcess(child); err == nil && child != 0 {
				defer func() { p.Kill(); p.Wait() }()
			}
			if !tc.alive {
				h.start()
			}
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				for _, v := range h.sink.all() {
					if v.Kind == violation.QuarantinedBuffer {
						if v.Tenant != "team-a" {
							t.Fatalf("the quarantine that live pid %d (pod team-a) reported was charged to tenant %q (process %v): %+v", child, v.Tenant, v.Process, v)
						}
						return
					}
				}
			}
			if tc.alive {
				t.Fatalf("no quarantined_buffer violation: %+v", h.sink.all())
			}
		})
	}
}
