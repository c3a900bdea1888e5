package bpf

import (
	"errors"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Fn names, in the order of enum fn in kvh.bpf.c (from 1).
var fnNames = []string{
	"cuMemAlloc_v2", "cuMemAllocAsync", "cuMemAllocAsync_ptsz", "cuMemCreate", "cuMemMap", "cuMemHostAlloc", "cuMemAllocHost_v2",
	"cuMemFree_v2", "cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemUnmap", "cuMemRelease", "cuMemFreeHost", "cuMemHostUnregister",
	"cudaMalloc", "cudaMallocAsync", "cudaMallocHost", "cudaFree", "cudaFreeAsync", "cudaFreeHost",
}

// Event is one witnessed call.
type Event struct {
	TGID   uint32
	TID    uint32
	Cgroup uint64
	Ptr    uint64
	Size   uint64
	TS     uint64 // ktime ns
	Fn     string
	Free   bool
}

// Driver reports whether the event came from the driver library (libcuda),
// where kvh's interposer sits, rather than a runtime wrapper above it.
func (e Event) Driver() bool { return strings.HasPrefix(e.Fn, "cuMem") }

// Options configure Start.
type Options struct {
	Libraries []string      // explicit library paths (e.g. the node's libcuda.so.1)
	ProcRoot  string        // default /proc
	Rescan    time.Duration // default 2s; negative disables
	Log       hclog.Logger
}

// ErrUnavailable means the witness cannot run here (not root, no BTF, no
// uprobe PMU, or a platform other than linux/amd64 and linux/arm64).
var ErrUnavailable = errors.New("eBPF witness unavailable")
