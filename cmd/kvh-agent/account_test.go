package main

import (
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"github.com/kvhygiene/kvh/trailevent"
)

// churners runs n churn clients at once against a (256-byte buffers,
// pairs per ms paced at rate, 0 for as fast as they can) and returns the
// hooked calls they made, counted by the clients themselves.
func churners(t testing.TB, a *testAgent, n int, total, rate int, during func()) (calls int, pids []int) {
	t.Helper()
	runs := make([]libkvhtest.Run, n)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"},
				strconv.Itoa(total), "1000", strconv.Itoa(rate), "256")
		}()
	}
	if during != nil {
		during()
	}
	wg.Wait()
	for _, r := range runs {
		if r.Err != nil || r.Value("CALLS") <= 0 {
			for _, ev := range a.typedEvents(t.(*testing.T)) {
				if v, ok := ev.(*trailevent.Violation); ok {
					t.Logf("violation %+v", *v)
				}
			}
			t.Fatalf("churn client: %v\n%s\n%s", r.Err, r.Stdout, r.Stderr)
		}
		calls += r.Value("CALLS")
		pids = append(pids, r.PID)
	}
	return calls, pids
}

// accounts waits for a process_account record from each pid and returns them.
func (a *testAgent) accounts(t *testing.T, pids []int, within time.Duration) map[int]*trailevent.ProcessAccount {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := map[int]*trailevent.ProcessAccount{}
		for _, ev := range a.typedEvents(t) {
			if pa, ok := ev.(*trailevent.ProcessAccount); ok {
				got[pa.PID] = pa
			}
		}
		missing := 0
		for _, p := range pids {
			if got[p] == nil {
				missing++
			}
		}
		if missing == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d processes have no process_account after %v", missing, len(pids), within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Every event is ingested or counted, tried from the outside: eight
// processes churn 256-byte buffers while the agent is stopped for a while
// (SIGSTOP: an agent that cannot keep up), each under its own
// max_event_rate. What the clients say they called equals what the agent
// received plus what the interposers counted dropped, exactly, per process
// and in the metrics, after the processes exited and behind the backlog;
// and the agent's slowness is an evidence gap, not a tenant's violation.
func TestEveryEventIngestedOrCounted(t *testing.T) {
	// observe: the witness sees every process on this machine that uses
	// the fake driver, other tests' too, and none of them may be acted on.
	a := newAgent(t, "--verify", "off")
	const procs, total = 8, 20000
	calls, pids := churners(t, a, procs, total, 4, func() { // 4 pairs per ms: about 8k events/s each, under the 100k cap
		time.Sleep(300 * time.Millisecond)
		a.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(1500 * time.Millisecond)
		a.cmd.Process.Signal(syscall.SIGCONT)
	})
	if calls != procs*2*total {
		t.Fatalf("clients made %d calls, want %d", calls, procs*2*total)
	}
	accts := a.accounts(t, pids, 30*time.Second)
	var received, dropped, lost, floorAcks uint64
	for _, p := range pids {
		pa := accts[p]
		if !pa.Exited || pa.Emitted == 0 || pa.Excess != 0 || pa.Lost != 0 || pa.Received+pa.Dropped != pa.Emitted {
			t.Errorf("pid %d: account %+v does not close", p, *pa)
		}
		received += pa.Received
		dropped += pa.Dropped
		lost += pa.Lost
		floorAcks++ // at most one per connection: a record with a seq that is not a call
	}
	if received+dropped < uint64(calls) || received+dropped > uint64(calls)+floorAcks {
		t.Errorf("received %d + dropped %d: want %d calls (+ up to %d floor acknowledgements)", received, dropped, calls, floorAcks)
	}
	if dropped == 0 {
		t.Errorf("no event was dropped while the agent was stopped: the test did not overload it")
	}
	_, m := a.get("/metrics")
	hyg, drop, lst := metricValue(m, "kvh_ingest_hygiene_events_total"), metricValue(m, "kvh_interposer_dropped_events_total"), metricValue(m, "kvh_interposer_lost_events_total")
	// A floor acknowledgement the interposer dropped counts as a drop: the
	// metrics may hold up to one per process more than the calls.
	if sum := uint64(hyg + drop + lst); sum < uint64(calls) || sum > uint64(calls)+floorAcks {
		t.Errorf("metrics: hygiene %v + dropped %v + lost %v, want %d calls", hyg, drop, lst, calls)
	}
	t.Logf("%d calls: %d received, %d dropped, %d lost", calls, received, dropped, lost)
	mine := map[int]bool{}
	for _, p := range pids {
		mine[p] = true
	}
	for _, ev := range a.typedEvents(t) {
		if v, ok := ev.(*trailevent.Violation); ok && mine[v.PID] {
			t.Errorf("the agent's slowness became a tenant's violation: %+v", *v) // the clients are honest: no violation at all
		}
		if act, ok := ev.(*trailevent.Action); ok && mine[act.PID] && act.Action != "observe" {
			t.Errorf("an action was taken on an honest tenant: %+v", *act)
		}
	}
}

// A process killed with events still queued: its account says exactly how
// many were lost with it.
func TestKilledProcessAccountCloses(t *testing.T) {
	a := newAgent(t, "--verify", "off")
	p := libkvhtest.Start("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"}, "100000000", "1000", "0", "256")
	time.Sleep(500 * time.Millisecond)
	a.cmd.Process.Signal(syscall.SIGSTOP) // a backlog: the ring fills and holds records when the client dies
	time.Sleep(200 * time.Millisecond)
	pid := p.PID()
	syscall.Kill(pid, syscall.SIGKILL)
	run := p.Wait()
	a.cmd.Process.Signal(syscall.SIGCONT)
	pa := a.accounts(t, []int{run.PID}, 30*time.Second)[run.PID]
	if !pa.Exited || pa.Emitted == 0 || pa.Excess != 0 || pa.Received+pa.Dropped+pa.Lost != pa.Emitted {
		t.Fatalf("account %+v", *pa)
	}
	if pa.Lost == 0 {
		t.Errorf("account %+v: a process killed with a full ring lost nothing", *pa)
	}
	t.Logf("account %+v", *pa)
}

// A process that connects, reports and exits before the agent has set its
// connection up (the agent busy or, here, stopped): its records are queued
// in the socket, and the agent reads every one of them, under the identity
// the kernel gave the connection (SO_PEERCRED), with its account. Before,
// the connection was closed unread as "peer gone", or kicked when the floor
// could not be written to a closed peer, and the records were neither
// ingested nor counted.
func TestShortLivedProcessIsIngested(t *testing.T) {
	a := newAgent(t, "--verify", "off")
	a.cmd.Process.Signal(syscall.SIGSTOP)
	var runs []libkvhtest.Run
	for range 3 {
		run := libkvhtest.Exec("driver", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock})
		if run.Err != nil || run.Value("RESIDUE") != 0 {
			a.cmd.Process.Signal(syscall.SIGCONT)
			t.Fatalf("%v\n%s\n%s", run.Err, run.Stdout, run.Stderr)
		}
		runs = append(runs, run)
	}
	time.Sleep(100 * time.Millisecond)
	a.cmd.Process.Signal(syscall.SIGCONT)
	var pids []int
	for _, r := range runs {
		pids = append(pids, r.PID)
	}
	accts := a.accounts(t, pids, 10*time.Second)
	for _, p := range pids {
		pa := accts[p]
		if pa.Emitted == 0 || pa.Received != pa.Emitted || pa.Dropped != 0 || pa.Lost != 0 {
			t.Errorf("pid %d: account %+v: its records were not all ingested", p, *pa)
		}
		if _, ok := a.waitEvent(5*time.Second, func(e map[string]any) bool { return e["ev"] == "free" && num(e["pid"]) == p }); !ok {
			t.Errorf("pid %d: no free record in the trail", p)
		}
	}
}
