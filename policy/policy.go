// Package policy is kvh's one hygiene configuration: coverage threshold, TTL,
// reuse limit, verify mode and samples, double pass, the action on a
// violation, and per-tenant overrides. Sources, later wins: Default, a YAML
// file, the environment (the seed's KV_* names, then KVH_*), then flags.
// An invalid value is an error that names the key and the value; nothing
// falls back to a default silently. A Config is a value: copy it freely.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Actions on a violation.
const (
	ActionObserve = "observe"
	ActionDeny    = "deny"
	ActionFreeze  = "freeze"
	ActionKill    = "kill"
)

// Tenant keys: what names a pod's tenant (TenantKeyLabel is a prefix, followed
// by the label's name).
const (
	TenantKeyNamespace = "namespace"
	TenantKeyLabel     = "label:"
)

// TTL clocks.
const (
	TTLFromFirstUse   = "first_use"
	TTLFromAllocation = "allocation"
)

// Config is the whole policy. Pointer fields are "unset" when nil.
type Config struct {
	CoverageThreshold float64             `yaml:"coverage_threshold" json:"coverage_threshold" doc:"percent of a buffer that must verify zero before it may be freed, (0, 100]"` // percent, (0, 100]
	VerifyMode        string              `yaml:"verify" json:"verify" doc:"off, sample or full"`                                                                                // off | sample | full
	VerifySamples     int                 `yaml:"verify_samples" json:"verify_samples" doc:"sample windows per buffer when verify is sample"`
	DoublePass        bool                `yaml:"double_pass" json:"double_pass" doc:"a pattern pass before the zero pass"`
	MaxReuse          int                 `yaml:"max_reuse" json:"max_reuse" doc:"reuses allowed per buffer; negative: unlimited, 0: any reuse violates"` // negative: unlimited; 0: any reuse violates
	TTLSec            *float64            `yaml:"ttl_sec" json:"ttl_sec" doc:"seconds a buffer may live; null: no TTL, <= 0: violates on first use"`      // nil: no TTL; <= 0: violates on first use
	TTLFrom           string              `yaml:"ttl_from" json:"ttl_from" doc:"first_use or allocation: when the TTL clock starts"`                      // first_use | allocation
	OnViolation       string              `yaml:"on_violation" json:"on_violation" doc:"observe, deny, freeze or kill"`
	AnomalyZ          float64             `yaml:"anomaly_z" json:"anomaly_z" doc:"z-score that flags an anomaly"` // z-score that flags an anomaly
	Tenants           map[string]Override `yaml:"tenants" json:"tenants" doc:"per-tenant overrides, by tenant"`
	// TrustTenantClaims honours a process's own KVH_TENANT where the kernel
	// gives no pod or container identity (bare-metal hosts).
	TrustTenantClaims bool `yaml:"trust_tenant_claims" json:"trust_tenant_claims" doc:"honour a process's own KVH_TENANT where it has no pod or container identity (bare metal); otherwise it is recorded as a claim only"`
	// TTLAllowImmediate permits ttl_sec <= 0 (every buffer expires on first
	// use), which is otherwise refused as a likely mistake.
	TTLAllowImmediate  bool    `yaml:"ttl_allow_immediate" json:"ttl_allow_immediate" doc:"permit ttl_sec <= 0 (every buffer expires at once); refused otherwise"`
	MaxLiveBuffers     int     `yaml:"max_live_buffers" json:"max_live_buffers" doc:"live buffers one process may hold in the agent's ledger; more is a live_buffer_limit violation and is summarised, not recorded one by one"`
	MaxLiveBuffersNode int     `yaml:"max_live_buffers_node" json:"max_live_buffers_node" doc:"live buffers all processes together may hold in the agent's ledger (about 0.5 KiB of agent memory each); more is a live_buffer_limit violation of the process that asks, summarised"`
	MaxEventRate       float64 `yaml:"max_event_rate" json:"max_event_rate" doc:"interposer events per second one process may send (a burst of one second is allowed); more is an event_rate_limit violation and is summarised, not ingested one by one"`
	// TenantKey says which of the orchestrator's facts about a pod (from
	// NRI) is its tenant: its namespace, or the value of one of its labels.
	TenantKey string `yaml:"tenant_key" json:"tenant_key" doc:"what names a pod's tenant when the agent learns pods from the orchestrator (--nri): namespace, or label:<label-name> (a pod without that label is its pod:<uid>)"`
	// AllowOptOut honours the kvh.io/opt-out annotation (the pod is not
	// injected); either way the request is recorded.
	AllowOptOut bool `yaml:"allow_opt_out" json:"allow_opt_out" doc:"honour a pod's kvh.io/opt-out: \"true\" annotation (its containers are not injected with libkvh); an opt-out is recorded in the trail (opt_out) whether or not it is honoured"`
	// TrailRetentionDays is how long the trail kept off the node is locked.
	TrailRetentionDays int `yaml:"trail_retention_days" json:"trail_retention_days" doc:"days each trail object shipped off the node (--ship-to) stays locked in compliance mode, so that no one, root on the node or the bucket's owner, can delete or overwrite it"`
	// TrailEventMinBytes sets the trail's granularity for routine events.
	TrailEventMinBytes int `yaml:"trail_event_min_bytes" json:"trail_event_min_bytes" doc:"buffers at least this large are recorded one by one (allocate, attest, free); smaller ones whose free passes (coverage at or above the threshold, verification at the floor, no ttl_sec) are counted exactly in per-connection event_window records with a digest instead; a violation, quarantine or failed free is always recorded one by one; 0 (the default) records every buffer one by one"`
}

// Override changes some fields for one tenant.
type Override struct {
	CoverageThreshold *float64 `yaml:"coverage_threshold" json:"coverage_threshold" doc:"percent of a buffer that must verify zero before it may be freed, (0, 100]"`
	MaxReuse          *int     `yaml:"max_reuse" json:"max_reuse" doc:"reuses allowed per buffer; negative: unlimited, 0: any reuse violates"`
	TTLSec            *float64 `yaml:"ttl_sec" json:"ttl_sec" doc:"seconds a buffer may live; null: no TTL, <= 0: violates on first use"`
	OnViolation       *string  `yaml:"on_violation" json:"on_violation" doc:"observe, deny, freeze or kill"`
}

// Default is the seed's defaults, with verification on and full.
func Default() Config {
	return Config{
		CoverageThreshold:  99.9,
		VerifyMode:         "full",
		VerifySamples:      8,
		MaxReuse:           0,
		TTLFrom:            TTLFromFirstUse,
		OnViolation:        ActionObserve,
		AnomalyZ:           6,
		MaxLiveBuffers:     65536,
		MaxLiveBuffersNode: 131072,
		MaxEventRate:       100000,
		TenantKey:          TenantKeyNamespace,
		TrailRetentionDays: 400,
	}
}

// Effective is the policy for one tenant after overrides.
type Effective struct {
	CoverageThreshold float64
	MaxReuse          int
	TTLSec            *float64
	TTLFrom           string
	OnViolation       string
}

// For returns the effective policy for tenant.
func (c Config) For(tenant string) Effective {
	e := Effective{c.CoverageThreshold, c.MaxReuse, c.TTLSec, c.TTLFrom, c.OnViolation}
	if o, ok := c.Tenants[tenant]; ok {
		if o.CoverageThreshold != nil {
			e.CoverageThreshold = *o.CoverageThreshold
		}
		if o.MaxReuse != nil {
			e.MaxReuse = *o.MaxReuse
		}
		if o.TTLSec != nil {
			e.TTLSec = o.TTLSec
		}
		if o.OnViolation != nil {
			e.OnViolation = *o.OnViolation
		}
	}
	return e
}

// Validate reports the first invalid field by its key and value.
func (c Config) Validate() error {
	if err := checkThreshold("coverage_threshold", c.CoverageThreshold); err != nil {
		return err
	}
	switch c.VerifyMode {
	case "off", "sample", "full":
	default:
		return fmt.Errorf("verify: %q is not off, sample or full", c.VerifyMode)
	}
	if c.VerifySamples < 1 {
		return fmt.Errorf("verify_samples: %d must be at least 1", c.VerifySamples)
	}
	if err := c.checkTTL("ttl_sec", c.TTLSec); err != nil {
		return err
	}
	if c.MaxLiveBuffers < 1 {
		return fmt.Errorf("max_live_buffers: %d must be at least 1", c.MaxLiveBuffers)
	}
	if c.MaxLiveBuffersNode < c.MaxLiveBuffers {
		return fmt.Errorf("max_live_buffers_node: %d must be at least max_live_buffers (%d)", c.MaxLiveBuffersNode, c.MaxLiveBuffers)
	}
	if c.TrailEventMinBytes < 0 {
		return fmt.Errorf("trail_event_min_bytes: %d must be 0 (record every buffer) or a size in bytes", c.TrailEventMinBytes)
	}
	if !(c.MaxEventRate > 0) || math.IsInf(c.MaxEventRate, 0) {
		return fmt.Errorf("max_event_rate: %v must be a positive number of events per second", c.MaxEventRate)
	}
	if c.TrailRetentionDays < 1 || c.TrailRetentionDays > 36500 {
		return fmt.Errorf("trail_retention_days: %d must be from 1 to 36500", c.TrailRetentionDays)
	}
	switch c.TTLFrom {
	case TTLFromFirstUse, TTLFromAllocation:
	default:
		return fmt.Errorf("ttl_from: %q is not first_use or allocation", c.TTLFrom)
	}
	if err := checkAction("on_violation", c.OnViolation); err != nil {
		return err
	}
	if err := checkTenantKey(c.TenantKey); err != nil {
		return err
	}
	if !(c.AnomalyZ > 0) || math.IsInf(c.AnomalyZ, 0) {
		return fmt.Errorf("anomaly_z: %v must be a positive number", c.AnomalyZ)
	}
	names := make([]string, 0, len(c.Tenants))
	for n := range c.Tenants {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		o := c.Tenants[n]
		if o.CoverageThreshold != nil {
			if err := checkThreshold("tenants."+n+".coverage_threshold", *o.CoverageThreshold); err != nil {
				return err
			}
		}
		if err := c.checkTTL("tenants."+n+".ttl_sec", o.TTLSec); err != nil {
			return err
		}
		if o.OnViolation != nil {
			if err := checkAction("tenants."+n+".on_violation", *o.OnViolation); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkThreshold(key string, v float64) error {
	if !(v > 0 && v <= 100) {
		return fmt.Errorf("%s: %v must be in (0, 100] percent", key, v)
	}
	return nil
}

func (c Config) checkTTL(key string, v *float64) error {
	if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
		return fmt.Errorf("%s: %v is not a finite number of seconds", key, *v)
	}
	if v != nil && *v <= 0 && !c.TTLAllowImmediate {
		return fmt.Errorf("%s: %v would expire every buffer at once; set ttl_allow_immediate (KVH_TTL_ALLOW_IMMEDIATE=1) if that is meant", key, *v)
	}
	return nil
}

// labelNameRe is a Kubernetes label key: an optional DNS-subdomain prefix
// and a slash, then a name of at most 63 alphanumerics, '-', '_' or '.',
// starting and ending with an alphanumeric.
var labelNameRe = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)

func checkTenantKey(v string) error {
	if v == TenantKeyNamespace {
		return nil
	}
	if name, ok := strings.CutPrefix(v, TenantKeyLabel); ok {
		if prefix, _, found := strings.Cut(name, "/"); !labelNameRe.MatchString(name) || (found && len(prefix) > 253) {
			return fmt.Errorf("tenant_key: %q: %q is not a Kubernetes label name", v, name)
		}
		return nil
	}
	return fmt.Errorf("tenant_key: %q is not namespace or label:<label-name>", v)
}

// TenantOf names a pod's tenant under the policy's tenant_key: its
// namespace, or its tenant label's value. ok is false when the pod lacks
// what the key names (no namespace, or no such label).
func (c Config) TenantOf(namespace string, labels map[string]string) (tenant string, ok bool) {
	if name, isLabel := strings.CutPrefix(c.TenantKey, TenantKeyLabel); isLabel {
		v, ok := labels[name]
		return v, ok && v != ""
	}
	return namespace, namespace != ""
}

func checkAction(key, v string) error {
	switch v {
	case ActionObserve, ActionDeny, ActionFreeze, ActionKill:
		return nil
	}
	return fmt.Errorf("%s: %q is not observe, deny, freeze or kill", key, v)
}

// LoadFile overlays a YAML file on c. Unknown keys are errors.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("policy file: %w", err)
	}
	d := yaml.NewDecoder(bytes.NewReader(data))
	d.KnownFields(true)
	if err := d.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("policy file %s: %w", path, err)
	}
	return nil
}

// envVar is one environment variable and how it sets the config.
type envVar struct {
	name string
	set  func(c *Config, v string) error
}

func floatVar(dst func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return errors.New("not a finite number")
		}
		*dst(c) = f
		return nil
	}
}

func intVar(dst func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return errors.New("not an integer")
		}
		*dst(c) = n
		return nil
	}
}

func boolVar(dst func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "true", "yes", "on":
			*dst(c) = true
		case "0", "false", "no", "off":
			*dst(c) = false
		default:
			return errors.New("not a boolean (1/0, true/false, yes/no, on/off)")
		}
		return nil
	}
}

func ttlVar(c *Config, v string) error {
	if strings.TrimSpace(v) == "" {
		c.TTLSec = nil // the seed's "unset or empty means no TTL"
		return nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return errors.New("not a finite number of seconds")
	}
	c.TTLSec = &f
	return nil
}

func strVar(dst func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *dst(c) = strings.TrimSpace(v); return nil }
}

// Env lists the variables ApplyEnv reads, seed names first so KVH_* wins.
var envVars = []envVar{
	{"KV_COVERAGE_THRESHOLD", floatVar(func(c *Config) *float64 { return &c.CoverageThreshold })},
	{"KV_DOUBLE_PASS_DEFAULT", boolVar(func(c *Config) *bool { return &c.DoublePass })},
	{"KV_VERIFY_SAMPLES_DEFAULT", intVar(func(c *Config) *int { return &c.VerifySamples })},
	{"KV_DEFAULT_MAX_REUSE", intVar(func(c *Config) *int { return &c.MaxReuse })},
	{"KV_DEFAULT_TTL_SEC", ttlVar},
	{"KVH_COVERAGE_THRESHOLD", floatVar(func(c *Config) *float64 { return &c.CoverageThreshold })},
	{"KVH_DOUBLE_PASS", boolVar(func(c *Config) *bool { return &c.DoublePass })},
	{"KVH_VERIFY_SAMPLES", intVar(func(c *Config) *int { return &c.VerifySamples })},
	{"KVH_MAX_REUSE", intVar(func(c *Config) *int { return &c.MaxReuse })},
	{"KVH_TTL_SEC", ttlVar},
	{"KVH_TTL_FROM", strVar(func(c *Config) *string { return &c.TTLFrom })},
	{"KVH_VERIFY", strVar(func(c *Config) *string { return &c.VerifyMode })},
	{"KVH_ON_VIOLATION", strVar(func(c *Config) *string { return &c.OnViolation })},
	{"KVH_ANOMALY_Z", floatVar(func(c *Config) *float64 { return &c.AnomalyZ })},
	{"KVH_TRUST_TENANT_CLAIMS", boolVar(func(c *Config) *bool { return &c.TrustTenantClaims })},
	{"KVH_TTL_ALLOW_IMMEDIATE", boolVar(func(c *Config) *bool { return &c.TTLAllowImmediate })},
	{"KVH_MAX_LIVE_BUFFERS", intVar(func(c *Config) *int { return &c.MaxLiveBuffers })},
	{"KVH_MAX_LIVE_BUFFERS_NODE", intVar(func(c *Config) *int { return &c.MaxLiveBuffersNode })},
	{"KVH_MAX_EVENT_RATE", floatVar(func(c *Config) *float64 { return &c.MaxEventRate })},
	{"KVH_TENANT_KEY", strVar(func(c *Config) *string { return &c.TenantKey })},
	{"KVH_ALLOW_OPT_OUT", boolVar(func(c *Config) *bool { return &c.AllowOptOut })},
	{"KVH_TRAIL_EVENT_MIN_BYTES", intVar(func(c *Config) *int { return &c.TrailEventMinBytes })},
}

// ApplyEnv overlays the environment (lookup is os.LookupEnv in production).
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	for _, e := range envVars {
		v, ok := lookup(e.name)
		if !ok {
			continue
		}
		if err := e.set(c, v); err != nil {
			return fmt.Errorf("%s=%q: %v", e.name, v, err)
		}
	}
	return nil
}

// Flags are the command-line overrides; Register adds them to a FlagSet and
// Load overlays those that were given on the defaults, file and environment.
type Flags struct {
	file                         string
	threshold, ttl, anomalyZ     float64
	verify, ttlFrom, onViolation string
	samples, maxReuse            int
	doublePass, trustClaims      bool
	tenantKey                    string
	allowOptOut                  bool
	fs                           *pflag.FlagSet
}

// Register adds the policy flags to fs.
func Register(fs *pflag.FlagSet) *Flags {
	f := &Flags{fs: fs}
	d := Default()
	fs.StringVar(&f.file, "policy", "", "policy YAML file (then env KV_*/KVH_*, then these flags)")
	fs.Float64Var(&f.threshold, "coverage-threshold", d.CoverageThreshold, "coverage percent a buffer needs before it may be freed")
	fs.StringVar(&f.verify, "verify", d.VerifyMode, "verification after zeroize: off, sample or full")
	fs.IntVar(&f.samples, "verify-samples", d.VerifySamples, "offsets checked in sample mode")
	fs.BoolVar(&f.doublePass, "double-pass", d.DoublePass, "write a pattern before the zero pass")
	fs.IntVar(&f.maxReuse, "max-reuse", d.MaxReuse, "reuses allowed per buffer (negative: unlimited)")
	fs.Float64Var(&f.ttl, "ttl-sec", 0, "buffer time-to-live in seconds (unset: none)")
	fs.StringVar(&f.ttlFrom, "ttl-from", d.TTLFrom, "TTL clock: first_use or allocation")
	fs.StringVar(&f.onViolation, "on-violation", d.OnViolation, "action on a violation: observe, deny, freeze or kill")
	fs.Float64Var(&f.anomalyZ, "anomaly-z", d.AnomalyZ, "z-score that flags a sanitize duration or size anomaly")
	fs.BoolVar(&f.trustClaims, "trust-tenant-claims", d.TrustTenantClaims, "honour a process's own KVH_TENANT where it has no pod or container identity (bare-metal hosts)")
	fs.StringVar(&f.tenantKey, "tenant-key", d.TenantKey, "what names a pod's tenant (pods learnt from the orchestrator with --nri): namespace, or label:<label-name>")
	fs.BoolVar(&f.allowOptOut, "allow-opt-out", d.AllowOptOut, "honour a pod's kvh.io/opt-out annotation (recorded in the trail either way)")
	return f
}

// Load builds the Config: defaults, the --policy file, the environment, then
// the flags that were set, and validates it.
func (f *Flags) Load(lookup func(string) (string, bool)) (Config, error) {
	c := Default()
	if f.file != "" {
		if err := c.LoadFile(f.file); err != nil {
			return c, err
		}
	}
	if err := c.ApplyEnv(lookup); err != nil {
		return c, err
	}
	set := func(name string, apply func()) {
		if f.fs.Changed(name) {
			apply()
		}
	}
	set("coverage-threshold", func() { c.CoverageThreshold = f.threshold })
	set("verify", func() { c.VerifyMode = f.verify })
	set("verify-samples", func() { c.VerifySamples = f.samples })
	set("double-pass", func() { c.DoublePass = f.doublePass })
	set("max-reuse", func() { c.MaxReuse = f.maxReuse })
	set("ttl-sec", func() { t := f.ttl; c.TTLSec = &t })
	set("ttl-from", func() { c.TTLFrom = f.ttlFrom })
	set("on-violation", func() { c.OnViolation = f.onViolation })
	set("anomaly-z", func() { c.AnomalyZ = f.anomalyZ })
	set("trust-tenant-claims", func() { c.TrustTenantClaims = f.trustClaims })
	set("tenant-key", func() { c.TenantKey = f.tenantKey })
	set("allow-opt-out", func() { c.AllowOptOut = f.allowOptOut })
	return c, c.Validate()
}

// File is the policy file given with --policy, for reloads.
func (f *Flags) File() string { return f.file }
