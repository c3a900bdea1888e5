package tracer

import (
	"math"
	"math/bits"
)

// hist is a streaming log-linear histogram of durations in nanoseconds:
// 32 sub-buckets per power of two from 256 ns, so quantiles are within about
// 3% at any scale (sub-millisecond included) in constant memory.
type hist struct {
	counts [40 * 32]uint64
	n      uint64
	sum    float64
}

const histMinExp = 8 // 2^8 ns = 256 ns

func histIndex(ns int64) int {
	if ns < 1<<histMinExp {
		return 0
	}
	e := 63 - bits.LeadingZeros64(uint64(ns)) // floor(log2)
	sub := int((uint64(ns) >> (e - 5)) & 31)
	i := (e-histMinExp)*32 + sub
	return min(i, len(hist{}.counts)-1)
}

// bucketUpper is the upper bound in ns of bucket i.
func bucketUpper(i int) float64 {
	e := i/32 + histMinExp
	sub := i % 32
	return math.Ldexp(float64(32+sub+1), e-5)
}

func (h *hist) add(ns int64) {
	h.counts[histIndex(ns)]++
	h.n++
	h.sum += float64(ns)
}

// quantile returns the q-quantile (0..1) in ns, by linear interpolation in
// the bucket that holds it.
func (h *hist) quantile(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := q * float64(h.n-1)
	var seen float64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) > rank {
			lo := 0.0
			if i > 0 {
				lo = bucketUpper(i - 1)
			}
			hi := bucketUpper(i)
			return lo + (hi-lo)*((rank-seen+0.5)/float64(c))
		}
		seen += float64(c)
	}
	return bucketUpper(len(h.counts) - 1)
}
