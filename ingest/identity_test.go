package ingest

import (
	"os"
	"path/filepath"
	"testing"
)

func fakeProc(t *testing.T, pid string, cgroup, environ string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, pid)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "cgroup"), []byte(cgroup), 0o644)
	os.WriteFile(filepath.Join(dir, "environ"), []byte(environ), 0o644)
	os.WriteFile(filepath.Join(dir, "comm"), []byte("vllm\n"), 0o644)
	return root
}

func TestIdentify(t *testing.T) {
	const pod = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope\n"
	const ctr = "0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
	cases := []struct {
		name, cgroup, env string
		trust             bool
		tenant, source    string
	}{
		// A process cannot pick its tenant: its own KVH_TENANT loses to the
		// pod and the container, and to the uid unless claims are trusted.
		{"pod beats a claim", pod, "PATH=/bin\x00KVH_TENANT=acme\x00", true, "pod:1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", "pod"},
		{"pod uid", pod, "PATH=/bin\x00", false, "pod:1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", "pod"},
		{"container beats a claim", ctr, "KVH_TENANT=acme\x00", true, "container:0123456789ab", "container"},
		{"untrusted claim", "0::/user.slice\n", "KVH_TENANT=acme\x00", false, "uid:1000", "uid"},
		{"trusted claim on bare metal", "0::/user.slice\n", "KVH_TENANT=acme\x00", true, "acme", "claim"},
		{"uid", "0::/user.slice\n", "", true, "uid:1000", "uid"},
		{"hybrid: v1 memory path over an empty v2", "4:memory:/k8s.io/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n0::/\n", "", false, "container:0123456789ab", "container"},
		{"control bytes stripped", "0::/\n", "KVH_TENANT=ev\x1bil\n\x00", true, "evil", "claim"},
	}
	for _, tc := range cases {
		id := Identify(fakeProc(t, "42", tc.cgroup, tc.env), 42, 1000, tc.trust)
		if id.Tenant != tc.tenant || id.TenantSource != tc.source || id.Comm != "vllm" {
			t.Errorf("%s: %+v", tc.name, id)
		}
	}
	if id := Identify(fakeProc(t, "42", pod, "KVH_TENANT=acme\x00"), 42, 1000, false); id.ClaimedTenant != "acme" {
		t.Errorf("the claim was not recorded: %+v", id)
	}
	if id := Identify(t.TempDir(), 42, 7, true); id.Tenant != "uid:7" || id.TenantSource != "exited" {
		t.Errorf("gone process: %+v", id)
	}
}

type podMap map[string]Pod

func (m podMap) PodOf(containerID, cgroup string) (Pod, bool) {
	if p, ok := m[containerID]; ok {
		return p, true
	}
	p, ok := m[cgroup]
	return p, ok
}

// TestIdentifyOrchestrator: what NRI says about a container comes before
// what the cgroup says, is found by the container id or the cgroup path the
// kernel gives, and the process's own KVH_TENANT never changes it.
func TestIdentifyOrchestrator(t *testing.T) {
	const id64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const pod = "0::/kubepods.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-" + id64 + ".scope\n"
	a := Pod{UID: "9f0e0000-0000-4000-8000-000000000001", Namespace: "team-a", Name: "llm-0", Container: "server", Tenant: "team-a", TenantSource: "namespace"}
	pods := podMap{id64: a, "/k8s.io/sandboxed": {UID: "u2", Namespace: "team-b", Name: "b", Tenant: "acme", TenantSource: "label"}}
	id := IdentifyWith(fakeProc(t, "42", pod, "KVH_TENANT=team-b\x00"), 42, 1000, true, pods)
	if id.Tenant != "team-a" || id.TenantSource != "namespace" || id.PodUID != a.UID || id.PodNamespace != "team-a" || id.PodName != "llm-0" ||
		id.ContainerName != "server" || id.ContainerID != id64 || id.ClaimedTenant != "team-b" {
		t.Errorf("by container id: %+v", id)
	}
	id = IdentifyWith(fakeProc(t, "42", "0::/k8s.io/sandboxed\n", ""), 42, 1000, false, pods)
	if id.Tenant != "acme" || id.TenantSource != "label" || id.PodUID != "u2" {
		t.Errorf("by cgroup path: %+v", id)
	}
	// A pod without the tenant label keeps its pod identity, named.
	pods[id64] = Pod{UID: a.UID, Namespace: "team-a", Name: "llm-0"}
	id = IdentifyWith(fakeProc(t, "42", pod, ""), 42, 1000, false, pods)
	if id.Tenant != "pod:"+a.UID || id.TenantSource != "pod" || id.PodName != "llm-0" {
		t.Errorf("no tenant label: %+v", id)
	}
	// A container NRI does not know (started before the agent) falls back.
	id = IdentifyWith(fakeProc(t, "42", pod, ""), 42, 1000, false, podMap{})
	if id.Tenant != "pod:1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901" || id.PodName != "" {
		t.Errorf("unknown container: %+v", id)
	}
}
