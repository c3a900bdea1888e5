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
	"cuMemAlloc", "cuMemFree", "cuMemAllocPitch", "cuMemAllocPitch_v2", "cuMemAllocHost", "cuMemAllocManaged",
	"cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", "cuMemHostRegister", "cuMemHostRegister_v2",
	"cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2", "cuIpcCloseMemHandle",
	"cuCtxDestroy", "cuCtxDestroy_v2", "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2",
	"cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2", "cuCtxDetach",
}

// Event is one witnessed call that succeeded: the witness reports a call on
// its return, and only when the driver (or runtime) returned success, so a
// free the driver refused — which freed nothing — is never an event.
type Event struct {
	TGID   uint32
	TID    uint32
	Cgroup uint64
	Ptr    uint64 // v1 entry points' 32-bit device pointers are zero-extended
	Size   uint64
	TS     uint64 // ktime ns, at the return
	Fn     string
	// Free: memory left its owner (free, unmap, release). Import: the call
	// mapped or released memory the process does not own (IPC, registered
	// host memory), which the interposer never zeroizes and never attests;
	// it is not a Free. Neither: an allocation.
	Free   bool
	Import bool
	// Context: the call handed a context's memory back to the driver with
	// no free call (cuCtxDestroy, cuCtxDetach: Ptr is the context handle;
	// cuDevicePrimaryCtxRelease/Reset: Ptr is the device ordinal, and a
	// release frees only when it drops the last reference, which the probe
	// cannot tell). It is not a Free: there is no one pointer to join.
	Context bool
}

// Driver reports whether the event came from the driver library (libcuda),
// where kvh's interposer sits, rather than a runtime wrapper above it.
func (e Event) Driver() bool {
	return strings.HasPrefix(e.Fn, "cu") && !strings.HasPrefix(e.Fn, "cuda")
}

// Options configure Start.
type Options struct {
	Libraries []string      // explicit library paths (e.g. the node's libcuda.so.1)
	ProcRoot  string        // default /proc
	Rescan    time.Duration // default 2s; negative disables
	Log       hclog.Logger
	// Unprobed is told, once per process and mapping, of a CUDA library a
	// process maps that the witness cannot probe: the path its maps name
	// no longer names the mapped file (deleted, or replaced, perhaps by a
	// link to a library already probed) and the mapping itself cannot be
	// opened (/proc/<pid>/map_files needs CAP_CHECKPOINT_RESTORE or
	// CAP_SYS_ADMIN). That process's calls through it go unwitnessed.
	Unprobed func(pid int, lib, why string)
}

// ErrUnavailable means the witness cannot run here (not root, no BTF, no
// uprobe PMU, or a platform other than linux/amd64 and linux/arm64).
var ErrUnavailable = errors.New("eBPF witness unavailable")
