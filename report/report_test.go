package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/compliance"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/trailevent"
)

func build(t testing.TB, dir string, k keys, ctl bool) *Report {
	t.Helper()
	in := Input{Dir: dir, Verify: verify(t, dir, k), Key: k.verifier.Name(), Tool: "test"}
	if ctl {
		f, err := compliance.Load("../compliance/controls.yaml")
		if err != nil {
			t.Fatal(err)
		}
		in.Controls = f
	}
	r, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The report's numbers are the trail's: node, tenants, processes, events
// and posture, each held to a tally computed from the files with plain JSON.
func TestBuildNumbersAreTheTrails(t *testing.T) {
	k := newKeys(t)
	s := synth{lifecycles: 3000, tenants: 5, procs: 17, phases: 2, pause: 1100 * time.Millisecond, seed: 1, segBytes: 128 << 10, prune: true}
	dir := s.write(t, k)
	r := build(t, dir, k, true)
	ty := readTally(t, dir)

	if d := sameCounts(statsCounts(&r.Node), without(ty.node, "events", "connections")); d != "" {
		t.Errorf("node: %s", d)
	}
	if r.Events.Total != uint64(ty.node["events"]) {
		t.Errorf("events %d, tally %d", r.Events.Total, ty.node["events"])
	}
	for name, want := range ty.events {
		got := int64(r.Events.ByName[name])
		if u, ok := strings.CutPrefix(name, "unknown:"); ok {
			got = int64(r.Events.Unknown[u])
		}
		if got != want {
			t.Errorf("events %s: %d, tally %d", name, got, want)
		}
	}
	if len(r.Tenants.Rows) != len(ty.tenants) || r.Tenants.More != 0 {
		t.Errorf("%d tenant rows (+%d more), tally has %d", len(r.Tenants.Rows), r.Tenants.More, len(ty.tenants))
	}
	for _, row := range r.Tenants.Rows {
		want := ty.tenants[row.Name]
		if d := sameCounts(statsCounts(&row.Stats), without(want, "connections")); d != "" {
			t.Errorf("tenant %s: %s", row.Name, d)
		}
		if int64(row.Connections) != want["connections"] {
			t.Errorf("tenant %s: %d connections, tally %d", row.Name, row.Connections, want["connections"])
		}
	}
	if len(r.Processes.Rows) != len(ty.pids) {
		t.Errorf("%d process rows, tally has %d pids", len(r.Processes.Rows), len(ty.pids))
	}
	for _, row := range r.Processes.Rows {
		if d := sameCounts(statsCounts(&row.Stats), ty.pids[fmt.Sprint(row.PID)]); d != "" {
			t.Errorf("pid %d: %s", row.PID, d)
		}
	}
	p := r.Posture
	if got := (counts{"posture_records": int64(p.Total), "scrub_disabled": int64(p.ScrubDisabled), "scrub_unknown": int64(p.ScrubUnknown), "witness_on": int64(p.WitnessOn), "witness_off": int64(p.WitnessOff)}); sameCounts(got, ty.posture) != "" {
		t.Errorf("posture: %s", sameCounts(got, ty.posture))
	}
	// The timelines hold every timestamped violation, once.
	var inTimeline uint64
	for _, s := range r.Node.Timeline {
		for _, c := range s.Counts {
			inTimeline += c
		}
	}
	if inTimeline != r.Node.Violations || r.Timeline.Untimed != 0 || r.Timeline.Buckets < 1 {
		t.Errorf("timeline holds %d of %d violations over %d bucket(s), %d untimed", inTimeline, r.Node.Violations, r.Timeline.Buckets, r.Timeline.Untimed)
	}
	// The history: the prune, the segments left, both agent runs and the
	// three policy records.
	if len(r.History.Prunes) != 1 || r.Facts["trail.prunes"] != 1 {
		t.Errorf("prunes %+v", r.History.Prunes)
	}
	if int64(len(r.History.Runs)) != ty.events["agent_start"] || int64(len(r.History.Policies)) != ty.events["policy"] || r.History.Closes == 0 || len(r.History.Segments) == 0 {
		t.Errorf("history: %d runs, %d policies, %d closes, %d segments", len(r.History.Runs), len(r.History.Policies), r.History.Closes, len(r.History.Segments))
	}
	if r.Period.First.IsZero() || !r.Period.Last.After(r.Period.First) {
		t.Errorf("period %+v", r.Period)
	}
}

func without(c counts, keys ...string) counts {
	out := counts{}
	for k, v := range c {
		out[k] = v
	}
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

// Every fact a control may name is computed, and the synthetic trail comes
// out as its contents say: SC-4 fails (a witnessed bypass), AU-9 is not
// evidenced (no off-node checkpoint), AU-9(3) passes, AU-11 is not
// evidenced (no prune), SI-4 is not evidenced (one agent run had the
// witness off), CC7.2 fails when an action timed out.
func TestControlsOnTheTrail(t *testing.T) {
	k := newKeys(t)
	dir := synth{lifecycles: 1500, tenants: 3, procs: 5, phases: 2, seed: 2}.write(t, k)
	r := build(t, dir, k, true)
	for _, f := range compliance.Facts() {
		if _, ok := r.Facts[f.Name]; !ok {
			t.Errorf("fact %s is not computed", f.Name)
		}
	}
	want := map[string]compliance.Status{"SC-4": compliance.Fail, "AU-9": compliance.NotEvidenced, "AU-9(3)": compliance.Pass, "AU-11": compliance.NotEvidenced, "SI-4": compliance.NotEvidenced, "CC7.2": compliance.NotEvidenced}
	if r.Facts["actions.errors"] > 0 {
		want["CC7.2"] = compliance.Fail
	}
	for _, c := range r.Controls {
		if w, ok := want[c.ID]; ok && c.Status != w {
			t.Errorf("%s: %s (%v), want %s", c.ID, c.Status, c.Because, w)
		}
		if len(c.Because) == 0 {
			t.Errorf("%s: %s with no reason", c.ID, c.Status)
		}
	}
	if len(r.Controls) != 13 {
		t.Errorf("%d controls evaluated", len(r.Controls))
	}
}

func TestBuildRefusesAFailedVerdict(t *testing.T) {
	for _, rep := range []*forensic.Report{nil, {OK: false, Problem: &forensic.Problem{Reason: "MAC invalid"}}} {
		if _, err := Build(Input{Dir: t.TempDir(), Verify: rep}); !errors.Is(err, ErrNotVerified) {
			t.Errorf("Build over %+v: %v", rep, err)
		}
	}
}

// Past its limits the report keeps rows for the first keys and sums the
// rest, saying exactly how many more there were; memory does not follow
// the number of keys.
func TestBoundedKeys(t *testing.T) {
	c := newCollector(Limits{Tenants: 3, Processes: 5, History: 4})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var restBuffers, restTenantBuffers uint64
	const tenants, pids = 50, 400
	for i := 0; i < 4000; i++ {
		pid, tenant := 100+i%pids, fmt.Sprintf("t%02d", i%tenants)
		b, _ := json.Marshal(trailevent.Buffer{Ev: trailevent.EvAllocate, H: uint64(i + 1), Tenant: tenant, PID: pid, Bytes: 4096})
		c.add(uint64(i), t0.Add(time.Duration(i)*time.Second), true, b)
		if i%pids >= 5 {
			restBuffers++
		}
		if i%tenants >= 3 {
			restTenantBuffers++
		}
		if i%100 == 0 {
			b, _ := json.Marshal(trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: 1})
			c.add(uint64(i), t0.Add(time.Duration(i)*time.Second), true, b)
		}
	}
	r := c.finish()
	if len(r.Tenants.Rows) != 3 || r.Tenants.More != tenants-3 || r.Tenants.Rest.Buffers != restTenantBuffers {
		t.Errorf("tenants: %d rows, %d more, rest %d buffers (want 3, %d, %d)", len(r.Tenants.Rows), r.Tenants.More, r.Tenants.Rest.Buffers, tenants-3, restTenantBuffers)
	}
	if len(r.Processes.Rows) != 5 || r.Processes.More != pids-5 || r.Processes.Rest.Buffers != restBuffers {
		t.Errorf("processes: %d rows, %d more, rest %d buffers (want 5, %d, %d)", len(r.Processes.Rows), r.Processes.More, r.Processes.Rest.Buffers, pids-5, restBuffers)
	}
	if len(r.History.Runs) != 4 || r.History.RunsMore != 36 {
		t.Errorf("runs: %d kept, %d more", len(r.History.Runs), r.History.RunsMore)
	}
	if r.Timeline.Buckets > maxBuckets || r.Node.Buffers != 4000 {
		t.Errorf("%d buckets, %d buffers", r.Timeline.Buckets, r.Node.Buffers)
	}
	// Kinds and actions from the trail are bounded too.
	for i := 0; i < 3*maxKinds; i++ {
		b, _ := json.Marshal(trailevent.Violation{Ev: trailevent.EvViolation, Kind: fmt.Sprintf("k%d", i), PID: 100, Tenant: "t00"})
		c.add(1, t0, true, b)
	}
	if len(c.node.ByKind) > maxKinds+1 || c.node.ByKind[otherKey] != 2*maxKinds {
		t.Errorf("%d kinds kept, %d under %s", len(c.node.ByKind), c.node.ByKind[otherKey], otherKey)
	}
}

// Widening the timeline as the span grows gives exactly the counts of
// bucketing every record at the final width.
func TestTimelineWidensExactly(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	for trial := 0; trial < 50; trial++ {
		var c clock
		var s series
		t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
		span := time.Duration(rng.Int64N(int64(400 * 24 * time.Hour)))
		var ts []time.Time
		for i := 0; i < 500; i++ {
			// mostly forward, sometimes a step back
			ts = append(ts, t0.Add(time.Duration(float64(span)*float64(i)/500)+time.Duration(rng.IntN(3000)-1000)*time.Millisecond))
		}
		for _, x := range ts {
			s.add(&c, c.bucket(x), 1)
		}
		n := c.buckets()
		got := s.final(&c, n)
		want := make([]uint64, n)
		w := width(c.w)
		for _, x := range ts {
			off := x.Sub(c.origin)
			if off < 0 {
				off = 0
			}
			want[off/w]++
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || n > maxBuckets {
			t.Fatalf("trial %d (span %v, width %v): got %v, want %v", trial, span, w, got, want)
		}
	}
}

// The page loads nothing from anywhere: no script, no external style, font
// or image; and text from the trail is escaped, never markup.
func TestHTMLIsSelfContainedAndEscaped(t *testing.T) {
	k := newKeys(t)
	dir := filepath.Join(t.TempDir(), "trail")
	l, err := forensic.Open(dir, forensic.Options{Signer: k.signer, TickInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	evil := `<script>alert(1)</script><img src="https://evil.example/x.png">`
	for _, b := range []any{
		trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: 1, Version: evil, Host: evil},
		trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: trailevent.Identity{PID: 7, Comm: evil, Tenant: evil, TenantSource: "claim", ClaimedTenant: evil}},
		trailevent.Buffer{Ev: trailevent.EvAllocate, H: 1, Tenant: evil, PID: 7, Bytes: 10},
		trailevent.Violation{Ev: trailevent.EvViolation, Kind: evil, PID: 7, Tenant: evil, Detail: evil},
		trailevent.Action{Ev: trailevent.EvAction, Action: evil, PID: 7, Tenant: evil, Result: evil},
		trailevent.Posture{Ev: trailevent.EvPosture, Source: evil, NVML: evil, Driver: evil},
		map[string]any{"ev": evil},
	} {
		if _, err := l.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	r := build(t, dir, k, true)
	var html bytes.Buffer
	if err := r.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	page := html.String()
	for _, bad := range []string{"<script", "<img", "<link", "@import", "url(", "<iframe", "<object", "<embed", "<base"} {
		if strings.Contains(strings.ToLower(page), bad) {
			i := strings.Index(strings.ToLower(page), bad)
			t.Errorf("the page holds %q: …%s…", bad, page[max(0, i-80):min(len(page), i+80)])
		}
	}
	for _, tag := range regexp.MustCompile(`<[a-zA-Z][^>]*>`).FindAllString(page, -1) {
		if strings.Contains(regexp.MustCompile(`"[^"]*"`).ReplaceAllString(tag, `""`), "://") {
			t.Errorf("a tag refers outside the page: %s", tag)
		}
		for _, m := range regexp.MustCompile(`\s(src|href|xlink:href)="([^"]*)"`).FindAllStringSubmatch(tag, -1) {
			if !strings.HasPrefix(m[2], "#") {
				t.Errorf("a tag loads %s: %s", m[2], tag)
			}
		}
	}
	if !strings.Contains(page, "&lt;script&gt;") {
		t.Error("the trail's text does not appear escaped")
	}
	var md bytes.Buffer
	if err := r.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md.String(), "<script") {
		t.Error("markdown passes the trail's markup through")
	}
}

// The three formats carry the same sections and numbers.
func TestFormats(t *testing.T) {
	k := newKeys(t)
	dir := synth{lifecycles: 400, tenants: 2, procs: 3, seed: 4}.write(t, k)
	r := build(t, dir, k, true)
	var js, md, html bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Node.BytesVerified != r.Node.BytesVerified || len(back.Tenants.Rows) != len(r.Tenants.Rows) || len(back.Controls) != 13 || back.Facts["sanitize.steps"] != float64(r.Node.SanitizeSteps) {
		t.Error("the JSON report does not round-trip the numbers")
	}
	if err := r.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	for _, sec := range []string{"1 Verdict", "2 Per tenant", "3 Per process", "4 Node posture over time", "5 Prune and key history", "6 Controls"} {
		if !strings.Contains(md.String(), "## "+sec) || !strings.Contains(html.String(), sec+"</h2>") {
			t.Errorf("section %q missing from markdown or html", sec)
		}
	}
	for _, x := range []string{fmt.Sprint(r.Node.BytesZeroized), "Not checked", "no checkpoint kept off the node"} {
		if !strings.Contains(md.String(), x) {
			t.Errorf("markdown lacks %q", x)
		}
	}
	if !regexp.MustCompile(`data-k="bytes_zeroized" data-v="` + fmt.Sprint(r.Node.BytesZeroized) + `"`).MatchString(html.String()) {
		t.Error("html lacks the node's bytes zeroized")
	}
	// Without controls, no controls section.
	r.Controls = nil
	html.Reset()
	r.WriteHTML(&html)
	if strings.Contains(html.String(), `id="controls"`) {
		t.Error("a controls section without --controls")
	}
}

func TestStampsReadEveryRecord(t *testing.T) {
	k := newKeys(t)
	dir := synth{lifecycles: 500, tenants: 2, procs: 2, seed: 5, segBytes: 16 << 10}.write(t, k)
	st, err := openStamps(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	var n, last uint64
	for {
		s, ok, err := st.next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if n > 0 && s.seq != last+1 || s.ts.IsZero() {
			t.Fatalf("record %d: seq %d after %d, ts %v", n, s.seq, last, s.ts)
		}
		last = s.seq
		n++
	}
	if rep := verify(t, dir, k); n != rep.Records || len(st.files) < 3 {
		t.Errorf("read %d records from %d segments; the trail has %d", n, len(st.files), rep.Records)
	}
}
