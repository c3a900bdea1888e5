package tracer

import (
	crand "crypto/rand"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/policy"
	"golang.org/x/mod/sumdb/note"
)

// everyRecordDurable hides a trail's AppendAsync: the ledger then waits for
// every transition to be durable (the reference).
type everyRecordDurable struct{ *forensic.Log }

func (t everyRecordDurable) Append(body any) (uint64, error) { return t.Log.Append(body) }

// lifecycles runs n allocate → in_use → sanitize+verify → free lifecycles on
// 4 KiB local buffers from 256 goroutines and returns their rate. alloc nil
// is the default allocator.
func lifecycles(b *testing.B, n int, waitEach bool, alloc Allocator) (rate, cpuUS float64) {
	skey, _, _ := note.GenerateKey(crand.Reader, "kvh-bench")
	signer, _ := note.NewSigner(skey)
	log, err := forensic.Open(b.TempDir(), forensic.Options{Signer: signer})
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	var trail Trail = log
	if waitEach {
		trail = everyRecordDurable{log}
	}
	l, _ := New(Options{Trail: trail, Policy: policy.Default(), Allocator: alloc})
	const G = 256
	var wg sync.WaitGroup
	start, cpu0 := time.Now(), cpuTime()
	for g := 0; g < G; g++ {
		k := n / G
		if g < n%G {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < k; i++ {
				h, err := l.Allocate(Tags{Tenant: "a", Request: "r"}, 4096, AllocOptions{})
				if err != nil {
					b.Error(err)
					return
				}
				l.MarkInUse(h)
				l.Sanitize(h)
				if err := l.Free(h); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), float64((cpuTime() - cpu0).Microseconds()) / float64(n)
}

// cpuTime is this process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLifecycleDurable runs allocate → in_use → sanitize+verify → free
// on 4 KiB local buffers from 256 goroutines, durably recorded (fdatasync +
// signed checkpoint per group commit): the free returns only once it and
// the lifecycle's earlier records are durable. The reference, in the same
// run, waits for every record (four fdatasync waits per lifecycle).
// Target: >= 100k lifecycles/s, with the default allocator; the same with
// a Pool, which spares the garbage collector, is reported beside it.
func BenchmarkLifecycleDurable(b *testing.B) {
	got, cpu := lifecycles(b, b.N, false, nil)
	ref, refCPU := lifecycles(b, b.N, true, nil)
	pooled, pooledCPU := lifecycles(b, b.N, false, &Pool{})
	b.ReportMetric(pooled, "pooled-lifecycles/s")
	b.ReportMetric(pooledCPU, "pooled-cpu-us/lifecycle")
	b.ReportMetric(got, "lifecycles/s")
	b.ReportMetric(cpu, "cpu-us/lifecycle")
	b.ReportMetric(ref, "ref-every-record-lifecycles/s")
	b.ReportMetric(refCPU, "ref-cpu-us/lifecycle")
	b.ReportMetric(got/ref, "ratio-vs-every-record")
}

// BenchmarkRSSAfterLifecycles reports the heap in use after b.N remote
// lifecycles (run with -benchtime 1000000x for the 1M figure).
func BenchmarkRSSAfterLifecycles(b *testing.B) {
	l, _ := New(Options{Trail: countTrail{}, Policy: policy.Default()})
	for i := 0; i < b.N; i++ {
		h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
		l.MarkInUse(h)
		l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true, Duration: time.Microsecond})
		l.Free(h)
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b.ReportMetric(float64(m.HeapInuse)/(1<<20), "heap-MiB")
	runtime.KeepAlive(l)
}
