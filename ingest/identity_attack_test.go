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
		t.Skip("setpriv: ", err)
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
