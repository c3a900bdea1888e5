package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/wire"
)

var agentBin string

func TestMain(m *testing.M) {
	if err := libkvhtest.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, _ := os.MkdirTemp("", "kvh-agent-test")
	agentBin = filepath.Join(dir, "kvh-agent")
	build := []string{"build", "-race", "-o", agentBin}
	if cov := os.Getenv("KVH_COVERDIR"); cov != "" {
		build = append(build, coverFlags(cov)...)
	}
	if out, err := exec.Command("go", append(build, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kvh-agent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// coverFlags are the go build flags for an agent that counts toward make
// cover (KVH_COVERDIR set): coverage of every kvh package it links, written
// under cov on exit (GOCOVERDIR, which the agents inherit from this process),
// so what these end-to-end runs reach counts alongside the unit tests. An
// agent a test ends with SIGKILL writes nothing.
func coverFlags(cov string) []string {
	os.Setenv("GOCOVERDIR", cov)
	return []string{"-cover", "-coverpkg=github.com/kvhygiene/kvh/..."}
}

type testAgent struct {
	t     *testing.T
	dir   string
	sock  string
	cmd   *exec.Cmd
	log   *syncBuffer
	addr  string
	pub   string
	extra []string
	wrap  []string // a command the agent runs under (setpriv), or none
}

func newAgent(t *testing.T, extra ...string) *testAgent {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := forensic.GenerateKeys(dir, "kvh-test"); err != nil {
		t.Fatal(err)
	}
	a := &testAgent{t: t, dir: dir, sock: filepath.Join(dir, "run", "kvh.sock"), pub: filepath.Join(dir, forensic.VerificationKeyFile), extra: extra}
	a.start()
	t.Cleanup(func() { a.kill() })
	return a
}

var listenRe = regexp.MustCompile(`HTTP: listen=(\S+)`)

// syncBuffer is the agent's stderr, written by a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) WriteString(x string) {
	s.mu.Lock()
	s.b.WriteString(x)
	s.mu.Unlock()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (a *testAgent) start() {
	a.t.Helper()
	args := append([]string{"--socket", a.sock, "--listen", "127.0.0.1:0", "--trail-dir", filepath.Join(a.dir, "trail"),
		"--signing-key", filepath.Join(a.dir, forensic.SigningKeyFile), "--metrics-json", filepath.Join(a.dir, "metrics.json"),
		"--export-interval", "200ms", "--append-only=false", "--sweep-interval", "100ms"}, a.extra...)
	a.cmd = exec.Command(agentBin, args...)
	if len(a.wrap) > 0 {
		a.cmd = exec.Command(a.wrap[0], append(append(a.wrap[1:len(a.wrap):len(a.wrap)], agentBin), args...)...)
	}
	log := &syncBuffer{} // the reader goroutine writes to its own run's buffer: a restart must not race it
	a.log = log
	pr, pw := io.Pipe()
	a.cmd.Stderr = pw
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			log.WriteString(line + "\n")
			if m := listenRe.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case a.addr = <-found:
	case <-time.After(15 * time.Second):
		a.t.Fatalf("agent did not start:\n%s", a.log)
	}
	for i := 0; i < 100; i++ {
		if code, _ := a.get("/readyz"); code == 200 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.t.Fatal("agent never became ready")
}

func (a *testAgent) get(path string) (int, string) {
	resp, err := http.Get("http://" + a.addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *testAgent) stop() {
	a.t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			a.t.Fatalf("agent exit: %v\n%s", err, a.log)
		}
	case <-time.After(20 * time.Second):
		a.t.Fatal("agent did not stop on SIGTERM")
	}
}

func (a *testAgent) kill() {
	if a.cmd == nil || a.cmd.ProcessState != nil {
		return
	}
	if os.Getenv("KVH_COVERDIR") != "" {
		// Coverage counters are written only on a clean exit: ask first.
		a.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
			return
		case <-time.After(5 * time.Second):
			a.cmd.Process.Kill()
			<-done
			return
		}
	}
	a.cmd.Process.Kill()
	a.cmd.Wait()
}

func (a *testAgent) verify() *forensic.Report {
	a.t.Helper()
	v, err := forensic.LoadVerifier(a.pub)
	if err != nil {
		a.t.Fatal(err)
	}
	rep, err := forensic.Verify(filepath.Join(a.dir, "trail"), forensic.VerifyOptions{Verifier: v})
	if err != nil {
		a.t.Fatal(err)
	}
	return rep
}

// events returns the trail's event bodies. Every body must be one of the
// trail vocabulary's typed events (trailevent): one the agent writes without
// registering and documenting it fails the test.
func (a *testAgent) events() []map[string]any {
	var out []map[string]any
	forensic.Events(filepath.Join(a.dir, "trail"), func(seq uint64, body []byte) error {
		if _, _, err := trailevent.Decode(body); err != nil {
			a.t.Errorf("trail seq %d: %v: %s", seq, err, body)
		}
		var m map[string]any
		json.Unmarshal(body, &m)
		out = append(out, m)
		return nil
	})
	return out
}

func (a *testAgent) waitEvent(d time.Duration, pred func(map[string]any) bool) (map[string]any, bool) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, e := range a.events() {
			if pred(e) {
				return e, true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, false
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

func (a *testAgent) client(way string, env ...string) libkvhtest.Run {
	// Defaults first: for a duplicate key the last value wins, so env may override them.
	return libkvhtest.Exec(way, libkvhtest.Lib(), append([]string{"KVH_SOCKET=" + a.sock, "CLIENT_LINGER_MS=300"}, env...))
}

func TestAttestationsReachTheTrail(t *testing.T) {
	a := newAgent(t, "--trust-tenant-claims") // bare metal: no pod or container identity

	run := a.client("driver", "KVH_TENANT=acme")
	if run.Err != nil || run.Value("RESIDUE") != 0 {
		t.Fatalf("%v %s", run.Err, run.Stdout)
	}
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "free" && num(e["pid"]) == run.PID })
	if !ok {
		t.Fatalf("no free from pid %d in the trail", run.PID)
	}
	if ev["tenant"] != "acme" || num(ev["coverage_pct"]) != 100 {
		t.Fatalf("free record %v", ev)
	}
	if metrics, ok := a.waitMetrics(`kvh_frees_total{result="ok"} 2`); !ok {
		t.Fatalf("/metrics:\n%s", grepMetrics(metrics))
	}
	a.stop()
	rep := a.verify()
	if !rep.OK || rep.Open {
		t.Fatalf("trail after SIGTERM: %+v", rep.Problem)
	}
	var m map[string]any
	b, _ := os.ReadFile(filepath.Join(a.dir, "metrics.json"))
	if err := json.Unmarshal(b, &m); err != nil || num(m["freed_total"]) != 2 {
		t.Fatalf("metrics.json %s", b)
	}
}

// waitMetrics polls /metrics until it holds every wanted line.
func (a *testAgent) waitMetrics(want ...string) (string, bool) {
	var m string
	for i := 0; i < 100; i++ {
		_, m = a.get("/metrics")
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(m, w)
		}
		if ok {
			return m, true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return m, false
}

func grepMetrics(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "kvh_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A fault-injected client's buffer is quarantined and the configured action
// applied to it.
func TestActions(t *testing.T) {
	faulty := []string{"FAKECUDA_MEMSET_PARTIAL=100", "KVH_VERIFY=full", "KVH_TENANT=mallory"}
	t.Run("observe", func(t *testing.T) {
		a := newAgent(t, "--on-violation", "observe", "--trust-tenant-claims")
		run := a.client("driver", faulty...)
		if run.Err != nil || run.Value("REUSED") != 0 {
			t.Fatalf("%v %s", run.Err, run.Stdout)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
			return e["ev"] == "violation" && e["kind"] == "quarantined_buffer" && num(e["pid"]) == run.PID && e["tenant"] == "mallory"
		}); !ok {
			t.Fatalf("no violation recorded: %v\n%s", a.events(), a.log)
		}
		if m, ok := a.waitMetrics(`kvh_violations_total{kind="quarantined_buffer"} 1`, `kvh_actions_total{action="observe"} 1`); !ok {
			t.Fatalf("%s", grepMetrics(m))
		}
	})
	t.Run("deny", func(t *testing.T) {
		a := newAgent(t, "--on-violation", "deny")
		run := a.client("deny", faulty...)
		if run.Err != nil || !strings.Contains(run.Stdout, "DENIED") {
			t.Fatalf("not denied: %v %s\n%s", run.Err, run.Stdout, a.log)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
			return e["ev"] == "action" && e["action"] == "deny" && num(e["pid"]) == run.PID
		}); !ok {
			t.Fatal("no deny action recorded")
		}
	})
	t.Run("kill", func(t *testing.T) {
		a := newAgent(t, "--on-violation", "kill")
		run := a.client("deny", faulty...)
		ws, _ := run.Err.(*exec.ExitError)
		if ws == nil || ws.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("client not killed: %v %s", run.Err, run.Stdout)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool {
			return e["ev"] == "action" && e["action"] == "kill" && num(e["pid"]) == run.PID
		}); !ok {
			t.Fatal("no kill action recorded")
		}
	})
	t.Run("freeze", func(t *testing.T) {
		a := newAgent(t, "--on-violation", "freeze")
		cmd := exec.Command(libkvhtest.Client("deny"))
		cmd.Env = append(os.Environ(), append(faulty, "KVH_SOCKET="+a.sock, "LD_PRELOAD="+libkvhtest.Lib(), "LD_LIBRARY_PATH="+libkvhtest.FakeDir())...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		ev, ok := a.waitEvent(10*time.Second, func(e map[string]any) bool {
			return e["ev"] == "action" && e["action"] == "freeze" && num(e["pid"]) == cmd.Process.Pid
		})
		if !ok {
			t.Fatalf("no freeze action\n%s", a.log)
		}
		// The signal is delivered asynchronously: give the state a moment.
		var stat []byte
		for i := 0; i < 40; i++ {
			stat, _ = os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
			if f := strings.Fields(string(stat)); len(f) >= 3 && f[2] == "T" {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("process not stopped (%v): %s", ev["result"], stat)
	})
}

// Hostile clients: the agent survives, counts them, and attributes events to
// the kernel's identity, not the client's claims.
func TestHostileClients(t *testing.T) {
	a := newAgent(t)
	dial := func() *net.UnixConn {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: a.sock, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// garbage, truncated and oversized packets
	c := dial()
	c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	good := wire.Record{Type: wire.Alloc, Ptr: 0x1000, Bytes: 4096}.Encode()
	c.Write(good[:100])
	c.Write(bytes.Repeat(good, wire.MaxBatch+1))
	c.Close()
	// a flood of connections
	var flood []*net.UnixConn
	for i := 0; i < 200; i++ {
		flood = append(flood, dial())
	}
	for _, f := range flood {
		f.Close()
	}
	if m, ok := a.waitMetrics("kvh_connected_processes 0"); !ok { // the per-process cap must not refuse the next one
		t.Fatalf("flood connections not released:\n%s", grepMetrics(m))
	}
	// a client lying about its pid and tenant
	liar := dial()
	lie := wire.Record{Type: wire.Alloc, Ptr: 0x2000, Bytes: 4096, PID: 1, Tenant: "root-tenant"}
	free := wire.Record{Type: wire.Free, Ptr: 0x2000, Bytes: 4096, Zeroed: 4096, PID: 1, Tenant: "root-tenant", Flags: wire.FlagVerified, Fn: 4}
	liar.Write(append(lie.Encode(), free.Encode()...))
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "free" })
	liar.Close()
	if !ok {
		t.Fatalf("the liar's records were not handled\n%s", a.log)
	}
	if num(ev["pid"]) != os.Getpid() || ev["tenant"] == "root-tenant" || ev["claimed_tenant"] != "root-tenant" {
		t.Fatalf("identity taken from the claim: %v", ev)
	}
	if code, _ := a.get("/healthz"); code != 200 {
		t.Fatal("agent unhealthy after hostile clients")
	}
	if m, ok := a.waitMetrics(`kvh_ingest_errors_total{reason="malformed"}`); !ok {
		t.Fatalf("malformed packets not counted:\n%s", grepMetrics(m))
	}
	a.stop()
	if rep := a.verify(); !rep.OK {
		t.Fatal(rep.Problem)
	}
}

// SIGKILL of the agent under load, then a restart: the trail verifies and
// the restarted agent keeps going.
func TestAgentKilledUnderLoad(t *testing.T) {
	a := newAgent(t)
	done := make(chan libkvhtest.Run, 1)
	go func() { done <- a.client("stress", "KVH_TENANT=load") }()
	time.Sleep(300 * time.Millisecond)
	a.cmd.Process.Kill()
	a.cmd.Wait()
	run := <-done
	if run.Err != nil || run.Value("RESIDUE") != 0 {
		t.Fatalf("client under a dying agent: %v %s", run.Err, run.Stdout)
	}
	a.start()
	run2 := a.client("driver")
	if run2.Err != nil {
		t.Fatal(run2.Err)
	}
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "free" && num(e["pid"]) == run2.PID }); !ok {
		t.Fatal("restarted agent did not record")
	}
	a.stop()
	rep := a.verify()
	if !rep.OK {
		t.Fatalf("trail after SIGKILL and restart: %v", rep.Problem)
	}
	t.Logf("trail: %d records in %d segments; warnings %v", rep.Records, rep.Segments, rep.Warnings)
}

func TestBadConfigIsRefused(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]string{
		"log format":   {"--log-format", "xml"},
		"on-violation": {"--on-violation", "explode"},
		"missing key":  {"--signing-key", filepath.Join(dir, "nope"), "--trail-dir", dir, "--socket", filepath.Join(dir, "s")},
	}
	for name, args := range cases {
		out, err := exec.Command(agentBin, args...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		if len(out) == 0 || strings.Count(string(out), "\n") > 5 {
			t.Errorf("%s: unclear error:\n%s", name, out)
		}
	}
	cmd := exec.Command(agentBin, "--socket", filepath.Join(dir, "s"))
	cmd.Env = append(os.Environ(), "KV_DEFAULT_MAX_REUSE=lots")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), `KV_DEFAULT_MAX_REUSE="lots"`) {
		t.Errorf("bad env not named:\n%s", out)
	}
}

// SIGHUP reloads the policy and records the change; an invalid file is
// refused and the policy in force is kept.
func TestSIGHUPReloadsPolicy(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("coverage_threshold: 99.9\n"), 0o600)
	a := newAgent(t, "--policy", pol)
	os.WriteFile(pol, []byte("coverage_threshold: 95\non_violation: deny\n"), 0o600)
	a.cmd.Process.Signal(syscall.SIGHUP)
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "policy" && e["reason"] == "start" }); !ok {
		t.Fatalf("no policy record at start: %v", a.events())
	}
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "policy" && e["reason"] == "reload" })
	if !ok {
		t.Fatalf("no policy record on reload: %v\n%s", a.events(), a.log)
	}
	if p, _ := ev["policy"].(map[string]any); p["coverage_threshold"] != 95.0 || p["on_violation"] != "deny" || p["verify"] != "full" {
		t.Fatalf("the reload record does not hold the full effective policy: %v", ev)
	}
	if m, ok := a.waitMetrics("kvh_ledger_coverage_threshold_ratio 0.95"); !ok {
		t.Fatalf("%s", grepMetrics(m))
	}
	os.WriteFile(pol, []byte("coverage_threshold: lots\n"), 0o600)
	a.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(500 * time.Millisecond)
	if !strings.Contains(a.log.String(), "policy reload refused") {
		t.Fatalf("an invalid policy was not refused:\n%s", a.log)
	}
	if _, m := a.get("/metrics"); !strings.Contains(m, "kvh_ledger_coverage_threshold_ratio 0.95") {
		t.Fatal("the policy in force changed after a refused reload")
	}
	a.stop()
}

// With --policy-watch the agent reloads a policy mounted the way kubelet
// mounts a ConfigMap: the file is a symlink through ..data, and an update
// swaps ..data to a new directory. No signal is sent.
func TestPolicyWatchReloadsConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	write := func(gen, body string) {
		d := filepath.Join(dir, gen)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "policy.yaml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(gen, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..gen1", "coverage_threshold: 99.9\n")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.Symlink("..data/policy.yaml", pol); err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, "--policy", pol, "--policy-watch", "100ms")
	if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "policy" && e["reason"] == "start" }); !ok {
		t.Fatalf("no policy record at start: %v", a.events())
	}
	write("..gen2", "coverage_threshold: 95\n")
	ev, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "policy" && e["reason"] == "reload" })
	if !ok {
		t.Fatalf("the swapped ConfigMap was not reloaded: %v\n%s", a.events(), a.log)
	}
	if p, _ := ev["policy"].(map[string]any); p["coverage_threshold"] != 95.0 {
		t.Fatalf("reloaded the wrong policy: %v", ev)
	}
	// An invalid update is refused once, not every tick, and the policy in
	// force stays.
	write("..gen3", "coverage_threshold: lots\n")
	time.Sleep(600 * time.Millisecond)
	if n := strings.Count(a.log.String(), "policy reload refused"); n != 1 {
		t.Fatalf("an invalid policy was refused %d times, want once:\n%s", n, a.log)
	}
	if _, m := a.get("/metrics"); !strings.Contains(m, "kvh_ledger_coverage_threshold_ratio 0.95") {
		t.Fatal("the policy in force changed after a refused reload")
	}
	a.stop()
}

func TestPolicyWatchNeedsPolicy(t *testing.T) {
	if _, _, err := parseFlags([]string{"--policy-watch", "10s"}); err == nil || !strings.Contains(err.Error(), "--policy-watch needs --policy") {
		t.Fatalf("got %v", err)
	}
}
