// Package action is the one consumer of violations: an Enforcer takes each
// violation from the violation.Queue in order, records it in the trail
// (durably, before anything acts on it), applies the tenant's action to the
// process — observe (record only), deny (its interposer refuses new
// allocations), freeze (cgroup v2 cgroup.freeze when the process has its
// own cgroup, SIGSTOP otherwise) or kill (SIGKILL) — and records the action
// and its outcome. Freeze and kill are applied once per process.
//
// Lifecycle: New, then Run in one goroutine until the queue is closed and
// drained. Locking: only Run's goroutine touches the enforcer's state; it
// holds no lock of any detector. An action that blocks (a client that never
// reads a deny) is given up after Config.ActionTimeout and recorded as
// timed out, so one stalled action delays later violations by at most that.
package action
