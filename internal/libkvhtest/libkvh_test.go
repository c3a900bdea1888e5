package libkvhtest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/wire"
)

const blockSize = 64 << 10

func TestMain(m *testing.M) {
	if err := Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func listen(t *testing.T) *Listener {
	t.Helper()
	l, err := Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func frees(recs []Got, pid int) (out []Got) {
	for _, r := range recs {
		if int(r.PeerPID) == pid && (r.Type == wire.Free || r.Type == wire.Quarantine) {
			out = append(out, r)
		}
	}
	return out
}

// cleanFrees counts the pid's frees that zeroized and verified n bytes.
func cleanFrees(recs []Got, pid int, n uint64) int {
	c := 0
	for _, r := range frees(recs, pid) {
		if r.Type == wire.Free && r.Result == wire.ResOK && r.Bytes == n && r.Zeroed == n && r.Flags&wire.FlagVerified != 0 {
			c++
		}
	}
	return c
}

// TestEveryWayIn: without libkvh the second tenant reads the first tenant's
// bytes (the test can fail); with it, only zeros, and every free is attested
// with the kernel's pid, the size and full coverage.
func TestEveryWayIn(t *testing.T) {
	for _, way := range []string{"runtime", "runtime_now", "driver", "dlopen", "entry", "vmm", "async", "host", "ipc"} {
		t.Run(way, func(t *testing.T) {
			bare := Exec(way, "", nil)
			if bare.Err != nil || bare.Value("RESIDUE") <= 0 {
				t.Fatalf("without libkvh the residue should be visible: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
			}
			l := listen(t)
			run := Exec(way, Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_TENANT=acme"})
			if run.Err != nil || run.Value("RESIDUE") != 0 {
				t.Fatalf("with libkvh: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			want := 2
			if way == "ipc" {
				want = 2 // the exporter's two frees; the importer's close is not its memory
				if run.Value("IMPORTER") != 0 || run.Value("INTACT") != 1 {
					t.Fatalf("the importer cleared memory it does not own:\n%s", run.Stdout)
				}
			}
			recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return cleanFrees(r, run.PID, blockSize) >= want })
			if !ok {
				t.Fatalf("attestations from pid %d: %d clean of %d records: %+v", run.PID, cleanFrees(recs, run.PID, blockSize), len(recs), frees(recs, run.PID))
			}
			for _, r := range recs {
				if r.Type == wire.Hello && int(r.PeerPID) == run.PID && r.Tenant != "acme" {
					t.Errorf("hello tenant %q", r.Tenant)
				}
			}
		})
	}
}

func TestForkChildIsAttestedUnderItsOwnPID(t *testing.T) {
	l := listen(t)
	run := Exec("fork", Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || strings.Count(run.Stdout, "RESIDUE 0") != 2 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	var child int
	fmt.Sscanf(run.Stdout[strings.Index(run.Stdout, "CHILD"):], "CHILD %d", &child)
	if _, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
		return cleanFrees(r, run.PID, blockSize) >= 2 && cleanFrees(r, child, blockSize) >= 2
	}); !ok {
		t.Fatalf("parent %d and child %d not both attested", run.PID, child)
	}
	for _, r := range l.Records() {
		if int(r.PeerPID) == child && int(r.PID) != child {
			t.Fatalf("child reported on a connection claiming pid %d", r.PID)
		}
	}
}

// Fault switches: a zeroize or verify failure quarantines the buffer, which
// is never handed out again; observe mode reports without quarantining.
func TestFaults(t *testing.T) {
	cases := []struct {
		name        string
		env         []string
		quarantined bool
		result      uint8
		residue     bool
	}{
		{"partial memset, full verify", []string{"FAKECUDA_MEMSET_PARTIAL=100", "KVH_VERIFY=full"}, true, wire.ResVerifyFailed, false},
		{"memset fails", []string{"FAKECUDA_MEMSET_FAIL=1"}, true, wire.ResZeroizeFailed, false},
		{"memset fails, observe mode", []string{"FAKECUDA_MEMSET_FAIL=1", "KVH_MODE=observe"}, false, wire.ResZeroizeFailed, true},
		// A device that lies on copy-back defeats copy-back verification: kvh
		// reports a verified free, and the residue shows. (On a GPU, full
		// verify runs on the device for this reason.)
		{"copy-back lies", []string{"FAKECUDA_MEMSET_PARTIAL=100", "FAKECUDA_COPYBACK_LIE=1", "KVH_VERIFY=full"}, false, wire.ResOK, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t)
			run := Exec("driver", Lib(), append(tc.env, "KVH_SOCKET="+l.Path))
			if run.Err != nil {
				t.Fatalf("%v\n%s", run.Err, run.Stderr)
			}
			if got := run.Value("RESIDUE") > 0; got != tc.residue {
				t.Fatalf("residue %d:\n%s", run.Value("RESIDUE"), run.Stdout)
			}
			if tc.quarantined && run.Value("REUSED") != 0 {
				t.Fatal("a quarantined buffer was handed out again")
			}
			recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return len(frees(r, run.PID)) >= 1 })
			if !ok {
				t.Fatal("no report")
			}
			first := frees(recs, run.PID)[0]
			if (first.Type == wire.Quarantine) != tc.quarantined || first.Result != tc.result {
				t.Fatalf("first report %+v", first.Record)
			}
		})
	}
}

func TestModeOffPassesThrough(t *testing.T) {
	l := listen(t)
	run := Exec("driver", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_MODE=off"})
	if run.Err != nil || run.Value("RESIDUE") <= 0 {
		t.Fatalf("off mode should change nothing: %v %s", run.Err, run.Stdout)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(frees(l.Records(), run.PID)); n != 0 {
		t.Fatalf("off mode reported %d frees", n)
	}
}

func TestEdgeCases(t *testing.T) {
	for _, preload := range []string{"", Lib()} {
		run := Exec("edge", preload, []string{"KVH_SOCKET=/nonexistent/kvh.sock"})
		if run.Err != nil {
			t.Fatalf("preload %q: %v\n%s", preload, run.Err, run.Stderr)
		}
		// NULL frees: the driver's own error, unchanged (pointer 0 must not
		// reach the allocation table, whose empty marker it is).
		for _, want := range []string{"OOM 2 UNTOUCHED 1", "UNKNOWN 1", "DOUBLE 1", "FREEFAIL 1",
			"NULLFREE 1 NULLHOST 1 NULLUNREG 1 NULLASYNC 1 NULLUNMAP 1 NULLIPC 1"} {
			if !strings.Contains(run.Stdout, want) {
				t.Errorf("preload %q: missing %q in\n%s", preload, want, run.Stdout)
			}
		}
	}
}

func TestAgentAbsentOrStalled(t *testing.T) {
	run := Exec("stress", Lib(), []string{"KVH_SOCKET=/nonexistent/kvh.sock"}, "5000")
	if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("DROPPED") <= 0 {
		t.Fatalf("agent absent: %v\n%s", run.Err, run.Stdout)
	}
	l := listen(t)
	l.SetMute(true) // accepts, never reads: the socket fills
	run2 := Exec("stress", Lib(), []string{"KVH_SOCKET=" + l.Path}, "5000")
	if run2.Err != nil || run2.Value("RESIDUE") != 0 || run2.Value("DROPPED") <= 0 {
		t.Fatalf("agent stalled: %v\n%s", run2.Err, run2.Stdout)
	}
	// Bounded: enforcement never waits on the agent for long.
	if run2.Wall > 30*time.Second {
		t.Fatalf("a stalled agent slowed the client to %v", run2.Wall)
	}
}

// 16 threads x 100k operations as fast as they go: no crash, no deadlock,
// no residue; reports the listener could not take are counted, never silent.
func TestStress16Threads(t *testing.T) {
	n := 100000
	if testing.Short() {
		n = 10000
	}
	l := listen(t)
	run := Exec("stress", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=sample"}, fmt.Sprint(n))
	if run.Err != nil || run.Value("RESIDUE") != 0 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	got := len(frees(l.Records(), run.PID))
	t.Logf("16 x %d operations in %v; %d frees attested, %d reports dropped", n, run.Wall, got, run.Value("DROPPED"))
	if got < 16*n && run.Value("DROPPED") <= 0 {
		t.Fatalf("%d of %d frees attested and no drop was counted", got, 16*n)
	}
}

// While the listener keeps up, no attestation is lost: every allocation and
// every free of 16 paced threads arrives.
func TestNoLostAttestation(t *testing.T) {
	const n = 1000
	l := listen(t)
	run := Exec("stress", Lib(), []string{"KVH_SOCKET=" + l.Path}, fmt.Sprint(n), "1000")
	if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("DROPPED") != 0 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	recs, ok := l.WaitFor(10*time.Second, func(r []Got) bool { return len(frees(r, run.PID)) >= 16*n })
	allocs := 0
	for _, r := range recs {
		if int(r.PeerPID) == run.PID && r.Type == wire.Alloc {
			allocs++
		}
	}
	if !ok || allocs != 16*n {
		t.Fatalf("%d frees and %d allocations of %d attested", len(frees(recs, run.PID)), allocs, 16*n)
	}
}

func TestDeny(t *testing.T) {
	l := listen(t)
	l.SetDeny(true)
	run := Exec("deny", Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || !strings.Contains(run.Stdout, "DENIED") {
		t.Fatalf("deny not applied: %v\n%s", run.Err, run.Stdout)
	}
	// fork() does not undo a deny: the child's first allocation is refused,
	// and it stays refused while the agent keeps denying.
	if run.Value("CHILD_FIRST") != 2 || run.Value("CHILD_DENIED") != 1 || run.Value("CHILD_EXIT") != 0 {
		t.Fatalf("the forked child escaped the deny:\n%s%s", run.Stdout, run.Stderr)
	}
}

// A denied process's child stays denied until the agent says otherwise: here
// the agent denies the parent's connection and allows the child's.
func TestDenyUntilAllowAfterFork(t *testing.T) {
	l := listen(t)
	l.SetGreeting(func(n int, pid int32) [][]byte {
		if n == 0 {
			return [][]byte{wire.Control(wire.CtlDeny)}
		}
		return [][]byte{wire.Control(wire.CtlAllow)}
	})
	run := Exec("deny", Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || run.Value("DENIED") < 0 || run.Value("CHILD_FIRST") != 2 || run.Value("CHILD_ALLOWED") < 1 {
		t.Fatalf("want the child denied first, then allowed by the agent:\n%s%s", run.Stdout, run.Stderr)
	}
}

// The same clients under the ASan/UBSan build of libkvh.
func TestSanitizers(t *testing.T) {
	preload, err := ASanPreload()
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t)
	env := []string{"KVH_SOCKET=" + l.Path, "ASAN_OPTIONS=detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"}
	for _, way := range []string{"runtime", "driver", "dlopen", "entry", "vmm", "async", "host", "ipc", "fork", "edge", "vmmalias", "register", "failclosed"} {
		run := Exec(way, preload, env)
		if run.Err != nil || strings.Contains(run.Stderr, "Sanitizer") || strings.Contains(run.Stderr, "runtime error") || !strings.Contains(run.Stdout, "RESIDUE 0") {
			t.Errorf("%s under ASan/UBSan: %v\n%s%s", way, run.Err, run.Stdout, run.Stderr)
		}
	}
	run := Exec("stress", preload, env, "3000")
	if run.Err != nil || strings.Contains(run.Stderr, "Sanitizer") || run.Value("RESIDUE") != 0 {
		t.Errorf("stress under ASan/UBSan: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
}

// hello returns the pid's HELLO record, waiting for it.
func hello(t *testing.T, l *Listener, pid int) Got {
	t.Helper()
	recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
		for _, g := range r {
			if g.Type == wire.Hello && int(g.PeerPID) == pid {
				return true
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("no hello from pid %d", pid)
	}
	for _, g := range recs {
		if g.Type == wire.Hello && int(g.PeerPID) == pid {
			return g
		}
	}
	panic("unreachable")
}

// An invalid value of any knob is reported once on stderr, naming the knob,
// and the strictest setting is used (README: "Config, read once at load").
func TestInvalidConfigIsStrictest(t *testing.T) {
	const maxSamples = 1 << 20
	cases := []struct {
		env, knob  string
		mode       uint8 // HELLO result: 0 enforce
		verify     uint8
		doublePass bool
		samples    uint64
	}{
		{"KVH_DOUBLE_PASS=maybe", "KVH_DOUBLE_PASS", 0, wire.VerifySample, true, 8},
		{"KV_DOUBLE_PASS_DEFAULT=maybe", "KV_DOUBLE_PASS_DEFAULT", 0, wire.VerifySample, true, 8},
		{"KVH_MODE=enforcing", "KVH_MODE", 0, wire.VerifySample, false, 8},
		{"KVH_VERIFY=paranoid", "KVH_VERIFY", 0, wire.VerifyFull, false, 8},
		{"KVH_VERIFY_SAMPLES=lots", "KVH_VERIFY_SAMPLES", 0, wire.VerifySample, false, maxSamples},
		{"KVH_VERIFY_SAMPLES=0", "KVH_VERIFY_SAMPLES", 0, wire.VerifySample, false, maxSamples},
		{"KV_VERIFY_SAMPLES_DEFAULT=-3", "KV_VERIFY_SAMPLES_DEFAULT", 0, wire.VerifySample, false, maxSamples},
	}
	for _, tc := range cases {
		t.Run(tc.env, func(t *testing.T) {
			l := listen(t)
			run := Exec("driver", Lib(), []string{"KVH_SOCKET=" + l.Path, tc.env})
			if run.Err != nil || run.Value("RESIDUE") != 0 {
				t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			if n := strings.Count(run.Stderr, tc.knob); n != 1 {
				t.Errorf("stderr names %s %d times, want once:\n%s", tc.knob, n, run.Stderr)
			}
			h := hello(t, l, run.PID)
			if h.Result != tc.mode || h.Verify != tc.verify || (h.Flags&wire.FlagDoublePass != 0) != tc.doublePass || h.Count != tc.samples {
				t.Errorf("hello: mode %d verify %d flags %#x samples %d; want mode %d verify %d double pass %v samples %d",
					h.Result, h.Verify, h.Flags, h.Count, tc.mode, tc.verify, tc.doublePass, tc.samples)
			}
			recs, _ := l.WaitFor(5*time.Second, func(r []Got) bool { return cleanFrees(r, run.PID, blockSize) >= 2 })
			for _, f := range frees(recs, run.PID) {
				if f.Verify != tc.verify || (f.Flags&wire.FlagDoublePass != 0) != tc.doublePass {
					t.Errorf("free verify %d flags %#x", f.Verify, f.Flags)
				}
			}
		})
	}
	// Valid spellings stay valid and quiet.
	for _, env := range []string{"KVH_DOUBLE_PASS=0", "KVH_DOUBLE_PASS=off", "KVH_DOUBLE_PASS=false", "KVH_DOUBLE_PASS=yes", "KVH_VERIFY_SAMPLES=64"} {
		run := Exec("driver", Lib(), []string{"KVH_SOCKET=/nonexistent/kvh.sock", env})
		if run.Err != nil || strings.Contains(run.Stderr, strings.SplitN(env, "=", 2)[0]) {
			t.Errorf("%s: %v\n%s", env, run.Err, run.Stderr)
		}
	}
}

// Registered host memory belongs to the application: unregistering it leaves
// every byte alone (a live heap buffer, a MAP_SHARED file on disk, a
// read-only mapping of weights), and the event is reported, not zeroized.
func TestHostUnregisterLeavesApplicationMemory(t *testing.T) {
	for _, preload := range []string{"", Lib()} {
		l := listen(t)
		run := Exec("register", preload, []string{"KVH_SOCKET=" + l.Path})
		if run.Err != nil || run.Value("HEAP_INTACT") != 1 || run.Value("FILE_INTACT") != 1 || run.Value("RO_INTACT") != 1 {
			t.Fatalf("preload %q: %v\n%s%s", preload, run.Err, run.Stdout, run.Stderr)
		}
		if preload == "" {
			continue
		}
		recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return len(frees(r, run.PID)) >= 3 })
		if !ok {
			t.Fatalf("%d unregisters reported, want 3", len(frees(recs, run.PID)))
		}
		for _, f := range frees(recs, run.PID) {
			if f.Type != wire.Free || f.Result != wire.ResPassthrough || f.MemKind != wire.MemHostRegistered || wire.FnName(f.Fn) != "cuMemHostUnregister" || f.Zeroed != 0 {
				t.Errorf("unregister reported as %+v", f.Record)
			}
		}
	}
}

// allocHooks are the allocation hooks the failclosed client calls.
var allocHooks = []string{"cuMemAlloc_v2", "cuMemAllocManaged", "cuMemAllocPitch_v2", "cuMemAllocAsync", "cuMemAllocAsync_ptsz",
	"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", "cuMemHostAlloc", "cuMemAllocHost_v2", "cuMemCreate"}

const errNotPermitted = 800 // CUDA_ERROR_NOT_PERMITTED, cudaErrorNotPermitted

// unreachable returns agent sockets no client can connect to, by name: a
// path that does not exist, a socket nobody listens on, and (as root, for an
// unprivileged client) a root:root 0660 socket; with the errno text each
// gives and the uid to run the client as.
func unreachable(t *testing.T) map[string]struct {
	path, errno string
	uid         uint32
} {
	t.Helper()
	out := map[string]struct {
		path, errno string
		uid         uint32
	}{}
	out["missing"] = struct {
		path, errno string
		uid         uint32
	}{filepath.Join(t.TempDir(), "no", "kvh.sock"), "No such file or directory", 0}
	stale := filepath.Join(t.TempDir(), "kvh.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	out["stale"] = struct {
		path, errno string
		uid         uint32
	}{stale, "Connection refused", 0}
	if os.Geteuid() == 0 {
		dir := t.TempDir()
		os.Chmod(dir, 0o755)
		l, err := Listen(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		os.Chmod(l.Path, 0o660)
		out["root-only"] = struct {
			path, errno string
			uid         uint32
		}{l.Path, "Permission denied", 65534}
	}
	return out
}

func execMaybeAs(uid uint32, way, preload string, env []string, args ...string) Run {
	if uid != 0 {
		return ExecAs(uid, uid, way, preload, env, args...)
	}
	return Exec(way, preload, env, args...)
}

// libkvh says once on stderr, naming the socket and the errno, that it
// cannot reach the agent; zeroizing goes on regardless.
func TestAgentUnreachableIsSaidOnce(t *testing.T) {
	for name, u := range unreachable(t) {
		t.Run(name, func(t *testing.T) {
			run := execMaybeAs(u.uid, "stress", Lib(), []string{"KVH_SOCKET=" + u.path}, "2000")
			if run.Err != nil || run.Value("RESIDUE") != 0 {
				t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			if n := strings.Count(run.Stderr, u.path); n != 1 || !strings.Contains(run.Stderr, u.errno) {
				t.Fatalf("want one line naming %s and %q, got %d:\n%s", u.path, u.errno, n, run.Stderr)
			}
		})
	}
	l := listen(t)
	if run := Exec("driver", Lib(), []string{"KVH_SOCKET=" + l.Path}); run.Err != nil || run.Stderr != "" {
		t.Fatalf("with an agent, stderr should be quiet: %v\n%s", run.Err, run.Stderr)
	}
}

// KVH_REQUIRE_AGENT=1 fails closed: with no agent connection every
// allocation hook returns CUDA_ERROR_NOT_PERMITTED (the runtime
// cudaErrorNotPermitted); with one, they all work.
func TestRequireAgentFailsClosed(t *testing.T) {
	for name, u := range unreachable(t) {
		for _, val := range []string{"1", "maybe"} {
			t.Run(name+"/"+val, func(t *testing.T) {
				run := execMaybeAs(u.uid, "failclosed", Lib(), []string{"KVH_SOCKET=" + u.path, "KVH_REQUIRE_AGENT=" + val})
				if run.Err != nil {
					t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
				}
				for _, fn := range allocHooks {
					if got := run.Value(fn); got != errNotPermitted {
						t.Errorf("%s returned %d with no agent, want %d", fn, got, errNotPermitted)
					}
				}
				if n := strings.Count(run.Stderr, "KVH_REQUIRE_AGENT"); (val == "maybe") != (n == 2) || n == 0 {
					// the unreachable line says allocations are refused; an invalid value is reported once more
					t.Errorf("stderr names KVH_REQUIRE_AGENT %d times:\n%s", n, run.Stderr)
				}
			})
		}
	}
	run := Exec("runtime", Lib(), []string{"KVH_SOCKET=/nonexistent/kvh.sock", "KVH_REQUIRE_AGENT=1"})
	if run.Err == nil || !strings.Contains(run.Stderr, "failed: 800") {
		t.Errorf("cudaMalloc with no agent: want cudaErrorNotPermitted (800): %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	// Without the knob, and with an agent, nothing is refused.
	l := listen(t)
	for _, env := range [][]string{{"KVH_SOCKET=/nonexistent/kvh.sock"}, {"KVH_SOCKET=" + l.Path, "KVH_REQUIRE_AGENT=1"}, {"KVH_SOCKET=/nonexistent/kvh.sock", "KVH_REQUIRE_AGENT=0"}} {
		run := Exec("failclosed", Lib(), env)
		for _, fn := range allocHooks {
			if got := run.Value(fn); got != 0 {
				t.Errorf("%v: %s returned %d", env, fn, got)
			}
		}
	}
}

// When the agent goes away, allocations are refused from then on, and a free
// of memory allocated before still zeroizes and reaches the driver.
func TestRequireAgentFreesStillZeroize(t *testing.T) {
	l := listen(t)
	p := Start("failclosed", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_REQUIRE_AGENT=1"}, "hold")
	if _, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
		for _, g := range r {
			if int(g.PeerPID) == p.PID() && g.Type == wire.Alloc {
				return true
			}
		}
		return false
	}); !ok {
		p.Wait()
		t.Fatal("the client never allocated")
	}
	l.Close() // the agent goes away (and its socket with it)
	run := p.Wait()
	if run.Err != nil || run.Value("CLOSED") != errNotPermitted || run.Value("HELD_FREE") != 0 || run.Value("HELD_RESIDUE") != 0 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	for _, fn := range allocHooks {
		if got := run.Value(fn); got != errNotPermitted {
			t.Errorf("%s returned %d after the agent left", fn, got)
		}
	}
}

// The agent's floor raises the interposer's verification to at least the
// floor (never lowers it): frees that follow are verified as the floor says,
// each record carries the mode its free used, and a FLOOR_ACK reports the
// settings now in force.
func TestVerifyFloor(t *testing.T) {
	type settings struct {
		verify     uint8
		doublePass bool
		samples    uint64
	}
	cases := []struct {
		name  string
		env   []string
		floor settings
		want  settings
	}{
		{"off raised to full+double", []string{"KVH_VERIFY=off"}, settings{wire.VerifyFull, true, 32}, settings{wire.VerifyFull, true, 32}},
		{"weaker floor lowers nothing", []string{"KVH_VERIFY=full", "KVH_DOUBLE_PASS=1", "KVH_VERIFY_SAMPLES=64"}, settings{wire.VerifySample, false, 8}, settings{wire.VerifyFull, true, 64}},
		{"only double pass raised", []string{"KVH_VERIFY=sample", "KVH_VERIFY_SAMPLES=64"}, settings{wire.VerifyOff, true, 8}, settings{wire.VerifySample, true, 64}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t)
			l.SetFloor(tc.floor.verify, tc.floor.doublePass, uint16(tc.floor.samples))
			// 16 threads, 40 frees each, 5 ms apart: most frees come after the floor.
			run := Exec("stress", Lib(), append(tc.env, "KVH_SOCKET="+l.Path), "40", "5000")
			if run.Err != nil || run.Value("RESIDUE") != 0 {
				t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return len(frees(r, run.PID)) >= 16*40 })
			if !ok {
				t.Fatalf("%d of %d frees reported", len(frees(recs, run.PID)), 16*40)
			}
			acks := 0
			for _, r := range recs {
				if int(r.PeerPID) != run.PID || r.Type != wire.FloorAck {
					continue
				}
				acks++
				if got := (settings{r.Verify, r.Flags&wire.FlagDoublePass != 0, r.Count}); got != tc.want {
					t.Errorf("FLOOR_ACK %+v, want %+v", got, tc.want)
				}
			}
			if acks != 1 {
				t.Fatalf("%d FLOOR_ACKs, want 1", acks)
			}
			// Per thread, in order: once a free used the new settings, every
			// later one does; the last free of every thread did.
			last := map[uint32]Got{}
			raised := map[uint32]bool{}
			for _, f := range frees(recs, run.PID) {
				now := f.Verify == tc.want.verify && (f.Flags&wire.FlagDoublePass != 0) == tc.want.doublePass
				if raised[f.TID] && !now {
					t.Fatalf("thread %d went back to verify %d flags %#x after the floor", f.TID, f.Verify, f.Flags)
				}
				raised[f.TID] = raised[f.TID] || now
				if f.Seq > last[f.TID].Seq {
					last[f.TID] = f
				}
				if f.Result != wire.ResOK || f.Zeroed != f.Bytes || (f.Verify != wire.VerifyOff) != (f.Flags&wire.FlagVerified != 0) {
					t.Fatalf("free %+v", f.Record)
				}
			}
			for tid, f := range last {
				if f.Verify != tc.want.verify || (f.Flags&wire.FlagDoublePass != 0) != tc.want.doublePass {
					t.Errorf("thread %d's last free: verify %d flags %#x, want %+v", tid, f.Verify, f.Flags, tc.want)
				}
			}
		})
	}
}

// VMM memory is zeroized exactly when its last mapping goes away: every
// mapping a multi-mapping cuMemUnmap covers, never an alias whose handle is
// still mapped elsewhere, and a handle released while mapped at its unmap.
func TestVMMLastMappingIsZeroized(t *testing.T) {
	bare := Exec("vmmalias", "", nil)
	if bare.Err != nil || bare.Value("MULTI_RESIDUE") != 3*blockSize || bare.Value("ALIAS_INTACT") != 1 || bare.Value("ALIAS_RESIDUE") != blockSize ||
		bare.Value("BOTH_RESIDUE") != blockSize || bare.Value("RELEASED_INTACT") != 1 || bare.Value("RELEASED_RESIDUE") != blockSize {
		t.Fatalf("without libkvh every residue should show:\n%v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("vmmalias", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=full"})
	if run.Err != nil {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	for key, want := range map[string]int{"MULTI_RESIDUE": 0, "ALIAS_INTACT": 1, "ALIAS_RESIDUE": 0, "BOTH_RESIDUE": 0, "RELEASED_INTACT": 1, "RELEASED_RESIDUE": 0} {
		if got := run.Value(key); got != want {
			t.Errorf("%s %d, want %d", key, got, want)
		}
	}
	// Every mapping's unmap is reported: zeroized and verified when it was
	// the last, passed through when an alias still held the memory.
	const mappings = 3 + 3 + 2 + 1 + 2 + 1 + 1 + 1 // as the client maps them
	recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return len(frees(r, run.PID)) >= mappings })
	if !ok {
		t.Fatalf("%d unmaps reported, want %d: %+v", len(frees(recs, run.PID)), mappings, frees(recs, run.PID))
	}
	clean, through := 0, 0
	for _, f := range frees(recs, run.PID) {
		switch {
		case f.Type == wire.Free && f.Result == wire.ResOK && f.Zeroed == blockSize && f.Flags&wire.FlagVerified != 0:
			clean++
		case f.Type == wire.Free && f.Result == wire.ResPassthrough && f.Zeroed == 0:
			through++
		default:
			t.Errorf("unmap reported as %+v", f.Record)
		}
	}
	// One alias in 2. passes through; in "both", one alias is zeroized and
	// the other shares its attestation.
	if through != 1 || clean != mappings-1 {
		t.Errorf("%d zeroized and %d passed through, want %d and 1", clean, through, mappings-1)
	}
}

// The allocation table grows: past its initial capacity (lowered here with
// the test-only KVH_TEST_TABLE_SLOTS, and past the real one of 16K entries to 1.1M)
// every freed buffer is still zeroized. Where it cannot grow
// (KVH_TEST_TABLE_FIXED=1 stands for an mmap that fails), a device free the
// table missed asks the driver for the allocation's range and zeroizes it.
func TestTableBeyondCapacity(t *testing.T) {
	bare := Exec("table", "", nil, "20000")
	if bare.Err != nil || bare.Value("DIRTY") != 20000 {
		t.Fatalf("without libkvh every freed buffer should keep its bytes: %v\n%s", bare.Err, bare.Stdout)
	}
	cases := []struct {
		name, live string
		env        []string
		untracked  bool
	}{
		{"grows from 16 slots a stripe", "20000", []string{"KVH_TEST_TABLE_SLOTS=16"}, false},
		{"cannot grow: the driver's range", "20000", []string{"KVH_TEST_TABLE_SLOTS=16", "KVH_TEST_TABLE_FIXED=1"}, true},
		{"real capacity", "1100000", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.live == "1100000" && testing.Short() {
				t.Skip("1.1M live allocations")
			}
			run := Exec("table", Lib(), append(tc.env, "KVH_SOCKET=/nonexistent/kvh.sock", "FAKECUDA_ARENA_MB=512"), tc.live)
			if run.Err != nil || run.Value("DIRTY") != 0 || (run.Value("UNTRACKED") > 0) != tc.untracked {
				t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			if tc.untracked && strings.Count(run.Stderr, "cuMemGetAddressRange") != 1 {
				t.Errorf("the fallback is not reported once on stderr:\n%s", run.Stderr)
			}
		})
	}
}

// The v1 entry points (issue 11 item 1), bound directly and as
// cuGetProcAddress hands them out at old versions, are wrapped: their frees
// are zeroized and attested under their own names, registered and imported
// memory is left intact.
func TestV1EntryPoints(t *testing.T) {
	bare := Exec("v1", "", nil)
	if bare.Err != nil || bare.Value("RESIDUE") <= 0 || bare.Value("GPA_SAME") != 1 {
		t.Fatalf("without libkvh the residue should be visible: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("v1", Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("GPA_SAME") != 1 || run.Value("REGISTERED_INTACT") != 1 || run.Value("IPC_INTACT") != 1 {
		t.Fatalf("with libkvh: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	count := func(recs []Got, fn string) int {
		c := 0
		for _, r := range frees(recs, run.PID) {
			if wire.FnName(r.Fn) == fn && r.Type == wire.Free && r.Result == wire.ResOK && r.Zeroed == blockSize && r.Flags&wire.FlagVerified != 0 {
				c++
			}
		}
		return c
	}
	// cuMemFree: 2 direct, 2 through cuGetProcAddress, 2 pitched; cuMemFreeHost: 2 of cuMemAllocHost's.
	recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return count(r, "cuMemFree") >= 6 && count(r, "cuMemFreeHost") >= 2 })
	if !ok {
		t.Fatalf("v1 frees attested: cuMemFree %d of 6, cuMemFreeHost %d of 2: %+v", count(recs, "cuMemFree"), count(recs, "cuMemFreeHost"), frees(recs, run.PID))
	}
	allocs := map[string]int{}
	for _, r := range recs {
		if int(r.PeerPID) == run.PID && r.Type == wire.Alloc {
			allocs[wire.FnName(r.Fn)]++
		}
	}
	for fn, want := range map[string]int{"cuMemAlloc": 4, "cuMemAllocPitch": 2, "cuMemAllocHost": 2, "cuMemHostRegister": 1, "cuIpcOpenMemHandle": 1} {
		if allocs[fn] != want {
			t.Errorf("%s: %d allocation records, want %d (all: %v)", fn, allocs[fn], want, allocs)
		}
	}
}

// Full verify with the zero-check kernel (the fake runs it on the host with
// FAKECUDA_KERNEL=1): the kernel is trusted after its self-check, runs on the
// free's stream, and its result flag is reset on that same stream, never by
// a synchronous cuMemsetD32 on the legacy stream (issue 11 item 6).
func TestVerifyKernelFlagResetOnItsStream(t *testing.T) {
	l := listen(t)
	run := Exec("async", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=full", "FAKECUDA_KERNEL=1"})
	if run.Err != nil || run.Value("RESIDUE") != 0 {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	// 2 launches for the self-check (a zero and a dirty buffer), 1 a free.
	if run.Value("KERNEL_LAUNCHES") != 4 || run.Value("KERNEL_UNORDERED") != 0 {
		t.Fatalf("want 4 kernel launches, each after a flag reset on its own stream:\n%s", run.Stdout)
	}
	if _, ok := l.WaitFor(5*time.Second, func(r []Got) bool { return cleanFrees(r, run.PID, blockSize) >= 2 }); !ok {
		t.Fatalf("frees not attested: %+v", frees(l.Records(), run.PID))
	}
}

// Memory that leaves its owner with no free call (issue 11 item 4): a
// destroyed context's device and pinned host buffers, the primary context's
// at its last release (an earlier release leaves them live and intact) and
// at a reset, and a context's at the cuCtxDetach that drops its last usage
// count (an earlier one, after a cuCtxAttach, leaves them live and intact)
// are zeroized and attested under the call that released them.
func TestContextTeardownZeroizes(t *testing.T) {
	bare := Exec("ctx", "", nil)
	if bare.Err != nil || bare.Value("CTX_RESIDUE") <= 0 || bare.Value("RELEASE_RESIDUE") <= 0 || bare.Value("RESET_RESIDUE") <= 0 ||
		bare.Value("DETACH_RESIDUE") <= 0 || bare.Value("DETACH_INTACT") != 1 {
		t.Fatalf("without libkvh the residue should be visible: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("ctx", Lib(), []string{"KVH_SOCKET=" + l.Path})
	if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("LIVE_INTACT") != 1 || run.Value("DETACH_INTACT") != 1 {
		t.Fatalf("with libkvh: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	count := func(recs []Got, fn string) int {
		c := 0
		for _, r := range frees(recs, run.PID) {
			if wire.FnName(r.Fn) == fn && r.Type == wire.Free && r.Result == wire.ResOK && r.Zeroed == blockSize && r.Flags&wire.FlagVerified != 0 {
				c++
			}
		}
		return c
	}
	want := map[string]int{"cuCtxDestroy": 2, "cuDevicePrimaryCtxRelease_v2": 1, "cuDevicePrimaryCtxReset": 1, "cuCtxDetach": 1}
	recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
		for fn, n := range want {
			if count(r, fn) < n {
				return false
			}
		}
		return true
	})
	if !ok {
		for fn, n := range want {
			t.Errorf("%s: %d clean attestations, want %d", fn, count(recs, fn), n)
		}
		t.Fatalf("frees: %+v", frees(recs, run.PID))
	}
}

// Graph memory (issue 11 item 4): a graph's free node hands its memory to
// the graph pool, which the next graph allocation reuses (and, after
// cuDeviceGraphMemTrim, any allocation). Without libkvh the secret a graph
// wrote is there for the next owner; with it, a memset node ordered before
// each free node (the fake runs a free before anything not ordered before it
// by an edge) leaves zeros. A cuMemFreeAsync captured into a graph gets its
// memset captured before it, and libkvh makes no synchronous call that would
// invalidate the capture. cuGraphAddNode (CUDA 12.2) is the same. Each is
// attested, with verify off: nothing can
// read the memory back when the graph is built.
func TestGraphMemoryZeroized(t *testing.T) {
	bare := Exec("graph", "", nil)
	if bare.Err != nil || bare.Value("GRAPH_REUSED") != 1 || bare.Value("TRIM_REUSED") != 1 || bare.Value("CAPTURE_REUSED") != 1 ||
		bare.Value("ADDNODE_REUSED") != 1 || bare.Value("GRAPH_RESIDUE") <= 0 || bare.Value("TRIM_RESIDUE") <= 0 ||
		bare.Value("CAPTURE_RESIDUE") <= 0 || bare.Value("ADDNODE_RESIDUE") <= 0 {
		t.Fatalf("without libkvh the memory should be reused with its bytes: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	for _, env := range [][]string{nil, {"KVH_VERIFY=full", "KVH_DOUBLE_PASS=1"}} {
		l := listen(t)
		run := Exec("graph", Lib(), append([]string{"KVH_SOCKET=" + l.Path}, env...))
		if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("CAPTURE_OK") != 1 || run.Value("CAPTURE_REUSED") != 1 || run.Value("ADDNODE_REUSED") != 1 {
			t.Fatalf("with libkvh %v: %v\n%s%s", env, run.Err, run.Stdout, run.Stderr)
		}
		count := func(recs []Got, fn string) int {
			c := 0
			for _, r := range frees(recs, run.PID) {
				if wire.FnName(r.Fn) == fn && r.Type == wire.Free && r.Result == wire.ResOK && r.Zeroed == blockSize &&
					r.Verify == wire.VerifyOff && r.Flags&wire.FlagAsync != 0 && r.Flags&wire.FlagVerified == 0 {
					c++
				}
			}
			return c
		}
		recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
			return count(r, "cuGraphAddMemFreeNode") >= 2 && count(r, "cuMemFreeAsync") >= 1 && count(r, "cuGraphAddNode") >= 1
		})
		if !ok || count(recs, "cuGraphAddMemFreeNode") != 2 || count(recs, "cuMemFreeAsync") != 1 || count(recs, "cuGraphAddNode") != 1 {
			t.Fatalf("%v: graph frees not attested as scheduled zeroizes: %+v", env, frees(recs, run.PID))
		}
	}
}

// Graph allocations no free node of their graph frees (issue 11 item 4).
// An executable instantiated with AUTO_FREE_ON_LAUNCH frees them at its next
// launch, with no free call and no free node: without libkvh the next
// launch (another tenant's request) finds the last one's bytes; with it,
// the launch is preceded by a memset on its stream, attested as a free by
// cuGraphLaunch. Without the flag the application frees them after each
// launch, and each launch allocates them again: libkvh tracks them again at
// every launch, so every free is zeroized, not only the first (before this
// change the second free missed the table and went through unzeroized).
// The fake driver refuses a relaunch with allocations unfreed, as CUDA
// documents.
func TestGraphRelaunchZeroized(t *testing.T) {
	bare := Exec("graphlaunch", "", nil)
	if bare.Err != nil || bare.Value("AUTOFREE_RESIDUE") <= 0 || bare.Value("RELAUNCH_RESIDUE") <= 0 || bare.Value("CROSS_STREAM_WAITS") != 0 ||
		bare.Value("RELAUNCH_REUSED") != 1 || bare.Value("UNFREED_RELAUNCH_REFUSED") != 1 {
		t.Fatalf("without libkvh the memory should come back with its bytes: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	for _, env := range [][]string{nil, {"KVH_VERIFY=full", "KVH_DOUBLE_PASS=1"}} {
		l := listen(t)
		run := Exec("graphlaunch", Lib(), append([]string{"KVH_SOCKET=" + l.Path}, env...))
		if run.Err != nil || run.Value("RESIDUE") != 0 || run.Value("RELAUNCH_REUSED") != 1 || run.Value("UNFREED_RELAUNCH_REFUSED") != 1 {
			t.Fatalf("with libkvh %v: %v\n%s%s", env, run.Err, run.Stdout, run.Stderr)
		}
		// A relaunch on another stream: the memset waits for the last
		// launch (an event recorded after it), as the launch itself does.
		if run.Value("CROSS_STREAM_WAITS") != 1 {
			t.Fatalf("with libkvh %v: the auto-free memset on a new stream was not ordered behind the last launch:\n%s", env, run.Stdout)
		}
		count := func(recs []Got, fn string) int {
			c := 0
			for _, r := range frees(recs, run.PID) {
				if wire.FnName(r.Fn) == fn && r.Type == wire.Free && r.Result == wire.ResOK && r.Zeroed == blockSize {
					c++
				}
			}
			return c
		}
		recs, ok := l.WaitFor(5*time.Second, func(r []Got) bool {
			return count(r, "cuGraphLaunch") >= 2 && count(r, "cuMemFreeAsync") >= 4
		})
		if !ok || count(recs, "cuGraphLaunch") != 2 || count(recs, "cuMemFreeAsync") != 4 {
			t.Fatalf("%v: want 2 auto-free zeroizes by cuGraphLaunch and 4 zeroized cuMemFreeAsync: %+v", env, frees(recs, run.PID))
		}
		// Every free has its allocation, and the one allocation never freed
		// (the last graph's) is the only one left: the ledger stays balanced.
		balance := func(recs []Got) (allocs, freed int) {
			for _, r := range recs {
				if int(r.PeerPID) == run.PID && r.Type == wire.Alloc {
					allocs++
				}
				if int(r.PeerPID) == run.PID && r.Type == wire.Free {
					freed++
				}
			}
			return
		}
		recs, _ = l.WaitFor(5*time.Second, func(r []Got) bool { a, f := balance(r); return a == f+1 })
		if a, f := balance(recs); a != f+1 {
			t.Fatalf("%v: %d allocations, %d frees (want one left): %+v", env, a, f, recs)
		}
	}
}

// A table miss never zeroizes memory the process does not own (issue 11 (d)):
// with the table full (it cannot grow), a device free it misses is zeroized
// when the driver says the pointer starts a live allocation — but an IPC or
// pool import also starts one, and belongs to the exporter. libkvh keeps
// imports in a list of their own, so the fallback passes them through: the
// exporter (another process) finds every byte it shared intact, and the
// driver's own answer to the wrong call (cuMemFree of an IPC import) is
// unchanged. libkvh before this change zeroized both.
func TestTableMissNeverZeroizesImports(t *testing.T) {
	bare := Exec("imports", "", nil)
	if bare.Err != nil || bare.Value("EXPORTER") != 0 || bare.Value("WRONG_FREE_REFUSED") != 1 {
		t.Fatalf("without libkvh: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("imports", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_TEST_TABLE_SLOTS=16", "KVH_TEST_TABLE_FIXED=1"})
	if run.Err != nil || run.Value("UNTRACKED") <= 0 {
		t.Fatalf("the table should have overflowed: %v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	if run.Value("EXPORTER") != 0 || run.Value("WRONG_FREE_REFUSED") != 1 {
		t.Fatalf("an import was written to (EXPORTER 6) or the driver's error changed:\n%s%s", run.Stdout, run.Stderr)
	}
}

// Review of 14f61a2: a cuMemFreeAsync captured into a graph frees nothing
// until that graph runs, but release() calls graph_freed() at capture time,
// so the auto-free executable's allocation is marked not live. When the
// capture is discarded, the next auto-free relaunch frees the memory (bytes
// and all) with no memset before it.
func TestGraphCapturedFreeThenAutoFreeRelaunch(t *testing.T) {
	bare := Exec("graphlaunch", "", []string{"GRAPHLAUNCH_CAPFREE=1"})
	if bare.Err != nil || bare.Value("CAPFREE_RESIDUE") <= 0 {
		t.Fatalf("without libkvh the auto-freed memory should keep its bytes: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("graphlaunch", Lib(), []string{"KVH_SOCKET=" + l.Path, "GRAPHLAUNCH_CAPFREE=1"})
	if run.Err != nil || run.Value("CAPFREE_RESIDUE") != 0 {
		t.Fatalf("auto-free relaunch after a discarded captured free left %d secret bytes: %v\n%s%s",
			run.Value("CAPFREE_RESIDUE"), run.Err, run.Stdout, run.Stderr)
	}
}

// Review of 14f61a2: an executable whose graph libkvh cannot walk is not
// registered, so what its free nodes free is never marked freed. When one of
// them frees an auto-free executable's allocation, that executable's next
// (legal) relaunch memsets freed graph memory — a context fault on a GPU —
// and, in enforce mode, returns the memset's error for a launch the driver
// never saw. The fake counts memsets of memory that is not allocated
// (FAKECUDA_FAULT_FREED) and fails the graph queries on demand to stand in
// for any walk() failure.
func TestGraphWalkFailureNeverWritesFreedMemory(t *testing.T) {
	bare := Exec("graphlaunch", "", []string{"GRAPHLAUNCH_WALKFAIL=1"})
	if bare.Err != nil || bare.Value("WALKFAIL_RELAUNCH_RC") != 0 || bare.Value("FREED_WRITES") != 0 {
		t.Fatalf("without libkvh the relaunch is legal and writes nothing freed: %v\n%s%s", bare.Err, bare.Stdout, bare.Stderr)
	}
	l := listen(t)
	run := Exec("graphlaunch", Lib(), []string{"KVH_SOCKET=" + l.Path, "GRAPHLAUNCH_WALKFAIL=1"})
	if run.Err != nil || run.Value("FREED_WRITES") != 0 || run.Value("WALKFAIL_RELAUNCH_RC") != 0 {
		t.Fatalf("libkvh wrote %d times to freed graph memory; relaunch returned %d: %v\n%s%s",
			run.Value("FREED_WRITES"), run.Value("WALKFAIL_RELAUNCH_RC"), run.Err, run.Stdout, run.Stderr)
	}
}
