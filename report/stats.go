package report

import (
	"strings"
	"time"

	"github.com/kvhygiene/kvh/trailevent"
)

// Stats are the counts the report keeps for the node, one tenant or one
// process. Every field is a sum over the trail's records; the report's
// glossary says which records each one counts.
type Stats struct {
	// Buffers counts allocate records; BytesAllocated sums their bytes.
	Buffers        uint64 `json:"buffers"`
	BytesAllocated int64  `json:"bytes_allocated"`
	// SanitizeSteps counts attest, sanitize and sanitize_end records;
	// BytesZeroized sums their bytes, BytesVerified the bytes of those
	// whose verification ran and passed (verified: true), Unverified counts
	// the others, and Partial those with coverage below 100%.
	SanitizeSteps uint64 `json:"sanitize_steps"`
	BytesZeroized int64  `json:"bytes_zeroized"`
	BytesVerified int64  `json:"bytes_verified"`
	Unverified    uint64 `json:"unverified_steps"`
	Partial       uint64 `json:"partial_steps"`
	// Frees, Releases, Retired, Reuses and DoubleFrees count those records.
	Frees       uint64 `json:"frees"`
	Releases    uint64 `json:"releases"`
	Retired     uint64 `json:"retired"`
	Reuses      uint64 `json:"reuses"`
	DoubleFrees uint64 `json:"double_frees"`
	Quarantines uint64 `json:"quarantines"`
	Anomalies   uint64 `json:"anomalies"`
	// Violations counts violation records, ByKind splits them.
	Violations uint64            `json:"violations"`
	ByKind     map[string]uint64 `json:"violations_by_kind"`
	// Actions counts action records, by action and outcome.
	Actions      uint64                   `json:"actions"`
	ActionErrors uint64                   `json:"action_errors"`
	ByAction     map[string]*ActionCounts `json:"actions_by_action"`
	// Dropped sums interposer_drops counts; Flooded and FloodUnverified sum
	// flood_summary events and unverified_frees.
	Dropped         uint64 `json:"dropped_events"`
	Flooded         uint64 `json:"flooded_events"`
	FloodUnverified uint64 `json:"flood_unverified_frees"`

	// Coverage is the distribution of sanitize steps by coverage, Latency
	// by duration (of the steps that recorded one; NoDuration counts the
	// others). Timeline is the violations by kind per bucket of the
	// report's timeline. All three are filled when the report is built.
	Coverage   []Bucket     `json:"coverage"`
	Latency    []Bucket     `json:"sanitize_latency"`
	NoDuration uint64       `json:"sanitize_steps_without_duration"`
	Timeline   []KindSeries `json:"violations_timeline"`

	cov  coverageHist
	lat  latencyHist
	viol map[string]*series
}

// ActionCounts splits an action's outcomes: the enforcer records a failed or
// timed-out action with a result starting "error".
type ActionCounts struct {
	OK    uint64 `json:"ok"`
	Error uint64 `json:"error"`
}

// maxKinds bounds the distinct violation kinds and actions kept per Stats:
// both come from the trail. The rest count under otherKey.
const (
	maxKinds = 32
	otherKey = "(other)"
)

func capKey[V any](m map[string]V, k string) string {
	if _, ok := m[k]; !ok && len(m) >= maxKinds {
		return otherKey
	}
	return k
}

func (s *Stats) buffer(b *trailevent.Buffer) {
	switch b.Ev {
	case trailevent.EvAllocate:
		s.Buffers++
		s.BytesAllocated += b.Bytes
	case trailevent.EvAttest, trailevent.EvSanitize, trailevent.EvSanitizeEnd:
		s.SanitizeSteps++
		s.BytesZeroized += b.Bytes
		if b.Verified != nil && *b.Verified {
			s.BytesVerified += b.Bytes
		} else {
			s.Unverified++
		}
		cov := 0.0
		if b.Coverage != nil {
			cov = *b.Coverage
		}
		if cov < 100 {
			s.Partial++
		}
		s.cov.add(cov)
		if b.DurNS > 0 {
			s.lat.add(time.Duration(b.DurNS))
		} else {
			s.NoDuration++
		}
	case trailevent.EvFree:
		s.Frees++
	case trailevent.EvRelease:
		s.Releases++
	case trailevent.EvRetire:
		s.Retired++
	case trailevent.EvReuse:
		s.Reuses++
	case trailevent.EvDoubleFree:
		s.DoubleFrees++
	case trailevent.EvQuarantine:
		s.Quarantines++
	}
}

func (s *Stats) violation(c *clock, b int, timed bool, kind string) {
	s.Violations++
	if s.ByKind == nil {
		s.ByKind, s.viol = map[string]uint64{}, map[string]*series{}
	}
	kind = capKey(s.ByKind, kind)
	s.ByKind[kind]++
	if !timed {
		return
	}
	sr := s.viol[kind]
	if sr == nil {
		sr = &series{w: c.w}
		s.viol[kind] = sr
	}
	sr.add(c, b, 1)
}

func (s *Stats) action(a *trailevent.Action) {
	s.Actions++
	if s.ByAction == nil {
		s.ByAction = map[string]*ActionCounts{}
	}
	k := capKey(s.ByAction, a.Action)
	ac := s.ByAction[k]
	if ac == nil {
		ac = &ActionCounts{}
		s.ByAction[k] = ac
	}
	if strings.HasPrefix(a.Result, "error") {
		ac.Error++
		s.ActionErrors++
	} else {
		ac.OK++
	}
}

// KindSeries is one violation kind's counts per timeline bucket.
type KindSeries struct {
	Kind   string   `json:"kind"`
	Counts []uint64 `json:"counts"`
}

// finish fills the exported distributions and timeline from the
// accumulators: the clock's final width, n buckets.
func (s *Stats) finish(c *clock, n int) {
	s.Coverage = buckets(coverageLabels, s.cov[:])
	s.Latency = buckets(latencyLabels, s.lat[:])
	s.Timeline = nil
	for _, k := range sortedKeys(s.viol) {
		s.Timeline = append(s.Timeline, KindSeries{k, s.viol[k].final(c, n)})
	}
}
