package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"golang.org/x/mod/sumdb/note"
)

// A synthetic node's trail, written through forensic with the agent's
// typed bodies, and a tally of it computed from the files with nothing but
// encoding/json: the report's numbers are held to the tally.

type keys struct {
	signer   note.Signer
	verifier note.Verifier
	pub      string
}

func newKeys(t testing.TB) keys {
	t.Helper()
	dir := t.TempDir()
	skey, vkey, err := forensic.GenerateKeys(dir, "kvh-report-test")
	if err != nil {
		t.Fatal(err)
	}
	s, err := forensic.LoadSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := forensic.LoadVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return keys{s, v, vkey}
}

// synth describes a synthetic trail.
type synth struct {
	lifecycles int // buffer lifecycles (allocate, attest, free: about 3 records each)
	tenants    int
	procs      int
	phases     int           // the trail is written in phases ...
	pause      time.Duration // ... this far apart, so the timeline has buckets
	seed       uint64
	segBytes   int64
	// prefill writes an earlier agent run of this many lifecycles first;
	// prune then removes the segments that run filled (by retention). With
	// no prefill, prune keeps one rotated segment.
	prefill int
	prune   bool
}

var tenantNames = []string{"acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"}

func tenantName(i int) string {
	if i < len(tenantNames) {
		return tenantNames[i]
	}
	return fmt.Sprintf("tenant-%03d", i)
}

func ptr[T any](v T) *T { return &v }

// write writes the trail into a new directory and returns it.
func (s synth) write(t testing.TB, k keys) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "trail")
	seg := s.segBytes
	if seg == 0 {
		seg = 64 << 20
	}
	l, err := forensic.Open(dir, forensic.Options{Signer: k.signer, MaxSegmentBytes: seg, TickInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(s.seed, 7))
	put := func(b any) {
		if err := l.AppendAsync(b); err != nil {
			t.Fatal(err)
		}
	}
	pol := policy.Default()
	pol.OnViolation = "deny"
	start := func(witness bool, scrub int, reason string) {
		put(trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: trailevent.Version, Version: "test", PID: 4000 + rng.IntN(1000), Host: "gpu-node-7"})
		put(trailevent.Policy{Ev: trailevent.EvPolicy, Reason: reason, Policy: pol})
		put(trailevent.Posture{Ev: trailevent.EvPosture, ScrubOnFree: scrub, Source: "/proc/driver/nvidia/params", Driver: "550.54.15",
			Devices: []trailevent.Device{{Index: 0, UUID: "GPU-a", Name: "NVIDIA H100", MIG: true}, {Index: 1, UUID: "GPU-b", Name: "NVIDIA H100"}}, Witness: witness})
	}
	var cutoff time.Time
	if s.prefill > 0 {
		start(true, -1, "start")
		id := trailevent.Identity{PID: 9000, UID: 1000, Comm: "vllm", Tenant: tenantName(0), TenantSource: "pod"}
		put(trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: id, Mode: "enforce", Verify: "sample"})
		cov, ok := 100.0, true
		for i := 0; i < s.prefill; i++ {
			base := trailevent.Buffer{H: uint64(1e9 + i), Kind: "remote", Tenant: id.Tenant, PID: id.PID}
			b := base
			b.Ev, b.Bytes = trailevent.EvAllocate, 1<<20
			put(b)
			b = base
			b.Ev, b.Bytes, b.Coverage, b.Verified, b.DurNS = trailevent.EvAttest, 1<<20, &cov, &ok, 90_000
			put(b)
			b = base
			b.Ev, b.Coverage = trailevent.EvFree, &cov
			put(b)
		}
		put(trailevent.ProcessDisconnected{Ev: trailevent.EvProcessDisconnected, PID: id.PID, Tenant: id.Tenant})
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond)
		cutoff = time.Now()
		time.Sleep(100 * time.Millisecond)
	}
	start(true, 1, "start")
	type proc struct {
		pid    int
		tenant string
	}
	procs := make([]proc, s.procs)
	for i := range procs {
		procs[i] = proc{pid: 10_000 + i, tenant: tenantName(i % s.tenants)}
		id := trailevent.Identity{PID: procs[i].pid, UID: uint32(1000 + i%s.tenants), Comm: []string{"vllm", "trtllm-serve", "python3"}[i%3],
			Tenant: procs[i].tenant, TenantSource: "pod", PodUID: fmt.Sprintf("pod-%04d", i)}
		if i%5 == 4 {
			id.ClaimedTenant = "acme"
		}
		put(trailevent.ProcessConnected{Ev: trailevent.EvProcessConnected, Identity: id, Mode: "enforce", Verify: "sample"})
	}
	phases := max(s.phases, 1)
	h := uint64(0)
	for ph := 0; ph < phases; ph++ {
		if ph > 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(s.pause)
		}
		if ph == phases/2 && phases > 1 {
			// the agent restarts with the witness off on a node whose
			// driver scrub is disabled, then reloads its policy
			start(false, 0, "start")
			pol.CoverageThreshold = 100
			put(trailevent.Policy{Ev: trailevent.EvPolicy, Reason: "reload", Policy: pol})
		}
		for i := ph * s.lifecycles / phases; i < (ph+1)*s.lifecycles/phases; i++ {
			p := procs[rng.IntN(len(procs))]
			h++
			size := int64(4096) << rng.IntN(12)
			base := trailevent.Buffer{H: h, Kind: "remote", Tenant: p.tenant, PID: p.pid, Device: "0", Framework: "device"}
			b := base
			b.Ev, b.To, b.Bytes, b.MaxReuse = trailevent.EvAllocate, "allocated", size, ptr(0)
			put(b)
			cov, ok := 100.0, true
			switch r := rng.IntN(200); {
			case r == 0:
				cov, ok = 40, false
			case r < 3:
				cov = 99.95
			}
			b = base
			b.Ev, b.From, b.To, b.Bytes, b.Coverage, b.Verified = trailevent.EvAttest, "allocated", "sanitized", size, &cov, &ok
			b.Method, b.Seed, b.DurNS = "cuMemFree_v2+sample", rng.Uint64(), int64(500+rng.IntN(4_000_000))
			if rng.IntN(50) == 0 {
				b.DurNS = 0 // a step that recorded no duration
			}
			put(b)
			switch r := rng.IntN(400); {
			case !ok || r == 0:
				b = base
				b.Ev, b.From, b.To, b.Reason = trailevent.EvQuarantine, "sanitized", "quarantined", "interposer: verify failed"
				put(b)
				put(trailevent.Violation{Ev: trailevent.EvViolation, Kind: "quarantined_buffer", PID: p.pid, Tenant: p.tenant, Detail: "verify failed", Source: "ingest", Action: "deny"})
				put(trailevent.Action{Ev: trailevent.EvAction, Action: "deny", PID: p.pid, Tenant: p.tenant, Kind: "quarantined_buffer", Result: "ok"})
			case r == 1:
				b = base
				b.Ev, b.From, b.To = trailevent.EvReuse, "sanitized", "in_use"
				put(b)
				put(trailevent.Violation{Ev: trailevent.EvViolation, Kind: "reuse_limit_exceeded", PID: p.pid, Tenant: p.tenant, Source: "ledger", Action: "kill"})
				put(trailevent.Action{Ev: trailevent.EvAction, Action: "kill", PID: p.pid, Tenant: p.tenant, Kind: "reuse_limit_exceeded", Result: "error: timed out"})
			case r == 2:
				put(trailevent.Violation{Ev: trailevent.EvViolation, Kind: "free_without_sanitize", PID: p.pid, Tenant: p.tenant, Source: "ledger", Action: "deny"})
				put(trailevent.Action{Ev: trailevent.EvAction, Action: "deny", PID: p.pid, Tenant: p.tenant, Kind: "free_without_sanitize", Result: "ok"})
				fallthrough
			default:
				b = base
				b.Ev, b.From, b.To, b.Coverage = trailevent.EvFree, "sanitized", "freed", &cov
				put(b)
			}
			if rng.IntN(2000) == 0 {
				put(trailevent.Anomaly{Ev: trailevent.EvAnomaly, H: h, Tenant: p.tenant, Metric: "sanitize_duration_us", Value: 9000, Mean: 100, Std: 20, Z: 445})
			}
		}
		// a process that bypasses the interposer, seen by the witness
		put(trailevent.Violation{Ev: trailevent.EvViolation, Kind: "uncovered_process", PID: 31_337 + ph, Tenant: "uid:1001", Source: "witness", Action: "deny"})
		put(trailevent.Violation{Ev: trailevent.EvViolation, Kind: "unattested_free", PID: 31_337 + ph, Tenant: "uid:1001", Source: "witness", Action: "deny"})
		put(trailevent.Action{Ev: trailevent.EvAction, Action: "deny", PID: 31_337 + ph, Tenant: "uid:1001", Kind: "uncovered_process", Result: "ok"})
	}
	p := procs[0]
	put(trailevent.InterposerDrops{Ev: trailevent.EvInterposerDrops, PID: p.pid, Tenant: p.tenant, Count: 17})
	put(trailevent.FloodSummary{Ev: trailevent.EvFloodSummary, PID: p.pid, Tenant: p.tenant, FromNS: 1, ToNS: 2, Events: 900, Allocs: 400, AllocBytes: 1 << 20, Frees: 400, FreeBytes: 1 << 20, Unverified: 2, Other: 100})
	put(trailevent.ViolationsOverflow{Ev: trailevent.EvViolationsOverflow, Kind: "unattested_free", Count: 5})
	put(map[string]any{"ev": "gpu_reset", "device": 1}) // a newer agent's event: counted as unknown
	for _, pr := range procs {
		put(trailevent.ProcessDisconnected{Ev: trailevent.EvProcessDisconnected, PID: pr.pid, Tenant: pr.tenant})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if s.prune {
		o := forensic.PruneOptions{Signer: k.signer, Verifier: k.verifier, RetentionDays: -1, MaxRotated: 1, Reason: "test: keep one rotated segment"}
		if s.prefill > 0 {
			o.RetentionDays, o.MaxRotated, o.Now, o.Reason = 1, -1, cutoff.Add(24*time.Hour), "retention: 1 day"
		}
		rep, err := forensic.Prune(dir, o)
		if err != nil || !rep.OK {
			t.Fatalf("prune: %v %+v", err, rep)
		}
	}
	return dir
}

// verify runs forensic.Verify and fails the test unless the trail verifies.
func verify(t testing.TB, dir string, k keys) *forensic.Report {
	t.Helper()
	rep, err := forensic.Verify(dir, forensic.VerifyOptions{Verifier: k.verifier})
	if err != nil || !rep.OK {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	return rep
}

// counts is one key's tally, named as the report's data-k attributes.
type counts map[string]int64

// tally is the trail's numbers, computed from the segment files alone.
type tally struct {
	node    counts
	tenants map[string]counts
	pids    map[string]counts
	events  map[string]int64
	posture counts
	records int64
}

func readTally(t testing.TB, dir string) tally {
	t.Helper()
	ty := tally{node: counts{}, tenants: map[string]counts{}, pids: map[string]counts{}, events: map[string]int64{}, posture: counts{}}
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, k := range []string{"agent_start", "policy", "posture", "process_connected", "process_disconnected", "interposer_drops", "allocate", "bind", "write", "reuse",
		"quarantine", "sanitize", "sanitize_start", "sanitize_end", "attest", "double_free", "free", "release", "retire", "anomaly", "violation", "violations_overflow", "action", "flood_summary"} {
		known[k] = true
	}
	for _, f := range files {
		if filepath.Base(f) == forensic.CheckpointFile {
			continue
		}
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<21)
		for sc.Scan() {
			var rec struct {
				Kind string         `json:"kind"`
				Body map[string]any `json:"body"`
			}
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			ty.records++
			if rec.Kind != "event" {
				continue
			}
			ev, _ := rec.Body["ev"].(string)
			ty.node["events"]++
			if !known[ev] {
				ty.events["unknown:"+ev]++
				continue
			}
			ty.events[ev]++
			str := func(k string) string { s, _ := rec.Body[k].(string); return s }
			n := func(k string) int64 { f, _ := rec.Body[k].(float64); return int64(f) }
			tenant, pid := str("tenant"), n("pid")
			if ev == "process_connected" {
				id := rec.Body["identity"].(map[string]any)
				tenant, pid = id["tenant"].(string), int64(id["pid"].(float64))
			}
			if tenant == "" {
				tenant = "(none)"
			}
			each := func(k string, v int64) {
				ty.node[k] += v
				if ty.tenants[tenant] == nil {
					ty.tenants[tenant] = counts{}
				}
				ty.tenants[tenant][k] += v
				if pid != 0 && ev != "process_connected" {
					p := fmt.Sprint(pid)
					if ty.pids[p] == nil {
						ty.pids[p] = counts{}
					}
					ty.pids[p][k] += v
				}
			}
			switch ev {
			case "allocate":
				each("buffers", 1)
				each("bytes_allocated", n("bytes"))
			case "attest", "sanitize", "sanitize_end":
				each("sanitize_steps", 1)
				each("bytes_zeroized", n("bytes"))
				if v, _ := rec.Body["verified"].(bool); v {
					each("bytes_verified", n("bytes"))
				}
			case "quarantine":
				each("quarantines", 1)
			case "violation":
				each("violations", 1)
				each("kind:"+str("kind"), 1)
			case "action":
				each("actions", 1)
			case "process_connected":
				each("connections", 1)
			case "posture":
				ty.posture["posture_records"]++
				if n("scrub_on_free") == 0 {
					ty.posture["scrub_disabled"]++
				}
				if n("scrub_on_free") == -1 {
					ty.posture["scrub_unknown"]++
				}
				if w, _ := rec.Body["witness"].(bool); w {
					ty.posture["witness_on"]++
				} else {
					ty.posture["witness_off"]++
				}
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return ty
}

// statsCounts names a Stats the way the tally does.
func statsCounts(s *Stats) counts {
	c := counts{
		"buffers": int64(s.Buffers), "bytes_allocated": s.BytesAllocated, "sanitize_steps": int64(s.SanitizeSteps),
		"bytes_zeroized": s.BytesZeroized, "bytes_verified": s.BytesVerified, "quarantines": int64(s.Quarantines),
		"violations": int64(s.Violations), "actions": int64(s.Actions),
	}
	for k, v := range s.ByKind {
		c["kind:"+k] = int64(v)
	}
	return c
}

// sameCounts reports the keys where got differs from want, over want's
// keys plus got's nonzero ones.
func sameCounts(got, want counts) string {
	var diff []string
	for k, w := range want {
		if k == "connections" {
			continue
		}
		if got[k] != w {
			diff = append(diff, fmt.Sprintf("%s %d, want %d", k, got[k], w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && g != 0 {
			diff = append(diff, fmt.Sprintf("%s %d, want 0", k, g))
		}
	}
	return strings.Join(diff, "; ")
}
