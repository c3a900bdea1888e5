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

// BenchmarkAgentIngest: interposer events per second the agent judges and
// records durably (fdatasync + signed checkpoint per group commit), from
// four client processes at once, each offering about 50k events/s (25
// free+alloc pairs per ms). Events the agent could not take show as drops.
// Target: >= 100k events/s.
func BenchmarkAgentIngest(b *testing.B) {
	benchAgent(b)
	t := &testing.T{}
	a := newAgent(t, "--verify", "off") // the floor the clients run at: this measures the agent, not verification
	defer a.kill()
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + a.sock, "KVH_VERIFY=off"}, "150000", "2000", "25")
		}()
	}
	wg.Wait()
	var events, last float64
	end := time.Now()
	for i := 0; i < 200; i++ {
		_, m := a.get("/metrics")
		events = metricValue(m, "kvh_ingest_events_total")
		if events == last && i > 0 {
			break
		}
		last, end = events, time.Now()
		time.Sleep(50 * time.Millisecond)
	}
	el := end.Sub(start).Seconds()
	_, m := a.get("/metrics")
	b.ReportMetric(events/el, "events/s")
	b.ReportMetric(metricValue(m, "kvh_interposer_dropped_events_total"), "dropped")
	b.ReportMetric(metricValue(m, "kvh_trail_records_total"), "trail-records")
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
