package report

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/compliance"
)

//go:embed report.html.tmpl
var htmlTemplate string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"num":   func(v any) string { return num(v) },
	"cell":  cell,
	"bcell": bcell,
	"ts":    tstamp,
	"tsp":   func(t *time.Time) string { return tsp(t) },
	"short": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.UTC().Format("01-02 15:04:05Z")
	},
	"human":  func(s float64) string { return human(time.Duration(s * float64(time.Second))) },
	"bytesH": bytesH,
	"hist":   histogram,
	"kindTL": func(title string, ss []KindSeries, tl Timeline, w, h int) template.HTML {
		return timeline(title, ss, tl, kindColor, w, h)
	},
	"actTL": func(title string, ss []KindSeries, tl Timeline, w, h int) template.HTML {
		return timeline(title, ss, tl, actColor, w, h)
	},
	"spark":    spark,
	"lanes":    lanes,
	"color":    kindColor,
	"actColor": actColor,
	"status":   func(s compliance.Status) string { return strings.ReplaceAll(string(s), " ", "-") },
	"count":    countStatus,
	"sortedU":  func(m map[string]uint64) []string { return sortedKeys(m) },
	"join":     strings.Join,
	"scrub": func(v int) string {
		switch v {
		case 1:
			return "scrubbed by the driver"
		case 0:
			return "DISABLED (RmDisableScrubOnFree)"
		}
		return "unknown"
	},
	"ttl": func(p *float64) string {
		if p == nil {
			return "none"
		}
		return strconv.FormatFloat(*p, 'g', -1, 64) + " s"
	},
	"total": func(c []uint64) uint64 {
		var n uint64
		for _, v := range c {
			n += v
		}
		return n
	},
}).Parse(htmlTemplate))

func actColor(k string) string {
	if c, ok := activityColors[k]; ok {
		return c
	}
	return "#9e9e9e"
}

// WriteHTML writes the report as one self-contained HTML page.
func (r *Report) WriteHTML(w io.Writer) error {
	var b bytes.Buffer
	if err := page.Execute(&b, r); err != nil {
		return fmt.Errorf("rendering the report: %w", err)
	}
	_, err := w.Write(b.Bytes())
	return err
}

func countStatus(rs []compliance.Result, s compliance.Status) int {
	n := 0
	for _, r := range rs {
		if r.Status == s {
			n++
		}
	}
	return n
}

// num formats an integer with thousands separators.
func num(v any) string {
	var s string
	switch x := v.(type) {
	case uint64:
		s = strconv.FormatUint(x, 10)
	case int64:
		s = strconv.FormatInt(x, 10)
	case int:
		s = strconv.Itoa(x)
	case uint32:
		s = strconv.FormatUint(uint64(x), 10)
	default:
		return fmt.Sprint(v)
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func raw(v any) string {
	switch x := v.(type) {
	case uint64:
		return strconv.FormatUint(x, 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	}
	return fmt.Sprint(v)
}

// cell is a table cell holding one count: data-k names it, data-v holds the
// exact value, the text shows it with separators.
func cell(key string, v any) template.HTML {
	return template.HTML(fmt.Sprintf(`<td class="n" data-k="%s" data-v="%s">%s</td>`, template.HTMLEscapeString(key), raw(v), num(v)))
}

// bcell is cell for a byte count, with the size in binary units on hover.
func bcell(key string, v int64) template.HTML {
	return template.HTML(fmt.Sprintf(`<td class="n" data-k="%s" data-v="%d" title="%s">%s</td>`, template.HTMLEscapeString(key), v, bytesH(v), num(v)))
}

func tsp(t *time.Time) string {
	if t == nil {
		return "—"
	}
	return tstamp(*t)
}

// bytesH formats a byte count in binary units.
func bytesH(v int64) string {
	f := float64(v)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", v)
			}
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1024
	}
	return ""
}
