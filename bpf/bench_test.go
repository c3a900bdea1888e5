//go:build linux && (amd64 || arm64)

package bpf

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/libkvhtest"
)

func benchNS(b *testing.B, key string, r libkvhtest.Run) float64 {
	if r.Err != nil {
		b.Fatal(r.Err, r.Stderr)
	}
	for _, l := range strings.Split(r.Stdout, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == key {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	b.Fatalf("no %s in %q", key, r.Stdout)
	return 0
}

// BenchmarkWitness measures the probe cost per driver call — the same
// alloc/free client run without and with the witness attached, in one run —
// and the events per second that went through the ring buffer, with losses.
func BenchmarkWitness(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if err := libkvhtest.Build(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		base := libkvhtest.Exec("bench", "", nil, "100000")
		w, err := Start(Options{Libraries: []string{filepath.Join(libkvhtest.FakeDir(), "libcuda.so.1")}, Rescan: -1})
		if err != nil {
			b.Fatal(err)
		}
		var n atomic.Int64
		done := make(chan struct{})
		go func() {
			for range w.Events() {
				n.Add(1)
			}
			close(done)
		}()
		start := time.Now()
		probed := libkvhtest.Exec("bench", "", nil, "100000")
		el := time.Since(start)
		time.Sleep(200 * time.Millisecond)
		lost := w.Lost()
		w.Close()
		<-done
		b.ReportMetric(benchNS(b, "ALLOC_NS", probed)-benchNS(b, "ALLOC_NS", base), "probe-ns/alloc")
		b.ReportMetric(benchNS(b, "FREE_NS", probed)-benchNS(b, "FREE_NS", base), "probe-ns/free")
		b.ReportMetric(float64(n.Load())/el.Seconds(), "events/s")
		b.ReportMetric(float64(n.Load()), "events")
		b.ReportMetric(float64(lost), "lost")
	}
}
