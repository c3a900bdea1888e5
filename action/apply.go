package action

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/kvhygiene/kvh/policy"
)

// apply carries out act on pid and says what it did.
func (e *Enforcer) apply(act string, pid int) (string, error) {
	if pid <= 1 {
		return "", fmt.Errorf("refusing to act on pid %d", pid)
	}
	switch act {
	case policy.ActionDeny:
		if e.cfg.Denier == nil {
			return "", errors.New("no interposer connection to deny")
		}
		return "denied new allocations", e.cfg.Denier.Deny(pid)
	case policy.ActionKill:
		return "SIGKILL", syscall.Kill(pid, syscall.SIGKILL)
	case policy.ActionFreeze:
		if cg, ok := e.ownCgroup(pid); ok {
			path := filepath.Join(e.cfg.CgroupRoot, cg, "cgroup.freeze")
			if err := os.WriteFile(path, []byte("1"), 0); err == nil {
				return "cgroup " + cg + " frozen", nil
			}
		}
		return "SIGSTOP", syscall.Kill(pid, syscall.SIGSTOP)
	}
	return "", fmt.Errorf("unknown action %q", act)
}

// ownCgroup returns the process's cgroup v2 path when it is not the agent's
// own (freezing that would freeze the agent) and not the root.
func (e *Enforcer) ownCgroup(pid int) (string, bool) {
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return ""
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "0::") {
				return strings.TrimPrefix(line, "0::")
			}
		}
		return ""
	}
	cg := read(filepath.Join(e.cfg.ProcRoot, strconv.Itoa(pid), "cgroup"))
	self := read(filepath.Join(e.cfg.ProcRoot, "self", "cgroup"))
	if cg == "" || cg == "/" || cg == self || strings.Contains(cg, "..") {
		return "", false
	}
	if _, err := os.Stat(filepath.Join(e.cfg.CgroupRoot, cg, "cgroup.freeze")); err != nil {
		return "", false
	}
	return cg, true
}
