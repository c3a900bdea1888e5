package action

// Attacks on the enforcer: make it act on, or charge, a process that is not
// the violator.

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/internal/proc/proctest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
)

// Attack: a detector that saw only a pid (the ledger's TTL and
// free_without_sanitize, the witness) is resolved through the connected
// peers by pid, with no check of when that peer started. The violator
// exits while its violation waits in the queue (behind a backlog it can
// provoke itself); a new process takes the pid and connects to the agent;
// the enforcer kills the new process.
func TestAttackConnectedPIDReuserIsNotActedOn(t *testing.T) {
	proctest.NeedRoot(t)
	v := exec.Command("sleep", "60")
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	pid := v.Process.Pid
	seen := time.Now() // the violation is seen
	v.Process.Kill()
	v.Wait()
	time.Sleep(30 * time.Millisecond)
	victim := proctest.StartAt(t, pid, nil)
	vh, err := proc.OpenSeenAt(pid, time.Now(), "/proc") // what Peers.Process returns once it connects
	if err != nil {
		t.Fatal(err)
	}
	e, tr, _ := newEnforcer(t, policy.ActionKill, Config{Connected: func(p int) *proc.Handle {
		if p == pid {
			return vh
		}
		return nil
	}})
	e.handle(violation.Violation{Kind: violation.TTLExpired, PID: pid, Tenant: "t", At: seen, Source: "ledger"})
	for _, r := range tr.all() {
		if a, ok := r.(trailevent.Action); ok && a.Result == "SIGKILL" {
			t.Fatalf("the enforcer killed pid %d's new holder, which connected after the violation: %+v", pid, a)
		}
	}
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(victim.Process.Pid) + "/stat"); len(b) == 0 || strings.Contains(string(b), ") Z ") {
		t.Fatalf("pid %d's new holder is dead", pid)
	}
}

// Attack: a violation without a tenant (the witness's, the GPU watcher's)
// was charged to whatever process holds the pid when the enforcer reads
// /proc: after the violator exits, the next holder's tenant is recorded,
// and its policy chooses the action.
func TestAttackTenantOfPIDReuserIsNotCharged(t *testing.T) {
	proctest.NeedRoot(t)
	v := exec.Command("sleep", "60")
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	pid := v.Process.Pid
	seen := time.Now()
	v.Process.Kill()
	v.Wait()
	time.Sleep(30 * time.Millisecond)
	proctest.StartAt(t, pid, nil)
	e, tr, _ := newEnforcer(t, policy.ActionObserve, Config{Identify: func(*proc.Handle) string { return "victim-tenant" }})
	e.handle(violation.Violation{Kind: violation.UnattestedFree, PID: pid, At: seen, Source: "witness"})
	for _, r := range tr.all() {
		if vr, ok := r.(trailevent.Violation); ok && vr.Tenant == "victim-tenant" {
			t.Fatalf("the violation was charged to the tenant of pid %d's new holder: %+v", pid, vr)
		}
	}
}
