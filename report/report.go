package report

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/kvhygiene/kvh/compliance"
	"github.com/kvhygiene/kvh/forensic"
)

// ErrNotVerified is returned by Build for a trail whose verdict is not OK:
// a report is never drawn over a trail that fails verification.
var ErrNotVerified = errors.New("the trail did not verify: no report is drawn over it")

// Input is what Build reads: a trail that forensic.Verify passed, the
// verdict, and what the auditor gave to reach it.
type Input struct {
	Dir    string
	Verify *forensic.Report
	// Key names the verification key ("name+hash"); empty when signatures
	// were not checked.
	Key string
	// OffNode is how many checkpoints kept off the node were given.
	OffNode int
	// Controls, when set, are evaluated on the trail.
	Controls *compliance.File
	// Tool is the version of the program drawing the report.
	Tool string
	// Now is when the report is drawn (the zero time: time.Now()).
	Now time.Time
	// Limits bound what the report keeps; the zero value is DefaultLimits.
	Limits Limits
}

// Limits bound how many distinct keys the report keeps one by one; past
// them, keys are summed into one row that says how many more there were.
type Limits struct {
	Tenants   int // tenant rows
	Processes int // process rows
	History   int // entries in each history list (runs, policies, posture, segments, …)
}

// DefaultLimits are the limits Build uses when Input.Limits is zero.
var DefaultLimits = Limits{Tenants: 64, Processes: 256, History: 200}

// Report is everything the report shows. It is what --format json writes.
type Report struct {
	Trail     string    `json:"trail"`
	Generated time.Time `json:"generated"`
	Tool      string    `json:"tool"`
	Verdict   Verdict   `json:"verdict"`
	Period    Period    `json:"period"`
	Events    Events    `json:"events"`
	// Node sums every record, whatever its tenant or process.
	Node Stats `json:"node"`
	// Timeline describes the buckets every timeline in the report uses;
	// Activity holds the node's allocations, sanitize steps, quarantines
	// and actions per bucket.
	Timeline  Timeline            `json:"timeline"`
	Activity  []KindSeries        `json:"activity"`
	Tenants   Group[*Tenant]      `json:"tenants"`
	Processes Group[*Process]     `json:"processes"`
	Posture   Posture             `json:"posture"`
	History   History             `json:"history"`
	Controls  []compliance.Result `json:"controls,omitempty"`
	Facts     map[string]float64  `json:"facts"`
	Limits    Limits              `json:"limits"`
}

// Verdict is the verification the report rests on, and what it did not
// check.
type Verdict struct {
	Verified         bool     `json:"verified"`
	Origin           string   `json:"origin"`
	Records          uint64   `json:"records"`
	FirstSeq         uint64   `json:"first_seq"`
	LastSeq          uint64   `json:"last_seq"`
	Segments         int      `json:"segments"`
	Bytes            int64    `json:"bytes"`
	Checkpoints      int      `json:"checkpoints_matched"`
	LatestCheckpoint uint64   `json:"latest_checkpoint_size"`
	OffNodeGiven     int      `json:"offnode_checkpoints_given"`
	OffNodeMatched   int      `json:"offnode_checkpoints_matched"`
	Signatures       string   `json:"signatures"`
	Key              string   `json:"key,omitempty"`
	MAC              string   `json:"mac"`
	Unsealed         uint64   `json:"unsealed_records"`
	Open             bool     `json:"last_segment_open"`
	Warnings         []string `json:"warnings,omitempty"`
	// Checked lists what verification established; NotChecked what it did
	// not, and why that matters.
	Checked    []string `json:"checked"`
	NotChecked []string `json:"not_checked"`
}

// Period is the span of the trail's timestamps.
type Period struct {
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
	Seconds float64   `json:"seconds"`
}

// Timeline says how the report's timelines bucket time.
type Timeline struct {
	Start        time.Time `json:"start"`
	WidthSeconds float64   `json:"bucket_seconds"`
	Buckets      int       `json:"buckets"`
	// Before counts records stamped before the first record (a clock set
	// back), placed in the first bucket; Untimed counts events whose
	// record had no readable timestamp, left out of every timeline.
	Before  uint64 `json:"stamped_before_first,omitempty"`
	Untimed uint64 `json:"untimed,omitempty"`
}

// Events counts the trail's event records.
type Events struct {
	Total  uint64            `json:"total"`
	ByName map[string]uint64 `json:"by_name"`
	// Unknown counts events by a name this kvh does not know (a newer
	// agent's, or none); Malformed those whose type does not fit them.
	Unknown        map[string]uint64 `json:"unknown,omitempty"`
	UnknownTotal   uint64            `json:"unknown_total"`
	Malformed      uint64            `json:"malformed"`
	FirstMalformed string            `json:"first_malformed,omitempty"`
	// Overflowed sums violations_overflow counts by kind.
	Overflowed map[string]uint64 `json:"violations_overflowed,omitempty"`
	Schemas    []int             `json:"schema_versions"`
}

// Group is rows kept one by one up to a limit, and the rest summed.
type Group[T any] struct {
	Rows []T `json:"rows"`
	// More counts the distinct keys past the limit (at least More when
	// MoreAtLeast: past a second bound they are no longer told apart);
	// Rest sums their records.
	More        uint64 `json:"more"`
	MoreAtLeast bool   `json:"more_at_least,omitempty"`
	Rest        Stats  `json:"rest"`
}

// Tenant is one tenant's row.
type Tenant struct {
	Name string `json:"name"`
	// Connections counts process_connected records for the tenant.
	Connections uint64 `json:"connections"`
	Stats
}

// Process is one process's row: one connection of a pid (a pid that
// reconnects after its connection ended is a new row), or a pid seen only
// in violations (a process without the interposer).
type Process struct {
	PID              int        `json:"pid"`
	Tenant           string     `json:"tenant"`
	Connected        *time.Time `json:"connected,omitempty"`
	Disconnected     *time.Time `json:"disconnected,omitempty"`
	DisconnectReason string     `json:"disconnect_reason,omitempty"`
	OpenAtExit       int        `json:"open_buffers_at_disconnect,omitempty"`
	// Identity is from the process_connected record (nil for a process that
	// never connected).
	Identity *Identity `json:"identity,omitempty"`
	Stats
	closed bool
}

// Identity is what the agent recorded about a connected process.
type Identity struct {
	UID           uint32 `json:"uid"`
	Comm          string `json:"comm,omitempty"`
	TenantSource  string `json:"tenant_source"`
	ClaimedTenant string `json:"claimed_tenant,omitempty"`
	PodUID        string `json:"pod_uid,omitempty"`
	ContainerID   string `json:"container_id,omitempty"`
	Mode          string `json:"mode,omitempty"`
	Verify        string `json:"verify,omitempty"`
}

// Posture is the node's posture over time.
type Posture struct {
	Records []PostureRecord `json:"records"`
	More    uint64          `json:"more"`
	// Counts over every posture record.
	Total         uint64 `json:"total"`
	ScrubDisabled uint64 `json:"scrub_disabled"`
	ScrubUnknown  uint64 `json:"scrub_unknown"`
	WitnessOn     uint64 `json:"witness_on"`
	WitnessOff    uint64 `json:"witness_off"`
	// Uncovered and Unattested are the node's uncovered_process and
	// unattested_free violations per timeline bucket.
	Uncovered  []uint64 `json:"uncovered_process"`
	Unattested []uint64 `json:"unattested_free"`
}

// PostureRecord is one posture record.
type PostureRecord struct {
	TS          time.Time `json:"ts"`
	Seq         uint64    `json:"seq"`
	ScrubOnFree int       `json:"scrub_on_free"`
	Source      string    `json:"source"`
	NVML        string    `json:"nvml,omitempty"`
	Driver      string    `json:"driver,omitempty"`
	GPUs        int       `json:"gpus"`
	MIG         int       `json:"mig_devices"`
	Witness     bool      `json:"witness"`
}

// History is the trail's structure over time: keys, segments, prunes,
// agent runs and policies.
type History struct {
	Key        string   `json:"key,omitempty"`
	Signatures string   `json:"signatures"`
	MAC        string   `json:"mac"`
	MACAlgs    []string `json:"mac_algs"`
	Segments   []Entry  `json:"segments"`
	SegMore    uint64   `json:"segments_more"`
	Prunes     []Prune  `json:"prunes"`
	// KeyEpochs is the signing key history as the verdict followed it:
	// which key covered which seq range (several after a key rotation).
	KeyEpochs []forensic.KeyEpoch `json:"key_epochs,omitempty"`
	// Rekeys are the rekey records present in the trail.
	Rekeys []Entry `json:"rekeys,omitempty"`
	Closes uint64  `json:"closes"`
	Ticks  uint64  `json:"ticks"`
	// Tamper lists tamper_detected records as the verdict found them.
	Tamper []forensic.TamperBody `json:"tamper_detected,omitempty"`
	// Other lists records of kinds this kvh does not know.
	Other     []Entry  `json:"other_records,omitempty"`
	OtherMore uint64   `json:"other_records_more,omitempty"`
	Runs      []Run    `json:"agent_runs"`
	RunsMore  uint64   `json:"agent_runs_more"`
	Policies  []Policy `json:"policies"`
	PolMore   uint64   `json:"policies_more"`
}

// Entry is one structural record.
type Entry struct {
	Kind   string    `json:"kind"`
	Seq    uint64    `json:"seq"`
	TS     time.Time `json:"ts"`
	Detail string    `json:"detail,omitempty"`
}

// Prune is one prune record.
type Prune struct {
	Seq           uint64    `json:"seq"`
	TS            time.Time `json:"ts"`
	BeforeSegment uint64    `json:"before_segment"`
	BeforeSeq     uint64    `json:"before_seq"`
	Reason        string    `json:"reason"`
	Files         int       `json:"files"`
}

// Run is one agent_start record.
type Run struct {
	Seq     uint64    `json:"seq"`
	TS      time.Time `json:"ts"`
	Version string    `json:"version"`
	Host    string    `json:"host,omitempty"`
	PID     int       `json:"pid"`
	Schema  int       `json:"schema"`
}

// Policy is one policy record, summarised.
type Policy struct {
	Seq               uint64    `json:"seq"`
	TS                time.Time `json:"ts"`
	Reason            string    `json:"reason"`
	CoverageThreshold float64   `json:"coverage_threshold"`
	Verify            string    `json:"verify"`
	OnViolation       string    `json:"on_violation"`
	MaxReuse          int       `json:"max_reuse"`
	TTLSec            *float64  `json:"ttl_sec"`
	Overrides         int       `json:"tenant_overrides"`
}

// Build reads the verified trail in in.Dir once and returns its report. It
// refuses a verdict that is not OK (ErrNotVerified).
func Build(in Input) (*Report, error) {
	if in.Verify == nil || !in.Verify.OK {
		return nil, ErrNotVerified
	}
	if in.Limits == (Limits{}) {
		in.Limits = DefaultLimits
	}
	if in.Now.IsZero() {
		in.Now = time.Now()
	}
	c := newCollector(in.Limits)
	if err := c.read(in.Dir); err != nil {
		return nil, err
	}
	r := c.finish()
	r.Trail, r.Tool, r.Generated, r.Limits = in.Dir, in.Tool, in.Now.UTC(), in.Limits
	r.Verdict = verdict(in)
	r.History.Key, r.History.Signatures, r.History.MAC, r.History.Tamper = in.Key, in.Verify.Signatures, in.Verify.MAC, in.Verify.Tamper
	r.History.KeyEpochs = in.Verify.Keys
	r.Facts = facts(r, in)
	if in.Controls != nil {
		for _, ctl := range in.Controls.Controls {
			r.Controls = append(r.Controls, compliance.Evaluate(ctl, r.Facts))
		}
	}
	return r, nil
}

func verdict(in Input) Verdict {
	v := in.Verify
	out := Verdict{
		Verified: v.OK, Origin: v.Origin, Records: v.Records, FirstSeq: v.FirstSeq, Segments: v.Segments, Bytes: v.Bytes,
		Checkpoints: v.Checkpoints, LatestCheckpoint: v.LatestCheckpoint, OffNodeGiven: in.OffNode,
		OffNodeMatched: v.ExternalCheckpoints, Signatures: v.Signatures, Key: in.Key, MAC: v.MAC,
		Unsealed: v.Unsealed, Open: v.Open, Warnings: v.Warnings,
	}
	if v.Records > 0 {
		out.LastSeq = v.FirstSeq + v.Records - 1
	}
	add := func(s *[]string, f string, a ...any) { *s = append(*s, fmt.Sprintf(f, a...)) }
	add(&out.Checked, "the hash chain (seq and prev) of all %d records, seq %d to %d, in %d segment(s), and each segment's Merkle frontier", v.Records, v.FirstSeq, out.LastSeq, v.Segments)
	if in.Key != "" && v.Signatures == "verified" {
		add(&out.Checked, "the signatures of %d checkpoint(s) with %s; the latest attests %d records", v.Checkpoints, in.Key, v.LatestCheckpoint)
	} else {
		add(&out.NotChecked, "checkpoint signatures (%s): anyone could have rewritten the trail consistently", v.Signatures)
	}
	switch {
	case v.MAC == "verified":
		add(&out.Checked, "the HMAC of every record with the MAC key given")
	case strings.HasPrefix(v.MAC, "none"):
		add(&out.NotChecked, "record MACs: the trail declares none, so integrity rests on the signatures alone")
	default:
		add(&out.NotChecked, "record MACs: %s (give --hmac-key-file to check them)", v.MAC)
	}
	if in.OffNode > 0 {
		add(&out.Checked, "%d of %d checkpoint(s) kept off the node: the trail still holds everything they attest", v.ExternalCheckpoints, in.OffNode)
	} else {
		add(&out.NotChecked, "no checkpoint kept off the node was given: truncation together with deletion of the matching local checkpoints would not be detected")
	}
	for _, p := range v.Prunes {
		add(&out.Checked, "a signed prune record authorising removal before segment %d (seq %d): %s", p.BeforeSegment, p.BeforeSeq, p.Reason)
	}
	if v.Unsealed > 0 {
		add(&out.NotChecked, "%d record(s) after the latest checkpoint: no signature covers them, and the report counts them", v.Unsealed)
	}
	if v.Open {
		add(&out.NotChecked, "the last segment is still open (the writer is running, or stopped uncleanly): records may follow")
	}
	add(&out.NotChecked, "anything before the trail's first record, on another node, or that no record describes (see compliance/README.md: what kvh does not cover)")
	return out
}

// facts computes every compliance.Facts name from the report.
func facts(r *Report, in Input) map[string]float64 {
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	v := in.Verify
	f := map[string]float64{
		"trail.verified":            b(v.OK),
		"trail.records":             float64(v.Records),
		"trail.signatures_checked":  b(in.Key != "" && v.Signatures == "verified"),
		"trail.mac_declared":        b(!strings.HasPrefix(v.MAC, "none")),
		"trail.mac_checked":         b(v.MAC == "verified"),
		"trail.offnode_checkpoints": float64(v.ExternalCheckpoints),
		"trail.unsealed_records":    float64(v.Unsealed),
		"trail.prunes":              float64(len(v.Prunes)),
		"trail.tamper_detected":     float64(len(v.Tamper)),
		"trail.span_seconds":        r.Period.Seconds,
		"events.total":              float64(r.Events.Total),
		"events.unknown":            float64(r.Events.UnknownTotal),
		"events.malformed":          float64(r.Events.Malformed),
		"violations.total":          float64(r.Node.Violations),
		"actions.total":             float64(r.Node.Actions),
		"actions.errors":            float64(r.Node.ActionErrors),
		"sanitize.steps":            float64(r.Node.SanitizeSteps),
		"sanitize.unverified":       float64(r.Node.Unverified),
		"sanitize.partial":          float64(r.Node.Partial),
		"flood.events":              float64(r.Node.Flooded),
		"flood.unverified_frees":    float64(r.Node.FloodUnverified),
		"posture.records":           float64(r.Posture.Total),
		"posture.scrub_disabled":    float64(r.Posture.ScrubDisabled),
		"posture.scrub_unknown":     float64(r.Posture.ScrubUnknown),
		"posture.witness_on":        float64(r.Posture.WitnessOn),
		"posture.witness_off":       float64(r.Posture.WitnessOff),
	}
	var overflowed uint64
	for _, n := range r.Events.Overflowed {
		overflowed += n
	}
	f["violations.overflowed"] = float64(overflowed)
	for _, x := range compliance.Facts() {
		if k, ok := strings.CutPrefix(x.Name, "events."); ok {
			if _, set := f[x.Name]; !set {
				f[x.Name] = float64(r.Events.ByName[k])
			}
		}
		if k, ok := strings.CutPrefix(x.Name, "violations."); ok {
			if _, set := f[x.Name]; !set {
				f[x.Name] = float64(r.Node.ByKind[k])
			}
		}
	}
	return f
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
