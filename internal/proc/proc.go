// Package proc holds a process the agent may act on by a pidfd, never by a
// bare pid: a pid can be reused by an unrelated process between the moment a
// violation is seen and the moment it is acted on, a pidfd cannot.
//
// A Handle comes from the peer of a Unix socket (SO_PEERPIDFD where the
// kernel has it, Linux 6.5+; else pidfd_open at accept, checked against the
// process's start time) or from a pid a detector saw at a known time
// (OpenSeenAt: refused when the process now holding the pid started after).
// Its Key (pid and start time) names the process for anything remembered
// about it. Handles are safe for concurrent use; Close releases the pidfd.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrGone is returned when the process has exited (or its pid now names
// another process).
var ErrGone = errors.New("process is gone")

// Handle is one process, held by a pidfd.
type Handle struct {
	PID   int
	Start uint64 // start time in clock ticks after boot (/proc/<pid>/stat field 22)

	mu      sync.Mutex
	fd      int // -1 once closed
	cleanup runtime.Cleanup
	exited  bool // made by Exited
}

// Exited is a handle for a peer that exited before it could be opened: the
// kernel named its pid (SO_PEERCRED), but no pidfd holds it and /proc no
// longer describes it. Nothing can be done to it (Alive is false, Signal
// and Read return ErrGone). Its key, <pid>@exited, is shared by the
// connections of one exited process (they wait in the listen backlog
// together), so its caps and its account stay one process's; it is never
// the key of a live process.
func Exited(pid int) *Handle {
	return &Handle{PID: pid, fd: -1, exited: true}
}

// IsExited reports a handle made by Exited.
func (h *Handle) IsExited() bool { return h.exited }

// newHandle wraps a pidfd; it is closed by Close or, at the latest, when
// the handle is no longer reachable (a violation queued for a process that
// has since disconnected still holds its handle).
func newHandle(pid, fd int) *Handle {
	h := &Handle{PID: pid, fd: fd}
	h.cleanup = runtime.AddCleanup(h, func(fd int) { unix.Close(fd) }, fd)
	return h
}

// Key names the process for as long as the node is up: pid and start time.
func (h *Handle) Key() string {
	if h.exited {
		return strconv.Itoa(h.PID) + "@exited"
	}
	return strconv.Itoa(h.PID) + "@" + strconv.FormatUint(h.Start, 10)
}

func (h *Handle) String() string {
	if h.exited {
		return fmt.Sprintf("pid %d (exited before it was identified)", h.PID)
	}
	return fmt.Sprintf("pid %d (start %d)", h.PID, h.Start)
}

// FromSocket returns the peer of a connected Unix socket. It prefers
// SO_PEERPIDFD; without it, it opens a pidfd for pid (from SO_PEERCRED) and
// refuses a process that started after notAfter (the accept time): that one
// cannot be the peer.
func FromSocket(fd int, pid int, notAfter time.Time, procRoot string) (*Handle, error) {
	if pfd, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
		h := newHandle(pid, pfd)
		st, err := startTime(procRoot, pid)
		if err != nil || !h.alive() {
			h.Close()
			return nil, fmt.Errorf("peer pid %d: %w", pid, ErrGone)
		}
		h.Start = st
		return h, nil
	}
	return OpenSeenAt(pid, notAfter, procRoot)
}

// OpenSeenAt opens pid, which a detector saw acting at seen. It refuses the
// process now holding that pid when it started after seen (the pid was
// reused), with ErrGone.
func OpenSeenAt(pid int, seen time.Time, procRoot string) (*Handle, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	pfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w (%v)", pid, ErrGone, err)
	}
	h := newHandle(pid, pfd)
	st, err := startTime(procRoot, pid)
	// The pidfd was opened first: if the process is still alive after its
	// stat was read, that stat was this process's.
	if err != nil || !h.alive() {
		h.Close()
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	h.Start = st
	if started := StartedAt(st); !started.IsZero() && started.After(seen.Add(tick)) {
		h.Close()
		return nil, fmt.Errorf("pid %d started at %s, after it was seen at %s (the pid was reused): %w", pid, started.Format(time.RFC3339Nano), seen.Format(time.RFC3339Nano), ErrGone)
	}
	return h, nil
}

// StartedAfter reports whether the process started after t (beyond the
// resolution of a start time): then it cannot be what was seen at t.
func (h *Handle) StartedAfter(t time.Time) bool {
	started := StartedAt(h.Start)
	return !started.IsZero() && started.After(t.Add(tick))
}

// tick is the resolution of a process start time (USER_HZ is 100 on Linux).
const tick = 10 * time.Millisecond

func (h *Handle) alive() bool {
	return unix.PidfdSendSignal(h.fd, 0, nil, 0) == nil
}

// Signal sends sig to the process, and only to it.
func (h *Handle) Signal(sig syscall.Signal) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.exited {
		return fmt.Errorf("%v: %w", h, ErrGone)
	}
	if h.fd < 0 {
		return fmt.Errorf("%v: handle closed", h)
	}
	if err := unix.PidfdSendSignal(h.fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("%v: %w", h, ErrGone)
		}
		return fmt.Errorf("signalling %v: %w", h, err)
	}
	return nil
}

// Alive reports whether the process has not exited.
func (h *Handle) Alive() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fd >= 0 && h.alive()
}

// Read reads /proc/<pid>/name of this process: it returns ErrGone unless
// the process was alive after the read (so the file was this process's).
func (h *Handle) Read(procRoot, name string) ([]byte, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(h.PID) + "/" + name)
	if !h.Alive() {
		return nil, fmt.Errorf("%v: %w", h, ErrGone)
	}
	return b, err
}

// Close releases the pidfd.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return nil
	}
	h.cleanup.Stop()
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}

// stat returns the fields of /proc/<pid>/stat after the comm (which may
// hold spaces and parentheses): field n of proc(5) is f[n-3].
func stat(procRoot string, pid int) ([]string, error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	return statFields(b)
}

func statFields(b []byte) ([]string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("stat: no comm")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, errors.New("stat: too few fields")
	}
	return f, nil
}

// startTime reads field 22 of /proc/<pid>/stat.
func startTime(procRoot string, pid int) (uint64, error) {
	f, err := stat(procRoot, pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[22-3], 10, 64)
}

func parseStart(b []byte) (uint64, error) {
	f, err := statFields(b)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[22-3], 10, 64)
}

// Parent returns the parent pid from /proc/<pid>/stat (field 4).
func Parent(procRoot string, pid int) (int, error) {
	f, err := stat(procRoot, pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(f[4-3])
}

// KeyOf returns the Key of the process now holding pid, without a handle
// (for lookups, e.g. a new connection's parent).
func KeyOf(procRoot string, pid int) (string, error) {
	st, err := startTime(procRoot, pid)
	if err != nil {
		return "", err
	}
	return strconv.Itoa(pid) + "@" + strconv.FormatUint(st, 10), nil
}

// StartedAt converts a start time in ticks after boot to wall-clock time.
// Boot is taken as now minus CLOCK_BOOTTIME (what the kernel counts start
// times in), precise to the microsecond; /proc/stat's btime is whole seconds.
func StartedAt(ticks uint64) time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	boot := now.Add(-time.Duration(ts.Nano()))
	return boot.Add(time.Duration(ticks) * tick)
}
