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
	cases := []struct {
		name, cgroup, env, tenant, source string
	}{
		{"env wins", pod, "PATH=/bin\x00KVH_TENANT=acme\x00", "acme", "env"},
		{"pod uid", pod, "PATH=/bin\x00", "pod:1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", "pod"},
		{"container", "0::/docker/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", "", "container:0123456789ab", "container"},
		{"uid", "0::/user.slice\n", "", "uid:1000", "uid"},
		{"control bytes stripped", "0::/\n", "KVH_TENANT=ev\x1bil\n\x00", "evil", "env"},
	}
	for _, tc := range cases {
		id := Identify(fakeProc(t, "42", tc.cgroup, tc.env), 42, 1000)
		if id.Tenant != tc.tenant || id.TenantSource != tc.source || id.Comm != "vllm" {
			t.Errorf("%s: %+v", tc.name, id)
		}
	}
	if id := Identify(t.TempDir(), 42, 7); id.Tenant != "uid:7" || id.TenantSource != "exited" {
		t.Errorf("gone process: %+v", id)
	}
}
