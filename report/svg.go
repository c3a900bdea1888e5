package report

import (
	"fmt"
	"html"
	"html/template"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/violation"
)

// Charts are inline SVG built here from the report's numbers: nothing is
// fetched and no script runs. Every mark carries a <title> with its exact
// count, so a reader (or a test) can hover for the number behind a bar.

var palette = []string{"#c0392b", "#e67e22", "#8e44ad", "#6d4c41", "#d81b60", "#546e7a", "#9e9d24", "#00838f", "#1565c0", "#2e7d32", "#5c6bc0", "#f9a825"}

// kindColor gives each violation kind a fixed colour, in violation.Kinds
// order, so one kind looks the same in every chart.
func kindColor(kind string) string {
	for i, k := range violation.Kinds() {
		if string(k) == kind {
			return palette[i%len(palette)]
		}
	}
	return "#9e9e9e"
}

var activityColors = map[string]string{"allocate": "#90a4ae", "sanitize step": "#2e7d32", "quarantine": "#e67e22", "action": "#c0392b"}

func esc(s string) string { return html.EscapeString(s) }

// histogram draws a histogram's buckets as bars, each labelled below and
// its count above.
func histogram(title string, b []Bucket, color string) template.HTML {
	const w, h, top, bottom = 300, 130, 18, 24
	var max uint64
	for _, x := range b {
		max = maxU(max, x.Count)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`, w, h, w, h, esc(title))
	fmt.Fprintf(&sb, `<title>%s</title>`, esc(title))
	bw := float64(w-10) / float64(len(b))
	for i, x := range b {
		x0 := 5 + float64(i)*bw
		bh := 0.0
		if max > 0 {
			bh = float64(h-top-bottom) * float64(x.Count) / float64(max)
		}
		y := float64(h-bottom) - bh
		fmt.Fprintf(&sb, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %d</title></rect>`, x0+2, y, bw-4, bh, color, esc(x.Label), x.Count)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" class="v">%s</text>`, x0+bw/2, y-4, compact(x.Count))
		fmt.Fprintf(&sb, `<text x="%.1f" y="%d" class="l" text-anchor="middle">%s</text>`, x0+bw/2, h-bottom+14, esc(x.Label))
	}
	fmt.Fprintf(&sb, `<line x1="4" x2="%d" y1="%d" y2="%d" class="axis"/>`, w-4, h-bottom, h-bottom)
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String())
}

// timeline draws series stacked per bucket over the report's timeline,
// with the start and end times below.
func timeline(title string, ss []KindSeries, tl Timeline, colors func(string) string, w, h int) template.HTML {
	const left, bottom, top = 36, 20, 6
	n := tl.Buckets
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart timeline" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`, w, h, w, h, esc(title))
	fmt.Fprintf(&sb, `<title>%s</title>`, esc(title))
	if n == 0 {
		fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="middle">no timestamped records</text></svg>`, w/2, h/2)
		return template.HTML(sb.String())
	}
	totals := make([]uint64, n)
	var max uint64
	for _, s := range ss {
		for i, c := range s.Counts {
			if i < n {
				totals[i] += c
			}
		}
	}
	for _, t := range totals {
		max = maxU(max, t)
	}
	plotH := float64(h - bottom - top)
	bw := float64(w-left-4) / float64(n)
	width := time.Duration(tl.WidthSeconds * float64(time.Second))
	for i := 0; i < n; i++ {
		y := float64(h - bottom)
		for _, s := range ss {
			if i >= len(s.Counts) || s.Counts[i] == 0 {
				continue
			}
			bh := plotH * float64(s.Counts[i]) / float64(maxU(max, 1))
			y -= bh
			from := tl.Start.Add(time.Duration(i) * width)
			fmt.Fprintf(&sb, `<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="%s"><title>%s: %d, %s – %s</title></rect>`,
				float64(left)+float64(i)*bw+0.5, y, maxF(bw-1, 0.6), bh, colors(s.Kind), esc(s.Kind), s.Counts[i], tstamp(from), clockOnly(from.Add(width)))
		}
	}
	fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%d" y2="%d" class="axis"/>`, left, w-4, h-bottom, h-bottom)
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`, left-4, top+8, compact(max))
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">0</text>`, left-4, h-bottom)
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="start">%s</text>`, left, h-5, tstamp(tl.Start))
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">%s (%s a bar)</text>`, w-4, h-5, tstamp(tl.Start.Add(time.Duration(n)*width)), human(width))
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String())
}

// spark draws a small total-per-bucket chart of the series.
func spark(ss []KindSeries, tl Timeline) template.HTML {
	if len(ss) == 0 || tl.Buckets == 0 {
		return ""
	}
	const w, h = 120, 22
	n := tl.Buckets
	totals := make([]uint64, n)
	var max uint64
	for _, s := range ss {
		for i, c := range s.Counts {
			if i < n {
				totals[i] += c
				max = maxU(max, totals[i])
			}
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="spark" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="violations over time">`, w, h, w, h)
	bw := float64(w) / float64(n)
	for i, t := range totals {
		if t == 0 {
			continue
		}
		bh := maxF(float64(h-2)*float64(t)/float64(max), 1.5)
		fmt.Fprintf(&sb, `<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f" fill="#c0392b"><title>%d</title></rect>`, float64(i)*bw, float64(h)-bh, maxF(bw-0.3, 0.6), bh, t)
	}
	fmt.Fprintf(&sb, `<line x1="0" x2="%d" y1="%d" y2="%d" class="axis"/></svg>`, w, h-0, h-0)
	return template.HTML(sb.String())
}

// lanes draws the node's posture as state lanes (each posture record's
// state holds until the next) over the trail's period, and the violations
// that say a process went uncovered, as ticks.
func lanes(p Posture, tl Timeline, period Period) template.HTML {
	const w, left, laneH, gap = 900, 150, 18, 8
	type lane struct {
		name  string
		state func(PostureRecord) (string, string) // label, colour
	}
	ls := []lane{
		{"driver scrub-on-free", func(r PostureRecord) (string, string) {
			switch r.ScrubOnFree {
			case 1:
				return "scrubbed", "#2e7d32"
			case 0:
				return "DISABLED", "#c0392b"
			}
			return "unknown", "#9e9e9e"
		}},
		{"eBPF witness", func(r PostureRecord) (string, string) {
			if r.Witness {
				return "on", "#2e7d32"
			}
			return "off", "#c0392b"
		}},
		{"MIG devices", func(r PostureRecord) (string, string) {
			if r.GPUs == 0 {
				return "no GPU seen (" + nonEmpty(r.NVML, "NVML") + ")", "#9e9e9e"
			}
			return fmt.Sprintf("%d of %d GPUs", r.MIG, r.GPUs), "#1565c0"
		}},
	}
	ticks := []struct {
		name   string
		counts []uint64
	}{{"uncovered_process", p.Uncovered}, {"unattested_free", p.Unattested}}
	h := (len(ls)+len(ticks))*(laneH+gap) + 24
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart lanes" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="node posture over time">`, w, h, w, h)
	sb.WriteString(`<title>node posture over time</title>`)
	start, end := period.First, period.Last
	span := end.Sub(start)
	x := func(t time.Time) float64 {
		if span <= 0 {
			return left
		}
		return min(max(left+float64(w-left-4)*float64(t.Sub(start))/float64(span), left), w-4)
	}
	for li, l := range ls {
		y := li * (laneH + gap)
		fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`, left-6, y+13, esc(l.name))
		if len(p.Records) == 0 {
			fmt.Fprintf(&sb, `<rect x="%d" y="%d" width="%d" height="%d" fill="#eceff1"><title>no posture record</title></rect>`, left, y, w-left-4, laneH)
			continue
		}
		for i, r := range p.Records {
			to := end
			if i+1 < len(p.Records) {
				to = p.Records[i+1].TS
			}
			label, color := l.state(r)
			x0, x1 := x(r.TS), x(to)
			fmt.Fprintf(&sb, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s: %s from %s (seq %d)</title></rect>`, x0, y, maxF(x1-x0, 2), laneH, color, esc(l.name), esc(label), tstamp(r.TS), r.Seq)
			if x1-x0 > 60 {
				fmt.Fprintf(&sb, `<text x="%.1f" y="%d" class="in">%s</text>`, x0+4, y+13, esc(label))
			}
		}
	}
	width := time.Duration(tl.WidthSeconds * float64(time.Second))
	for ti, t := range ticks {
		y := (len(ls) + ti) * (laneH + gap)
		var total uint64
		for _, c := range t.counts {
			total += c
		}
		fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">%s (%d)</text>`, left-6, y+13, esc(t.name), total)
		fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%d" y2="%d" class="axis"/>`, left, w-4, y+laneH, y+laneH)
		for i, c := range t.counts {
			if c == 0 {
				continue
			}
			from := tl.Start.Add(time.Duration(i) * width)
			x0 := x(from)
			fmt.Fprintf(&sb, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s: %d, %s – %s</title></rect>`, x0, y+2, maxF(x(from.Add(width))-x0, 2), laneH-2, kindColor(t.name), esc(t.name), c, tstamp(from), clockOnly(from.Add(width)))
		}
	}
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="start">%s</text>`, left, h-6, tstamp(start))
	fmt.Fprintf(&sb, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`, w-4, h-6, tstamp(end))
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String())
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func maxF(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}

// tstamp formats a time for the report: UTC, to the second.
func tstamp(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func clockOnly(t time.Time) string { return t.UTC().Format("15:04:05Z") }

// human formats a duration briefly: 90s → "1m30s", 2h → "2h", 8d → "8d".
func human(d time.Duration) string {
	if d < time.Second {
		return d.String()
	}
	d = d.Round(time.Second)
	var sb strings.Builder
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := d / u.d; n > 0 {
			fmt.Fprintf(&sb, "%d%s", n, u.name)
			d -= n * u.d
		}
	}
	return sb.String()
}

// compact formats a count briefly for chart labels (the exact number is in
// the mark's title and the tables).
func compact(n uint64) string {
	switch {
	case n >= 10_000_000:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1_000_000:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 10_000:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
