//go:build ignore

/* kvh.bpf.c — the witness: uprobes on the CUDA driver (libcuda.so.1) and
 * runtime (libcudart.so.*) allocation and free families.
 *
 * ABI with the Go loader (bpf/witness.go), kept by bpf2go -type event:
 *   struct event (48 bytes): tgid u32 @0, tid u32 @4, cgroup u64 @8,
 *     ptr u64 @16, size u64 @24, ts u64 @32 (ktime ns), fn u16 @40 (enum fn
 *     below), kind u8 @42 (0 alloc, 1 free), pad.
 *   events:   BPF_MAP_TYPE_RINGBUF, 8 MiB; every event wakes the reader.
 *   lost:     BPF_MAP_TYPE_PERCPU_ARRAY[1] u64, events the ring had no room for.
 *   inflight: BPF_MAP_TYPE_LRU_HASH pid_tgid -> {out pointer, size, fn}, 16384
 *     entries, for allocations whose pointer is only known on return (LRU:
 *     a thread that dies between entry and return leaves nothing behind).
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
};

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

struct pending {
  __u64 out;
  __u64 size;
  __u16 fn;
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
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, struct pending);
} inflight SEC(".maps");

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
  bpf_ringbuf_submit(e, 0);
}

static __always_inline void remember(__u16 fn, __u64 out, __u64 size) {
  __u64 id = bpf_get_current_pid_tgid();
  struct pending p = {.out = out, .size = size, .fn = fn};
  bpf_map_update_elem(&inflight, &id, &p, BPF_ANY);
}

/* On return: a successful call (0) stored the pointer at *out. */
static __always_inline void returned(long rc) {
  __u64 id = bpf_get_current_pid_tgid();
  struct pending *p = bpf_map_lookup_elem(&inflight, &id);
  if (!p)
    return;
  struct pending v = *p;
  bpf_map_delete_elem(&inflight, &id);
  if (rc != 0)
    return;
  __u64 ptr = 0;
  if (bpf_probe_read_user(&ptr, sizeof ptr, (void *)v.out) != 0)
    return;
  emit(v.fn, 0, ptr, v.size);
}

/* An allocation whose pointer comes back through an out-parameter (arg 1),
 * with its size in arg 2. */
#define ALLOC_OUT(name)                                                  \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, void *out, __u64 size) {                  \
    remember(FN_##name, (__u64)out, size);                               \
    return 0;                                                            \
  }                                                                      \
  SEC("uretprobe/" #name)                                                \
  int BPF_KRETPROBE(exit_##name, long rc) {                              \
    returned(rc);                                                        \
    return 0;                                                            \
  }

/* A free (or unmap) of the pointer in arg 1; arg 2 is a size where the API
 * has one (cuMemUnmap), else whatever the register holds (ignored). */
#define FREE_PTR(name, has_size)                                         \
  SEC("uprobe/" #name)                                                   \
  int BPF_KPROBE(enter_##name, __u64 ptr, __u64 size) {                  \
    emit(FN_##name, 1, ptr, has_size ? size : 0);                        \
    return 0;                                                            \
  }

ALLOC_OUT(cuMemAlloc_v2)
ALLOC_OUT(cuMemAllocAsync)
ALLOC_OUT(cuMemAllocAsync_ptsz)
ALLOC_OUT(cuMemCreate)
ALLOC_OUT(cuMemHostAlloc)
ALLOC_OUT(cuMemAllocHost_v2)
ALLOC_OUT(cudaMalloc)
ALLOC_OUT(cudaMallocAsync)
ALLOC_OUT(cudaMallocHost)

/* cuMemMap(ptr, size, offset, handle, flags): the mapping is the allocation. */
SEC("uprobe/cuMemMap")
int BPF_KPROBE(enter_cuMemMap, __u64 ptr, __u64 size) {
  emit(FN_cuMemMap, 0, ptr, size);
  return 0;
}

FREE_PTR(cuMemFree_v2, 0)
FREE_PTR(cuMemFreeAsync, 0)
FREE_PTR(cuMemFreeAsync_ptsz, 0)
FREE_PTR(cuMemUnmap, 1)
FREE_PTR(cuMemRelease, 0)
FREE_PTR(cuMemFreeHost, 0)
FREE_PTR(cuMemHostUnregister, 0)
FREE_PTR(cudaFree, 0)
FREE_PTR(cudaFreeAsync, 0)
FREE_PTR(cudaFreeHost, 0)
