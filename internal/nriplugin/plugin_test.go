package nriplugin

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
)

type trail struct {
	recs []any
	err  error
}

func (t *trail) Append(b any) (uint64, error) {
	if t.err != nil {
		return 0, t.err
	}
	t.recs = append(t.recs, b)
	return uint64(len(t.recs)), nil
}

func newPlugin(t *testing.T, pol *policy.Config, tr *trail) *Plugin {
	t.Helper()
	p, err := New(Config{LibDir: "/var/lib/kvh/lib", AgentSocket: "/run/kvh/kvh.sock", Policy: func() policy.Config { return *pol }, Trail: tr})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pod(id, ns string, ann map[string]string) *api.PodSandbox {
	return &api.PodSandbox{Id: id, Uid: "uid-" + id, Name: "pod-" + id, Namespace: ns, Labels: map[string]string{"kvh.io/tenant": "acme-" + id}, Annotations: ann}
}

func TestWants(t *testing.T) {
	cases := []struct {
		name string
		pod  *api.PodSandbox
		ctr  *api.Container
		want bool
	}{
		{"CDI device", pod("a", "n", nil), &api.Container{CDIDevices: []*api.CDIDevice{{Name: "nvidia.com/gpu=0"}}}, true},
		{"other CDI vendor", pod("a", "n", nil), &api.Container{CDIDevices: []*api.CDIDevice{{Name: "vendor.com/fpga=0"}}}, false},
		{"visible devices", pod("a", "n", nil), &api.Container{Env: []string{"NVIDIA_VISIBLE_DEVICES=all"}}, true},
		{"void", pod("a", "n", nil), &api.Container{Env: []string{"NVIDIA_VISIBLE_DEVICES=void"}}, false},
		{"none", pod("a", "n", nil), &api.Container{Env: []string{"NVIDIA_VISIBLE_DEVICES=none"}}, false},
		{"last value wins", pod("a", "n", nil), &api.Container{Env: []string{"NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=void"}}, false},
		{"device node", pod("a", "n", nil), &api.Container{Linux: &api.LinuxContainer{Devices: []*api.LinuxDevice{{Path: "/dev/nvidia3"}}}}, true},
		{"control node only", pod("a", "n", nil), &api.Container{Linux: &api.LinuxContainer{Devices: []*api.LinuxDevice{{Path: "/dev/nvidiactl"}}}}, false},
		{"opt in on the pod", pod("a", "n", map[string]string{AnnotationInject: "true"}), &api.Container{}, true},
		{"opt in on the container", pod("a", "n", nil), &api.Container{Annotations: map[string]string{AnnotationInject: "True"}}, true},
		{"nothing", pod("a", "n", nil), &api.Container{Env: []string{"PATH=/bin"}}, false},
	}
	for _, tc := range cases {
		if got, why := Wants(tc.pod, tc.ctr); got != tc.want {
			t.Errorf("%s: Wants = %v (%s), want %v", tc.name, got, why, tc.want)
		}
	}
}

func TestEditsKeepTheImagePreload(t *testing.T) {
	cases := []struct {
		env  []string
		want string
	}{
		{nil, "/var/lib/kvh/lib/libkvh.so"},
		{[]string{"LD_PRELOAD=/usr/lib/libjemalloc.so.2"}, "/var/lib/kvh/lib/libkvh.so:/usr/lib/libjemalloc.so.2"},
		{[]string{"LD_PRELOAD=/a.so /b.so"}, "/var/lib/kvh/lib/libkvh.so:/a.so:/b.so"},
		{[]string{"LD_PRELOAD=/a.so:/var/lib/kvh/lib/libkvh.so"}, "/var/lib/kvh/lib/libkvh.so:/a.so"}, // once, first
	}
	for _, tc := range cases {
		in := Edits("/var/lib/kvh/lib", "/run/kvh/kvh.sock", tc.env)
		if in.Env["LD_PRELOAD"] != tc.want || in.Env["KVH_SOCKET"] != "/run/kvh/kvh.sock" {
			t.Errorf("%q: %v, want LD_PRELOAD=%s", tc.env, in.Env, tc.want)
		}
		want := []Mount{{"/var/lib/kvh/lib", "/var/lib/kvh/lib"}, {"/run/kvh", "/run/kvh"}}
		if !reflect.DeepEqual(in.Mounts, want) {
			t.Errorf("mounts %v", in.Mounts)
		}
	}
	adj := Edits("/var/lib/kvh/lib", "/run/kvh/kvh.sock", nil).Adjustment()
	for _, m := range adj.GetMounts() {
		if m.Type != "bind" || !reflect.DeepEqual(m.Options, MountOptions) {
			t.Errorf("mount %v is not a read-only bind", m)
		}
	}
	if adj.GetAnnotations()[AnnotationInjected] != "true" {
		t.Errorf("no %s annotation", AnnotationInjected)
	}
}

func TestCreateContainerAndOptOut(t *testing.T) {
	gpu := []string{"NVIDIA_VISIBLE_DEVICES=0", "LD_PRELOAD=/opt/img.so"}
	optOut := map[string]string{AnnotationOptOut: "true"}
	ctx := context.Background()
	for _, allow := range []bool{false, true} {
		pol := policy.Default()
		pol.AllowOptOut = allow
		tr := &trail{}
		p := newPlugin(t, &pol, tr)
		adj, _, err := p.CreateContainer(ctx, pod("a", "team-a", nil), &api.Container{Id: "c1", PodSandboxId: "a", Name: "srv", Env: gpu})
		env := map[string]string{}
		for _, kv := range adj.GetEnv() {
			env[kv.GetKey()] = kv.GetValue()
		}
		wantEnv := map[string]string{"LD_PRELOAD": "/var/lib/kvh/lib/libkvh.so:/opt/img.so", "KVH_SOCKET": "/run/kvh/kvh.sock", "KVH_VERIFY": "full", "KVH_VERIFY_SAMPLES": "8"}
		if err != nil || !reflect.DeepEqual(env, wantEnv) {
			t.Fatalf("GPU container: %v, want %v (%v)", env, wantEnv, err)
		}
		adj, _, err = p.CreateContainer(ctx, pod("b", "team-b", optOut), &api.Container{Id: "c2", PodSandboxId: "b", Name: "srv", Env: gpu})
		if err != nil || (adj == nil) != allow {
			t.Fatalf("allow_opt_out=%v: adjustment %v (%v)", allow, adj, err)
		}
		want := trailevent.OptOut{Ev: "opt_out", PodUID: "uid-b", Namespace: "team-b", Pod: "pod-b", Container: "srv", ContainerID: "c2", Tenant: "team-b", Honoured: allow}
		if len(tr.recs) != 1 || tr.recs[0] != want {
			t.Fatalf("allow_opt_out=%v: recorded %+v, want %+v", allow, tr.recs, want)
		}
		// Not a GPU container: nothing to opt out of, nothing recorded.
		if adj, _, _ := p.CreateContainer(ctx, pod("c", "team-c", optOut), &api.Container{Id: "c3", PodSandboxId: "c"}); adj != nil || len(tr.recs) != 1 {
			t.Fatalf("a container without a GPU: %v %v", adj, tr.recs)
		}
	}
	// An opt-out the trail cannot take is not honoured.
	pol := policy.Default()
	pol.AllowOptOut = true
	p := newPlugin(t, &pol, &trail{err: errors.New("disk full")})
	if adj, _, _ := p.CreateContainer(ctx, pod("b", "team-b", optOut), &api.Container{Id: "c2", PodSandboxId: "b", Env: gpu}); adj == nil {
		t.Fatal("an unrecorded opt-out was honoured")
	}
}

func TestPodMap(t *testing.T) {
	ctx := context.Background()
	pol := policy.Default()
	p := newPlugin(t, &pol, &trail{})
	sysd := &api.Container{Id: "c2", PodSandboxId: "b", Name: "w", Linux: &api.LinuxContainer{CgroupsPath: "kubepods-besteffort-pod1234.slice:cri-containerd:c2"}}
	if _, err := p.Synchronize(ctx, []*api.PodSandbox{pod("a", "team-a", nil), pod("b", "team-b", nil)},
		[]*api.Container{{Id: "c1", PodSandboxId: "a", Name: "srv", Linux: &api.LinuxContainer{CgroupsPath: "/k8s.io/c1"}}, sysd}); err != nil {
		t.Fatal(err)
	}
	got, ok := p.PodOf("c1", "")
	if want := (ingest.Pod{UID: "uid-a", Namespace: "team-a", Name: "pod-a", Container: "srv", Tenant: "team-a", TenantSource: "namespace"}); !ok || got != want {
		t.Errorf("by id: %+v %v", got, ok)
	}
	if got, ok := p.PodOf("", "/k8s.io/c1"); !ok || got.Name != "pod-a" {
		t.Errorf("by cgroupfs path: %+v %v", got, ok)
	}
	if got, ok := p.PodOf("", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-c2.scope"); !ok || got.Name != "pod-b" {
		t.Errorf("by systemd path: %+v %v", got, ok)
	}
	// The tenant follows the policy's tenant_key as it is now.
	pol.TenantKey = "label:kvh.io/tenant"
	if got, _ := p.PodOf("c1", ""); got.Tenant != "acme-a" || got.TenantSource != "label" {
		t.Errorf("label key: %+v", got)
	}
	pol.TenantKey = "label:missing"
	if got, ok := p.PodOf("c1", ""); !ok || got.Tenant != "" || got.UID != "uid-a" {
		t.Errorf("missing label: %+v", got)
	}
	p.StopContainer(ctx, nil, &api.Container{Id: "c1"})
	if _, ok := p.PodOf("c1", "/k8s.io/c1"); ok {
		t.Error("a stopped container is still mapped")
	}
	p.RemovePodSandbox(ctx, &api.PodSandbox{Id: "b"})
	if _, ok := p.PodOf("c2", ""); ok || p.Containers() != 0 {
		t.Errorf("a removed pod's container is still mapped (%d)", p.Containers())
	}
}

func TestFloor(t *testing.T) {
	pol := policy.Default() // verify full, 8 samples
	pol.DoublePass = true
	if got := Floor(pol, []string{"KVH_VERIFY=off", "KVH_VERIFY_SAMPLES=2"}); !reflect.DeepEqual(got, map[string]string{"KVH_VERIFY": "full", "KVH_VERIFY_SAMPLES": "8", "KVH_DOUBLE_PASS": "1"}) {
		t.Errorf("weaker settings raised: %v", got)
	}
	pol.VerifyMode, pol.DoublePass = "sample", false
	if got := Floor(pol, []string{"KVH_VERIFY=full", "KVH_VERIFY_SAMPLES=64"}); len(got) != 0 {
		t.Errorf("stronger settings of the container's own replaced: %v", got)
	}
}
