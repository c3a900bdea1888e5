package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvhygiene/kvh/policy"
	corev1 "k8s.io/api/core/v1"
)

// loadPolicy loads the overlay's policy ConfigMap with the agent's own
// policy package, strictly (an unknown key stops the agent), and validates
// it as the agent does at start.
func loadPolicy(t *testing.T, r *rendered) policy.Config {
	t.Helper()
	c := agentContainer(t, r)
	file, _ := argValue(c.Args, "policy")
	var cm *corev1.ConfigMap
	for _, v := range r.ds.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && strings.HasPrefix(v.ConfigMap.Name, "kvh-policy") {
			cm = r.configMaps[v.ConfigMap.Name]
		}
	}
	if cm == nil {
		t.Fatalf("%s: no policy ConfigMap", r.overlay)
	}
	text, ok := cm.Data[filepath.Base(file)]
	if !ok {
		t.Fatalf("%s: ConfigMap %s has no %s", r.overlay, cm.Name, filepath.Base(file))
	}
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	if err := pol.LoadFile(p); err != nil {
		t.Fatalf("%s: the agent would refuse its policy: %v", r.overlay, err)
	}
	if err := pol.Validate(); err != nil {
		t.Fatalf("%s: the agent would refuse its policy: %v", r.overlay, err)
	}
	return pol
}

func TestPolicyLoads(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		pol := loadPolicy(t, r)
		if pol.VerifyMode != "full" {
			t.Errorf("%s: verify %q: the DaemonSet ships full verification", o, pol.VerifyMode)
		}
		if pol.TenantKey != "namespace" {
			t.Errorf("%s: tenant_key %q: the DaemonSet ships the namespace as the tenant", o, pol.TenantKey)
		}
		if o == "enforce" && pol.AllowOptOut {
			t.Errorf("%s: allow_opt_out on: an enforcing node lets no pod opt out of injection", o)
		}
		if pol.TrustTenantClaims {
			t.Errorf("%s: trust_tenant_claims on: in a cluster the tenant comes from the orchestrator, never the process", o)
		}
	}
}

// TestPolicyCheckCanFail: the check above refuses a key the agent does not
// know, as the agent does.
func TestPolicyCheckCanFail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte("on_violation: observe\non_violaton: kill\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pol := policy.Default()
	if err := pol.LoadFile(p); err == nil || !strings.Contains(err.Error(), "on_violaton") {
		t.Fatalf("a misspelled policy key loaded: %v", err)
	}
}
