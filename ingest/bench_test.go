package ingest_test

import (
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/libkvhtest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
)

func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	c.Write(&d)
	return d.GetCounter().GetValue()
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIngest is the agent's ingest path in this process (so that
// -cpuprofile and -memprofile see it): a ledger and a durable signed trail
// behind the server, and 16 churn clients of 256-byte buffers through
// libkvh on the fake driver, as fast as they can. It reports events/s, this
// process's CPU per ingested event, and what was dropped; per-event records
// every buffer one by one, windows summarises those under 64 KiB.
func BenchmarkIngest(b *testing.B) {
	for _, c := range []struct {
		name string
		min  int
	}{{"per-event", 0}, {"windows", 65536}} {
		b.Run(c.name, func(b *testing.B) {
			pol := policy.Default()
			pol.VerifyMode = "off"
			pol.TrailEventMinBytes = c.min
			pol.MaxEventRate = 1e9
			m := ingest.NewMetrics(prometheus.NewRegistry())
			h := newHarness(b, pol, ingest.Config{Metrics: m})
			const clients = 16
			total := max(b.N/(2*clients), 1000)
			cpu0, start := cpuNow(), time.Now()
			var wg sync.WaitGroup
			calls := 0
			var mu sync.Mutex
			for i := 0; i < clients; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					run := libkvhtest.Exec("churn", libkvhtest.Lib(), []string{"KVH_SOCKET=" + h.sock, "KVH_VERIFY=off"}, strconv.Itoa(total), "1000", "0", "256")
					if run.Err != nil {
						b.Error(run.Err, run.Stderr)
					}
					mu.Lock()
					calls += run.Value("CALLS")
					mu.Unlock()
				}()
			}
			wg.Wait()
			var got float64
			for i := 0; i < 400 && counterValue(m.Accounts) < clients; i++ {
				time.Sleep(25 * time.Millisecond)
			}
			got = counterValue(m.Hygiene)
			el, cpu := time.Since(start), cpuNow()-cpu0
			b.ReportMetric(got/el.Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Microseconds())/got, "agent-cpu-us/event")
			b.ReportMetric(counterValue(m.Dropped), "dropped")
			b.ReportMetric(float64(calls)-got-counterValue(m.Dropped)-counterValue(m.Lost), "unaccounted")
		})
	}
}

// BenchmarkConnMemory: what an idle interposer connection costs the agent
// (the README's memory budget counts it per connection): 1,000
// connections each send a HELLO and a full packet (allocations and their
// frees), then wait; the Go heap and stacks in use are compared with those
// before. A connection's packet goes back to a pool once it has been
// handled, and at most 256 are held at once (8 MiB): this measures what
// stays. Run it with -benchtime 1x (make bench does): each iteration
// measures 1,000 more connections, and the server takes n.
func BenchmarkConnMemory(b *testing.B) {
	const n = 1000
	h, m := connsHarness(b, n*b.N)
	inUse := func() uint64 {
		runtime.GC()
		runtime.GC() // and the pool's packets
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse
	}
	for range b.N {
		before, base := inUse(), counterValue(m.Events)
		fds := manyConns(b, h.sock, n)
		waitEvents(b, m, base+float64(n*(wire.MaxBatch+1)))
		after := inUse()
		b.ReportMetric(float64(after-before)/n/1024, "KiB/conn")
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
	}
}
