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
