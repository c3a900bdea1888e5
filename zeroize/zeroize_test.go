package zeroize

import (
	"fmt"
	"testing"
	"time"
	"unsafe"
)

func dirty(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + 7)
	}
	return b
}

func TestSanitizeModes(t *testing.T) {
	for _, n := range []int{0, 1, 63, 4096, 1 << 20, ParallelThreshold + 12345} {
		for _, v := range []Verify{VerifyOff, VerifySample, VerifyFull} {
			for _, dp := range []bool{false, true} {
				t.Run(fmt.Sprintf("n=%d/%s/double=%v", n, v, dp), func(t *testing.T) {
					b := dirty(n)
					r := Sanitize(b, Options{Verify: v, DoublePass: dp})
					if ok, i := IsZero(b); !ok {
						t.Fatalf("byte %d not zero", i)
					}
					if r.CoveragePct() != 100 {
						t.Errorf("coverage %v", r.CoveragePct())
					}
					if r.Verified != (v != VerifyOff) {
						t.Errorf("verified=%v for %s", r.Verified, v)
					}
					if v == VerifyFull && r.Checked != n {
						t.Errorf("full verify checked %d of %d", r.Checked, n)
					}
				})
			}
		}
	}
}

func TestFaultsAreCaught(t *testing.T) {
	b := dirty(1 << 20)
	r := Sanitize(b, Options{Verify: VerifyFull, Faults: &Faults{LeaveBytes: 100}})
	if r.Verified || r.CoveragePct() != 0 || r.FirstNonZero != len(b)-100 {
		t.Fatalf("partial zeroize not caught: %+v", r)
	}
	r = Sanitize(dirty(4096), Options{Verify: VerifySample, Faults: &Faults{FailVerify: true}})
	if r.Verified || r.CoveragePct() != 0 {
		t.Fatalf("failing verify not reported: %+v", r)
	}
	// A partial zeroize that a full sample covers is caught by sampling too.
	r = Sanitize(dirty(640), Options{Verify: VerifySample, Samples: 100, Faults: &Faults{LeaveBytes: 1}})
	if r.Verified {
		t.Fatal("sample over every window missed the dirty byte")
	}
}

func TestSampleOffsetsDeterministic(t *testing.T) {
	a := SampleOffsets(1<<20, 8, 42)
	b := SampleOffsets(1<<20, 8, 42)
	c := SampleOffsets(1<<20, 8, 43)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("same seed, different offsets")
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatal("different seeds, same offsets")
	}
	for i, o := range a {
		if o%SampleWindow != 0 || o >= 1<<20 || (i > 0 && o <= a[i-1]) {
			t.Fatalf("offsets %v", a)
		}
	}
	if got := SampleOffsets(100, 8, 1); fmt.Sprint(got) != "[0 64]" {
		t.Fatalf("small buffer: %v", got)
	}
}

func TestDoublePassWritesPattern(t *testing.T) {
	// The pattern pass is real: stop the zero pass short and the pattern shows.
	b := make([]byte, 4096)
	Sanitize(b, Options{DoublePass: true, Faults: &Faults{LeaveBytes: 1}})
	if b[4095] != Pattern {
		t.Fatalf("last byte %#x, want the pattern %#x", b[4095], Pattern)
	}
}

var sink uint64

// readScan is the physical reference for verification: a plain read of every
// word, OR-reduced so the compiler cannot drop it.
func readScan(b []byte) uint64 {
	w := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
	var x0, x1, x2, x3 uint64
	for i := 0; i+4 <= len(w); i += 4 {
		x0 |= w[i]
		x1 |= w[i+1]
		x2 |= w[i+2]
		x3 |= w[i+3]
	}
	return x0 | x1 | x2 | x3
}

// BenchmarkZeroize measures Zero against clear() and IsZero against a plain
// read scan on the same buffer, alternating within each iteration, and
// reports the bandwidth ratios (targets: zero >= 0.9, verify >= 0.8).
func BenchmarkZeroize(b *testing.B) {
	for _, n := range []int{4 << 10, 1 << 20, 1 << 30} {
		buf := make([]byte, n)
		Fill(buf, 1)
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			var tClear, tZero, tRead, tVerify time.Duration
			b.SetBytes(int64(n))
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				clear(buf)
				t1 := time.Now()
				Zero(buf)
				t2 := time.Now()
				sink |= readScan(buf)
				t3 := time.Now()
				if ok, _ := IsZero(buf); !ok {
					b.Fatal("not zero")
				}
				t4 := time.Now()
				tClear += t1.Sub(t0)
				tZero += t2.Sub(t1)
				tRead += t3.Sub(t2)
				tVerify += t4.Sub(t3)
			}
			gb := func(d time.Duration) float64 { return float64(n) * float64(b.N) / d.Seconds() / 1e9 }
			b.ReportMetric(gb(tZero), "zero-GB/s")
			b.ReportMetric(gb(tClear), "clear-GB/s")
			b.ReportMetric(tClear.Seconds()/tZero.Seconds(), "zero/clear")
			b.ReportMetric(gb(tVerify), "verify-GB/s")
			b.ReportMetric(gb(tRead), "read-GB/s")
			b.ReportMetric(tRead.Seconds()/tVerify.Seconds(), "verify/read")
		})
	}
}
