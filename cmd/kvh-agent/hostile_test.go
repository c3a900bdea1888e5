package main

// Attacks by a tenant on the node, each against the real agent binary.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"github.com/kvhygiene/kvh/internal/proc/proctest"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/wire"
)

// The test binary doubles as a hostile client: KVH_TEST_HELPER selects the
// role before any test runs.
func init() {
	switch os.Getenv("KVH_TEST_HELPER") {
	case "forker":
		forker()
	case "child":
		forkedChild()
	}
}

// forker connects to the agent, says hello, hands its socket to a child it
// starts (KVH_TEST_SOCKET_FD=3), prints both pids and exits: the classic
// way to leave the agent acting on a pid that is about to be reused.
func forker() {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: os.Getenv("KVH_TEST_SOCKET"), Net: "unixpacket"})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	c.Write(wire.Record{Type: wire.Hello}.Encode())
	f, _ := c.File()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KVH_TEST_HELPER=child")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("PARENT", os.Getpid())
	fmt.Println("CHILD", cmd.Process.Pid)
	os.Exit(0)
}

// forkedChild waits for KVH_TEST_GO to exist, then sends a quarantine on
// the inherited socket (a violation charged to the connection's process),
// and, with KVH_TEST_DIAL set, also dials the agent itself and reports
// whether it is denied.
func forkedChild() {
	go_ := os.Getenv("KVH_TEST_GO")
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(go_); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	sock := os.NewFile(3, "sock")
	sock.Write(append(wire.Record{Type: wire.Alloc, Ptr: 0x9000, Bytes: 4096, MemKind: wire.MemDevice}.Encode(),
		wire.Record{Type: wire.Quarantine, Ptr: 0x9000, Bytes: 4096, Result: wire.ResVerifyFailed, Fn: 4}.Encode()...))
	time.Sleep(3 * time.Second)
	os.Exit(0)
}

func (a *testAgent) typedEvents(t *testing.T) []any {
	t.Helper()
	var out []any
	if err := trailevent.Read(filepath.Join(a.dir, "trail"), func(_ uint64, _ string, ev any) error {
		out = append(out, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func (a *testAgent) dial(t *testing.T) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: a.sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// 1. A violator forks a child holding its socket and exits; an unrelated
// process takes its pid; the child then misbehaves on the old connection.
// The agent must not kill the unrelated process.
func TestPIDReuseAttack(t *testing.T) {
	proctest.NeedRoot(t)
	a := newAgent(t, "--on-violation", "kill")
	goFile := filepath.Join(t.TempDir(), "go")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "KVH_TEST_HELPER=forker", "KVH_TEST_SOCKET="+a.sock, "KVH_TEST_GO="+goFile)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("forker: %v %s", err, out)
	}
	var parent, child int
	for _, l := range strings.Split(string(out), "\n") {
		fmt.Sscanf(l, "PARENT %d", &parent)
		fmt.Sscanf(l, "CHILD %d", &child)
	}
	if parent == 0 || child == 0 {
		t.Fatalf("forker said %q", out)
	}
	childProc, _ := os.FindProcess(child)
	defer childProc.Kill()
	// The parent has exited (and was reaped by exec): someone else gets its pid.
	victim := proctest.StartAt(t, parent, nil)
	os.WriteFile(goFile, nil, 0o600)
	if _, ok := a.waitEvent(10*time.Second, func(e map[string]any) bool {
		return e["ev"] == "action" && num(e["pid"]) == parent
	}); !ok {
		t.Fatalf("no action recorded for the violation\n%s", a.log)
	}
	time.Sleep(200 * time.Millisecond)
	if err := victim.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the agent killed pid %d, which an unrelated process had reused\n%s", parent, a.log)
	}
	for _, ev := range a.typedEvents(t) {
		if act, ok := ev.(*trailevent.Action); ok && act.PID == parent && !strings.Contains(act.Result, "gone") {
			t.Fatalf("action %+v: want the process reported gone", act)
		}
	}
}

// 2. A denied process's children are denied when they connect.
func TestDenyInheritedByChildren(t *testing.T) {
	a := newAgent(t, "--on-violation", "deny")
	// The test process is the parent: it violates and is denied.
	p := a.dial(t)
	p.Write(append(wire.Record{Type: wire.Alloc, Ptr: 0x1000, Bytes: 4096}.Encode(),
		wire.Record{Type: wire.Quarantine, Ptr: 0x1000, Bytes: 4096, Result: wire.ResVerifyFailed, Fn: 4}.Encode()...))
	p.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	if n, err := p.Read(buf); err != nil || n != wire.ControlSize {
		t.Fatalf("parent not denied: %d %v\n%s", n, err, a.log)
	}
	// Its child connects on its own (libkvh reconnects after fork or exec).
	run := a.client("driver", "CLIENT_LINGER_MS=1000")
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "action" && num(e["pid"]) == run.PID && strings.Contains(fmt.Sprint(e["reason"]), "inherited")
	}); !ok {
		t.Fatalf("the child of a denied process was not denied: %v\n%s", a.events(), a.log)
	}
}

// 3. A process's own KVH_TENANT does not choose its tenant: it is recorded
// as a claim.
func TestTenantClaimIsNotIdentity(t *testing.T) {
	a := newAgent(t)
	run := a.client("driver", "KVH_TENANT=someone-else")
	if run.Err != nil {
		t.Fatal(run.Err)
	}
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "process_connected" })
	if !ok {
		t.Fatal("no process_connected")
	}
	id, _ := ev["identity"].(map[string]any)
	if id["tenant"] == "someone-else" || id["claimed_tenant"] != "someone-else" || id["tenant_source"] != "uid" {
		t.Fatalf("a process chose its own tenant: %v", id)
	}
}

// 4. One process holding thousands of connections neither locks out other
// tenants nor goes unreported.
func TestConnectionFlood(t *testing.T) {
	a := newAgent(t)
	var flood []*net.UnixConn
	for i := 0; i < 4096; i++ {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: a.sock, Net: "unixpacket"})
		if err != nil {
			break // the backlog is full: the flood is being refused
		}
		flood = append(flood, c)
	}
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	// Another tenant, started while the flood is still being refused: it
	// does its work at once and, as a serving process does, lives on.
	// libkvh keeps its records and retries its connection every 200 ms
	// while it lives, so it gets in once the refusals have drained the
	// backlog (the agent refuses a process at its cap on the accept loop).
	run := a.client("driver", "CLIENT_LINGER_MS=0", "CLIENT_HOLD_MS=4000")
	if run.Err != nil {
		t.Fatal(run.Err)
	}
	if _, ok := a.waitEvent(10*time.Second, func(e map[string]any) bool {
		id, _ := e["identity"].(map[string]any)
		return e["ev"] == "process_connected" && num(id["pid"]) == run.PID
	}); !ok {
		t.Fatalf("another tenant was locked out by a connection flood\n%s", a.log)
	}
	if _, ok := a.waitEvent(10*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "connection_limit" && num(e["pid"]) == os.Getpid()
	}); !ok {
		t.Fatal("the flooding process was not reported")
	}
	if m, ok := a.waitMetrics("kvh_connected_processes 8"); !ok {
		t.Fatalf("connections held beyond the per-process cap:\n%s", grepMetrics(m))
	}
}

func rssMiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return kb / 1024
		}
	}
	return -1
}

// 5. An allocation flood (never freed) is capped, reported, and summarised
// exactly: every allocation is either in the ledger or in a flood_summary.
func TestAllocationFlood(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("max_live_buffers: 2000\nmax_event_rate: 20000\n"), 0o600)
	a := newAgent(t, "--policy", pol)
	before := rssMiB(a.cmd.Process.Pid)
	c := a.dial(t)
	const n = 100000
	batch := make([]byte, 0, wire.RecordSize*wire.MaxBatch)
	for i := 0; i < n; i++ {
		batch = append(batch, wire.Record{Type: wire.Alloc, Ptr: uint64(0x10000 + i*4096), Bytes: 4096, MemKind: wire.MemDevice}.Encode()...)
		if len(batch) == cap(batch) || i == n-1 {
			if _, err := c.Write(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	c.Close()
	if _, ok := a.waitEvent(20*time.Second, func(e map[string]any) bool { return e["ev"] == "process_disconnected" && num(e["pid"]) == os.Getpid() }); !ok {
		t.Fatal("flood not drained")
	}
	after := rssMiB(a.cmd.Process.Pid)
	a.stop()
	var ingested, summarised, summaries uint64
	kinds := map[string]bool{}
	for _, ev := range a.typedEvents(t) {
		switch ev := ev.(type) {
		case *trailevent.Buffer:
			if ev.Ev == trailevent.EvAllocate && ev.PID == os.Getpid() {
				ingested++
			}
		case *trailevent.FloodSummary:
			summaries++
			summarised += ev.Allocs
			if ev.Events != ev.Allocs || ev.AllocBytes != ev.Allocs*4096 || ev.ToNS < ev.FromNS || ev.OverRate+ev.OverLive != ev.Events {
				t.Errorf("flood summary does not add up: %+v", ev)
			}
		case *trailevent.Violation:
			kinds[ev.Kind] = true
		}
	}
	if ingested+summarised != n {
		t.Fatalf("%d allocations ingested + %d summarised != %d sent: events lost silently", ingested, summarised, n)
	}
	if ingested > 2000 || !kinds["live_buffer_limit"] && !kinds["event_rate_limit"] {
		t.Fatalf("caps not applied: %d ingested, violations %v", ingested, kinds)
	}
	// The trail grows by one summary a second at most, not one a record.
	if summaries > 20 {
		t.Fatalf("%d flood_summary records for a flood of a few seconds", summaries)
	}
	t.Logf("%d flood_summary records; agent RSS %d MiB before, %d MiB after %d allocations (%d ingested, %d summarised)", summaries, before, after, n, ingested, summarised)
	if after > 256 {
		t.Fatalf("agent RSS %d MiB after an allocation flood", after)
	}
}

// 6. A client that never reads cannot stall the agent: each of its
// connections is told deny once (a deny is not lifted), so no write to it
// can fill its buffer and block the enforcer, however many violations it
// provokes.
func TestClientThatNeverReads(t *testing.T) {
	a := newAgent(t, "--on-violation", "deny")
	c := a.dial(t)
	batch := []byte{}
	const n = 2000
	for i := 0; i < n; i++ { // each quarantine is a violation, each a deny
		p := uint64(0x100000 + i*4096)
		batch = append(batch, wire.Record{Type: wire.Alloc, Ptr: p, Bytes: 64}.Encode()...)
		batch = append(batch, wire.Record{Type: wire.Quarantine, Ptr: p, Bytes: 64, Result: wire.ResVerifyFailed, Fn: 4}.Encode()...)
		if len(batch) >= wire.RecordSize*wire.MaxBatch || i == n-1 {
			if _, err := c.Write(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	// Every violation is acted on or, past the process's share of the
	// violation queue, counted as overflow; no deny fails or times out.
	deadline := time.Now().Add(60 * time.Second)
	for {
		acts, failed, over := 0, 0, 0
		for _, e := range a.events() {
			if e["ev"] == "action" && num(e["pid"]) == os.Getpid() {
				acts++
				if strings.HasPrefix(fmt.Sprint(e["result"]), "error") {
					failed++
				}
			}
			if e["ev"] == "violations_overflow" && e["kind"] == "quarantined_buffer" {
				over += num(e["count"])
			}
		}
		if failed > 0 {
			t.Fatalf("%d denies failed or timed out: a client that never reads stalled the enforcer\n%s", failed, a.log)
		}
		if acts+over == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d violations acted on and %d counted as overflow in 60s", acts, n, over)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The client's socket holds the floor and one deny, nothing more.
	msgs := 0
	buf := make([]byte, 64)
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			break
		}
		msgs++
	}
	if msgs != 2 {
		t.Fatalf("the client was sent %d messages, want the floor and one deny", msgs)
	}
	// The agent still serves others (run through sh, so the client is not
	// a child of the denied test process and does not inherit its deny).
	c2 := exec.Command("sh", "-c", `LD_PRELOAD="$KVHLIB" "$0"; true`, libkvhtest.Client("driver"))
	c2.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libkvhtest.FakeDir(), "KVHLIB="+libkvhtest.Lib(), "KVH_SOCKET="+a.sock, "CLIENT_LINGER_MS=300")
	if out, err := c2.CombinedOutput(); err != nil || !strings.Contains(string(out), "RESIDUE 0") {
		t.Fatalf("another tenant after a slow reader: %v %s", err, out)
	}
	if code, _ := a.get("/healthz"); code != 200 {
		t.Fatal("agent unhealthy")
	}
}

// 7. Absurd values are refused as malformed and counted, never fed into
// histograms or totals.
func TestAbsurdValues(t *testing.T) {
	a := newAgent(t)
	c := a.dial(t)
	for _, r := range []wire.Record{
		{Type: wire.Alloc, Ptr: 0x1000, Bytes: ^uint64(4095)}, // -4096 as uint64
		{Type: wire.Drops, Count: ^uint64(0)},
		{Type: wire.Alloc, Ptr: 0x2000, Bytes: 4096},
		{Type: wire.Free, Ptr: 0x2000, Bytes: 4096, Zeroed: 4096, Flags: wire.FlagVerified, DurNanos: 1 << 63},
	} {
		c.Write(r.Encode())
	}
	if m, ok := a.waitMetrics(`kvh_ingest_errors_total{reason="absurd_value"} 3`); !ok {
		t.Fatalf("absurd values not refused:\n%s", grepMetrics(m))
	}
	m, _ := a.waitMetrics()
	for _, want := range []string{"kvh_interposer_dropped_events_total 0", "kvh_ledger_sanitize_duration_seconds_sum 0"} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("an absurd value reached a total: want %q in\n%s", want, grepMetrics(m))
		}
	}
}

// 13. The socket's group and mode are the operator's to set, so non-root
// serving processes can reach the agent.
func TestSocketGroupAndMode(t *testing.T) {
	a := newAgent(t, "--socket-group", "65534", "--socket-mode", "0660")
	st, err := os.Stat(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 && sys.Gid != 65534 || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket gid %d mode %v", sys.Gid, st.Mode().Perm())
	}
	out, err := exec.Command(agentBin, "--socket-mode", "0007").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--socket-mode") {
		t.Fatalf("a socket mode the agent cannot use was accepted: %s", out)
	}
}

// 12. The full effective policy is recorded at start, tenant overrides
// included, and a start that fails writes no records.
func TestPolicyRecordAndFailedStart(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("tenants:\n  acme: { coverage_threshold: 100, on_violation: kill }\n"), 0o600)
	a := newAgent(t, "--policy", pol)
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "policy" && e["reason"] == "start" })
	if !ok {
		t.Fatal("no policy record")
	}
	b, _ := json.Marshal(ev["policy"])
	if !strings.Contains(string(b), `"acme":{"coverage_threshold":100`) || !strings.Contains(string(b), `"max_live_buffers":65536`) {
		t.Fatalf("policy record lacks keys: %s", b)
	}
	// A start that fails (its HTTP address is taken) fails before it opens
	// the trail: no trail is created, no record written.
	fresh := filepath.Join(t.TempDir(), "trail")
	out, err := exec.Command(agentBin, "--socket", filepath.Join(t.TempDir(), "s.sock"), "--listen", a.addr, "--trail-dir", fresh,
		"--signing-key", filepath.Join(a.dir, forensic.SigningKeyFile), "--append-only=false").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--listen") {
		t.Fatalf("second agent: %v %s", err, out)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a failed start created or wrote the trail (%v):\n%s", err, out)
	}
}

// 11. The agent's verify floor reaches every interposer: one started with
// KVH_VERIFY=off verifies fully anyway, and one that does not (a modified
// interposer) is a violation whose unverified bytes count for nothing.
func TestVerifyFloor(t *testing.T) {
	a := newAgent(t, "--verify", "full", "--witness", "off") // the witness's view of drops is another test's
	// A churning client (about half a second of frees), started with
	// verification off: once the floor reaches it, it verifies fully, and
	// nothing it did is a violation (frees before the floor arrived are
	// judged by its own setting).
	run := libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"}, "3000", "100", "10")
	if run.Err != nil {
		t.Fatalf("%v %s", run.Err, run.Stderr)
	}
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "attest" && num(e["pid"]) == run.PID && e["verified"] == true && strings.HasSuffix(fmt.Sprint(e["method"]), "+full")
	}); !ok {
		t.Fatalf("an interposer started with KVH_VERIFY=off did not verify at the floor\n%s", a.log)
	}
	a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "process_disconnected" && num(e["pid"]) == run.PID })
	for _, e := range a.events() {
		if e["ev"] == "violation" && num(e["pid"]) == run.PID {
			t.Fatalf("an honest interposer raised to the floor was reported: %v", e)
		}
	}
	// A hostile interposer acknowledges a weaker setting, then frees unverified.
	c := a.dial(t)
	c.Write(wire.Record{Type: wire.FloorAck, Seq: 1, Verify: wire.VerifyOff}.Encode())
	time.Sleep(300 * time.Millisecond)
	c.Write(append(wire.Record{Type: wire.Alloc, Ptr: 0x5000, Bytes: 4096}.Encode(),
		wire.Record{Type: wire.Free, Seq: 3, Ptr: 0x5000, Bytes: 4096, Zeroed: 4096, Verify: wire.VerifyOff, Fn: 4}.Encode()...))
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "verify_below_floor" && num(e["pid"]) == os.Getpid()
	}); !ok {
		t.Fatalf("an interposer below the floor was not reported: %v", a.events())
	}
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "free_without_sanitize" && num(e["pid"]) == os.Getpid()
	}); !ok {
		t.Fatalf("unverified bytes were counted as coverage: %v", a.events())
	}
}

// 5b. Many processes cannot add up past the node's budget: the node-wide
// cap on live buffers holds across processes.
func TestNodeLiveBufferBudget(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("max_live_buffers: 1000\nmax_live_buffers_node: 1200\n"), 0o600)
	a := newAgent(t, "--policy", pol, "--witness", "off")
	c := a.dial(t)
	batch := []byte{}
	for i := 0; i < 1000; i++ { // this process holds 1000, within its own cap
		batch = append(batch, wire.Record{Type: wire.Alloc, Ptr: uint64(0x10000 + i*4096), Bytes: 4096}.Encode()...)
		if len(batch) >= wire.RecordSize*wire.MaxBatch {
			c.Write(batch)
			batch = batch[:0]
		}
	}
	c.Write(batch)
	if m, ok := a.waitMetrics("kvh_ledger_buffers{state=\"allocated\"} 1000"); !ok {
		t.Fatalf("first process's buffers not registered:\n%s", grepMetrics(m))
	}
	// Another process wants 800 live: only 200 fit in the node's budget.
	run := libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "CLIENT_LINGER_MS=300"}, "900", "800", "0")
	if run.Err != nil {
		t.Fatal(run.Err, run.Stderr)
	}
	ev, ok := a.waitEvent(10*time.Second, func(e map[string]any) bool {
		return e["ev"] == "violation" && e["kind"] == "live_buffer_limit" && num(e["pid"]) == run.PID
	})
	if !ok || !strings.Contains(fmt.Sprint(ev["detail"]), "max_live_buffers_node") {
		t.Fatalf("the node's budget was not enforced across processes: %v\n%s", ev, a.log)
	}
}

// A passthrough free (memory another owner still holds) closes its buffer
// in the ledger instead of leaving it open until the process exits.
func TestPassthroughFreeClosesTheBuffer(t *testing.T) {
	a := newAgent(t, "--witness", "off")
	c := a.dial(t)
	c.Write(append(wire.Record{Type: wire.Alloc, Ptr: 0x7000, Bytes: 4096}.Encode(),
		wire.Record{Type: wire.Free, Ptr: 0x7000, Bytes: 4096, Result: wire.ResPassthrough, Fn: 21}.Encode()...))
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
		return e["ev"] == "retire" && strings.Contains(fmt.Sprint(e["reason"]), "passthrough")
	}); !ok {
		t.Fatalf("a passthrough free left its buffer open: %v", a.events())
	}
}
