package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func load(t *testing.T, file string, e map[string]string, args ...string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f := Register(fs)
	if file != "" {
		args = append(args, "--policy", file)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f.Load(env(e))
}

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(file, []byte("coverage_threshold: 95\nmax_reuse: 2\ntenants:\n  acme:\n    coverage_threshold: 100\n    on_violation: kill\n"), 0o600)
	c, err := load(t, file, nil)
	if err != nil || c.CoverageThreshold != 95 || c.MaxReuse != 2 {
		t.Fatalf("file: %v %+v", err, c)
	}
	c, _ = load(t, file, map[string]string{"KV_COVERAGE_THRESHOLD": "88.8", "KV_VERIFY_SAMPLES_DEFAULT": "3"})
	if c.CoverageThreshold != 88.8 || c.VerifySamples != 3 {
		t.Fatalf("seed env over file: %+v", c)
	}
	c, _ = load(t, file, map[string]string{"KV_COVERAGE_THRESHOLD": "88.8", "KVH_COVERAGE_THRESHOLD": "97"})
	if c.CoverageThreshold != 97 {
		t.Fatalf("KVH_ over KV_: %v", c.CoverageThreshold)
	}
	c, _ = load(t, file, map[string]string{"KV_COVERAGE_THRESHOLD": "88.8"}, "--coverage-threshold", "99.5")
	if c.CoverageThreshold != 99.5 {
		t.Fatalf("flag over env: %v", c.CoverageThreshold)
	}
	e := c.For("acme")
	if e.CoverageThreshold != 100 || e.OnViolation != "kill" || e.MaxReuse != 2 {
		t.Fatalf("override: %+v", e)
	}
	if c.For("other").CoverageThreshold != 99.5 {
		t.Fatal("override leaked to another tenant")
	}
}

func TestInvalidValuesNameKeyAndValue(t *testing.T) {
	cases := []struct {
		env  map[string]string
		args []string
		file string
		want string
	}{
		{env: map[string]string{"KV_DEFAULT_MAX_REUSE": "lots"}, want: `KV_DEFAULT_MAX_REUSE="lots"`},
		{env: map[string]string{"KV_VERIFY_SAMPLES_DEFAULT": "8.5"}, want: `KV_VERIFY_SAMPLES_DEFAULT="8.5"`},
		{env: map[string]string{"KV_DEFAULT_TTL_SEC": "soon"}, want: `KV_DEFAULT_TTL_SEC="soon"`},
		{env: map[string]string{"KV_DOUBLE_PASS_DEFAULT": "maybe"}, want: `KV_DOUBLE_PASS_DEFAULT="maybe"`},
		{env: map[string]string{"KV_COVERAGE_THRESHOLD": "NaN"}, want: `KV_COVERAGE_THRESHOLD="NaN"`},
		{env: map[string]string{"KV_COVERAGE_THRESHOLD": "150"}, want: "coverage_threshold: 150"},
		{args: []string{"--verify", "sometimes"}, want: `verify: "sometimes"`},
		{args: []string{"--on-violation", "explode"}, want: `on_violation: "explode"`},
		{file: "coverage_thresold: 99\n", want: "coverage_thresold"},
		{file: "tenants:\n  a:\n    on_violation: nuke\n", want: `tenants.a.on_violation: "nuke"`},
		{args: []string{"--tenant-key", "pod"}, want: `tenant_key: "pod" is not namespace or label:<label-name>`},
		{env: map[string]string{"KVH_TENANT_KEY": "label:"}, want: `tenant_key: "label:": "" is not a Kubernetes label name`},
		{file: "tenant_key: label:-team\n", want: `"-team" is not a Kubernetes label name`},
		{env: map[string]string{"KVH_ALLOW_OPT_OUT": "perhaps"}, want: `KVH_ALLOW_OPT_OUT="perhaps"`},
	}
	for _, tc := range cases {
		file := ""
		if tc.file != "" {
			file = filepath.Join(t.TempDir(), "p.yaml")
			os.WriteFile(file, []byte(tc.file), 0o600)
		}
		_, err := load(t, file, tc.env, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want it to name %q", tc, err, tc.want)
		}
	}
}

func TestSeedTTLSemantics(t *testing.T) {
	c, err := load(t, "", map[string]string{"KV_DEFAULT_TTL_SEC": ""})
	if err != nil || c.TTLSec != nil {
		t.Fatalf("empty TTL means none: %v %v", err, c.TTLSec)
	}
	c, _ = load(t, "", map[string]string{"KV_DEFAULT_TTL_SEC": "0"})
	if c.TTLSec == nil || *c.TTLSec != 0 {
		t.Fatal("TTL 0 must be kept (it violates on first use)")
	}
	c, _ = load(t, "", map[string]string{"KV_DOUBLE_PASS_DEFAULT": "YES"})
	if !c.DoublePass {
		t.Fatal("seed boolean spelling")
	}
}

func TestHardeningKeys(t *testing.T) {
	env := map[string]string{"KVH_TTL_SEC": "0"}
	c := Default()
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "ttl_allow_immediate") {
		t.Fatalf("KVH_TTL_SEC=0 accepted without being allowed: %v", err)
	}
	env["KVH_TTL_ALLOW_IMMEDIATE"] = "1"
	c = Default()
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err := c.Validate(); err != nil {
		t.Fatalf("allowed immediate TTL refused: %v", err)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.MaxLiveBuffers = 0 },
		func(c *Config) { c.MaxEventRate = -1 },
		func(c *Config) { c.TrailRetentionDays = 0 },
		func(c *Config) { c.TrailRetentionDays = 36501 },
	} {
		c := Default()
		bad(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("invalid caps accepted: %+v", c)
		}
	}
}

func TestTenantKey(t *testing.T) {
	c, err := load(t, "", nil)
	if err != nil || c.TenantKey != "namespace" || c.AllowOptOut {
		t.Fatalf("defaults: tenant_key %q allow_opt_out %v (%v), want namespace and false", c.TenantKey, c.AllowOptOut, err)
	}
	labels := map[string]string{"example.com/tenant": "acme", "app": "llm"}
	if got, ok := c.TenantOf("team-a", labels); got != "team-a" || !ok {
		t.Errorf("namespace key: %q %v", got, ok)
	}
	file := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(file, []byte("tenant_key: label:example.com/tenant\nallow_opt_out: true\n"), 0o600)
	c, err = load(t, file, nil)
	if err != nil || !c.AllowOptOut {
		t.Fatalf("file: %v %+v", err, c)
	}
	if got, ok := c.TenantOf("team-a", labels); got != "acme" || !ok {
		t.Errorf("label key: %q %v, want acme", got, ok)
	}
	if got, ok := c.TenantOf("team-a", map[string]string{"app": "llm"}); ok {
		t.Errorf("a pod without the tenant label got tenant %q", got)
	}
	c, err = load(t, file, map[string]string{"KVH_TENANT_KEY": "namespace"}, "--allow-opt-out=false")
	if err != nil || c.TenantKey != "namespace" || c.AllowOptOut {
		t.Fatalf("env and flag over the file: %q %v %v", c.TenantKey, c.AllowOptOut, err)
	}
}
