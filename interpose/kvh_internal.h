/* kvh_internal.h — what libkvh.so's files share, and nothing it exports
 * beyond the hooks.
 *
 * libkvh.so zeroizes and verifies memory before its frees reach the CUDA
 * driver. Loaded with LD_PRELOAD (or /etc/ld.so.preload) into an unmodified
 * process, it interposes the driver API's allocation and free families
 * (hooks.def) on all four ways a caller reaches them: direct ELF binding (the
 * exported wrappers), dlsym (interposed), cuGetProcAddress[_v2[_ptsz]] and
 * cudaGetDriverEntryPoint[ByVersion][_ptsz] (the real resolver runs first and
 * its answer is substituted only on success). Memory this process created is
 * zeroized (cuMemsetD8 on the allocation's stream; memset for pinned host),
 * verified (off | sample | full copy-back), and only then released. A buffer
 * that fails is quarantined in enforce mode: never handed back to the driver.
 *
 * One concept a file:
 *   config.c   the configuration, read once from the environment
 *   resolve.c  the hook table, real symbols, dlsym and the resolvers
 *              (cuGetProcAddress, cudaGetDriverEntryPoint)
 *   table.c    the allocation table (lock-striped, growing) and the VMM
 *              mappings
 *   report.c   the event ring, the socket reporter and the agent's
 *              controls (deny, allow, the verify floor)
 *   verify.c   zeroize and verify, with the device-side PTX zero check
 *   hooks.c    the allocation and free wrappers and the common free path
 *   coop.c     the cooperative API (tenant and request tags, the PyTorch
 *              allocator, counters)
 *   init.c     init (pthread_once) and fork safety
 * The Makefile links them with -flto, so calls between files inline as they
 * did within one file; the few helpers every path takes are static inline
 * below.
 *
 * Rules these files keep: no DT_NEEDED on libcuda/libcudart; config read
 * once; no getenv, malloc, printf or global lock on the hot path (the
 * allocation table is lock-striped, events go through a lock-free ring
 * drained by one background thread); out-params untouched on failure;
 * unknown pointers and failing real calls pass through; nothing here blocks
 * on the agent.
 */
#ifndef KVH_INTERNAL_H
#define KVH_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "kvh_cuda.h"
#include "kvh_wire.h"

#define EXPORT __attribute__((visibility("default")))
/* Code that runs before a sanitizer runtime has initialised (the sanitizer
 * itself calls dlsym while starting) must not be instrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Everything declared from here on is internal to libkvh.so (the exported
 * wrappers say EXPORT); declaring it hidden lets every file reach it without
 * the GOT, as one file did. */
#pragma GCC visibility push(hidden)

/* ---- hooks: ids, prototypes, the name table (generated from hooks.def) --- */

enum hook_id {
  HOOK_NONE = 0,
#define KVH_HOOK(name, base, minver, ptsz, params, args) HOOK_##name,
#include "hooks.def"
#undef KVH_HOOK
  HOOK_COUNT
};

#define KVH_HOOK(name, base, minver, ptsz, params, args) typedef CUresult(*name##_fn) params;
#include "hooks.def"
#undef KVH_HOOK

#define KVH_HOOK(name, base, minver, ptsz, params, args) EXPORT CUresult name params;
#include "hooks.def"
#undef KVH_HOOK

struct hook {
  const char *name, *base;
  int minver, ptsz;
  void *wrapper;
};

extern const struct hook hooks[HOOK_COUNT]; /* resolve.c */

/* real[id] is the driver's (or runtime's) entry point for hook id. */
extern _Atomic(void *) real[HOOK_COUNT];

/* Driver functions kvh calls itself; never hooked (resolve_helpers). */
extern CUresult (*p_memset)(CUdeviceptr, unsigned char, size_t);
extern CUresult (*p_memset_async)(CUdeviceptr, unsigned char, size_t, CUstream);
extern CUresult (*p_dtoh)(void *, CUdeviceptr, size_t);
extern CUresult (*p_stream_sync)(CUstream);
extern CUresult (*p_range)(CUdeviceptr *, size_t *, CUdeviceptr); /* cuMemGetAddressRange_v2 */

/* ---- config.c: the configuration, read once ------------------------------ */

enum mode { MODE_ENFORCE, MODE_OBSERVE, MODE_OFF };

#define KVH_MAX_SAMPLES (1 << 20)

struct config {
  enum mode mode;
  int verify; /* enum kvh_verify_mode; verify, samples and double_pass as */
  int samples; /* configured: frees read policy_now(), which a floor raises */
  int double_pass;
  int require_agent;  /* KVH_REQUIRE_AGENT: no agent connection, no allocations */
  int socket_invalid; /* KVH_SOCKET was too long: never connect */
  uint32_t table_slots; /* test-only KVH_TEST_TABLE_SLOTS: a ptrs stripe's first capacity */
  int table_fixed;      /* test-only KVH_TEST_TABLE_FIXED: the table never grows */
  char tenant[24];
  char socket[108];
};

extern struct config cfg;

/* The verification policy frees use: verify mode, double pass and sample
 * count packed in one word, so a free reads a consistent triple with one
 * relaxed load (policy_now). It starts as configured and is only ever raised,
 * by the agent's floor (policy_raise, from the reporter thread). */
struct policy {
  int verify; /* enum kvh_verify_mode */
  int double_pass;
  int samples;
};

extern _Atomic uint64_t policy_word;

static inline uint64_t policy_pack(struct policy p) {
  return (uint64_t)(uint8_t)p.verify | (uint64_t)(p.double_pass != 0) << 8 | (uint64_t)(uint32_t)p.samples << 32;
}

static inline struct policy policy_now(void) {
  uint64_t w = atomic_load_explicit(&policy_word, memory_order_relaxed);
  return (struct policy){(int)(w & 0xff), (int)(w >> 8 & 1), (int)(w >> 32)};
}

/* policy_raise raises each setting to at least floor's (verify off < sample
 * < full; double pass on if either; the larger sample count) and returns the
 * policy now in force. It never lowers anything. */
struct policy policy_raise(struct policy floor);

/* warn writes one "libkvh: ..." line to stderr (init and once-only paths). */
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void read_config(void);

/* ---- resolve.c: real symbols --------------------------------------------- */

void *lookup(const char *name);
void resolve_helpers(void);

static inline void *real_fn(enum hook_id id) {
  void *p = atomic_load_explicit(&real[id], memory_order_acquire);
  if (likely(p)) return p;
  p = lookup(hooks[id].name);
  if (p) atomic_store_explicit(&real[id], p, memory_order_release);
  return p;
}

/* ---- init.c: init runs once, before the first hook does anything -------- */

extern pthread_once_t init_once;
void init(void);

static inline void ensure_init(void) { pthread_once(&init_once, init); }

#define REAL(name) ((name##_fn)real_fn(HOOK_##name))
#define NEED_REAL(name)                          \
  ensure_init();                                 \
  name##_fn real_##name = REAL(name);            \
  if (unlikely(!real_##name)) return CUDA_ERROR_NOT_INITIALIZED

/* ---- table.c: the allocation table, lock-striped open addressing -------- */

#define TABLE_SLOTS 64 /* a ptrs stripe's first capacity: 16K entries (768 KiB) in all, then it grows */

/* OWN_IMPORTER: memory this process did not get from the driver (an import,
 * registered host memory): kvh never writes to it. */
enum owner { OWN_CREATOR = 1, OWN_IMPORTER = 2 };
/* ST_RELEASED: a VMM handle released while still mapped (its memory lives
 * until the last unmap). */
enum slot_state { ST_LIVE = 0, ST_QUARANTINED = 1, ST_RELEASED = 2 };

/* A slot of ptrs (key: the address) or of handles (key: hkey(handle); size,
 * owner, state, and aux = the handle's live mappings, stream = bytes from
 * offset 0 zeroized by the cuMemUnmap in progress). */
struct slot {
  uint64_t key; /* 0 empty */
  uint64_t size;
  uint64_t stream;
  uint64_t aux;
  uint8_t kind, owner, state, graph; /* graph: a graph allocation (graph_freed on its free) */
  int32_t device;
  uint64_t ctx; /* ptrs: the context current at allocation (cuCtxGetCurrent), 0 unknown */
};

#define STRIPES 256

struct stripe {
  pthread_mutex_t mu;
  struct slot *slots;
  uint32_t cap;     /* a power of two; grows (table.c) */
  uint32_t used;    /* entries (a delete leaves no tombstone) */
  uint32_t grow_at; /* grow when used reaches it (three quarters of cap) */
};

struct table {
  struct stripe s[STRIPES];
};

extern struct table ptrs, handles;
extern atomic_ulong untracked; /* allocations a full stripe could not hold */

void table_init(struct table *t, uint32_t cap);
/* table_find returns the live slot for key; the stripe is locked on return. */
struct slot *table_find(struct table *t, uint64_t key, struct stripe **sp);
/* table_put inserts or replaces v, growing the stripe as needed; 0 when it
 * could not (counted in untracked). */
int table_put(struct table *t, const struct slot *v);
/* table_del deletes e, a slot table_find returned (its stripe s locked). */
void table_del(struct stripe *s, struct slot *e);
/* table_take_ctx removes every entry of t whose ctx is ctx and returns them in
 * *out (malloc'd, the caller frees it; NULL when none or no memory). */
size_t table_take_ctx(struct table *t, uint64_t ctx, struct slot **out);
void lock_all(void);
extern pthread_mutex_t graph_mu; /* hooks.c: graph executables (taken before the tables at fork) */
void graph_freed(uint64_t p);
void unlock_all(void);

/* VMM mappings, sorted by address, under vmm_mu. Every VMM hook that changes
 * mappings (cuMemMap, cuMemUnmap, cuMemRelease) holds vmm_mu across its real
 * call, so "the last mapping of this memory" is exact: these are rare
 * page-table operations, never the alloc/free hot path. Lock order: vmm_mu,
 * then a stripe. */
struct vmap {
  uint64_t va, size, off, handle;
  uint8_t owner, state; /* enum owner; ST_LIVE or ST_QUARANTINED */
  /* scratch for the cuMemUnmap in progress: */
  uint8_t mapped;                /* still mapped after it */
  uint8_t zeroized;              /* it zeroized the memory through this mapping, */
  uint8_t verify, flags, result; /* with this attestation (for aliases it covers) */
  uint64_t seed;
};

extern pthread_mutex_t vmm_mu;
extern struct vmap *vmaps;
extern size_t nvmaps;

/* vmap_lower is the index of the first mapping at or above va. */
size_t vmap_lower(uint64_t va);
/* vmap_insert adds m in order; 0 when there is no memory to hold it. */
int vmap_insert(const struct vmap *m);

/* hkey is a VMM handle's key in handles: never 0, the empty marker. */
static inline uint64_t hkey(uint64_t h) { return h + 2; }

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

/* ---- report.c: events, the reporter thread, the agent's deny ------------ */

/* gate says why new allocations are refused (0: they are not). The agent's
 * deny sets GATE_DENY until it allows; a fork() keeps it. With
 * KVH_REQUIRE_AGENT, GATE_NO_AGENT is set while no agent connection exists.
 * The alloc hooks read it with one relaxed load (refused). */
enum { GATE_DENY = 1, GATE_NO_AGENT = 2 };
extern atomic_int gate;
extern atomic_ulong dropped;          /* records lost while the agent was away or slow */
extern atomic_ulong dropped_reported; /* of those, already reported to the agent */
extern __thread char tl_tenant[24], tl_request[24];

/* emit enqueues r for the agent; a full ring counts a drop. */
void emit(struct kvh_record *r);
void ring_reset(void);
/* report_connect says hello at init, while the process is surely alive. */
void report_connect(void);
/* Fork: report_fork_prepare takes the ring, report_fork_parent gives it back,
 * report_fork_child resets the reporter for the child and gives it back. */
void report_fork_prepare(void);
void report_fork_parent(void);
void report_fork_child(void);

/* gate_refuse is refused's slow path: it starts the reporter if this process
 * has none (a forked child) and, with no agent connection, tries one now (at
 * most every 200 ms, never waiting for a lock), so the agent can be heard. It
 * returns the error a refused allocation gets — CUDA_ERROR_OUT_OF_MEMORY for
 * a deny, CUDA_ERROR_NOT_PERMITTED for no agent — or CUDA_SUCCESS if the gate
 * opened meanwhile. */
CUresult gate_refuse(void);

static inline CUresult refused(void) {
  if (likely(!atomic_load_explicit(&gate, memory_order_relaxed))) return CUDA_SUCCESS;
  return gate_refuse();
}

static inline uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- verify.c: zeroize and verify ---------------------------------------- */

extern uint64_t seed_base; /* sampled verification's per-process seed */

/* zeroize clears [p, p+n) and verifies it. device selects cuMemsetD8 and
 * copy-back; otherwise host memset. It fills the attestation in r and
 * returns 0 when the memory is verified (or, with verify off, zeroed). */
int zeroize(uint64_t p, size_t n, int device, CUstream stream, int async, struct kvh_record *r);

#pragma GCC visibility pop

#endif
