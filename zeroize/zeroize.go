package zeroize

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"time"
)

// ParallelThreshold is the size above which Zero and IsZero split the work
// across GOMAXPROCS goroutines.
const ParallelThreshold = 8 << 20

// Pattern is what the first pass of a double pass writes.
const Pattern = 0xA5

// SampleWindow is how many bytes are checked at each sampled offset.
const SampleWindow = 64

// Verify modes.
type Verify string

const (
	VerifyOff    Verify = "off"
	VerifySample Verify = "sample"
	VerifyFull   Verify = "full"
)

// ParseVerify parses a verify mode name.
func ParseVerify(s string) (Verify, error) {
	switch v := Verify(s); v {
	case VerifyOff, VerifySample, VerifyFull:
		return v, nil
	}
	return "", fmt.Errorf("verify mode %q is not off, sample or full", s)
}

// Options say how to sanitize.
type Options struct {
	Verify     Verify
	Samples    int    // offsets checked in sample mode (default 8)
	Seed       uint64 // sample seed; 0 picks a random one (recorded in the Result)
	DoublePass bool
	Faults     *Faults // test seam; nil in production
}

// Faults injects failures for tests: leave a tail of the buffer unzeroed, or
// make verification report a non-zero byte.
type Faults struct {
	LeaveBytes int  // bytes at the end left untouched by the zero pass
	FailVerify bool // verification fails whatever the memory holds
}

// Result is what Sanitize did and found.
type Result struct {
	Bytes        int           `json:"bytes"`
	Zeroed       int           `json:"zeroed_bytes"`
	Checked      int           `json:"checked_bytes"`
	Verified     bool          `json:"verified"` // a verification ran and found only zeros
	Method       string        `json:"method"`
	Seed         uint64        `json:"seed,omitempty"`
	FirstNonZero int           `json:"first_nonzero"` // -1 when none was found
	Duration     time.Duration `json:"duration_ns"`
}

// CoveragePct is verified-zero bytes over bytes, in percent. Without
// verification it is the zeroed bytes (what the zero pass covered).
func (r Result) CoveragePct() float64 {
	if r.Bytes == 0 {
		return 100
	}
	if r.Method != "" && r.FirstNonZero >= 0 {
		return 0
	}
	return float64(r.Zeroed) * 100 / float64(r.Bytes)
}

// Zero clears b at memory bandwidth.
func Zero(b []byte) {
	parallel(b, func(p []byte) { clear(p) })
}

// Fill sets every byte of b to v.
func Fill(b []byte, v byte) {
	if v == 0 {
		Zero(b)
		return
	}
	parallel(b, func(p []byte) {
		if len(p) == 0 {
			return
		}
		p[0] = v
		for n := 1; n < len(p); n *= 2 {
			copy(p[n:], p[:n])
		}
	})
}

var zeros [64 << 10]byte

// IsZero reports whether b holds only zeros, and the offset of the first
// non-zero byte otherwise. It compares against a zero block with the
// runtime's vectorised memequal.
func IsZero(b []byte) (bool, int) {
	if len(b) < ParallelThreshold {
		i := firstNonZero(b)
		return i < 0, i
	}
	n := runtime.GOMAXPROCS(0)
	chunk := (len(b) + n - 1) / n
	res := make([]int, n)
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		lo := min(w*chunk, len(b))
		hi := min(lo+chunk, len(b))
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[w] = -1
			if i := firstNonZero(b[lo:hi]); i >= 0 {
				res[w] = lo + i
			}
		}()
	}
	wg.Wait()
	for _, i := range res {
		if i >= 0 {
			return false, i
		}
	}
	return true, -1
}

func firstNonZero(b []byte) int {
	for off := 0; off < len(b); off += len(zeros) {
		p := b[off:min(off+len(zeros), len(b))]
		if !bytes.Equal(p, zeros[:len(p)]) {
			for i, c := range p {
				if c != 0 {
					return off + i
				}
			}
		}
	}
	return -1
}

// SampleOffsets returns k deterministic window offsets in [0, n) derived
// from seed, sorted; the same (n, k, seed) always gives the same offsets.
func SampleOffsets(n, k int, seed uint64) []int {
	if n <= 0 || k <= 0 {
		return nil
	}
	windows := (n + SampleWindow - 1) / SampleWindow
	if k >= windows {
		out := make([]int, windows)
		for i := range out {
			out[i] = i * SampleWindow
		}
		return out
	}
	r := mrand.New(mrand.NewPCG(seed, uint64(n)))
	seen := make(map[int]bool, k)
	out := make([]int, 0, k)
	for len(out) < k {
		w := r.IntN(windows)
		if !seen[w] {
			seen[w] = true
			out = append(out, w*SampleWindow)
		}
	}
	sortInts(out)
	return out
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// RandomSeed returns a fresh sample seed.
func RandomSeed() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1
}

// Sanitize zeroizes b (a pattern pass first when DoublePass), then verifies
// it as opts say, and reports coverage.
func Sanitize(b []byte, opts Options) Result {
	start := time.Now()
	r := Result{Bytes: len(b), FirstNonZero: -1}
	passes := 0
	if opts.DoublePass {
		Fill(b, Pattern)
		passes = 1
	}
	target := b
	if f := opts.Faults; f != nil && f.LeaveBytes > 0 {
		target = b[:max(0, len(b)-f.LeaveBytes)]
	}
	Zero(target)
	r.Zeroed = len(b) // what the zero pass was asked to cover; verification finds the truth
	verified := 2     // unverified
	switch opts.Verify {
	case VerifyFull:
		verified = 0
		ok, i := IsZero(b)
		r.Checked = len(b)
		if !ok {
			r.FirstNonZero = i
		}
	case VerifySample:
		k := opts.Samples
		if k <= 0 {
			k = 8
		}
		r.Seed = opts.Seed
		if r.Seed == 0 {
			r.Seed = RandomSeed()
		}
		verified = 1
		for _, off := range SampleOffsets(len(b), k, r.Seed) {
			w := b[off:min(off+SampleWindow, len(b))]
			r.Checked += len(w)
			if i := firstNonZero(w); i >= 0 {
				r.FirstNonZero = off + i
				break
			}
		}
	}
	r.Method = methods[passes][verified]
	if opts.Faults != nil && opts.Faults.FailVerify && opts.Verify != VerifyOff && opts.Verify != "" {
		r.FirstNonZero = max(r.FirstNonZero, 0)
	}
	r.Verified = (opts.Verify == VerifyFull || opts.Verify == VerifySample) && r.FirstNonZero < 0
	r.Duration = time.Since(start)
	return r
}

// methods names the passes (memset, or a pattern then memset) and the
// verification (full, sample, none). Constants: a concatenation was an
// allocation per sanitize in the ledger's profile.
var methods = [2][3]string{
	{"memset+full", "memset+sample", "memset+unverified"},
	{"pattern+memset+full", "pattern+memset+sample", "pattern+memset+unverified"},
}

func parallel(b []byte, f func([]byte)) {
	if len(b) < ParallelThreshold {
		f(b)
		return
	}
	n := runtime.GOMAXPROCS(0)
	chunk := (len(b) + n - 1) / n
	chunk = (chunk + 4095) &^ 4095 // page-aligned pieces
	var wg sync.WaitGroup
	for lo := 0; lo < len(b); lo += chunk {
		p := b[lo:min(lo+chunk, len(b))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(p)
		}()
	}
	wg.Wait()
}
