package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

var plainAgent sync.Once

// benchAgent swaps in an agent built without -race for timing.
func benchAgent(b *testing.B) {
	plainAgent.Do(func() {
		p := filepath.Join(filepath.Dir(agentBin), "kvh-agent-plain")
		if out, err := exec.Command("go", "build", "-o", p, ".").CombinedOutput(); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
		agentBin = p
	})
}

func metricValue(m, name string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`)
	if s := re.FindStringSubmatch(m); s != nil {
		v, _ := strconv.ParseFloat(s[1], 64)
		return v
	}
	return 0
}

func rssKiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return 0
}

// cpuTicks is a process's user + system CPU time so far, in clock ticks.
func cpuTicks(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		f := strings.Fields(s[i+1:])
		if len(f) > 13 {
			u, _ := strconv.ParseFloat(f[11], 64)
			k, _ := strconv.ParseFloat(f[12], 64)
			return u + k
		}
	}
	return 0
}

const clockTicks = 100 // USER_HZ on Linux

// ingestRun is one configuration's figures.
type ingestRun struct {
	calls, ingested, dropped, lost float64
	seconds, cpuSeconds, rssMiB    float64
}

func (r ingestRun) rate() float64        { return r.ingested / r.seconds }
func (r ingestRun) cpuPerEvent() float64 { return r.cpuSeconds * 1e6 / r.ingested }
func (r ingestRun) unaccounted() float64 { return r.calls - r.ingested - r.dropped - r.lost }
func (r ingestRun) String() string {
	return fmt.Sprintf("%.0f calls: %.0f ingested (%.0f/s), %.0f dropped, %.0f lost, %.0f unaccounted; agent %.2f CPU-us/event, RSS %.1f MiB",
		r.calls, r.ingested, r.rate(), r.dropped, r.lost, r.unaccounted(), r.cpuPerEvent(), r.rssMiB)
}

var profRuns int

// runIngest starts an agent with policy yaml and runs clients churn
// clients of 256-byte buffers through libkvh (each total allocations,
// paced at rate pairs per ms, 0: as fast as they can), then waits for every
// process's account to close. The clients count their own calls.
func runIngest(b *testing.B, yaml string, clients, total, rate int) ingestRun {
	t := &testing.T{}
	pf := filepath.Join(b.TempDir(), "policy.yaml")
	if err := os.WriteFile(pf, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	// verify off: the floor the clients run at (this measures the agent, not
	// verification); the witness off: its cost is per call witnessed, not
	// per event ingested (BenchmarkWitness measures it).
	args := []string{"--verify", "off", "--witness", "off", "--policy", pf}
	// KVH_AGENT_PROFILE=prefix writes the agent's CPU profile of each run's
	// first seconds to prefix-<n>.pprof (the agent's --profiling).
	prof := os.Getenv("KVH_AGENT_PROFILE")
	if prof != "" {
		args = append(args, "--profiling")
	}
	a := newAgent(t, args...)
	defer a.kill()
	pid := a.cmd.Process.Pid
	cpu0 := cpuTicks(pid)
	start := time.Now()
	if prof != "" {
		profRuns++
		out := fmt.Sprintf("%s-%d.pprof", prof, profRuns)
		done := make(chan struct{})
		defer func() { <-done }() // before the agent is killed
		go func() {
			defer close(done)
			if code, body := a.get("/debug/pprof/profile?seconds=3"); code == 200 {
				os.WriteFile(out, []byte(body), 0o600)
			}
		}()
	}
	var wg sync.WaitGroup
	runs := make([]libkvhtest.Run, clients)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i] = libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"},
				strconv.Itoa(total), "1000", strconv.Itoa(rate), "256")
		}()
	}
	wg.Wait()
	var r ingestRun
	for _, run := range runs {
		if run.Err != nil || run.Value("CALLS") <= 0 {
			b.Fatalf("churn client: %v\n%s", run.Err, run.Stderr)
		}
		r.calls += float64(run.Value("CALLS"))
	}
	end := time.Now()
	var m string
	for i := 0; i < 600; i++ {
		_, m = a.get("/metrics")
		if metricValue(m, "kvh_ingest_process_accounts_total") >= float64(clients) {
			break
		}
		if v := metricValue(m, "kvh_ingest_hygiene_events_total"); v > r.ingested {
			r.ingested, end = v, time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.ingested = metricValue(m, "kvh_ingest_hygiene_events_total")
	r.dropped = metricValue(m, "kvh_interposer_dropped_events_total")
	r.lost = metricValue(m, "kvh_interposer_lost_events_total")
	r.seconds = end.Sub(start).Seconds()
	r.cpuSeconds = (cpuTicks(pid) - cpu0) / clockTicks
	r.rssMiB = rssKiB(pid) / 1024
	if metricValue(m, "kvh_ingest_process_accounts_total") < float64(clients) {
		b.Errorf("only %v of %d process accounts closed", metricValue(m, "kvh_ingest_process_accounts_total"), clients)
	}
	return r
}

// BenchmarkAgentIngest: interposer events the agent judges and records
// durably (fdatasync + signed checkpoint per group commit), from 16 client
// processes churning 256-byte buffers through libkvh on the fake driver,
// every event counted from the outside (the clients count their calls;
// ingested + dropped + lost must equal them: "unaccounted" is the
// difference).
//
// The target, >= 1M events/s with 0 dropped, is the highest rate the agent
// takes without a drop: the clients are paced (a 1 ms sleep every R
// alloc/free pairs each), R rising until a run drops events; the figure is
// the last run without a drop ("zero-drop-events/s"). With the clients
// flat out they take the cores the agent needs and drop by design; that
// run is the accounting check under overload, measured twice: with routine
// small buffers summarised in event_window records (trail_event_min_bytes
// 64 KiB) and, as the reference, the trail recording every buffer one by
// one (0). Agent CPU per event (target <= 1 µs) is the figure that does not
// move with the machine's load.
func BenchmarkAgentIngest(b *testing.B) {
	benchAgent(b)
	const clients, total = 16, 100000
	const windows = "trail_event_min_bytes: 65536\n"
	var best ingestRun
	for _, rate := range []int{32, 48, 64, 72, 80, 96, 112, 128, 160, 192, 256} {
		r := runIngest(b, windows, clients, total, rate)
		b.Logf("paced, %d pairs/ms per client: %v", rate, r)
		if r.dropped > 0 || r.lost > 0 || r.unaccounted() != 0 {
			break
		}
		if best.ingested == 0 || r.rate() > best.rate() {
			best = r
		}
	}
	ref := runIngest(b, "trail_event_min_bytes: 0\n", clients, total, 0)
	b.Logf("flat out, per-event trail (reference): %v", ref)
	win := runIngest(b, windows, clients, total, 0)
	b.Logf("flat out, event windows: %v", win)
	if best.ingested > 0 {
		b.ReportMetric(best.rate(), "zero-drop-events/s")
		b.ReportMetric(best.cpuPerEvent(), "zero-drop-agent-cpu-us/event")
	}
	b.ReportMetric(win.rate(), "flat-out-events/s")
	b.ReportMetric(win.cpuPerEvent(), "agent-cpu-us/event")
	b.ReportMetric(ref.cpuPerEvent(), "ref-agent-cpu-us/event")
	b.ReportMetric(ref.cpuPerEvent()/win.cpuPerEvent(), "cpu-ratio-vs-per-event")
	b.ReportMetric(win.dropped, "flat-out-dropped")
	b.ReportMetric(win.lost, "lost")
	b.ReportMetric(win.unaccounted(), "unaccounted")
	b.ReportMetric(win.rssMiB, "rss-MiB")
	// A floor acknowledgement (one per client, not a call) may be counted
	// dropped or lost: unaccounted is in [-clients, 0] when nothing is lost.
	if win.unaccounted() > 0 || win.unaccounted() < -clients || ref.unaccounted() > 0 || ref.unaccounted() < -clients {
		b.Errorf("events neither ingested nor counted: %v / %v", win, ref)
	}
}

// BenchmarkAgentRSS: the agent's RSS after 1M lifetime allocations with 10k
// live (target: flat, <= 128 MiB).
func BenchmarkAgentRSS(b *testing.B) {
	benchAgent(b)
	t := &testing.T{}
	a := newAgent(t, "--verify", "off") // the floor the clients run at: this measures the agent, not verification
	defer a.kill()
	pid := a.cmd.Process.Pid
	before := rssKiB(pid)
	run := libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"}, "1000000", "10000", "30")
	if run.Err != nil {
		b.Fatal(run.Err, run.Stderr)
	}
	var events float64
	for i := 0; i < 300; i++ {
		_, m := a.get("/metrics")
		if v := metricValue(m, "kvh_ingest_events_total"); v == events && i > 0 {
			break
		} else {
			events = v
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, m := a.get("/metrics")
	b.ReportMetric(before/1024, "rss-start-MiB")
	b.ReportMetric(rssKiB(pid)/1024, "rss-after-1M-MiB")
	b.ReportMetric(events, "events")
	b.Logf("client ran %v; the agent judged %.0f events", run.Wall, events)
	b.ReportMetric(metricValue(m, "kvh_interposer_dropped_events_total"), "dropped")
}
