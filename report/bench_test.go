package report

import (
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
)

// BenchmarkReport draws the report over a synthetic node's trail of about a
// million records (40 tenants, 200 processes, 333k buffer lifecycles) and
// reports, per run: the report's own pass (Build) in records/s, the time to
// verify the same trail and to read its bytes (the references, measured in
// the same run), what the auditor waits for in all (verify + report +
// HTML), and the peak heap while the report is built.
//
//	go test -run '^$' -bench Report -benchtime 3x ./report/
func BenchmarkReport(b *testing.B) {
	k := newKeys(b)
	dir := synth{lifecycles: 333_000, tenants: 40, procs: 200, seed: 9}.write(b, k)
	rep, err := forensic.Verify(dir, forensic.VerifyOptions{Verifier: k.verifier})
	if err != nil || !rep.OK {
		b.Fatalf("verify: %v %+v", err, rep)
	}
	b.SetBytes(rep.Bytes)
	var read, ver, build, html time.Duration
	var peak uint64
	var r *Report
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runtime.GC()
		t0 := time.Now()
		readAll(b, dir)
		t1 := time.Now()
		rep, err = forensic.Verify(dir, forensic.VerifyOptions{Verifier: k.verifier})
		if err != nil || !rep.OK {
			b.Fatal(err)
		}
		t2 := time.Now()
		stop := sampleHeap(&peak)
		r, err = Build(Input{Dir: dir, Verify: rep, Key: k.verifier.Name()})
		stop()
		if err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if err := r.WriteHTML(io.Discard); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		read, ver, build, html = read+t1.Sub(t0), ver+t2.Sub(t1), build+t3.Sub(t2), html+t4.Sub(t3)
	}
	n := float64(b.N)
	b.ReportMetric(float64(rep.Records), "records")
	b.ReportMetric(float64(rep.Records)*n/build.Seconds(), "report-records/s")
	b.ReportMetric(build.Seconds()/n, "report-s")
	b.ReportMetric(ver.Seconds()/n, "verify-s")
	b.ReportMetric((ver+build+html).Seconds()/n, "total-s")
	b.ReportMetric(build.Seconds()/ver.Seconds(), "report/verify")
	b.ReportMetric(build.Seconds()/read.Seconds(), "report/read")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	if r.Events.Total < 900_000 {
		b.Errorf("only %d events", r.Events.Total)
	}
}

// readAll reads every file of the trail: the physical floor of any pass.
func readAll(b *testing.B, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, f)
		f.Close()
	}
}

// sampleHeap records the largest HeapInuse seen until stop is called.
func sampleHeap(peak *uint64) (stop func()) {
	var done atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for !done.Load() {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > *peak {
				*peak = ms.HeapInuse
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() { done.Store(true); wg.Wait() }
}
