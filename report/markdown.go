package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// WriteJSON writes the report as indented JSON (the Report struct).
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// mdEscape keeps trail-supplied text from breaking a Markdown table.
func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "`", "'", "<", "&lt;").Replace(s)
}

func mdKinds(m map[string]uint64) string {
	var s []string
	for _, k := range sortedKeys(m) {
		s = append(s, fmt.Sprintf("%s %d", mdEscape(k), m[k]))
	}
	if len(s) == 0 {
		return "—"
	}
	return strings.Join(s, ", ")
}

func mdActions(m map[string]*ActionCounts) string {
	var s []string
	for _, k := range sortedKeys(m) {
		x := fmt.Sprintf("%s %d ok", mdEscape(k), m[k].OK)
		if m[k].Error > 0 {
			x += fmt.Sprintf(", %d error", m[k].Error)
		}
		s = append(s, x)
	}
	if len(s) == 0 {
		return "—"
	}
	return strings.Join(s, "; ")
}

func mdBuckets(b []Bucket) string {
	var s []string
	for _, x := range b {
		s = append(s, fmt.Sprintf("%s: %d", x.Label, x.Count))
	}
	return strings.Join(s, " · ")
}

// WriteMarkdown writes the report as Markdown: the same sections and
// numbers as the HTML, with distributions and timelines as text.
func (r *Report) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(f string, a ...any) { fmt.Fprintf(bw, f, a...) }
	v := r.Verdict
	p("# kvh evidence report\n\n")
	p("Trail `%s`, origin `%s`. Period %s to %s (%s). Drawn %s by kvh-verify %s.\n\n", mdEscape(r.Trail), mdEscape(v.Origin),
		tstamp(r.Period.First), tstamp(r.Period.Last), human(time.Duration(r.Period.Seconds*float64(time.Second))), tstamp(r.Generated), mdEscape(r.Tool))

	p("## 1 Verdict\n\n**VERIFIED**: %d records (seq %d–%d) in %d segment(s), %d bytes; signatures %s", v.Records, v.FirstSeq, v.LastSeq, v.Segments, v.Bytes, v.Signatures)
	if v.Key != "" {
		p(" with `%s`", v.Key)
	}
	p("; MACs %s.\n\n**Checked**\n\n", v.MAC)
	for _, x := range v.Checked {
		p("- %s\n", mdEscape(x))
	}
	p("\n**Not checked**\n\n")
	for _, x := range v.NotChecked {
		p("- %s\n", mdEscape(x))
	}
	for _, x := range v.Warnings {
		p("- warning: %s\n", mdEscape(x))
	}
	n := r.Node
	p("\n**What the trail holds**: %d events from %d agent run(s); %d buffers, %d bytes allocated, %d bytes zeroized, %d bytes verified zero in %d sanitize steps; %d quarantines; %d violations; %d actions (%d errors).\n\n",
		r.Events.Total, r.Events.ByName["agent_start"], n.Buffers, n.BytesAllocated, n.BytesZeroized, n.BytesVerified, n.SanitizeSteps, n.Quarantines, n.Violations, n.Actions, n.ActionErrors)
	p("Events by name: %s.\n\n", mdKinds(r.Events.ByName))
	if r.Events.UnknownTotal > 0 {
		p("Unknown events (counted, not summarised): %s.\n\n", mdKinds(r.Events.Unknown))
	}
	if r.Events.Malformed > 0 {
		p("Malformed events: %d; the first: %s.\n\n", r.Events.Malformed, mdEscape(r.Events.FirstMalformed))
	}
	if len(r.Events.Overflowed) > 0 {
		p("Violations counted but not recorded one by one: %s.\n\n", mdKinds(r.Events.Overflowed))
	}

	tl := r.Timeline
	width := time.Duration(tl.WidthSeconds * float64(time.Second))
	p("## 2 Per tenant\n\n### Violations over time (the node; %s buckets from %s)\n\n", human(width), tstamp(tl.Start))
	writeTimeline(p, n.Timeline, tl)
	p("### Tenants\n\n| tenant | connections | buffers | bytes allocated | bytes zeroized | bytes verified | sanitize steps | quarantines | violations | actions | violations by kind |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, t := range r.Tenants.Rows {
		p("| %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n", mdEscape(t.Name), t.Connections, t.Buffers, t.BytesAllocated, t.BytesZeroized, t.BytesVerified, t.SanitizeSteps, t.Quarantines, t.Violations, t.Actions, mdKinds(t.ByKind))
	}
	if r.Tenants.More > 0 {
		rs := r.Tenants.Rest
		p("| (%s%d more) | | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n", atLeast(r.Tenants.MoreAtLeast), r.Tenants.More, rs.Buffers, rs.BytesAllocated, rs.BytesZeroized, rs.BytesVerified, rs.SanitizeSteps, rs.Quarantines, rs.Violations, rs.Actions, mdKinds(rs.ByKind))
	}
	for _, t := range r.Tenants.Rows {
		p("\n#### %s\n\n- coverage: %s\n- sanitize latency: %s", mdEscape(t.Name), mdBuckets(t.Coverage), mdBuckets(t.Latency))
		if t.NoDuration > 0 {
			p(" (%d without a duration)", t.NoDuration)
		}
		p("\n- actions: %s\n", mdActions(t.ByAction))
		if t.Violations > 0 {
			p("- violations over time:\n\n")
			writeTimeline(p, t.Timeline, tl)
		}
	}

	p("\n## 3 Per process\n\n| pid | command | tenant (source) | uid | connected | disconnected | buffers | bytes zeroized | bytes verified | quarantines | violations | actions | violations by kind; actions |\n|--:|---|---|--:|---|---|--:|--:|--:|--:|--:|--:|---|\n")
	for _, x := range r.Processes.Rows {
		comm, src, uid := "(no interposer connection)", "", ""
		if id := x.Identity; id != nil {
			comm, src, uid = mdEscape(id.Comm), " ("+mdEscape(id.TenantSource)+")", fmt.Sprint(id.UID)
		}
		p("| %d | %s | %s%s | %s | %s | %s | %d | %d | %d | %d | %d | %d | %s; %s |\n", x.PID, comm, mdEscape(x.Tenant), src, uid, tsp(x.Connected), tsp(x.Disconnected),
			x.Buffers, x.BytesZeroized, x.BytesVerified, x.Quarantines, x.Violations, x.Actions, mdKinds(x.ByKind), mdActions(x.ByAction))
	}
	if r.Processes.More > 0 {
		rs := r.Processes.Rest
		p("| (%s%d more) | | | | | | %d | %d | %d | %d | %d | %d | %s |\n", atLeast(r.Processes.MoreAtLeast), r.Processes.More, rs.Buffers, rs.BytesZeroized, rs.BytesVerified, rs.Quarantines, rs.Violations, rs.Actions, mdKinds(rs.ByKind))
	}

	ps := r.Posture
	p("\n## 4 Node posture over time\n\n%d posture record(s): scrub-on-free disabled in %d, unknown in %d; witness on in %d, off in %d.\n\n", ps.Total, ps.ScrubDisabled, ps.ScrubUnknown, ps.WitnessOn, ps.WitnessOff)
	p("| time | seq | scrub-on-free | read from | GPUs | MIG | witness |\n|---|--:|--:|---|--:|--:|---|\n")
	for _, x := range ps.Records {
		p("| %s | %d | %d | %s | %d | %d | %v |\n", tstamp(x.TS), x.Seq, x.ScrubOnFree, mdEscape(x.Source), x.GPUs, x.MIG, x.Witness)
	}
	if ps.More > 0 {
		p("| (%d more) | | | | | | |\n", ps.More)
	}
	p("\nUncovered processes over time:\n\n")
	writeTimeline(p, []KindSeries{{"uncovered_process", ps.Uncovered}, {"unattested_free", ps.Unattested}}, tl)

	h := r.History
	p("## 5 Prune and key history\n\nSigning key: ")
	if h.Key != "" {
		p("`%s`, signatures %s on %d checkpoint(s).", h.Key, h.Signatures, v.Checkpoints)
	} else {
		p("not checked.")
	}
	p(" Record MACs: %s (declared: %s).\n\n", h.MAC, strings.Join(h.MACAlgs, ", "))
	if len(h.KeyEpochs) > 0 {
		p("| signing key | first seq | last seq | trusted because | retired by rekey at seq | sealed at size | MAC key | MACs |\n|---|--:|--:|---|--:|--:|---|---|\n")
		for _, k := range h.KeyEpochs {
			why := "introduced by a sealed rekey record"
			if k.Trusted {
				why = "given by the auditor"
			}
			if k.Pruned {
				why += " (pruned)"
			}
			retired, seal := "", ""
			if k.RekeySeq != nil {
				retired, seal = fmt.Sprint(*k.RekeySeq), fmt.Sprint(k.SealSize)
			}
			p("| `%s` | %d | %d | %s | %s | %s | `%s` | %s |\n", k.Key, k.FirstSeq, k.LastSeq, why, retired, seal, k.MACKeyID, mdEscape(k.MAC))
		}
		p("\n")
	}
	for _, x := range h.Rekeys {
		p("- **rekey** at seq %d (%s): %s\n", x.Seq, tstamp(x.TS), mdEscape(x.Detail))
	}
	if len(h.Rekeys) > 0 {
		p("\n")
	}
	if len(h.Prunes) == 0 {
		p("No prune record: every segment since the trail began is here.\n\n")
	} else {
		p("| time | seq | before segment | before seq | reason | files |\n|---|--:|--:|--:|---|--:|\n")
		for _, x := range h.Prunes {
			p("| %s | %d | %d | %d | %s | %d |\n", tstamp(x.TS), x.Seq, x.BeforeSegment, x.BeforeSeq, mdEscape(x.Reason), x.Files)
		}
		p("\n")
	}
	for _, x := range h.Tamper {
		p("- **tamper detected**: %s seq %d: %s (evidence in `%s`)\n", mdEscape(x.File), x.Seq, mdEscape(x.Found), mdEscape(x.Evidence))
	}
	p("Segments: ")
	for i, x := range h.Segments {
		if i > 0 {
			p("; ")
		}
		p("%s at seq %d (%s)", mdEscape(x.Detail), x.Seq, tstamp(x.TS))
	}
	if h.SegMore > 0 {
		p("; (%d more)", h.SegMore)
	}
	p(". %d clean close(s), %d idle heartbeat(s).\n\n", h.Closes, h.Ticks)
	for _, x := range h.Other {
		p("- record of kind `%s` at seq %d (%s)\n", mdEscape(x.Kind), x.Seq, tstamp(x.TS))
	}
	p("| agent run | seq | version | host | pid | schema |\n|---|--:|---|---|--:|--:|\n")
	for _, x := range h.Runs {
		p("| %s | %d | %s | %s | %d | %d |\n", tstamp(x.TS), x.Seq, mdEscape(x.Version), mdEscape(x.Host), x.PID, x.Schema)
	}
	p("\n| policy | seq | reason | coverage threshold | verify | on violation | max reuse | tenant overrides |\n|---|--:|---|--:|---|---|--:|--:|\n")
	for _, x := range h.Policies {
		p("| %s | %d | %s | %g | %s | %s | %d | %d |\n", tstamp(x.TS), x.Seq, mdEscape(x.Reason), x.CoverageThreshold, x.Verify, x.OnViolation, x.MaxReuse, x.Overrides)
	}

	if len(r.Controls) > 0 {
		p("\n## 6 Controls\n\n| control | framework | title | outcome | because |\n|---|---|---|---|---|\n")
		for _, c := range r.Controls {
			p("| %s | %s | %s | **%s** | %s |\n", mdEscape(c.ID), mdEscape(c.Framework), mdEscape(c.Title), c.Status, mdEscape(strings.Join(c.Because, "; ")))
		}
	}
	p("\n---\nEvery number is a count over the records of a trail that verified; see the HTML report's glossary for what each counts.\n")
	return bw.Flush()
}

func atLeast(b bool) string {
	if b {
		return "at least "
	}
	return ""
}

// writeTimeline writes the non-empty buckets of the series as a table.
func writeTimeline(p func(string, ...any), ss []KindSeries, tl Timeline) {
	width := time.Duration(tl.WidthSeconds * float64(time.Second))
	var rows []string
	for i := 0; i < tl.Buckets; i++ {
		var cells []string
		any := false
		for _, s := range ss {
			c := uint64(0)
			if i < len(s.Counts) {
				c = s.Counts[i]
			}
			any = any || c > 0
			cells = append(cells, fmt.Sprint(c))
		}
		if any {
			rows = append(rows, fmt.Sprintf("| %s | %s |", tstamp(tl.Start.Add(time.Duration(i)*width)), strings.Join(cells, " | ")))
		}
	}
	if len(rows) == 0 {
		p("None.\n\n")
		return
	}
	var head []string
	for _, s := range ss {
		head = append(head, mdEscape(s.Kind))
	}
	p("| from | %s |\n|---|%s\n", strings.Join(head, " | "), strings.Repeat("--:|", len(ss)))
	for _, r := range rows {
		p("%s\n", r)
	}
	p("\n")
}
