//go:build ignore

/* kvh.bpf.c — the witness: uprobes on the CUDA driver (libcuda.so.1) and
 * runtime (libcudart.so.*) allocation and free families, v1 and v2 names.
 *
 * Every probed call is reported on return, and only when it succeeded: an
 * entry probe remembers the arguments, a return probe reads the result
 * (CUresult and cudaError_t are 32-bit, 0 is success) and emits. A free the
 * driver refused frees nothing, so it must never become an unattested free.
 *
 * ABI with the Go loader (bpf/witness.go), kept by bpf2go -type event:
 *   struct event (48 bytes): tgid u32 @0, tid u32 @4, cgroup u64 @8,
 *     ptr u64 @16, size u64 @24, ts u64 @32 (ktime ns), fn u16 @40 (enum fn
 *     below; 0 only from bench_fill), kind u8 @42 (0 alloc, 1 free, 2
 *     import: maps or releases memory the process does not own — IPC,
 *     registered host memory, 3 context: a context's memory went back to the
 *     driver with it), pad.
 *   events:   BPF_MAP_TYPE_RINGBUF, 8 MiB; an event wakes the reader only
 *     when WAKE_BYTES are unread (the reader also polls on a timer).
 *   lost:     BPF_MAP_TYPE_PERCPU_ARRAY[1] u64, events the ring had no room for.
 *   failed:   BPF_MAP_TYPE_PERCPU_ARRAY[64] u64, calls per fn that returned
 *     an error (not reported as events).
 *   inflight: BPF_MAP_TYPE_LRU_HASH {pid_tgid u64, fn u32, pad u32} ->
 *     {arg u64, size u64, mode u8, kind u8, pad}, 16384 entries: calls between
 *     entry and return (LRU: a thread that dies in between leaves nothing
 *     behind; keyed by fn too, so a probed function calling another probed
 *     function on the same thread keeps both).
 * The v1 entry points (cuMemAlloc, cuMemFree, cuMemAllocPitch: CUDA < 3.2)
 * take and return 32-bit device pointers and sizes; they are read as such.
 * Programs are attached per library inode by the loader; a symbol a library
 * lacks is simply not attached. Minimum kernel: 5.8 (ring buffer); uprobes
 * through the perf PMU, no tracefs needed. eBPF never writes user memory.
 */
#include <linux/bpf.h>
#if defined(__TARGET_ARCH_arm64)
/* The arm64 register file as uapi asm/ptrace.h defines it (the build host's
 * headers are x86's). bpf_tracing.h reads arguments from user_pt_regs. */
struct user_pt_regs {
  __u64 regs[31];
  __u64 sp;
  __u64 pc;
  __u64 pstate;
};
struct pt_regs;
#else
#include <linux/ptrace.h>
#endif
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

enum fn {
  FN_cuMemAlloc_v2 = 1,
  FN_cuMemAllocAsync,
  FN_cuMemAllocAsync_ptsz,
  FN_cuMemCreate,
  FN_cuMemMap,
  FN_cuMemHostAlloc,
  FN_cuMemAllocHost_v2,
  FN_cuMemFree_v2,
  FN_cuMemFreeAsync,
  FN_cuMemFreeAsync_ptsz,
  FN_cuMemUnmap,
  FN_cuMemRelease,
  FN_cuMemFreeHost,
  FN_cuMemHostUnregister,
  FN_cudaMalloc,
  FN_cudaMallocAsync,
  FN_cudaMallocHost,
  FN_cudaFree,
  FN_cudaFreeAsync,
  FN_cudaFreeHost,
  FN_cuMemAlloc,
  FN_cuMemFree,
  FN_cuMemAllocPitch,
  FN_cuMemAllocPitch_v2,
  FN_cuMemAllocHost,
  FN_cuMemAllocManaged,
  FN_cuMemAllocFromPoolAsync,
  FN_cuMemAllocFromPoolAsync_ptsz,
  FN_cuMemHostRegister,
  FN_cuMemHostRegister_v2,
  FN_cuIpcOpenMemHandle,
  FN_cuIpcOpenMemHandle_v2,
  FN_cuIpcCloseMemHandle,
  FN_cuCtxDestroy,
  FN_cuCtxDestroy_v2,
  FN_cuDevicePrimaryCtxRelease,
  FN_cuDevicePrimaryCtxRelease_v2,
  FN_cuDevicePrimaryCtxReset,
  FN_cuDevicePrimaryCtxReset_v2,
  FN_cuCtxDetach,
};
#define FN_SLOTS 64 /* the failed map's size: every fn is below it */
_Static_assert(FN_cuCtxDetach < FN_SLOTS, "enum fn outgrew FN_SLOTS: the last entry must be below it");

struct event {
  __u32 tgid;
  __u32 tid;
  __u64 cgroup;
  __u64 ptr;
  __u64 size;
  __u64 ts;
  __u16 fn;
  __u8 kind;
  __u8 pad[5];
};
const struct event *unused_event __attribute__((unused));

enum { KIND_ALLOC = 0, KIND_FREE = 1, KIND_IMPORT = 2, KIND_CONTEXT = 3 };
/* How the pointer is found on return: through an out-parameter of 64 or 32
 * bits (v1 device pointers), the argument itself (0 is not reported), or
 * the argument as a value where 0 is meaningful (a device ordinal). */
enum { MODE_OUT64 = 0, MODE_OUT32 = 1, MODE_ARG = 2, MODE_VAL = 3 };

struct call {
  __u64 id;
  __u32 fn;
  __u32 pad;
};

struct pending {
  __u64 arg;
  __u64 size;
  __u8 mode;
  __u8 kind;
  __u8 pad[6];
};

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} lost SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, FN_SLOTS);
  __type(key, __u32);
  __type(value, __u64);
} failed SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 16384);
  __type(key, struct call);
  __type(value, struct pending);
} inflight SEC(".maps");

/* WAKE_BYTES: an event submitted while at least this much is unread wakes
 * the reader; others do not. A wakeup is an irq_work and an IPI — on a
 * virtual machine a trap to the hypervisor — and waking the reader for
 * every event cost more than the rest of the probe. The reader polls the
 * ring on a short timer as well (bpf/witness.go), so a quiet ring is read
 * within that interval and a busy one long before it fills. */
#define WAKE_BYTES (512 << 10)

static __always_inline void emit(__u16 fn, __u8 kind, __u64 ptr, __u64 size) {
  struct event *e = bpf_ringbuf_reserve(&events, sizeof *e, 0);
  if (!e) {
    __u32 k = 0;
    __u64 *n = bpf_map_lookup_elem(&lost, &k);
    if (n) *n += 1;
    return;
  }
  __u64 id = bpf_get_current_pid_tgid();
  e->tgid = id >> 32;
  e->tid = (__u32)id;
  e->cgroup = bpf_get_current_cgroup_id();
  e->ptr = ptr;
  e->size = size;
  e->ts = bpf_ktime_get_ns();
  e->fn = fn;
  e->kind = kind;
  __u64 wake = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
  bpf_ringbuf_submit(e, wake);
}

/* On entry: remember what the return probe needs. */
static __always_inline void enter(__u16 fn, __u8 mode, __u8 kind, __u64 arg, __u64 size) {
  struct call k = {.id = bpf_get_current_pid_tgid(), .fn = fn};
  struct pending p = {.arg = arg, .size = size, .mode = mode, .kind = kind};
  bpf_map_update_elem(&inflight, &k, &p, BPF_ANY);
}

/* On return: report a call that succeeded (rc 0) with a non-NULL pointer;
 * count one that failed. */
static __always_inline void leave(__u16 fn, long rc) {
  struct call k = {.id = bpf_get_current_pid_tgid(), .fn = fn};
  struct pending *pp = bpf_map_lookup_elem(&inflight, &k);
  if (!pp)
    return;
  struct pending v = *pp;
  bpf_map_delete_elem(&inflight, &k);
  if ((__u32)rc != 0) {
    __u32 i = fn;
    __u64 *n = bpf_map_lookup_elem(&failed, &i);
    if (n) *n += 1;
    return;
  }
  __u64 ptr = 0;
  if (v.mode == MODE_VAL) {
    emit(fn, v.kind, v.arg, v.size);
    return;
  }
  if (v.mode == MODE_ARG) {
    ptr = v.arg;
  } else if (v.mode == MODE_OUT32) {
    __u32 p32 = 0;
    if (bpf_probe_read_user(&p32, sizeof p32, (void *)v.arg) != 0)
      return;
    ptr = p32;
  } else if (bpf_probe_read_user(&ptr, sizeof ptr, (void *)v.arg) != 0) {
    return;
  }
  if (ptr == 0)
    return;
  emit(fn, v.kind, ptr, v.size);
}

#define LEAVE(name)                                                      \
  SEC("uretprobe/" #name)                                                \
  int BPF_KRETPROBE(exit_##name, long rc) {                              \
    leave(FN_##name, rc);                                                \
    return 0;                                                            \
  }

/* An allocation whose pointer comes back through an out-parameter (arg 1),
 * with its size in arg 2. */
#define ALLOC_OUT(name)                                                  \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, void *out, __u64 size) {                  \
    enter(FN_##name, MODE_OUT64, KIND_ALLOC, (__u64)out, size);          \
    return 0;                                                            \
  }                                                                      \
  LEAVE(name)

/* A free (or unmap) of the pointer in arg 1; arg 2 is a size where the API
 * has one (cuMemUnmap), else whatever the register holds (ignored). */
#define FREE_PTR(name, has_size, kind)                                   \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, __u64 ptr, __u64 size) {                  \
    enter(FN_##name, MODE_ARG, kind, ptr, has_size ? size : 0);          \
    return 0;                                                            \
  }                                                                      \
  LEAVE(name)

ALLOC_OUT(cuMemAlloc_v2)
ALLOC_OUT(cuMemAllocAsync)
ALLOC_OUT(cuMemAllocAsync_ptsz)
ALLOC_OUT(cuMemAllocFromPoolAsync)
ALLOC_OUT(cuMemAllocFromPoolAsync_ptsz)
ALLOC_OUT(cuMemAllocManaged)
ALLOC_OUT(cuMemCreate)
ALLOC_OUT(cuMemHostAlloc)
ALLOC_OUT(cuMemAllocHost_v2)
ALLOC_OUT(cudaMalloc)
ALLOC_OUT(cudaMallocAsync)
ALLOC_OUT(cudaMallocHost)

/* v1 (CUDA < 3.2): cuMemAlloc(CUdeviceptr_v1 *, unsigned int). */
SEC("uprobe/cuMemAlloc")
int BPF_KPROBE(enter_cuMemAlloc, void *out, __u64 size) {
  enter(FN_cuMemAlloc, MODE_OUT32, KIND_ALLOC, (__u64)out, (__u32)size);
  return 0;
}
LEAVE(cuMemAlloc)

/* v1: cuMemAllocHost(void **, unsigned int). */
SEC("uprobe/cuMemAllocHost")
int BPF_KPROBE(enter_cuMemAllocHost, void *out, __u64 size) {
  enter(FN_cuMemAllocHost, MODE_OUT64, KIND_ALLOC, (__u64)out, (__u32)size);
  return 0;
}
LEAVE(cuMemAllocHost)

/* cuMemAllocPitch(dptr, pitch *, width in bytes, height, element size): the
 * size reported is width x height, a lower bound (the pitch pads rows). */
SEC("uprobe/cuMemAllocPitch_v2")
int BPF_KPROBE(enter_cuMemAllocPitch_v2, void *out, void *pitch, __u64 w, __u64 h) {
  enter(FN_cuMemAllocPitch_v2, MODE_OUT64, KIND_ALLOC, (__u64)out, w * h);
  return 0;
}
LEAVE(cuMemAllocPitch_v2)

/* v1: cuMemAllocPitch(CUdeviceptr_v1 *, unsigned int *, unsigned int, unsigned int, unsigned int). */
SEC("uprobe/cuMemAllocPitch")
int BPF_KPROBE(enter_cuMemAllocPitch, void *out, void *pitch, __u64 w, __u64 h) {
  enter(FN_cuMemAllocPitch, MODE_OUT32, KIND_ALLOC, (__u64)out, (__u64)(__u32)w * (__u32)h);
  return 0;
}
LEAVE(cuMemAllocPitch)

/* cuMemMap(ptr, size, offset, handle, flags): the mapping is the allocation. */
SEC("uprobe/cuMemMap")
int BPF_KPROBE(enter_cuMemMap, __u64 ptr, __u64 size) {
  enter(FN_cuMemMap, MODE_ARG, KIND_ALLOC, ptr, size);
  return 0;
}
LEAVE(cuMemMap)

/* cuMemHostRegister[_v2](p, size, flags): maps the caller's own host memory. */
#define REGISTER(name)                                                   \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, __u64 ptr, __u64 size) {                  \
    enter(FN_##name, MODE_ARG, KIND_IMPORT, ptr, size);                  \
    return 0;                                                            \
  }                                                                      \
  LEAVE(name)
REGISTER(cuMemHostRegister)
REGISTER(cuMemHostRegister_v2)

/* cuIpcOpenMemHandle[_v2](CUdeviceptr *, handle by value, flags): another
 * process's memory mapped here. */
#define IPC_OPEN(name)                                                   \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, void *out) {                              \
    enter(FN_##name, MODE_OUT64, KIND_IMPORT, (__u64)out, 0);            \
    return 0;                                                            \
  }                                                                      \
  LEAVE(name)
IPC_OPEN(cuIpcOpenMemHandle)
IPC_OPEN(cuIpcOpenMemHandle_v2)

FREE_PTR(cuMemFree_v2, 0, KIND_FREE)
FREE_PTR(cuMemFreeAsync, 0, KIND_FREE)
FREE_PTR(cuMemFreeAsync_ptsz, 0, KIND_FREE)
FREE_PTR(cuMemUnmap, 1, KIND_FREE)
FREE_PTR(cuMemRelease, 0, KIND_FREE)
FREE_PTR(cuMemFreeHost, 0, KIND_FREE)
FREE_PTR(cudaFree, 0, KIND_FREE)
FREE_PTR(cudaFreeAsync, 0, KIND_FREE)
FREE_PTR(cudaFreeHost, 0, KIND_FREE)
/* Releases of memory this process does not own: the interposer never
 * zeroizes them, so they are never joined with an attestation. */
FREE_PTR(cuMemHostUnregister, 0, KIND_IMPORT)
FREE_PTR(cuIpcCloseMemHandle, 0, KIND_IMPORT)

/* v1 (CUDA < 3.2): cuMemFree(CUdeviceptr_v1), a 32-bit pointer. */
SEC("uprobe/cuMemFree")
int BPF_KPROBE(enter_cuMemFree, __u64 ptr) {
  enter(FN_cuMemFree, MODE_ARG, KIND_FREE, (__u32)ptr, 0);
  return 0;
}
LEAVE(cuMemFree)

/* Contexts: cuCtxDestroy[_v2](ctx), cuCtxDetach(ctx), cuDevicePrimaryCtxRelease[_v2](dev) and
 * cuDevicePrimaryCtxReset[_v2](dev) hand every live allocation of the context
 * back to the driver with no free call (a release only when it drops the
 * last reference, which a probe cannot tell: every successful release is
 * reported). ptr is the context handle, or the device ordinal (0 included). */
#define CONTEXT(name)                                                    \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, __u64 arg) {                              \
    enter(FN_##name, MODE_VAL, KIND_CONTEXT, arg, 0);                    \
    return 0;                                                            \
  }                                                                      \
  LEAVE(name)
CONTEXT(cuCtxDestroy)
CONTEXT(cuCtxDestroy_v2)
CONTEXT(cuDevicePrimaryCtxRelease)
CONTEXT(cuDevicePrimaryCtxRelease_v2)
CONTEXT(cuDevicePrimaryCtxReset)
CONTEXT(cuDevicePrimaryCtxReset_v2)
CONTEXT(cuCtxDetach) /* pre-4.0: frees only at the last usage count, like a primary release */

/* bench_fill is never loaded by the witness (Start drops it) and never
 * attached: the ring-buffer benchmark (bench_test.go) loads it against the
 * witness's own maps and runs it with BPF_PROG_TEST_RUN to put BENCH_BATCH events through emit() —
 * the probes' own path to the ring — per call, at rates no uprobe-driven
 * process reaches on a small machine. Its events have fn 0, which names no
 * driver function: the loader reports them with an empty Fn. */
#define BENCH_BATCH 256
SEC("raw_tp")
int bench_fill(void *ctx) {
  for (int i = 0; i < BENCH_BATCH; i++)
    emit(0, KIND_ALLOC, 0x1000 + i, 256);
  return 0;
}
