package deploy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// repoRoot is the kvh repository this module sits in.
const repoRoot = ".."

// overlays are the deployable variants; the base is not applied alone.
var overlays = []string{"observe", "enforce"}

// namespace is where everything namespaced goes.
const namespace = "kvh-system"

// rendered is one overlay as kustomize builds it, each object decoded
// strictly into its API type.
type rendered struct {
	overlay    string
	ns         *corev1.Namespace
	quota      *corev1.ResourceQuota
	sa         *corev1.ServiceAccount
	ds         *appsv1.DaemonSet
	svc        *corev1.Service
	sm         *monitoringv1.ServiceMonitor
	rule       *monitoringv1.PrometheusRule
	configMaps map[string]*corev1.ConfigMap
}

// apiVersions is the one apiVersion each kind may have.
var apiVersions = map[string]string{
	"Namespace":      "v1",
	"ResourceQuota":  "v1",
	"ServiceAccount": "v1",
	"ConfigMap":      "v1",
	"Service":        "v1",
	"DaemonSet":      "apps/v1",
	"ServiceMonitor": "monitoring.coreos.com/v1",
	"PrometheusRule": "monitoring.coreos.com/v1",
}

// decodeStrict decodes one object's YAML into into as the API server's
// strict field validation does (sigs.k8s.io/json): unknown, duplicate and
// wrongly cased fields are errors here, not settings the API server drops.
// (encoding/json, under sigs.k8s.io/yaml's UnmarshalStrict, would match
// hostPid to hostPID.)
func decodeStrict(y []byte, into any) error {
	j, err := sigsyaml.YAMLToJSONStrict(y)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, into)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

var renderCache sync.Map // overlay -> *rendered

// render builds overlay with kustomize's library (what kubectl apply -k and
// kustomize build run) and decodes every object.
func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	if r, ok := renderCache.Load(overlay); ok {
		return r.(*rendered)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("daemonset", "overlays", overlay))
	if err != nil {
		t.Fatalf("kustomize build daemonset/overlays/%s: %v", overlay, err)
	}
	r := &rendered{overlay: overlay, configMaps: map[string]*corev1.ConfigMap{}}
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", overlay, res.CurId(), err)
		}
		kind := res.GetKind()
		if want, ok := apiVersions[kind]; !ok {
			t.Errorf("%s: unexpected %s %s: add it to apiVersions and check it", overlay, kind, res.GetName())
			continue
		} else if got := res.GetApiVersion(); got != want {
			t.Errorf("%s: %s %s has apiVersion %s, want %s", overlay, kind, res.GetName(), got, want)
		}
		var into any
		switch kind {
		case "Namespace":
			r.ns = &corev1.Namespace{}
			into = r.ns
		case "ResourceQuota":
			r.quota = &corev1.ResourceQuota{}
			into = r.quota
		case "ServiceAccount":
			r.sa = &corev1.ServiceAccount{}
			into = r.sa
		case "DaemonSet":
			r.ds = &appsv1.DaemonSet{}
			into = r.ds
		case "Service":
			r.svc = &corev1.Service{}
			into = r.svc
		case "ServiceMonitor":
			r.sm = &monitoringv1.ServiceMonitor{}
			into = r.sm
		case "PrometheusRule":
			r.rule = &monitoringv1.PrometheusRule{}
			into = r.rule
		case "ConfigMap":
			cm := &corev1.ConfigMap{}
			r.configMaps[res.GetName()] = cm
			into = cm
		}
		if err := decodeStrict(y, into); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly as %T: %v\n%s", overlay, kind, res.GetName(), into, err, y)
		}
	}
	for what, got := range map[string]bool{"Namespace": r.ns != nil, "ResourceQuota": r.quota != nil, "ServiceAccount": r.sa != nil,
		"DaemonSet": r.ds != nil, "Service": r.svc != nil, "ServiceMonitor": r.sm != nil, "PrometheusRule": r.rule != nil} {
		if !got {
			t.Fatalf("%s: renders no %s", overlay, what)
		}
	}
	renderCache.Store(overlay, r)
	return r
}

// TestDecodeIsStrict proves the decoding above would catch a misspelled
// field: without it every check below could pass on a manifest the API
// server reads differently.
func TestDecodeIsStrict(t *testing.T) {
	r := render(t, "observe")
	y, err := sigsyaml.Marshal(r.ds)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(y), "hostPID: true", "hostPid: true", 1)
	if bad == string(y) {
		t.Fatal("the rendered DaemonSet has no hostPID: true to misspell")
	}
	if err := decodeStrict([]byte(bad), &appsv1.DaemonSet{}); err == nil || !strings.Contains(err.Error(), "hostPid") {
		t.Fatalf("a misspelled field decoded without an error naming it: %v", err)
	}
}

// agentContainer returns the DaemonSet's one container.
func agentContainer(t *testing.T, r *rendered) *corev1.Container {
	t.Helper()
	cs := r.ds.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "kvh-agent" {
		t.Fatalf("%s: want one container kvh-agent, have %d", r.overlay, len(cs))
	}
	if n := len(r.ds.Spec.Template.Spec.InitContainers); n != 0 {
		t.Fatalf("%s: %d init containers: check their security context too", r.overlay, n)
	}
	return &cs[0]
}

// argValue returns the value of --name in args (--name=value or --name
// value), and whether it is there.
func argValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name {
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
				return args[i+1], true
			}
			return "", true
		}
	}
	return "", false
}

// goldenMetrics is the agent's metric names, from its golden exposition.
func goldenMetrics(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "cmd", "kvh-agent", "testdata", "metrics.prom"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metric families in the golden exposition: is it the right file?", len(names))
	}
	return names
}

var (
	buildOnce sync.Once
	buildErr  error
)

// makeBuild runs `make build interpose` in the repository, the targets
// Dockerfile.cuda's builder runs, so the agent whose flags are checked here
// and the files the image copies are the ones the image would hold.
func makeBuild(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() {
		cmd := exec.Command("make", "-s", "build", "interpose")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("make build interpose: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// agentBinary is the kvh-agent make build built.
func agentBinary(t *testing.T) string {
	t.Helper()
	makeBuild(t)
	p, err := filepath.Abs(filepath.Join(repoRoot, "build", "bin", "kvh-agent"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var flagLine = regexp.MustCompile(`(?m)^\s+(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)`)

// agentFlags lists the flags kvh-agent --help names.
func agentFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("kvh-agent --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	for _, f := range []string{"socket", "trail-dir", "policy", "witness"} {
		if !flags[f] {
			t.Fatalf("kvh-agent --help names no --%s: the usage format changed?\n%s", f, out)
		}
	}
	return flags
}

// TestArgsAreAgentFlags runs the agent built from this tree with each
// overlay's arguments and --help: pflag parses every argument before it
// acts on --help, so an unknown flag or a value of the wrong type fails.
func TestArgsAreAgentFlags(t *testing.T) {
	bin := agentBinary(t)
	known := agentFlags(t, bin)
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			c := agentContainer(t, render(t, o))
			if len(c.Command) != 0 {
				t.Errorf("command %q overrides the image's entrypoint (kvh-agent)", c.Command)
			}
			for _, a := range c.Args {
				if !strings.HasPrefix(a, "--") {
					t.Errorf("argument %q: write flags as --name=value", a)
					continue
				}
				if name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "="); !known[name] {
					t.Errorf("--%s is not a flag of kvh-agent (kvh-agent --help)", name)
				}
			}
			out, err := exec.Command(bin, append(append([]string(nil), c.Args...), "--help")...).CombinedOutput()
			if err != nil {
				t.Errorf("kvh-agent %s --help: %v\n%s", strings.Join(c.Args, " "), err, out)
			}
		})
	}
}

func sortedKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestAgentStartsOnEachOverlay runs the agent built here with each overlay's
// arguments and its policy as the ConfigMap holds it, up to the first thing
// that needs the node: the agent validates its flags and loads its policy
// (exit 2 on either) before it reads its signing key, here a file that does
// not exist (exit 1, naming the key). Only the two paths that point at the
// node change.
func TestAgentStartsOnEachOverlay(t *testing.T) {
	bin := agentBinary(t)
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			c := agentContainer(t, r)
			dir := t.TempDir()
			polFile, _ := argValue(c.Args, "policy")
			var text string
			for _, cm := range r.configMaps {
				if cm.Name == "kvh-policy" {
					text = cm.Data[filepath.Base(polFile)]
				}
			}
			if text == "" {
				t.Fatal("no policy in the overlay's policy ConfigMap")
			}
			pol := filepath.Join(dir, "policy.yaml")
			if err := os.WriteFile(pol, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			missingKey := filepath.Join(dir, "no-such-key")
			var args []string
			for _, a := range c.Args {
				switch {
				case strings.HasPrefix(a, "--policy="):
					a = "--policy=" + pol
				case strings.HasPrefix(a, "--signing-key="):
					a = "--signing-key=" + missingKey
				}
				args = append(args, a)
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin"} // no KV_*/KVH_* policy from this machine
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "signing key") || !strings.Contains(string(out), missingKey) {
				t.Fatalf("kvh-agent with the %s overlay's arguments: %v, want exit 1 at the signing key (flags and policy accepted)\n%s", o, err, out)
			}
		})
	}
}

// TestArgsExpandDefinedEnv: Kubernetes expands $(NAME) in args only when the
// container defines NAME; otherwise the agent gets the text "$(NAME)".
func TestArgsExpandDefinedEnv(t *testing.T) {
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, o := range overlays {
		c := agentContainer(t, render(t, o))
		for _, a := range c.Args {
			for _, m := range ref.FindAllStringSubmatch(a, -1) {
				if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == m[1] }) {
					t.Errorf("%s: %s refers to $(%s), which the container does not define", o, a, m[1])
				}
			}
		}
	}
}
