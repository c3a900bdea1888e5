package tracer

import (
	crand "crypto/rand"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/policy"
	"golang.org/x/mod/sumdb/note"
)

// BenchmarkLifecycleDurable runs allocate → in_use → sanitize+verify → free
// on 4 KiB local buffers from 256 goroutines, every transition durably
// recorded (fdatasync + signed checkpoint per group commit).
func BenchmarkLifecycleDurable(b *testing.B) {
	skey, _, _ := note.GenerateKey(crand.Reader, "kvh-bench")
	signer, _ := note.NewSigner(skey)
	trail, err := forensic.Open(b.TempDir(), forensic.Options{Signer: signer})
	if err != nil {
		b.Fatal(err)
	}
	defer trail.Close()
	l, _ := New(Options{Trail: trail, Policy: policy.Default()})
	const G = 256
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < G; g++ {
		n := b.N / G
		if g < b.N%G {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
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
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "lifecycles/s")
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
