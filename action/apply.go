package action

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/policy"
)

// apply carries out act on the process h holds, and only on it, and says
// what it did.
func (e *Enforcer) apply(act string, h *proc.Handle) (string, error) {
	switch act {
	case policy.ActionDeny:
		if e.cfg.Denier == nil {
			return "", errors.New("no interposer connection to deny")
		}
		return "denied new allocations", e.cfg.Denier.Deny(h)
	case policy.ActionKill:
		return "SIGKILL", h.Signal(syscall.SIGKILL)
	case policy.ActionFreeze:
		if cg, ok := e.ownCgroup(h); ok {
			path := filepath.Join(e.cfg.CgroupRoot, cg, "cgroup.freeze")
			if err := os.WriteFile(path, []byte("1"), 0); err == nil {
				return "cgroup " + cg + " frozen", nil
			}
		}
		return "SIGSTOP", h.Signal(syscall.SIGSTOP)
	}
	return "", fmt.Errorf("unknown action %q", act)
}

// ownCgroup returns the process's cgroup v2 path when it is not the agent's
// own (freezing that would freeze the agent) and not the root. The path is
// read through the handle, so it is the cgroup that holds this process, not
// one a process that reused the pid lives in.
func (e *Enforcer) ownCgroup(h *proc.Handle) (string, bool) {
	v2 := func(b []byte) string {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "0::") {
				return strings.TrimPrefix(line, "0::")
			}
		}
		return ""
	}
	b, err := h.Read(e.cfg.ProcRoot, "cgroup")
	if err != nil {
		return "", false
	}
	cg := v2(b)
	self, _ := os.ReadFile(filepath.Join(e.cfg.ProcRoot, "self", "cgroup"))
	if cg == "" || cg == "/" || cg == v2(self) || strings.Contains(cg, "..") {
		return "", false
	}
	if _, err := os.Stat(filepath.Join(e.cfg.CgroupRoot, cg, "cgroup.freeze")); err != nil {
		return "", false
	}
	return cg, true
}
