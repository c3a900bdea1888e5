package deploy

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// wantCapabilities is every capability the agent is given, and the only
// ones: daemonset.yaml justifies each beside it.
var wantCapabilities = []corev1.Capability{"BPF", "PERFMON", "SYS_PTRACE", "KILL", "LINUX_IMMUTABLE", "CHECKPOINT_RESTORE"}

// hostPaths is every host path the agent may mount, whether it must be
// writable, and the flag that points the agent at it (directory or file
// under it).
var hostPaths = map[string]struct {
	writable bool
	flag     string
}{
	"/run/kvh":           {true, "socket"},
	"/var/lib/kvh/trail": {true, "trail-dir"},
	"/var/lib/kvh/lib":   {true, "libkvh-dir"},
	"/var/run/nri":       {false, "nri-socket"},
	"/sys/fs/cgroup":     {true, "cgroup-root"},
	"/etc/modprobe.d":    {false, "modprobe-dir"},
}

// gpuNodeLabels are the labels that mark an NVIDIA GPU node.
var gpuNodeLabels = []string{"nvidia.com/gpu.present", "feature.node.kubernetes.io/pci-10de.present"}

func TestNamespaceAndQuota(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		if r.ns.Name != namespace {
			t.Errorf("%s: namespace %q, want %q", o, r.ns.Name, namespace)
		}
		if got := r.ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
			t.Errorf("%s: pod-security enforce level %q: hostPID and hostPath need privileged", o, got)
		}
		for kind, m := range map[string]metav1.ObjectMeta{"ResourceQuota": r.quota.ObjectMeta, "ServiceAccount": r.sa.ObjectMeta, "DaemonSet": r.ds.ObjectMeta,
			"Service": r.svc.ObjectMeta, "ServiceMonitor": r.sm.ObjectMeta, "PrometheusRule": r.rule.ObjectMeta} {
			if m.Namespace != namespace {
				t.Errorf("%s: %s %s in namespace %q, want %q", o, kind, m.Name, m.Namespace, namespace)
			}
		}
		for name, cm := range r.configMaps {
			if cm.Namespace != namespace {
				t.Errorf("%s: ConfigMap %s in namespace %q", o, name, cm.Namespace)
			}
		}
		// The quota that admits system-node-critical outside kube-system.
		sel := r.quota.Spec.ScopeSelector
		if sel == nil || len(sel.MatchExpressions) != 1 || sel.MatchExpressions[0].ScopeName != corev1.ResourceQuotaScopePriorityClass ||
			!slices.Contains(sel.MatchExpressions[0].Values, r.ds.Spec.Template.Spec.PriorityClassName) {
			t.Errorf("%s: the ResourceQuota is not scoped to the DaemonSet's priority class %q: %+v", o, r.ds.Spec.Template.Spec.PriorityClassName, sel)
		}
	}
}

func TestPodPlacement(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		p := r.ds.Spec.Template.Spec
		if p.PriorityClassName != "system-node-critical" {
			t.Errorf("%s: priorityClassName %q, want system-node-critical", o, p.PriorityClassName)
		}
		if !p.HostPID {
			t.Errorf("%s: hostPID is off: identity from /proc needs the host's pids", o)
		}
		if p.HostNetwork || p.HostIPC {
			t.Errorf("%s: hostNetwork %v, hostIPC %v: the agent needs neither", o, p.HostNetwork, p.HostIPC)
		}
		if p.Affinity == nil || p.Affinity.NodeAffinity == nil || p.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Fatalf("%s: no required node affinity: the agent would run on every node", o)
		}
		// Terms are ORed: every one must require a GPU label, or the
		// agent lands on nodes without GPUs.
		var seen []string
		for i, term := range p.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			gpu := false
			for _, e := range term.MatchExpressions {
				if slices.Contains(gpuNodeLabels, e.Key) && e.Operator == corev1.NodeSelectorOpIn && slices.Equal(e.Values, []string{"true"}) {
					gpu = true
					seen = append(seen, e.Key)
				}
			}
			if !gpu {
				t.Errorf("%s: node selector term %d requires no GPU label (%v)", o, i, gpuNodeLabels)
			}
		}
		for _, l := range gpuNodeLabels {
			if !slices.Contains(seen, l) {
				t.Errorf("%s: no node selector term on %s", o, l)
			}
		}
		tolerated := false
		for _, tol := range p.Tolerations {
			if tol.Key == "nvidia.com/gpu" && tol.Operator == corev1.TolerationOpExists && tol.Effect == "" {
				tolerated = true
			}
		}
		if !tolerated {
			t.Errorf("%s: the nvidia.com/gpu taint (any value, any effect) is not tolerated", o)
		}
		if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken || r.sa.AutomountServiceAccountToken == nil || *r.sa.AutomountServiceAccountToken {
			t.Errorf("%s: a service account token is mounted: the agent never calls the API", o)
		}
		if p.ServiceAccountName != r.sa.Name {
			t.Errorf("%s: the pod runs as service account %q, the overlay makes %q", o, p.ServiceAccountName, r.sa.Name)
		}
		if u := r.ds.Spec.UpdateStrategy; u.Type != "RollingUpdate" || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
			t.Errorf("%s: update strategy %+v: roll one node at a time", o, u)
		}
	}
}

func TestSecurityContext(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		c := agentContainer(t, r)
		sc := c.SecurityContext
		if sc == nil {
			t.Fatalf("%s: no security context", o)
		}
		if sc.Privileged == nil || *sc.Privileged {
			t.Errorf("%s: privileged must be set, to false", o)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation must be set, to false", o)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: the root filesystem is writable", o)
		}
		if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
			t.Errorf("%s: procMount %s unmasks /proc", o, *sc.ProcMount)
		}
		// Root by necessity (the witness needs euid 0, and capabilities do
		// not survive exec for another uid without privilege escalation):
		// said explicitly so that nothing relies on the image's USER.
		if sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.RunAsNonRoot == nil || *sc.RunAsNonRoot {
			t.Errorf("%s: runAsUser %v, runAsNonRoot %v: state uid 0 and runAsNonRoot false explicitly", o, sc.RunAsUser, sc.RunAsNonRoot)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: capabilities dropped %v, want [ALL]", o, sc.Capabilities)
		} else if !slices.Equal(sc.Capabilities.Add, wantCapabilities) {
			t.Errorf("%s: capabilities added %v, want %v (each justified in daemonset.yaml)", o, sc.Capabilities.Add, wantCapabilities)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil && r.ds.Spec.Template.Spec.SecurityContext != nil {
			seccomp = r.ds.Spec.Template.Spec.SecurityContext.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccomp profile %v, want RuntimeDefault", o, seccomp)
		}
		if sc.AppArmorProfile == nil || (sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined && sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeRuntimeDefault) {
			t.Errorf("%s: AppArmor profile %v: say which, and why (daemonset.yaml)", o, sc.AppArmorProfile)
		}
		if ps := r.ds.Spec.Template.Spec.SecurityContext; ps != nil && (len(ps.Sysctls) > 0 || ps.WindowsOptions != nil) {
			t.Errorf("%s: pod security context sets sysctls or Windows options", o)
		}
	}
}

// TestCapabilitiesAreJustified reads daemonset.yaml itself: each added
// capability has a comment above it that starts with its name and says
// what it is for.
func TestCapabilitiesAreJustified(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("daemonset", "base", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var add *yaml.Node
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "capabilities" {
					for j := 0; j+1 < len(n.Content[i+1].Content); j += 2 {
						if n.Content[i+1].Content[j].Value == "add" {
							add = n.Content[i+1].Content[j+1]
						}
					}
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	if add == nil {
		t.Fatal("daemonset.yaml adds no capabilities: no capabilities.add found")
	}
	var names []corev1.Capability
	for _, item := range add.Content {
		names = append(names, corev1.Capability(item.Value))
		comment := strings.Join(strings.Fields(strings.ReplaceAll(item.HeadComment, "#", " ")), " ")
		if !strings.HasPrefix(comment, item.Value+":") {
			t.Errorf("line %d: %s has no justification above it starting %q (found %q)", item.Line, item.Value, item.Value+":", item.HeadComment)
			continue
		}
		if words := len(strings.Fields(comment)); words < 12 {
			t.Errorf("line %d: %s's justification is %d words: say what needs it and why", item.Line, item.Value, words)
		}
	}
	if !slices.Equal(names, wantCapabilities) {
		t.Errorf("daemonset.yaml adds %v, want %v", names, wantCapabilities)
	}
}

func TestProbesAndResources(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		c := agentContainer(t, r)
		listen, _ := argValue(c.Args, "listen")
		_, port, ok := strings.Cut(listen, ":")
		if !ok {
			t.Fatalf("%s: --listen %q has no port", o, listen)
		}
		var metricsPort *corev1.ContainerPort
		for i := range c.Ports {
			if c.Ports[i].Name == "metrics" {
				metricsPort = &c.Ports[i]
			}
		}
		if metricsPort == nil || strconv.Itoa(int(metricsPort.ContainerPort)) != port {
			t.Fatalf("%s: no container port named metrics on --listen's port %s: %+v", o, port, c.Ports)
		}
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: no %s HTTP probe", o, p.name)
				continue
			}
			if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != metricsPort.Name {
				t.Errorf("%s: %s probe GET %s on port %s, want %s on %s", o, p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, metricsPort.Name)
			}
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okr := c.Resources.Requests[res]
			lim, okl := c.Resources.Limits[res]
			if !okr || !okl {
				t.Errorf("%s: %s request %v, limit %v: both are needed", o, res, req.String(), lim.String())
				continue
			}
			if req.Cmp(lim) > 0 {
				t.Errorf("%s: %s request %s over its limit %s", o, res, req.String(), lim.String())
			}
		}
		// The memory limit holds the agent's budget at its default caps
		// (README.md: under 128 MiB whatever clients do).
		if lim := c.Resources.Limits[corev1.ResourceMemory]; lim.Value() < 128<<20 {
			t.Errorf("%s: memory limit %s is under the agent's 128 MiB budget", o, lim.String())
		}
		goMemLimit := false
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" {
				goMemLimit = true
			}
		}
		if !goMemLimit {
			t.Errorf("%s: GOMEMLIMIT does not follow limits.memory", o)
		}
	}
}

// mountFor returns the mount that holds path inside the container (the
// longest mount path that is path or above it), and its volume.
func mountFor(c *corev1.Container, vols map[string]corev1.Volume, p string) (*corev1.VolumeMount, *corev1.Volume) {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = m
		}
	}
	if best == nil {
		return nil, nil
	}
	v, ok := vols[best.Name]
	if !ok {
		return best, nil
	}
	return best, &v
}

func TestMountsMatchFlags(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		c := agentContainer(t, r)
		vols := map[string]corev1.Volume{}
		for _, v := range r.ds.Spec.Template.Spec.Volumes {
			vols[v.Name] = v
		}
		mounted := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s: mount %s names no volume %q", o, m.MountPath, m.Name)
			}
			if mounted[m.Name] {
				t.Errorf("%s: volume %s mounted twice", o, m.Name)
			}
			mounted[m.Name] = true
			if m.SubPath != "" || m.SubPathExpr != "" {
				t.Errorf("%s: %s uses a subPath: a ConfigMap or Secret behind one never updates", o, m.MountPath)
			}
		}
		for name, v := range vols {
			if !mounted[name] {
				t.Errorf("%s: volume %s is not mounted", o, name)
			}
			if v.HostPath != nil {
				if _, ok := hostPaths[v.HostPath.Path]; !ok {
					t.Errorf("%s: volume %s mounts host path %s, not one the agent needs (%v)", o, name, v.HostPath.Path, sortedKeys(hostPaths))
				}
			}
		}
		// Each host path is where its flag points, writable only when the
		// agent writes there.
		for hp, want := range hostPaths {
			val, ok := argValue(c.Args, want.flag)
			if !ok {
				t.Errorf("%s: --%s is not set: the agent would not look under host path %s", o, want.flag, hp)
				continue
			}
			m, v := mountFor(c, vols, val)
			if m == nil || v == nil || v.HostPath == nil || v.HostPath.Path != hp {
				t.Errorf("%s: --%s=%s is not on host path %s (mount %+v)", o, want.flag, val, hp, m)
				continue
			}
			if m.ReadOnly == want.writable {
				t.Errorf("%s: host path %s mounted readOnly=%v; the agent %s it", o, hp, m.ReadOnly, map[bool]string{true: "writes", false: "only reads"}[want.writable])
			}
			// NRI mounts the socket's and libkvh's directories into
			// containers from the paths the agent names, which are host
			// paths: the agent must see them where the host has them.
			if (want.flag == "socket" || want.flag == "libkvh-dir") && m.MountPath != hp {
				t.Errorf("%s: host path %s is mounted at %s: NRI would bind-mount %s from the host", o, hp, m.MountPath, m.MountPath)
			}
			if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
				t.Errorf("%s: %s has mount propagation %s", o, m.MountPath, *m.MountPropagation)
			}
		}
		// Keys from a Secret, files only root may read.
		for _, flag := range []string{"signing-key", "hmac-key-file"} {
			val, _ := argValue(c.Args, flag)
			m, v := mountFor(c, vols, val)
			if m == nil || v == nil || v.Secret == nil {
				t.Errorf("%s: --%s=%s is not in a Secret volume", o, flag, val)
				continue
			}
			if !m.ReadOnly {
				t.Errorf("%s: the key volume %s is writable", o, m.MountPath)
			}
			mode, found := v.Secret.DefaultMode, false
			for _, it := range v.Secret.Items {
				if path.Join(m.MountPath, it.Path) == val {
					found = true
					if it.Mode != nil {
						mode = it.Mode
					}
				}
			}
			if !found {
				t.Errorf("%s: --%s=%s is not an item of Secret %s", o, flag, val, v.Secret.SecretName)
				continue
			}
			if mode == nil {
				t.Errorf("%s: --%s: no file mode set (Kubernetes' default 0644 is open to all)", o, flag)
			} else if *mode&0o077 != 0 || *mode&0o400 == 0 {
				t.Errorf("%s: --%s file mode %#o: the agent refuses a key readable by group or others", o, flag, *mode)
			}
		}
		// The policy from the generated ConfigMap, under its hashed name.
		pol, _ := argValue(c.Args, "policy")
		m, v := mountFor(c, vols, pol)
		if m == nil || v == nil || v.ConfigMap == nil || !m.ReadOnly {
			t.Fatalf("%s: --policy=%s is not in a read-only ConfigMap volume", o, pol)
		}
		cm, ok := r.configMaps[v.ConfigMap.Name]
		if !ok {
			t.Fatalf("%s: the policy volume names ConfigMap %s, which the overlay does not make", o, v.ConfigMap.Name)
		}
		if _, ok := cm.Data[strings.TrimPrefix(pol, m.MountPath+"/")]; !ok {
			t.Errorf("%s: ConfigMap %s has no key for %s (keys %v)", o, cm.Name, pol, sortedKeys(cm.Data))
		}
		// A fixed name: kubelet then updates the file in place and the
		// agent reloads it; a hashed name would restart every agent.
		if cm.Name != "kvh-policy" {
			t.Errorf("%s: policy ConfigMap %q: want the fixed name kvh-policy, so a change is reloaded in place", o, cm.Name)
		}
		if w, ok := argValue(c.Args, "policy-watch"); !ok {
			t.Errorf("%s: no --policy-watch: a changed policy ConfigMap would never reach the agent", o)
		} else if d, err := time.ParseDuration(w); err != nil || d <= 0 || d > time.Minute {
			t.Errorf("%s: --policy-watch=%s: want a positive interval of at most a minute", o, w)
		}
	}
}

// TestEachOverlayHasItsPolicy: observe and enforce render different
// policies under the one ConfigMap name.
func TestEachOverlayHasItsPolicy(t *testing.T) {
	seen := map[string]string{}
	for _, o := range overlays {
		cm, ok := render(t, o).configMaps["kvh-policy"]
		if !ok {
			t.Fatalf("%s: no kvh-policy ConfigMap", o)
		}
		body := cm.Data["policy.yaml"]
		if prev, ok := seen[body]; ok {
			t.Errorf("%s and %s render the same policy", prev, o)
		}
		seen[body] = o
	}
}

func TestSelectorsMatch(t *testing.T) {
	for _, o := range overlays {
		r := render(t, o)
		podLabels := labels.Set(r.ds.Spec.Template.Labels)
		sel, err := metav1.LabelSelectorAsSelector(r.ds.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(podLabels) {
			t.Errorf("%s: the DaemonSet's selector %v does not select its pods %v (%v)", o, r.ds.Spec.Selector, podLabels, err)
		}
		svcSel := labels.SelectorFromSet(r.svc.Spec.Selector)
		if len(r.svc.Spec.Selector) == 0 || !svcSel.Matches(podLabels) {
			t.Errorf("%s: the Service's selector %v does not select the agent's pods %v", o, r.svc.Spec.Selector, podLabels)
		}
		c := agentContainer(t, r)
		var svcPort string
		for _, p := range r.svc.Spec.Ports {
			if p.TargetPort.String() != "metrics" || !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == "metrics" }) {
				t.Errorf("%s: Service port %s targets %s, not the container's metrics port", o, p.Name, p.TargetPort.String())
			}
			svcPort = p.Name
		}
		smSel, err := metav1.LabelSelectorAsSelector(&r.sm.Spec.Selector)
		if err != nil || smSel.Empty() || !smSel.Matches(labels.Set(r.svc.Labels)) {
			t.Errorf("%s: the ServiceMonitor's selector %v does not select the Service %v (%v)", o, r.sm.Spec.Selector, r.svc.Labels, err)
		}
		if ns := r.sm.Spec.NamespaceSelector; !ns.Any && !slices.Contains(ns.MatchNames, r.svc.Namespace) {
			t.Errorf("%s: the ServiceMonitor looks in %v, the Service is in %s", o, ns.MatchNames, r.svc.Namespace)
		}
		if len(r.sm.Spec.Endpoints) != 1 || r.sm.Spec.Endpoints[0].Port != svcPort || r.sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("%s: ServiceMonitor endpoints %+v, want port %s path /metrics", o, r.sm.Spec.Endpoints, svcPort)
		}
	}
}

// TestOverlaysDiffer: observe never acts and tolerates a node without the
// witness; enforce acts and requires the witness.
func TestOverlaysDiffer(t *testing.T) {
	for _, tc := range []struct{ overlay, witness, mode string }{{"observe", "auto", "observe"}, {"enforce", "on", "enforce"}} {
		r := render(t, tc.overlay)
		c := agentContainer(t, r)
		if w, _ := argValue(c.Args, "witness"); w != tc.witness {
			t.Errorf("%s: --witness=%s, want %s", tc.overlay, w, tc.witness)
		}
		if got := r.ds.Labels["kvh.io/mode"]; got != tc.mode {
			t.Errorf("%s: kvh.io/mode label %q", tc.overlay, got)
		}
		pol := loadPolicy(t, r)
		if act := pol.OnViolation; (tc.mode == "observe") != (act == "observe") {
			t.Errorf("%s: on_violation %q", tc.overlay, act)
		}
	}
}

// TestImagePublishesLibkvh: the agent's --publish-libkvh is where
// Dockerfile.cuda puts libkvh.so.
func TestImagePublishesLibkvh(t *testing.T) {
	df := parseDockerfile(t)
	for _, o := range overlays {
		c := agentContainer(t, render(t, o))
		pub, ok := argValue(c.Args, "publish-libkvh")
		if !ok || !slices.Contains(df.finalFiles, pub) {
			t.Errorf("%s: --publish-libkvh=%q, but Dockerfile.cuda puts files at %v", o, pub, df.finalFiles)
		}
		if c.Image != "kvh" {
			t.Errorf("%s: image %q: keep it kvh, set with kustomize edit set image kvh=REGISTRY/kvh:TAG", o, c.Image)
		}
	}
}
