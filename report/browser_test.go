package report

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// artifacts is where CI keeps what a run leaves (build/artifacts).
var artifacts = filepath.Join("..", "build", "artifacts")

// chromium finds Debian's headless Chromium. A missing browser fails the
// test: the report's rendering would otherwise go untested without a word.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KVH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: this test loads the report in headless Chromium; install Debian's chromium package " +
		"(apt-get install chromium; .ci/run does) or set KVH_CHROMIUM to a Chromium binary")
	return ""
}

// What the test reads back from the page.
type domCell struct {
	Scope string `json:"scope"`
	K     string `json:"k"`
	V     string `json:"v"`
	Text  string `json:"text"`
}

type domControl struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Badge  string `json:"badge"`
}

type dom struct {
	Sections []string     `json:"sections"`
	Headings []string     `json:"headings"`
	Cells    []domCell    `json:"cells"`
	Controls []domControl `json:"controls"`
	Loads    []string     `json:"loads"`
	Charts   int          `json:"charts"`
	Cards    []string     `json:"cards"`
	Verdict  string       `json:"verdict"`
}

const readDOM = `(() => {
  const scope = el => {
    const row = el.closest('[data-tenant],[data-pid]');
    if (row) return row.dataset.tenant !== undefined ? 't:' + row.dataset.tenant : 'p:' + row.dataset.pid;
    if (el.closest('#events-by-name')) return 'events';
    return el.closest('section').id;
  };
  return {
    sections: [...document.querySelectorAll('main > section')].map(s => s.id),
    headings: [...document.querySelectorAll('main > section > h2')].map(h => h.textContent.trim()),
    cells: [...document.querySelectorAll('[data-k][data-v]')].map(c => ({scope: scope(c), k: c.dataset.k, v: c.dataset.v, text: c.textContent.trim()})),
    controls: [...document.querySelectorAll('tr[data-control]')].map(r => ({id: r.dataset.control, status: r.dataset.status, badge: r.querySelector('.badge').textContent.trim()})),
    loads: [...document.querySelectorAll('[src],[href],link,script,iframe,object,embed')].map(e => e.getAttribute('src') || e.getAttribute('href') || e.tagName).filter(u => !u.startsWith('#')),
    charts: document.querySelectorAll('svg.chart').length,
    cards: [...document.querySelectorAll('[data-tenant-card]')].map(c => c.dataset.tenantCard + ':' + c.querySelectorAll('svg').length),
    verdict: document.querySelector('[data-k=verdict]').textContent.trim(),
  };
})()`

// TestReportInChromium loads the HTML report of a synthetic node's trail in
// headless Chromium, checks that every section is there and that every
// number on the page is the trail's (a tally the test reads from the files
// itself), takes a screenshot into build/artifacts/report.png (CI keeps
// it), and prints the page to PDF (build/artifacts/report.pdf) with nothing
// wider than an A4 landscape page.
func TestReportInChromium(t *testing.T) {
	bin := chromium(t)
	k := newKeys(t)
	dir := synth{lifecycles: 4000, tenants: 6, procs: 14, phases: 3, pause: 1100 * time.Millisecond, seed: 7, segBytes: 256 << 10, prefill: 600, prune: true}.write(t, k)
	r := build(t, dir, k, true)
	ty := readTally(t, dir)
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	var page bytes.Buffer
	if err := r.WriteHTML(&page); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "report.html")
	if err := os.WriteFile(file, page.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(artifacts, "report.html"), page.Bytes(), 0o644)

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.Flag("disable-gpu", true), chromedp.WindowSize(1400, 1000))...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	u := url.URL{Scheme: "file", Path: file}
	if err := chromedp.Do(ctx, chromedp.Navigate(u.String())); err != nil {
		t.Fatalf("loading %s in %s: %v", u.String(), bin, err)
	}
	d, err := chromedp.Run(ctx, chromedp.Evaluate[dom](readDOM))
	if err != nil {
		t.Fatal(err)
	}

	// Every section, in the order.
	want := []string{"verdict", "tenants", "processes", "posture", "history", "controls"}
	if !slices.Equal(d.Sections, want) {
		t.Errorf("sections %v (%v), want %v", d.Sections, d.Headings, want)
	}
	if d.Verdict != "VERIFIED" {
		t.Errorf("verdict %q", d.Verdict)
	}
	if len(d.Loads) > 0 {
		t.Errorf("the page loads %v", d.Loads)
	}

	// Every number on the page is the trail's.
	expect := func(c domCell) (int64, bool) {
		switch {
		case c.Scope == "verdict" && c.K == "events":
			return ty.node["events"], true
		case c.Scope == "verdict" && c.K == "agent_runs":
			return ty.events["agent_start"], true
		case c.Scope == "verdict":
			return ty.node[c.K], true
		case c.Scope == "events":
			return ty.events[strings.TrimPrefix(c.K, "ev:")], true
		case c.Scope == "posture":
			return ty.posture[c.K], true
		case strings.HasPrefix(c.Scope, "t:"):
			x, ok := ty.tenants[c.Scope[2:]]
			return x[c.K], ok
		case strings.HasPrefix(c.Scope, "p:"):
			if c.K == "pid" {
				return 0, false
			}
			x, ok := ty.pids[c.Scope[2:]]
			return x[c.K], ok
		}
		t.Errorf("a number outside any known place: %+v", c)
		return 0, false
	}
	seen := map[string]bool{}
	checked := 0
	for _, c := range d.Cells {
		seen[c.Scope] = true
		if strings.ReplaceAll(c.Text, ",", "") != c.V && !strings.HasPrefix(strings.ReplaceAll(c.Text, ",", ""), c.V+" ") {
			t.Errorf("%s %s: shows %q, holds %s", c.Scope, c.K, c.Text, c.V)
		}
		w, ok := expect(c)
		if !ok {
			if c.K != "pid" {
				t.Errorf("%s: a row the trail does not have", c.Scope)
			}
			continue
		}
		if c.V != fmt.Sprint(w) {
			t.Errorf("%s %s: the page says %s, the trail holds %d", c.Scope, c.K, c.V, w)
		}
		checked++
	}
	for name := range ty.tenants {
		if !seen["t:"+name] {
			t.Errorf("tenant %s has no row", name)
		}
	}
	for pid := range ty.pids {
		if !seen["p:"+pid] {
			t.Errorf("pid %s has no row", pid)
		}
	}
	if checked < 100 {
		t.Errorf("only %d numbers checked", checked)
	}
	if len(d.Controls) != 13 {
		t.Errorf("%d controls on the page", len(d.Controls))
	}
	for _, c := range d.Controls {
		if c.Badge != c.Status || !slices.Contains([]string{"pass", "fail", "not evidenced"}, c.Status) {
			t.Errorf("control %+v", c)
		}
	}
	if d.Charts < 2*len(ty.tenants) {
		t.Errorf("%d charts for %d tenants", d.Charts, len(ty.tenants))
	}
	t.Logf("%d numbers checked against the trail; %d charts; tenant cards %v", checked, d.Charts, d.Cards)

	// The screenshot CI keeps.
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG")) || len(png) < 50_000 {
		t.Errorf("screenshot: %d bytes", len(png))
	}
	if err := os.WriteFile(filepath.Join(artifacts, "report.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}

	// Printed (A4 landscape, as the page's @page rule asks): at the page's
	// width (277 mm, 1047 CSS px) nothing is wider than the page.
	if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Media: "print"}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1040, 740)); err != nil {
		t.Fatal(err)
	}
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[...document.querySelectorAll('main *')]
	  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1).slice(0, 5)
	  .map(e => e.tagName + (e.id ? '#' + e.id : '') + ' ' + Math.round(e.getBoundingClientRect().right)).join('; ')`))
	if err != nil {
		t.Fatal(err)
	}
	if wide != "" {
		t.Errorf("printed, wider than an A4 page: %s", wide)
	}
	pdf, err := chromedp.Run(ctx, chromedp.PrintToPDF(chromedp.PDFPaper(chromedp.PaperA4), chromedp.PDFLandscape(), chromedp.PDFMargin(10/25.4), chromedp.PDFPrintBackground()))
	if err != nil {
		t.Fatal(err)
	}
	pages := 0
	for _, m := range regexp.MustCompile(`/Count (\d+)`).FindAllSubmatch(pdf, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		pages = max(pages, n)
	}
	if !bytes.HasPrefix(pdf, []byte("%PDF-")) || len(pdf) < 20_000 || pages < 3 {
		t.Errorf("PDF: %d bytes, %d pages", len(pdf), pages)
	}
	if err := os.WriteFile(filepath.Join(artifacts, "report.pdf"), pdf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %d bytes, PDF %d bytes in %d pages: %s", len(png), len(pdf), pages, artifacts)
}
