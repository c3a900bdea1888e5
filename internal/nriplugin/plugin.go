// Package nriplugin is the agent's NRI plugin (github.com/containerd/nri):
// it puts libkvh into containers nobody changed, and tells the agent who
// each container is.
//
// For every container that gets an NVIDIA GPU (Wants) it adds read-only
// bind mounts of the directory holding libkvh.so and of the agent socket's
// directory, prepends libkvh.so to LD_PRELOAD (what the image preloads is
// kept, after it) and sets KVH_SOCKET (Edits; the CDI spec of
// `kvh-agent cdi generate` carries the same edits). A pod's kvh.io/opt-out
// annotation is honoured only where the policy's allow_opt_out is on, and is
// recorded in the trail (opt_out) either way.
//
// It keeps a map from container id (and cgroup path) to pod — UID,
// namespace, name, labels — fed by RunPodSandbox and CreateContainer, and
// filled on every (re)connect by Synchronize with what already runs;
// containers leave it when they stop. PodOf answers ingest's identity
// lookup from it, the pod's tenant named by the policy's tenant_key.
//
// Containers that started while no plugin was connected were not injected:
// NRI fails open. They are in the map once Synchronize runs (so they are
// named), and the witness flags their driver calls as uncovered_process.
package nriplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
)

// Annotations a pod (or one container of it) may carry.
const (
	// AnnotationInject "true" opts a container without a GPU in.
	AnnotationInject = "kvh.io/inject"
	// AnnotationOptOut "true" asks not to be injected (honoured only under
	// allow_opt_out; recorded either way).
	AnnotationOptOut = "kvh.io/opt-out"
	// AnnotationInjected is what the plugin sets on a container it injected.
	AnnotationInjected = "kvh.io/injected"
)

// LibName is the interposer's file name in the library directory.
const LibName = "libkvh.so"

// Trail is where opt-outs are recorded (*forensic.Log).
type Trail interface {
	Append(body any) (uint64, error)
}

// Config wires a Plugin.
type Config struct {
	// Socket is the runtime's NRI socket (default /var/run/nri/nri.sock).
	Socket string
	// LibDir is the host directory holding libkvh.so; it is mounted
	// read-only at the same path in injected containers.
	LibDir string
	// AgentSocket is the agent's interposer socket; its directory is
	// mounted read-only at the same path, and KVH_SOCKET names it.
	AgentSocket string
	Policy      func() policy.Config // required: tenant_key, allow_opt_out
	Trail       Trail                // required: opt-outs
	Log         hclog.Logger
	// Name and Index register the plugin (default "kvh" and "10"); a
	// runtime that launched the plugin itself passes them in NRI_PLUGIN_*.
	Name, Index string
}

type podInfo struct {
	uid, namespace, name string
	labels               map[string]string
}

type ctrInfo struct {
	pod, name, cgroup string
}

// Plugin is the NRI plugin and the container -> pod map.
type Plugin struct {
	cfg  Config
	mu   sync.Mutex
	pods map[string]podInfo // sandbox id -> pod
	ctrs map[string]ctrInfo // container id -> container
	cgs  map[string]string  // cgroup path -> container id
	conn chan struct{}      // closed on each successful registration, then replaced
}

// New checks cfg and returns a plugin not yet connected (Run connects).
func New(cfg Config) (*Plugin, error) {
	if cfg.Policy == nil || cfg.Trail == nil {
		return nil, errors.New("nriplugin: Policy and Trail are required")
	}
	if cfg.Socket == "" {
		cfg.Socket = "/var/run/nri/nri.sock"
	}
	if !filepath.IsAbs(cfg.LibDir) || !filepath.IsAbs(cfg.AgentSocket) {
		return nil, fmt.Errorf("nriplugin: the libkvh directory %q and the agent socket %q must be absolute paths (they are mounted at the same path in containers)", cfg.LibDir, cfg.AgentSocket)
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Name == "" {
		cfg.Name = "kvh"
	}
	if cfg.Index == "" {
		cfg.Index = "10"
	}
	return &Plugin{cfg: cfg, pods: map[string]podInfo{}, ctrs: map[string]ctrInfo{}, cgs: map[string]string{}, conn: make(chan struct{})}, nil
}

// Run connects to the runtime and serves it until ctx ends, reconnecting
// (every retry, at most) when the connection drops or cannot be made: a
// runtime that restarts, or starts after the agent, finds the plugin again.
func (p *Plugin) Run(ctx context.Context, retry time.Duration) {
	logged := false
	for ctx.Err() == nil {
		err := p.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil && !logged {
			p.cfg.Log.Warn("NRI: not connected to the runtime; containers created meanwhile are not injected (the witness flags their driver calls); retrying", "socket", p.cfg.Socket, "error", err)
			logged = true
		} else if err == nil {
			p.cfg.Log.Warn("NRI: the runtime closed the connection; reconnecting", "socket", p.cfg.Socket)
			logged = false
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

func (p *Plugin) runOnce(ctx context.Context) error {
	var opts []stub.Option
	// A runtime that launched the plugin passes its name, index and socket
	// in the environment; WithPluginIdx then fails, so set them only when
	// they are unset.
	if os.Getenv("NRI_PLUGIN_NAME") == "" {
		opts = append(opts, stub.WithPluginName(p.cfg.Name))
	}
	if os.Getenv("NRI_PLUGIN_IDX") == "" {
		opts = append(opts, stub.WithPluginIdx(p.cfg.Index))
	}
	if os.Getenv("NRI_PLUGIN_SOCKET") == "" {
		opts = append(opts, stub.WithSocketPath(p.cfg.Socket))
	}
	opts = append(opts, stub.WithLogger(nriLogger{p.cfg.Log.Named("nri")}))
	s, err := stub.New(p, opts...)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	return s.Run(runCtx)
}

// Connected returns a channel closed once the plugin has synchronized with
// the runtime (for tests and readiness).
func (p *Plugin) Connected() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn
}

// Synchronize learns every pod and container already running. They could
// not be injected now; those that were not are logged, and their driver
// calls are the witness's to flag.
func (p *Plugin) Synchronize(_ context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	clear(p.pods)
	clear(p.ctrs)
	clear(p.cgs)
	for _, pod := range pods {
		p.addPodLocked(pod)
	}
	for _, c := range ctrs {
		p.addCtrLocked(c)
	}
	close(p.conn)
	p.conn = make(chan struct{})
	p.mu.Unlock()
	lib := filepath.Join(p.cfg.LibDir, LibName)
	uncovered := 0
	for _, c := range ctrs {
		if !strings.Contains(envValue(c.GetEnv(), "LD_PRELOAD"), lib) {
			uncovered++
			pod := p.podOf(c.GetPodSandboxId())
			p.cfg.Log.Debug("NRI: container started before the agent without libkvh (the witness flags its driver calls)", "namespace", pod.namespace, "pod", pod.name, "container", c.GetName())
		}
	}
	p.cfg.Log.Info("NRI: synchronized with the runtime", "pods", len(pods), "containers", len(ctrs), "without_libkvh", uncovered)
	return nil, nil
}

// RunPodSandbox learns a pod.
func (p *Plugin) RunPodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.mu.Lock()
	p.addPodLocked(pod)
	p.mu.Unlock()
	return nil
}

// RemovePodSandbox forgets a pod and whatever containers of it remain.
func (p *Plugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pods, pod.GetId())
	for id, c := range p.ctrs {
		if c.pod == pod.GetId() {
			p.removeCtrLocked(id)
		}
	}
	return nil
}

// CreateContainer decides, records an opt-out, learns the container and
// returns the injection.
func (p *Plugin) CreateContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	pol := p.cfg.Policy()
	p.mu.Lock()
	p.addPodLocked(pod)
	p.addCtrLocked(ctr)
	p.mu.Unlock()
	log := p.cfg.Log.With("namespace", pod.GetNamespace(), "pod", pod.GetName(), "container", ctr.GetName())
	wants, why := Wants(pod, ctr)
	if !wants {
		log.Debug("NRI: not injected: no NVIDIA GPU and no "+AnnotationInject+" annotation", "container_id", ctr.GetId())
		return nil, nil, nil
	}
	if optedOut(pod, ctr) {
		tenant, _ := pol.TenantOf(pod.GetNamespace(), pod.GetLabels())
		rec := trailevent.OptOut{Ev: trailevent.EvOptOut, PodUID: pod.GetUid(), Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: ctr.GetName(),
			ContainerID: ctr.GetId(), Tenant: tenant, Honoured: pol.AllowOptOut}
		if _, err := p.cfg.Trail.Append(rec); err != nil {
			// Unrecorded, an opt-out is not honoured: the container is
			// injected, and the runtime is not refused.
			log.Error("NRI: opt-out not recorded; injecting", "error", err)
			rec.Honoured = false
		}
		if rec.Honoured {
			log.Warn("NRI: not injected: the pod opted out ("+AnnotationOptOut+") and the policy allows it", "container_id", ctr.GetId())
			return nil, nil, nil
		}
		log.Warn("NRI: the pod asked to opt out ("+AnnotationOptOut+") but the policy's allow_opt_out is off; injected", "container_id", ctr.GetId())
	}
	in := Edits(p.cfg.LibDir, p.cfg.AgentSocket, ctr.GetEnv())
	for k, v := range Floor(pol, ctr.GetEnv()) {
		in.Env[k] = v
	}
	adj := in.Adjustment()
	log.Info("NRI: injected libkvh", "container_id", ctr.GetId(), "because", why)
	return adj, nil, nil
}

// StopContainer forgets a container: its processes are gone.
func (p *Plugin) StopContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	p.removeCtrLocked(ctr.GetId())
	p.mu.Unlock()
	return nil, nil
}

// RemoveContainer forgets a container (one never started stops here).
func (p *Plugin) RemoveContainer(_ context.Context, _ *api.PodSandbox, ctr *api.Container) error {
	p.mu.Lock()
	p.removeCtrLocked(ctr.GetId())
	p.mu.Unlock()
	return nil
}

// PodOf is ingest.Pods: the pod of a container, by its runtime id or its
// cgroup path, with the tenant the current policy's tenant_key names.
func (p *Plugin) PodOf(containerID, cgroup string) (ingest.Pod, bool) {
	pol := p.cfg.Policy()
	p.mu.Lock()
	c, ok := p.ctrs[containerID]
	if !ok && cgroup != "" {
		var id string
		if id, ok = p.cgs[cgroup]; ok {
			c = p.ctrs[id]
		}
	}
	var pod podInfo
	if ok {
		pod, ok = p.pods[c.pod]
	}
	p.mu.Unlock()
	if !ok {
		return ingest.Pod{}, false
	}
	out := ingest.Pod{UID: pod.uid, Namespace: pod.namespace, Name: pod.name, Container: c.name}
	if t, ok := pol.TenantOf(pod.namespace, pod.labels); ok {
		out.Tenant, out.TenantSource = t, "namespace"
		if strings.HasPrefix(pol.TenantKey, policy.TenantKeyLabel) {
			out.TenantSource = "label"
		}
	}
	return out, true
}

// Containers is how many containers the map holds.
func (p *Plugin) Containers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ctrs)
}

func (p *Plugin) podOf(sandbox string) podInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[sandbox]
}

func (p *Plugin) addPodLocked(pod *api.PodSandbox) {
	labels := make(map[string]string, len(pod.GetLabels()))
	for k, v := range pod.GetLabels() {
		labels[k] = v
	}
	p.pods[pod.GetId()] = podInfo{uid: pod.GetUid(), namespace: pod.GetNamespace(), name: pod.GetName(), labels: labels}
}

func (p *Plugin) addCtrLocked(c *api.Container) {
	cg := cgroupPath(c.GetLinux().GetCgroupsPath())
	p.ctrs[c.GetId()] = ctrInfo{pod: c.GetPodSandboxId(), name: c.GetName(), cgroup: cg}
	if cg != "" {
		p.cgs[cg] = c.GetId()
	}
}

func (p *Plugin) removeCtrLocked(id string) {
	if c, ok := p.ctrs[id]; ok && c.cgroup != "" && p.cgs[c.cgroup] == id {
		delete(p.cgs, c.cgroup)
	}
	delete(p.ctrs, id)
}

// cgroupPath is the cgroup path the kernel will show for a container's
// processes, from the OCI cgroupsPath: a cgroupfs path as is; a systemd
// "slice:prefix:name" as the .scope under the slice's hierarchy.
func cgroupPath(oci string) string {
	if strings.HasPrefix(oci, "/") {
		return oci
	}
	parts := strings.Split(oci, ":")
	if len(parts) != 3 || !strings.HasSuffix(parts[0], ".slice") {
		return ""
	}
	// kubepods-burstable-podX.slice -> /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice
	slice := strings.TrimSuffix(parts[0], ".slice")
	var dir string
	acc := ""
	for _, seg := range strings.Split(slice, "-") {
		if acc == "" {
			acc = seg
		} else {
			acc += "-" + seg
		}
		dir += "/" + acc + ".slice"
	}
	return dir + "/" + parts[1] + "-" + parts[2] + ".scope"
}

// Wants reports whether a container gets libkvh, and why: it has an NVIDIA
// GPU (a CDI device of vendor nvidia.com or *.nvidia.com, NVIDIA_VISIBLE_DEVICES other than void or
// none, an /dev/nvidia<N> device), or it (or its pod) carries
// kvh.io/inject: "true".
func Wants(pod *api.PodSandbox, ctr *api.Container) (bool, string) {
	for _, d := range ctr.GetCDIDevices() {
		if nvidiaCDI(d.GetName()) {
			return true, "CDI device " + d.GetName()
		}
	}
	if v, ok := lookupEnv(ctr.GetEnv(), "NVIDIA_VISIBLE_DEVICES"); ok {
		switch strings.TrimSpace(v) {
		case "", "void", "none":
		default:
			return true, "NVIDIA_VISIBLE_DEVICES=" + v
		}
	}
	for _, d := range ctr.GetLinux().GetDevices() {
		if rest, ok := strings.CutPrefix(d.GetPath(), "/dev/nvidia"); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true, "device " + d.GetPath()
		}
	}
	if annotation(pod, ctr, AnnotationInject) {
		return true, AnnotationInject + " annotation"
	}
	return false, ""
}

// nvidiaCDI: a CDI device name "vendor/class=name" whose vendor is
// NVIDIA's: nvidia.com (nvidia-ctk's specs) or a subdomain of it (the device
// plugin's k8s.device-plugin.nvidia.com, the DRA driver's
// k8s.gpu.nvidia.com, the GPU operator's management.nvidia.com).
func nvidiaCDI(name string) bool {
	vendor, _, ok := strings.Cut(name, "/")
	return ok && (vendor == "nvidia.com" || strings.HasSuffix(vendor, ".nvidia.com"))
}

func optedOut(pod *api.PodSandbox, ctr *api.Container) bool {
	return annotation(pod, ctr, AnnotationOptOut)
}

// annotation: the container's own annotation wins over its pod's.
func annotation(pod *api.PodSandbox, ctr *api.Container, key string) bool {
	v, ok := ctr.GetAnnotations()[key]
	if !ok {
		v = pod.GetAnnotations()[key]
	}
	return strings.EqualFold(strings.TrimSpace(v), "true")
}

func lookupEnv(env []string, key string) (string, bool) {
	var v string
	found := false
	for _, kv := range env { // the last one wins, as in execve's environment
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v, found = val, true
		}
	}
	return v, found
}

func envValue(env []string, key string) string { v, _ := lookupEnv(env, key); return v }

// Injection is what a container gets: mounts and environment (set, in
// name order).
type Injection struct {
	Mounts []Mount
	Env    map[string]string
}

// Mount is a read-only bind mount at the same path as on the host.
type Mount struct{ Source, Destination string }

// MountOptions are a Mount's options.
var MountOptions = []string{"rbind", "ro", "nosuid", "nodev"}

// Edits returns the injection for a container whose environment is env:
// read-only mounts of libDir and of agentSocket's directory, LD_PRELOAD with
// libDir/libkvh.so first and the image's own preloads kept after it (once),
// and KVH_SOCKET.
func Edits(libDir, agentSocket string, env []string) Injection {
	lib := filepath.Join(libDir, LibName)
	preload := lib
	if old, ok := lookupEnv(env, "LD_PRELOAD"); ok {
		var keep []string
		for _, f := range strings.FieldsFunc(old, func(r rune) bool { return r == ':' || r == ' ' }) {
			if f != lib {
				keep = append(keep, f)
			}
		}
		if len(keep) > 0 {
			preload += ":" + strings.Join(keep, ":")
		}
	}
	sockDir := filepath.Dir(agentSocket)
	ms := []Mount{{Source: libDir, Destination: libDir}}
	if sockDir != libDir {
		ms = append(ms, Mount{Source: sockDir, Destination: sockDir})
	}
	return Injection{Mounts: ms, Env: map[string]string{"LD_PRELOAD": preload, "KVH_SOCKET": agentSocket}}
}

// Floor is the interposer settings an injected container starts with: the
// policy's verification floor (KVH_VERIFY, KVH_VERIFY_SAMPLES,
// KVH_DOUBLE_PASS), so that its first free already meets what the agent
// would otherwise raise it to once connected (a free before that would be a
// verify_below_floor violation). What the container sets itself is kept
// where it is stronger.
func Floor(pol policy.Config, env []string) map[string]string {
	out := map[string]string{}
	rank := map[string]int{"off": 0, "sample": 1, "full": 2}
	if v, ok := lookupEnv(env, "KVH_VERIFY"); !ok || rank[v] < rank[pol.VerifyMode] {
		out["KVH_VERIFY"] = pol.VerifyMode
	}
	if v, ok := lookupEnv(env, "KVH_VERIFY_SAMPLES"); !ok || atoi(v) < pol.VerifySamples {
		out["KVH_VERIFY_SAMPLES"] = strconv.Itoa(pol.VerifySamples)
	}
	if pol.DoublePass {
		out["KVH_DOUBLE_PASS"] = "1"
	}
	return out
}

func atoi(s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return -1
	}
	return n
}

// Adjustment is the injection as an NRI container adjustment.
func (in Injection) Adjustment() *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	for _, m := range in.Mounts {
		adj.AddMount(&api.Mount{Source: m.Source, Destination: m.Destination, Type: "bind", Options: append([]string(nil), MountOptions...)})
	}
	keys := make([]string, 0, len(in.Env))
	for k := range in.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		adj.AddEnv(k, in.Env[k])
	}
	adj.AddAnnotation(AnnotationInjected, "true")
	return adj
}

// nriLogger routes the NRI library's log through the agent's.
type nriLogger struct{ l hclog.Logger }

func (n nriLogger) Debugf(_ context.Context, f string, a ...any) { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n nriLogger) Infof(_ context.Context, f string, a ...any)  { n.l.Debug(fmt.Sprintf(f, a...)) }
func (n nriLogger) Warnf(_ context.Context, f string, a ...any)  { n.l.Warn(fmt.Sprintf(f, a...)) }
func (n nriLogger) Errorf(_ context.Context, f string, a ...any) { n.l.Error(fmt.Sprintf(f, a...)) }
