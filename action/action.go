// Package action acts on hygiene violations: it records each violation in
// the trail first, then applies the configured action to the violating
// process — observe (record only), deny (its interposer refuses new
// allocations), freeze (cgroup v2 cgroup.freeze when the process has its own
// cgroup, SIGSTOP otherwise) or kill (SIGKILL) — and records the action and
// its outcome. Freeze and kill are applied once per process. An Enforcer is
// safe for concurrent use.
package action

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Violation kinds.
const (
	QuarantinedBuffer   = "quarantined_buffer"
	FreeWithoutSanitize = "free_without_sanitize"
	TTLExpired          = "ttl_expired"
	ReuseLimit          = "reuse_limit_exceeded"
	DroppedEvents       = "dropped_events"
	UnattestedFree      = "unattested_free"
	UncoveredProcess    = "uncovered_process"
)

// Violation is one breach by one process.
type Violation struct {
	Kind   string `json:"kind"`
	PID    int    `json:"pid"`
	Tenant string `json:"tenant"`
	Detail string `json:"detail,omitempty"`
}

// Trail records violations and actions (durably, before they take effect).
type Trail interface {
	Append(body any) (uint64, error)
}

// Denier tells a process's interposer to refuse new allocations.
type Denier interface {
	Deny(pid int) error
}

// Enforcer applies the policy's action to violations.
type Enforcer struct {
	Trail      Trail
	Log        hclog.Logger
	Policy     func() policy.Config
	Denier     Denier
	ProcRoot   string // /proc
	CgroupRoot string // /sys/fs/cgroup
	Violations *prometheus.CounterVec
	Actions    *prometheus.CounterVec

	mu    sync.Mutex
	acted map[string]bool // "pid/action" already applied
}

type record struct {
	Ev     string `json:"ev"`
	Kind   string `json:"kind,omitempty"`
	Action string `json:"action,omitempty"`
	PID    int    `json:"pid"`
	Tenant string `json:"tenant,omitempty"`
	Detail string `json:"detail,omitempty"`
	Result string `json:"result,omitempty"`
}

// Handle records v and applies the tenant's action. It returns the action taken.
func (e *Enforcer) Handle(v Violation) (string, error) {
	act := e.Policy().For(v.Tenant).OnViolation
	if _, err := e.Trail.Append(record{Ev: "violation", Kind: v.Kind, PID: v.PID, Tenant: v.Tenant, Detail: v.Detail, Action: act}); err != nil {
		return "", fmt.Errorf("recording violation: %w", err)
	}
	if e.Violations != nil {
		e.Violations.WithLabelValues(v.Kind).Inc()
	}
	e.Log.Warn("hygiene violation", "kind", v.Kind, "pid", v.PID, "tenant", v.Tenant, "detail", v.Detail, "action", act)
	if act == policy.ActionObserve {
		e.count(act)
		return act, nil
	}
	key := strconv.Itoa(v.PID) + "/" + act
	e.mu.Lock()
	if e.acted == nil {
		e.acted = map[string]bool{}
	}
	done := e.acted[key]
	e.acted[key] = true
	e.mu.Unlock()
	if done && act != policy.ActionDeny {
		return act, nil
	}
	result, err := e.apply(act, v.PID)
	res := result
	if err != nil {
		res = "error: " + err.Error()
		e.Log.Error("action failed", "action", act, "pid", v.PID, "error", err)
	}
	if _, terr := e.Trail.Append(record{Ev: "action", Action: act, PID: v.PID, Tenant: v.Tenant, Kind: v.Kind, Result: res}); terr != nil {
		return act, fmt.Errorf("recording action: %w", terr)
	}
	e.count(act)
	return act, err
}

func (e *Enforcer) count(act string) {
	if e.Actions != nil {
		e.Actions.WithLabelValues(act).Inc()
	}
}

func (e *Enforcer) apply(act string, pid int) (string, error) {
	if pid <= 1 {
		return "", fmt.Errorf("refusing to act on pid %d", pid)
	}
	switch act {
	case policy.ActionDeny:
		if e.Denier == nil {
			return "", errors.New("no interposer connection to deny")
		}
		return "denied new allocations", e.Denier.Deny(pid)
	case policy.ActionKill:
		return "SIGKILL", syscall.Kill(pid, syscall.SIGKILL)
	case policy.ActionFreeze:
		if cg, ok := e.ownCgroup(pid); ok {
			path := filepath.Join(e.CgroupRoot, cg, "cgroup.freeze")
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
	cg := read(filepath.Join(e.ProcRoot, strconv.Itoa(pid), "cgroup"))
	self := read(filepath.Join(e.ProcRoot, "self", "cgroup"))
	if cg == "" || cg == "/" || cg == self || strings.Contains(cg, "..") {
		return "", false
	}
	if _, err := os.Stat(filepath.Join(e.CgroupRoot, cg, "cgroup.freeze")); err != nil {
		return "", false
	}
	return cg, true
}
