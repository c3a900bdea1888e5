package report

import (
	"time"
)

// Histograms with fixed buckets, so that a report over any trail is drawn
// in constant memory and two reports compare bucket by bucket.

// coverageBounds are upper bounds (exclusive) of the coverage buckets, in
// percent; the last bucket is exactly 100 (the one before it is [99.9, 100)).
var coverageBounds = []float64{50, 90, 99, 99.9, 100}

var coverageLabels = []string{"<50", "50–90", "90–99", "99–99.9", "99.9–100", "100"}

// latencyBounds are upper bounds (exclusive) of the sanitize latency
// buckets (each label names its bucket's upper bound); the last bucket is
// everything at or above the last bound.
var latencyBounds = []time.Duration{10 * time.Microsecond, 100 * time.Microsecond, time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, time.Second}

var latencyLabels = []string{"<10µs", "<100µs", "<1ms", "<10ms", "<100ms", "<1s", "≥1s"}

type coverageHist [6]uint64

func (h *coverageHist) add(pct float64) {
	for i, b := range coverageBounds {
		if pct < b {
			h[i]++
			return
		}
	}
	h[len(h)-1]++
}

type latencyHist [7]uint64

func (h *latencyHist) add(d time.Duration) {
	for i, b := range latencyBounds {
		if d < b {
			h[i]++
			return
		}
	}
	h[len(h)-1]++
}

// Bucket is one histogram bucket.
type Bucket struct {
	Label string `json:"label"`
	Count uint64 `json:"count"`
}

func buckets(labels []string, counts []uint64) []Bucket {
	b := make([]Bucket, len(labels))
	for i := range labels {
		b[i] = Bucket{labels[i], counts[i]}
	}
	return b
}

// Timelines: counts per time bucket, with one bucket width for the whole
// report. The trail is read once, so the width grows as the trail's span
// does: each width divides the next, so counts merge exactly.

// maxBuckets bounds a timeline's length.
const maxBuckets = 96

// widths are the bucket widths in order; each divides the next. Past the
// last, a width is four times the one before.
var widths = []time.Duration{
	time.Second, 2 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute,
	10 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour,
	24 * time.Hour, 7 * 24 * time.Hour, 28 * 24 * time.Hour,
}

func width(i int) time.Duration {
	if i < len(widths) {
		return widths[i]
	}
	w := widths[len(widths)-1]
	for range i - len(widths) + 1 {
		w *= 4
	}
	return w
}

// clock places records in buckets from the first timestamped record on.
type clock struct {
	origin time.Time
	set    bool
	w      int // index into widths
	last   time.Time
	// before counts records stamped earlier than the first (a clock set
	// back); they go into the first bucket.
	before uint64
}

// bucket returns the bucket of t at the current width, widening first when
// t lies past the last bucket.
func (c *clock) bucket(t time.Time) int {
	if !c.set {
		c.origin, c.set = t.Truncate(time.Second), true
	}
	if t.After(c.last) {
		c.last = t
	}
	off := t.Sub(c.origin)
	if off < 0 {
		c.before++
		return 0
	}
	for off/width(c.w) >= maxBuckets {
		c.w++
	}
	return int(off / width(c.w))
}

// buckets is how many buckets the span so far takes.
func (c *clock) buckets() int {
	if !c.set {
		return 0
	}
	return int(c.last.Sub(c.origin)/width(c.w)) + 1
}

// series is one timeline: counts per bucket at width index w.
type series struct {
	w int
	c []uint64
}

// rescale merges s's buckets into the wider width index w.
func (s *series) rescale(w int) {
	if s.w == w {
		return
	}
	if len(s.c) == 0 {
		s.w = w
		return
	}
	ratio := int(width(w) / width(s.w))
	n := (len(s.c) + ratio - 1) / ratio
	for i := range s.c {
		if j := i / ratio; j != i {
			s.c[j] += s.c[i]
			s.c[i] = 0
		}
	}
	s.c, s.w = s.c[:n], w
}

func (s *series) add(c *clock, b int, n uint64) {
	s.rescale(c.w)
	if b >= len(s.c) {
		if b < cap(s.c) {
			s.c = s.c[:b+1]
		} else {
			s.c = append(s.c, make([]uint64, b+1-len(s.c))...)
		}
	}
	s.c[b] += n
}

// final returns the counts at the clock's width, n buckets long.
func (s *series) final(c *clock, n int) []uint64 {
	s.rescale(c.w)
	out := make([]uint64, n)
	copy(out, s.c)
	return out
}
