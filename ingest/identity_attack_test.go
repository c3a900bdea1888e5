package ingest

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/proc"
)

// Attack: a violation the witness or the GPU watcher reports carries only a
// pid, and the agent identified its process with uid 0: every such
// violation of a process with no pod or container was charged to tenant
// "uid:0" (root's policy and overrides), whoever ran it.
func TestAttackPIDOnlyViolationChargedToRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a process as another uid needs root: skipped")
	}
	c := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "sleep", "10")
	if err := c.Start(); err != nil {
		t.Fatalf("running a process as uid 65534 needs setpriv (util-linux, apt install util-linux): %v", err)
	}
	defer func() { c.Process.Kill(); c.Wait() }()
	time.Sleep(100 * time.Millisecond) // exec'd
	h, err := proc.OpenSeenAt(c.Process.Pid, time.Now(), "/proc")
	if err != nil {
		t.Fatal(err)
	}
	id := IdentifyProcess("/proc", h, false, nil)
	if id.UID != 65534 || id.TenantSource == "uid" && id.Tenant != "uid:65534" {
		t.Fatalf("a process of uid 65534 identified as %+v", id)
	}
}

// Attack: a process that may create cgroups under its own container's (a
// container given a writable, delegated cgroupfs: systemd or a nested
// runtime in the image) makes a child cgroup named after another
// container's 64-hex id and moves itself there. The identity took the last
// container id in the path, so the orchestrator's lookup returned the
// victim's pod and tenant. The runtime-made id is the outermost one.
func TestAttackNestedCgroupNamedAfterAnotherContainer(t *testing.T) {
	const own = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	const victim = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	const cg = "0::/kubepods.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-" + own + ".scope/" + victim + "\n"
	pods := podMap{
		own:    {UID: "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", Namespace: "attacker", Name: "a", Tenant: "attacker", TenantSource: "namespace"},
		victim: {UID: "9f0e0000-0000-4000-8000-000000000001", Namespace: "victim", Name: "v", Tenant: "victim", TenantSource: "namespace"},
	}
	id := IdentifyWith(fakeProc(t, "42", cg, ""), 42, 1000, false, pods)
	if id.Tenant != "attacker" || id.ContainerID != own || id.PodNamespace != "attacker" {
		t.Fatalf("a process in the attacker's container, in a child cgroup named after the victim's container, identified as %+v", id)
	}
	// Without the orchestrator, the same: its own container, not the name it chose.
	id = IdentifyWith(fakeProc(t, "42", "0::/docker/"+own+"/"+victim+"\n", ""), 42, 1000, false, nil)
	if id.ContainerID != own || id.Tenant != "container:"+own[:12] {
		t.Fatalf("without pods: %+v", id)
	}
}
