/* hooks.c — the allocation and free wrappers (hooks.def) and the paths they
 * share: track records an allocation; release zeroizes and verifies what
 * this process created before the real free, and quarantines what fails in
 * enforce mode. */
#include "kvh_internal.h"

#include <stdlib.h>

/* ---- common paths ------------------------------------------------------- */

static void emit_alloc(enum hook_id fn, uint64_t p, size_t n, int kind, int owner, CUstream s) {
  struct kvh_record r = {0};
  r.type = KVH_REC_ALLOC;
  r.fn = (uint16_t)fn;
  r.ptr = p;
  r.bytes = n;
  r.mem_kind = (uint8_t)kind;
  r.stream = (uint64_t)(uintptr_t)s;
  if (owner == OWN_IMPORTER) r.flags |= KVH_F_IMPORTER;
  emit(&r);
}

/* current_ctx is the context current on this thread (cuCtxGetCurrent), 0
 * when the driver has no such call: the context an allocation belongs to. */
static _Atomic(void *) ctx_get; /* (void *)1: the driver has none */

static inline uint64_t current_ctx(void) {
  void *f = atomic_load_explicit(&ctx_get, memory_order_acquire);
  if (unlikely(!f)) {
    f = lookup("cuCtxGetCurrent");
    if (!f) f = (void *)1;
    atomic_store_explicit(&ctx_get, f, memory_order_release);
  }
  CUcontext c = NULL;
  if (f == (void *)1 || ((CUresult(*)(CUcontext *))f)(&c) != CUDA_SUCCESS) return 0;
  return (uint64_t)(uintptr_t)c;
}

static void track(enum hook_id fn, uint64_t p, size_t n, int kind, int owner, CUstream s, uint64_t aux) {
  if (!p) return;
  struct slot v = {.key = p, .size = n, .stream = (uint64_t)(uintptr_t)s, .aux = aux, .kind = (uint8_t)kind, .owner = (uint8_t)owner,
                   .ctx = current_ctx()};
  table_put(&ptrs, &v);
  emit_alloc(fn, p, n, kind, owner, s);
}

/* imports: every address this process mapped from another owner (IPC,
 * pool imports) until it is closed or freed, kept apart from the
 * allocation table and never subject to its test-only fixed size, so that
 * the untracked-range fallback below can tell an import it missed from an
 * allocation it missed. Imports are few; a list does. If the list cannot
 * grow (no memory), imports_lost turns the fallback off for good. */
static pthread_mutex_t imports_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *imports;
static size_t nimports, imports_cap;
static int imports_lost;

static void import_add(uint64_t p) {
  if (!p) return;
  pthread_mutex_lock(&imports_mu);
  if (nimports == imports_cap) {
    size_t cap = imports_cap ? 2 * imports_cap : 64;
    uint64_t *n = realloc(imports, cap * sizeof *n);
    if (!n) {
      imports_lost = 1;
      pthread_mutex_unlock(&imports_mu);
      return;
    }
    imports = n, imports_cap = cap;
  }
  imports[nimports++] = p;
  pthread_mutex_unlock(&imports_mu);
}

static void import_del(uint64_t p) {
  pthread_mutex_lock(&imports_mu);
  for (size_t i = 0; i < nimports; i++)
    if (imports[i] == p) {
      imports[i] = imports[--nimports];
      break;
    }
  pthread_mutex_unlock(&imports_mu);
}

/* import_may_be says p may be (inside) memory this process imported, or that
 * kvh cannot tell: then nothing may write to it on a table miss. */
static int import_may_be(uint64_t p, uint64_t base, uint64_t size) {
  pthread_mutex_lock(&imports_mu);
  int hit = imports_lost;
  for (size_t i = 0; i < nimports && !hit; i++) hit = imports[i] == p || (imports[i] >= base && imports[i] < base + size);
  pthread_mutex_unlock(&imports_mu);
  return hit;
}

/* untracked_range: a device free the table missed, while some allocation
 * could not be tracked (the table could not grow), may be one of those. If
 * the driver says p starts a live allocation, v describes it and the free
 * zeroizes it like any other. Only the device frees: an IPC close or a host
 * free must never write to memory it cannot prove is this process's. */
static int untracked_range(enum hook_id fn, uint64_t p, struct slot *v) {
  if (likely(!atomic_load_explicit(&untracked, memory_order_relaxed)) || cfg.mode == MODE_OFF) return 0;
  if (fn != HOOK_cuMemFree_v2 && fn != HOOK_cuMemFree && fn != HOOK_cuMemFreeAsync && fn != HOOK_cuMemFreeAsync_ptsz) return 0;
  resolve_helpers();
  CUdeviceptr base = 0;
  size_t size = 0;
  if (!p_range || p_range(&base, &size, p) != CUDA_SUCCESS || base != p || !size) return 0;
  if (import_may_be(p, base, size)) return 0; /* another process's memory: the driver decides, nothing is written */
  *v = (struct slot){.key = p, .size = size, .owner = OWN_CREATOR, .kind = fn == HOOK_cuMemFree_v2 || fn == HOOK_cuMemFree ? KVH_MEM_DEVICE : KVH_MEM_ASYNC};
  return 1;
}

/* capturing says whether stream s is being captured into a graph
 * (cuStreamIsCapturing): then the free is a node of that graph, and so is
 * every stream-ordered call kvh makes on s, while a synchronous call (a
 * stream synchronize, a copy-back) would fail and invalidate the capture. */
static _Atomic(void *) is_capturing; /* (void *)1: the driver has none */

static int capturing(CUstream s) {
  if (!s) return 0; /* the legacy stream cannot capture */
  void *f = atomic_load_explicit(&is_capturing, memory_order_acquire);
  if (unlikely(!f)) {
    f = lookup("cuStreamIsCapturing");
    if (!f) f = (void *)1;
    atomic_store_explicit(&is_capturing, f, memory_order_release);
  }
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  return f != (void *)1 && ((CUresult(*)(CUstream, CUstreamCaptureStatus *))f)(s, &st) == CUDA_SUCCESS &&
         st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* zeroize_scheduled zeroizes [p, p+n) on a capturing stream: the memsets
 * (0xA5 first with double pass) become nodes of the graph, ordered before
 * the free that follows them on the stream, and run at every launch. Nothing
 * can read the memory back at capture time, so the record says verify off.
 * 0 when the memsets were captured. */
static int zeroize_scheduled(uint64_t p, size_t n, CUstream s, struct kvh_record *r) {
  const struct policy pol = policy_now();
  resolve_helpers();
  r->bytes = n;
  r->verify = KVH_VERIFY_OFF;
  if (pol.double_pass) r->flags |= KVH_F_DOUBLE_PASS;
  int rc = p_memset_async ? 0 : -1;
  for (int pass = pol.double_pass ? 0 : 1; pass < 2 && rc == 0; pass++) rc = p_memset_async(p, pass == 0 ? 0xA5 : 0, n, s) != CUDA_SUCCESS;
  r->result = rc ? KVH_RES_ZEROIZE_FAILED : KVH_RES_OK;
  r->zeroed = rc ? 0 : n;
  return rc ? -1 : 0;
}

/* release runs the free path for p: zeroize and verify what this process
 * created, then call do_free unless the buffer is quarantined. do_free
 * returns the real call's result. */
typedef CUresult (*free_cb)(void *ctx);

static CUresult release(enum hook_id fn, uint64_t p, int device, int async, CUstream s, size_t len_hint, free_cb do_free, void *ctx) {
  /* NULL is nothing this process allocated, and 0 is the table's empty
   * marker: the driver answers it, unchanged. */
  if (unlikely(!p)) return do_free(ctx);
  struct stripe *st;
  struct slot *e = table_find(&ptrs, p, &st), v;
  if (likely(e)) {
    v = *e;
    if (v.state == ST_QUARANTINED) { /* already kept from the driver */
      pthread_mutex_unlock(&st->mu);
      return CUDA_SUCCESS;
    }
    /* Take the entry out before the driver can hand the address to anyone
     * else: a concurrent allocation of the same address must not find it. */
    table_del(st, e);
    pthread_mutex_unlock(&st->mu);
  } else {
    pthread_mutex_unlock(&st->mu);
    if (!untracked_range(fn, p, &v)) { /* unknown pointer or double free: the driver decides */
      CUresult rc = do_free(ctx);
      if (rc == CUDA_SUCCESS) import_del(p);
      if (rc == CUDA_SUCCESS && !(async && capturing(s))) graph_freed(p); /* (a captured free frees nothing yet) */
      struct kvh_record r = {0};
      r.type = KVH_REC_FREE;
      r.fn = (uint16_t)fn;
      r.ptr = p;
      r.result = KVH_RES_PASSTHROUGH;
      emit(&r);
      return rc;
    }
  }
  struct kvh_record r = {0};
  r.type = KVH_REC_FREE;
  r.fn = (uint16_t)fn;
  r.ptr = p;
  r.mem_kind = v.kind;
  r.stream = s ? (uint64_t)(uintptr_t)s : v.stream;
  if (async) r.flags |= KVH_F_ASYNC;
  size_t n = len_hint && len_hint < v.size ? len_hint : v.size;
  int failed = 0, captured = 0;
  if (v.owner == OWN_IMPORTER) {
    r.flags |= KVH_F_IMPORTER;
    r.result = KVH_RES_PASSTHROUGH;
    r.bytes = n;
  } else if (cfg.mode != MODE_OFF) {
    CUstream zs = (CUstream)(uintptr_t)r.stream;
    if (async && device && capturing(zs)) failed = zeroize_scheduled(p, n, zs, &r) != 0, captured = 1;
    else failed = zeroize(p, n, device, zs, async, &r) != 0;
  }
  if (failed && cfg.mode == MODE_ENFORCE) {
    v.state = ST_QUARANTINED; /* kept in the table so a second free stays a no-op */
    table_put(&ptrs, &v);
    r.type = KVH_REC_QUARANTINE;
    emit(&r);
    return CUDA_SUCCESS; /* the caller's memory is gone from its point of view */
  }
  CUresult rc = do_free(ctx);
  if (rc != CUDA_SUCCESS) table_put(&ptrs, &v); /* still allocated: keep tracking it */
  else if (v.owner == OWN_IMPORTER) import_del(p);
  /* A miss may be graph memory too; a captured free frees nothing until its
   * graph runs (its free node marks it then). */
  if (rc == CUDA_SUCCESS && !captured && (v.graph || !e)) graph_freed(p);
  emit(&r);
  return rc;
}

/* ---- device allocations --------------------------------------------------- */

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t n) {
  NEED_REAL(cuMemAlloc_v2);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAlloc_v2(dptr, n);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAlloc_v2, *dptr, n, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t n, unsigned int flags) {
  NEED_REAL(cuMemAllocManaged);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocManaged(dptr, n, flags);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocManaged, *dptr, n, KVH_MEM_MANAGED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int esz) {
  NEED_REAL(cuMemAllocPitch_v2);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocPitch_v2(dptr, pitch, w, h, esz);
  if (rc == CUDA_SUCCESS && dptr && pitch) track(HOOK_cuMemAllocPitch_v2, *dptr, *pitch * h, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

struct free_ctx {
  void *fn;
  uint64_t p;
  CUstream s;
  size_t n;
};

static CUresult call_free(void *c) { struct free_ctx *x = c; return ((cuMemFree_v2_fn)x->fn)(x->p); }
static CUresult call_free_v1(void *c) { struct free_ctx *x = c; return ((cuMemFree_fn)x->fn)((CUdeviceptr_v1)x->p); }
static CUresult call_free_async(void *c) { struct free_ctx *x = c; return ((cuMemFreeAsync_fn)x->fn)(x->p, x->s); }
static CUresult call_free_host(void *c) { struct free_ctx *x = c; return ((cuMemFreeHost_fn)x->fn)((void *)(uintptr_t)x->p); }
static CUresult call_unregister(void *c) { struct free_ctx *x = c; return ((cuMemHostUnregister_fn)x->fn)((void *)(uintptr_t)x->p); }
static CUresult call_ipc_close(void *c) { struct free_ctx *x = c; return ((cuIpcCloseMemHandle_fn)x->fn)(x->p); }

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
  NEED_REAL(cuMemFree_v2);
  struct free_ctx c = {(void *)real_cuMemFree_v2, p, NULL, 0};
  return release(HOOK_cuMemFree_v2, p, 1, 0, NULL, 0, call_free, &c);
}

/* The v1 entry points: the pre-3.2 ABI, with 32-bit device pointers and
 * sizes (cuda.h's PFN_cuMemAlloc_v2000 and friends). cuGetProcAddress hands
 * them out at old versions; their memory is tracked and zeroized exactly as
 * the v2 calls' (a v1 pointer, zero-extended, is the same address). */
EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int n) {
  NEED_REAL(cuMemAlloc);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAlloc(dptr, n);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAlloc, *dptr, n, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int w, unsigned int h, unsigned int esz) {
  NEED_REAL(cuMemAllocPitch);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocPitch(dptr, pitch, w, h, esz);
  if (rc == CUDA_SUCCESS && dptr && pitch) track(HOOK_cuMemAllocPitch, *dptr, (uint64_t)*pitch * h, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemFree(CUdeviceptr_v1 p) {
  NEED_REAL(cuMemFree);
  struct free_ctx c = {(void *)real_cuMemFree, p, NULL, 0};
  return release(HOOK_cuMemFree, p, 1, 0, NULL, 0, call_free_v1, &c);
}

static CUresult alloc_async(enum hook_id id, cuMemAllocAsync_fn f, CUdeviceptr *dptr, size_t n, CUstream s) {
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = f(dptr, n, s);
  if (rc == CUDA_SUCCESS && dptr) track(id, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t n, CUstream s) {
  NEED_REAL(cuMemAllocAsync);
  return alloc_async(HOOK_cuMemAllocAsync, real_cuMemAllocAsync, dptr, n, s);
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t n, CUstream s) {
  NEED_REAL(cuMemAllocAsync_ptsz);
  return alloc_async(HOOK_cuMemAllocAsync_ptsz, real_cuMemAllocAsync_ptsz, dptr, n, s);
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
  NEED_REAL(cuMemAllocFromPoolAsync);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocFromPoolAsync(dptr, n, pool, s);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocFromPoolAsync, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
  NEED_REAL(cuMemAllocFromPoolAsync_ptsz);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocFromPoolAsync_ptsz(dptr, n, pool, s);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocFromPoolAsync_ptsz, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  NEED_REAL(cuMemFreeAsync);
  struct free_ctx c = {(void *)real_cuMemFreeAsync, p, s, 0};
  return release(HOOK_cuMemFreeAsync, p, 1, 1, s, 0, call_free_async, &c);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
  NEED_REAL(cuMemFreeAsync_ptsz);
  struct free_ctx c = {(void *)real_cuMemFreeAsync_ptsz, p, s, 0};
  return release(HOOK_cuMemFreeAsync_ptsz, p, 1, 1, s, 0, call_free_async, &c);
}

/* Pool pages leave at trim or destroy; their buffers were zeroized when they
 * were freed into the pool (cuMemFreeAsync), so these pass through. */
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  NEED_REAL(cuMemPoolTrimTo);
  return real_cuMemPoolTrimTo(pool, keep);
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  NEED_REAL(cuMemPoolDestroy);
  return real_cuMemPoolDestroy(pool);
}

/* ---- pinned host ----------------------------------------------------------- */

EXPORT CUresult cuMemHostAlloc(void **pp, size_t n, unsigned int flags) {
  NEED_REAL(cuMemHostAlloc);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemHostAlloc(pp, n, flags);
  if (rc == CUDA_SUCCESS && pp) track(HOOK_cuMemHostAlloc, (uint64_t)(uintptr_t)*pp, n, KVH_MEM_HOST_PINNED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t n) {
  NEED_REAL(cuMemAllocHost_v2);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocHost_v2(pp, n);
  if (rc == CUDA_SUCCESS && pp) track(HOOK_cuMemAllocHost_v2, (uint64_t)(uintptr_t)*pp, n, KVH_MEM_HOST_PINNED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocHost(void **pp, unsigned int n) {
  NEED_REAL(cuMemAllocHost);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemAllocHost(pp, n);
  if (rc == CUDA_SUCCESS && pp) track(HOOK_cuMemAllocHost, (uint64_t)(uintptr_t)*pp, n, KVH_MEM_HOST_PINNED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemFreeHost(void *p) {
  NEED_REAL(cuMemFreeHost);
  struct free_ctx c = {(void *)real_cuMemFreeHost, (uint64_t)(uintptr_t)p, NULL, 0};
  return release(HOOK_cuMemFreeHost, c.p, 0, 0, NULL, 0, call_free_host, &c);
}

/* Registered host memory is the application's, not the driver's: it may be
 * a live heap buffer, a MAP_SHARED file or a read-only mapping of weights.
 * kvh never writes to it; the registration and the unregister are reported
 * (as memory kvh does not own, like an import). */
EXPORT CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned int flags) {
  NEED_REAL(cuMemHostRegister_v2);
  CUresult rc = real_cuMemHostRegister_v2(p, n, flags);
  if (rc == CUDA_SUCCESS) track(HOOK_cuMemHostRegister_v2, (uint64_t)(uintptr_t)p, n, KVH_MEM_HOST_REGISTERED, OWN_IMPORTER, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemHostRegister(void *p, size_t n, unsigned int flags) {
  NEED_REAL(cuMemHostRegister);
  CUresult rc = real_cuMemHostRegister(p, n, flags);
  if (rc == CUDA_SUCCESS) track(HOOK_cuMemHostRegister, (uint64_t)(uintptr_t)p, n, KVH_MEM_HOST_REGISTERED, OWN_IMPORTER, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemHostUnregister(void *p) {
  NEED_REAL(cuMemHostUnregister);
  struct free_ctx c = {(void *)real_cuMemHostUnregister, (uint64_t)(uintptr_t)p, NULL, 0};
  return release(HOOK_cuMemHostUnregister, c.p, 0, 0, NULL, 0, call_unregister, &c);
}

/* ---- virtual memory management (vLLM sleep mode, expandable segments) -----
 *
 * Physical memory (a handle) reaches the driver's free list when it is
 * released and its last mapping is gone. kvh zeroizes it exactly once, while
 * it is still mapped: when its last mapping goes away (a handle released
 * while mapped is zeroized at that last unmap), never while another mapping
 * of it is live, and through every mapping a multi-mapping cuMemUnmap
 * covers. Mappings live in the vmaps array, the handles' live-mapping counts
 * in the handles table (aux); both change only under vmm_mu (table.c). */

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long flags) {
  NEED_REAL(cuMemCreate);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuMemCreate(h, n, prop, flags);
  if (rc == CUDA_SUCCESS && h && cfg.mode != MODE_OFF) {
    struct slot v = {.key = hkey(*h), .size = n, .owner = OWN_CREATOR, .kind = KVH_MEM_VMM};
    table_put(&handles, &v);
  }
  return rc;
}

EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *os, CUmemAllocationHandleType t) {
  NEED_REAL(cuMemImportFromShareableHandle);
  CUresult rc = real_cuMemImportFromShareableHandle(h, os, t);
  if (rc == CUDA_SUCCESS && h && cfg.mode != MODE_OFF) {
    struct slot v = {.key = hkey(*h), .owner = OWN_IMPORTER, .kind = KVH_MEM_VMM};
    table_put(&handles, &v);
  }
  return rc;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  NEED_REAL(cuMemRelease);
  if (cfg.mode == MODE_OFF) return real_cuMemRelease(h);
  pthread_mutex_lock(&vmm_mu);
  CUresult rc = real_cuMemRelease(h);
  if (rc == CUDA_SUCCESS) {
    struct stripe *st;
    struct slot *e = table_find(&handles, hkey(h), &st);
    if (e && e->aux) e->state = ST_RELEASED; /* its last unmap frees (and zeroizes) it */
    else if (e) table_del(st, e);
    pthread_mutex_unlock(&st->mu);
  }
  pthread_mutex_unlock(&vmm_mu);
  return rc;
}

/* handle_add adjusts h's live-mapping count by d (vmm_mu held) and returns
 * its slot's owner (OWN_IMPORTER for a handle kvh did not see created). */
static int handle_add(uint64_t h, int d) {
  struct stripe *st;
  struct slot *e = table_find(&handles, hkey(h), &st);
  int owner = OWN_IMPORTER;
  if (e) {
    owner = e->owner;
    if (d > 0 || e->aux >= (uint64_t)-d) e->aux += (uint64_t)(int64_t)d;
    e->stream = 0;
  }
  pthread_mutex_unlock(&st->mu);
  return owner;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t n, size_t off, CUmemGenericAllocationHandle h, unsigned long long flags) {
  NEED_REAL(cuMemMap);
  if (cfg.mode == MODE_OFF) return real_cuMemMap(ptr, n, off, h, flags);
  pthread_mutex_lock(&vmm_mu);
  CUresult rc = real_cuMemMap(ptr, n, off, h, flags);
  int owner = OWN_IMPORTER;
  if (rc == CUDA_SUCCESS) {
    owner = handle_add(h, 1);
    struct vmap m = {.va = ptr, .size = n, .off = off, .handle = h, .owner = (uint8_t)owner};
    if (!vmap_insert(&m)) { /* no memory to track it: never zeroize it as the last mapping of anything */
      handle_add(h, -1);
      atomic_fetch_add(&untracked, 1);
      owner = OWN_IMPORTER;
    }
  }
  pthread_mutex_unlock(&vmm_mu);
  if (rc == CUDA_SUCCESS) emit_alloc(HOOK_cuMemMap, ptr, n, KVH_MEM_VMM, owner, NULL);
  return rc;
}

/* zeroized_alias finds, among vmaps[i0, i), a mapping of vmaps[i]'s handle
 * from offset 0 through which this unmap zeroized at least as much. */
static const struct vmap *zeroized_alias(size_t i0, size_t i) {
  for (size_t j = i0; j < i; j++) {
    const struct vmap *z = &vmaps[j];
    if (z->zeroized && z->handle == vmaps[i].handle && z->off == 0 && z->size >= vmaps[i].size) return z;
  }
  return NULL;
}

/* unmap_locked is cuMemUnmap with vmm_mu held. */
static CUresult unmap_locked(cuMemUnmap_fn real_unmap, CUdeviceptr ptr, size_t n) {
  uint64_t end = ptr + n;
  if (!n || end < ptr) return real_unmap(ptr, n);
  size_t i0 = vmap_lower(ptr), i1;
  if (i0 > 0 && vmaps[i0 - 1].va + vmaps[i0 - 1].size > ptr) i0--;
  for (i1 = i0; i1 < nvmaps && vmaps[i1].va < end; i1++)
    if (vmaps[i1].va < ptr || vmaps[i1].va + vmaps[i1].size > end) return real_unmap(ptr, n); /* part of a mapping: the driver refuses */
  if (i0 == i1) { /* nothing kvh mapped: the driver decides */
    CUresult rc = real_unmap(ptr, n);
    struct kvh_record r = {0};
    r.type = KVH_REC_FREE;
    r.fn = HOOK_cuMemUnmap;
    r.ptr = ptr;
    r.result = KVH_RES_PASSTHROUGH;
    emit(&r);
    return rc;
  }
  /* Take every covered live mapping off its handle's count first: a handle
   * whose count reaches 0 loses its last mapping in this call. */
  size_t live = 0;
  for (size_t i = i0; i < i1; i++) {
    vmaps[i].zeroized = 0;
    if (vmaps[i].state == ST_QUARANTINED) continue; /* kept from the driver already */
    live++;
    handle_add(vmaps[i].handle, -1);
  }
  if (!live) return CUDA_SUCCESS;
  int quarantined = 0;
  for (size_t i = i0; i < i1; i++) {
    struct vmap *m = &vmaps[i];
    if (m->state == ST_QUARANTINED) continue;
    const struct vmap *z;
    struct kvh_record r = {0};
    r.type = KVH_REC_FREE;
    r.fn = HOOK_cuMemUnmap;
    r.ptr = m->va;
    r.bytes = m->size;
    r.mem_kind = KVH_MEM_VMM;
    struct stripe *st;
    struct slot *e = table_find(&handles, hkey(m->handle), &st);
    uint64_t left = e ? e->aux : 1, done = e ? e->stream : 0;
    pthread_mutex_unlock(&st->mu);
    if (m->owner == OWN_IMPORTER || !e) {
      r.flags |= KVH_F_IMPORTER;
      r.result = KVH_RES_PASSTHROUGH;
    } else if (left) {
      r.result = KVH_RES_PASSTHROUGH; /* still mapped elsewhere: the memory lives on */
    } else if (m->off == 0 && m->size <= done && (z = zeroized_alias(i0, i))) {
      /* An alias in this same unmap already zeroized this memory: its
       * attestation is this mapping's too. */
      r.verify = z->verify;
      r.flags = z->flags;
      r.result = z->result;
      r.seed = z->seed;
      r.zeroed = m->size;
    } else {
      int failed = zeroize(m->va, m->size, 1, NULL, 0, &r) != 0;
      m->zeroized = !failed;
      m->verify = r.verify, m->flags = r.flags, m->result = r.result, m->seed = r.seed;
      if (!failed && m->off == 0) {
        e = table_find(&handles, hkey(m->handle), &st);
        if (e && m->size > e->stream) e->stream = m->size;
        pthread_mutex_unlock(&st->mu);
      }
      if (failed && cfg.mode == MODE_ENFORCE) { /* kept mapped, never handed back */
        m->state = ST_QUARANTINED;
        handle_add(m->handle, 1);
        r.type = KVH_REC_QUARANTINE;
        quarantined = 1;
      }
    }
    emit(&r);
  }
  CUresult rc = CUDA_SUCCESS;
  for (size_t i = i0; i < i1; i++) vmaps[i].mapped = vmaps[i].state == ST_QUARANTINED;
  if (!quarantined) {
    rc = real_unmap(ptr, n);
    for (size_t i = i0; i < i1 && rc != CUDA_SUCCESS; i++) vmaps[i].mapped = 1; /* all still mapped */
  } else { /* unmap the others one by one; the quarantined stay mapped */
    for (size_t i = i0; i < i1; i++) {
      if (vmaps[i].mapped) continue;
      CUresult r1 = real_unmap(vmaps[i].va, vmaps[i].size);
      if (r1 != CUDA_SUCCESS) rc = r1, vmaps[i].mapped = 1;
    }
  }
  /* Forget the mappings that are gone, and handles released with them. */
  size_t w = i0;
  for (size_t i = i0; i < i1; i++) {
    if (vmaps[i].mapped) {
      if (vmaps[i].state != ST_QUARANTINED) handle_add(vmaps[i].handle, 1);
      vmaps[w++] = vmaps[i];
      continue;
    }
    struct stripe *st;
    struct slot *e = table_find(&handles, hkey(vmaps[i].handle), &st);
    if (e && !e->aux && e->state == ST_RELEASED) table_del(st, e);
    pthread_mutex_unlock(&st->mu);
  }
  memmove(&vmaps[w], &vmaps[i1], (nvmaps - i1) * sizeof *vmaps);
  nvmaps -= i1 - w;
  return rc; /* a quarantined mapping is gone from the caller's point of view */
}

/* One cuMemUnmap may cover several mappings; the memory behind each is
 * zeroized while still mapped if this is its last mapping. */
EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t n) {
  NEED_REAL(cuMemUnmap);
  if (!ptr || cfg.mode == MODE_OFF) return real_cuMemUnmap(ptr, n);
  pthread_mutex_lock(&vmm_mu);
  CUresult rc = unmap_locked(real_cuMemUnmap, ptr, n);
  pthread_mutex_unlock(&vmm_mu);
  return rc;
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t n) {
  NEED_REAL(cuMemAddressFree);
  return real_cuMemAddressFree(ptr, n);
}

/* ---- IPC: an importer never zeroizes memory it does not own ---------------- */

EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle h, unsigned int flags) {
  NEED_REAL(cuIpcOpenMemHandle_v2);
  CUresult rc = real_cuIpcOpenMemHandle_v2(pdptr, h, flags);
  if (rc == CUDA_SUCCESS && pdptr) import_add(*pdptr);
  if (rc == CUDA_SUCCESS && pdptr) track(HOOK_cuIpcOpenMemHandle_v2, *pdptr, 0, KVH_MEM_IPC_IMPORT, OWN_IMPORTER, NULL, 0);
  return rc;
}

EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle h, unsigned int flags) {
  NEED_REAL(cuIpcOpenMemHandle);
  CUresult rc = real_cuIpcOpenMemHandle(pdptr, h, flags);
  if (rc == CUDA_SUCCESS && pdptr) import_add(*pdptr);
  if (rc == CUDA_SUCCESS && pdptr) track(HOOK_cuIpcOpenMemHandle, *pdptr, 0, KVH_MEM_IPC_IMPORT, OWN_IMPORTER, NULL, 0);
  return rc;
}

EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
  NEED_REAL(cuIpcCloseMemHandle);
  struct free_ctx c = {(void *)real_cuIpcCloseMemHandle, p, NULL, 0};
  return release(HOOK_cuIpcCloseMemHandle, p, 1, 0, NULL, 0, call_ipc_close, &c);
}

/* cuMemPoolImportPointer maps another process's pool allocation here; it is
 * released with cuMemFree[Async], where the table (or, on a miss, the
 * imports list) says it is not this process's to zeroize. */
EXPORT CUresult cuMemPoolImportPointer(CUdeviceptr *pdptr, CUmemoryPool pool, CUmemPoolPtrExportData *data) {
  NEED_REAL(cuMemPoolImportPointer);
  CUresult rc = real_cuMemPoolImportPointer(pdptr, pool, data);
  if (rc == CUDA_SUCCESS && pdptr) {
    import_add(*pdptr);
    track(HOOK_cuMemPoolImportPointer, *pdptr, 0, KVH_MEM_IPC_IMPORT, OWN_IMPORTER, NULL, 0);
  }
  return rc;
}

/* ---- contexts: memory that leaves with its context -------------------------
 *
 * cuCtxDestroy, cuDevicePrimaryCtxReset and the cuDevicePrimaryCtxRelease that
 * drops the last reference free every allocation of the context with no free
 * call. Each allocation records the context current when it was made; these
 * hooks zeroize (and verify) every live one of that context first, with the
 * context pushed current. In enforce mode a failure keeps the whole context
 * from the driver (the call returns success and the context lives on,
 * quarantined with its memory). */

static int ctx_zeroize(enum hook_id fn, uint64_t ctx) {
  if (cfg.mode == MODE_OFF || !ctx) return 0;
  struct slot *v = NULL;
  size_t n = table_take_ctx(&ptrs, ctx, &v);
  if (!n) return 0;
  CUresult (*push)(CUcontext), (*pop)(CUcontext *);
  *(void **)&push = lookup("cuCtxPushCurrent_v2");
  *(void **)&pop = lookup("cuCtxPopCurrent_v2");
  int pushed = push && pop && push((CUcontext)(uintptr_t)ctx) == CUDA_SUCCESS;
  int failed = 0;
  for (size_t i = 0; i < n; i++) {
    struct kvh_record r = {0};
    r.type = KVH_REC_FREE;
    r.fn = (uint16_t)fn;
    r.ptr = v[i].key;
    r.mem_kind = v[i].kind;
    if (v[i].owner == OWN_IMPORTER) {
      r.flags |= KVH_F_IMPORTER;
      r.result = KVH_RES_PASSTHROUGH;
      r.bytes = v[i].size;
    } else {
      int device = v[i].kind != KVH_MEM_HOST_PINNED && v[i].kind != KVH_MEM_HOST_REGISTERED;
      if (zeroize(v[i].key, v[i].size, device, NULL, 0, &r) != 0 && cfg.mode == MODE_ENFORCE) {
        v[i].state = ST_QUARANTINED;
        r.type = KVH_REC_QUARANTINE;
        failed = 1;
      }
    }
    emit(&r);
  }
  if (pushed) {
    CUcontext dummy;
    pop(&dummy);
  }
  if (failed) /* the context is kept: so are its entries, a later free of any is a no-op or zeroizes again */
    for (size_t i = 0; i < n; i++) table_put(&ptrs, &v[i]);
  free(v);
  return failed ? -1 : 0;
}

/* Usage counts of contexts cuCtxAttach was called on (the pre-4.0 API): a
 * created context starts at 1, each attach adds one, each detach takes one
 * off, and the detach that reaches 0 destroys it. A context not listed has
 * its creation's count of 1. If the list is full, a detach of an unlisted
 * context cannot be proved the last and is not zeroized (attach_overflow). */
#define MAX_ATTACHED 64
static struct {
  uint64_t ctx;
  int refs;
} attached[MAX_ATTACHED];
static int attach_overflow;
static pthread_mutex_t attach_mu = PTHREAD_MUTEX_INITIALIZER;

/* attach_add adds d to ctx's count (from 1 when unlisted) and returns the
 * count now, or -1 when unknown (not listed, the list overflowed). */
static int attach_add(uint64_t ctx, int d) {
  pthread_mutex_lock(&attach_mu);
  int i, free_i = -1, n = -1;
  for (i = 0; i < MAX_ATTACHED && attached[i].ctx != ctx; i++)
    if (!attached[i].ctx && free_i < 0) free_i = i;
  if (i < MAX_ATTACHED) {
    n = attached[i].refs += d;
    if (n <= 0) attached[i].ctx = 0;
  } else if (!attach_overflow || d > 0) {
    n = 1 + d;
    if (n > 1 && free_i >= 0) attached[free_i].ctx = ctx, attached[free_i].refs = n;
    else if (n > 1) attach_overflow = 1, n = -1;
  }
  pthread_mutex_unlock(&attach_mu);
  return n;
}

/* attach_forget drops ctx's count: a destroyed context is gone whatever
 * its count, and its handle may come back for a new one. */
static void attach_forget(uint64_t ctx) {
  pthread_mutex_lock(&attach_mu);
  for (int i = 0; i < MAX_ATTACHED; i++)
    if (attached[i].ctx == ctx) attached[i].ctx = 0;
  pthread_mutex_unlock(&attach_mu);
}

EXPORT CUresult cuCtxDestroy(CUcontext c) {
  NEED_REAL(cuCtxDestroy);
  if (ctx_zeroize(HOOK_cuCtxDestroy, (uint64_t)(uintptr_t)c)) return CUDA_SUCCESS;
  CUresult rc = real_cuCtxDestroy(c);
  if (rc == CUDA_SUCCESS) attach_forget((uint64_t)(uintptr_t)c);
  return rc;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext c) {
  NEED_REAL(cuCtxDestroy_v2);
  if (ctx_zeroize(HOOK_cuCtxDestroy_v2, (uint64_t)(uintptr_t)c)) return CUDA_SUCCESS;
  CUresult rc = real_cuCtxDestroy_v2(c);
  if (rc == CUDA_SUCCESS) attach_forget((uint64_t)(uintptr_t)c);
  return rc;
}

EXPORT CUresult cuCtxAttach(CUcontext *pctx, unsigned int flags) {
  NEED_REAL(cuCtxAttach);
  CUresult rc = real_cuCtxAttach(pctx, flags);
  if (rc == CUDA_SUCCESS && pctx && *pctx) attach_add((uint64_t)(uintptr_t)*pctx, 1);
  return rc;
}

/* cuCtxDetach: the detach that drops the last reference destroys the
 * context with every allocation in it, so those are zeroized first. */
EXPORT CUresult cuCtxDetach(CUcontext c) {
  NEED_REAL(cuCtxDetach);
  uint64_t ctx = (uint64_t)(uintptr_t)c;
  if (!ctx || cfg.mode == MODE_OFF) return real_cuCtxDetach(c);
  int n = attach_add(ctx, -1);
  /* (a count back at 1 needs no entry: unlisted is 1) */
  if (n == 0 && ctx_zeroize(HOOK_cuCtxDetach, ctx)) return CUDA_SUCCESS; /* kept: the context lives on, quarantined with its memory */
  CUresult rc = real_cuCtxDetach(c);
  if (rc != CUDA_SUCCESS && n > 0) attach_add(ctx, 1); /* nothing changed */
  return rc;
}

/* primary_ctx is dev's primary context while it is active, else 0 (then it
 * holds no memory). It takes a reference and gives it back, which leaves an
 * active context active. */
static uint64_t primary_ctx(CUdevice dev) {
  CUresult (*state)(CUdevice, unsigned int *, int *), (*release_fn)(CUdevice);
  *(void **)&state = lookup("cuDevicePrimaryCtxGetState");
  *(void **)&release_fn = lookup("cuDevicePrimaryCtxRelease_v2");
  if (!release_fn) *(void **)&release_fn = lookup("cuDevicePrimaryCtxRelease");
  cuDevicePrimaryCtxRetain_fn retain = REAL(cuDevicePrimaryCtxRetain);
  unsigned int flags = 0;
  int active = 0;
  CUcontext c = NULL;
  if (!state || !release_fn || !retain || state(dev, &flags, &active) != CUDA_SUCCESS || !active) return 0;
  if (retain(&c, dev) != CUDA_SUCCESS) return 0;
  release_fn(dev);
  return (uint64_t)(uintptr_t)c;
}

/* Primary-context references taken through libkvh, per device: a release
 * that drops the count to 0 drops the last reference this process took. A
 * device kvh saw no retain for (or past the array) is not zeroized at
 * release: kvh cannot prove the reference is the last, and zeroizing memory
 * another holder still uses would destroy live data. */
#define MAX_DEVICES 64
static atomic_int primary_refs[MAX_DEVICES];

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  NEED_REAL(cuDevicePrimaryCtxRetain);
  CUresult rc = real_cuDevicePrimaryCtxRetain(pctx, dev);
  if (rc == CUDA_SUCCESS && dev >= 0 && dev < MAX_DEVICES) atomic_fetch_add(&primary_refs[dev], 1);
  return rc;
}

static CUresult primary_release(enum hook_id id, cuDevicePrimaryCtxRelease_fn f, CUdevice dev) {
  int last = 0;
  if (dev >= 0 && dev < MAX_DEVICES) {
    int n = atomic_load(&primary_refs[dev]);
    while (n > 0 && !atomic_compare_exchange_weak(&primary_refs[dev], &n, n - 1)) {
    }
    last = n == 1;
  }
  if (last && ctx_zeroize(id, primary_ctx(dev))) return CUDA_SUCCESS;
  CUresult rc = f(dev);
  if (rc != CUDA_SUCCESS && dev >= 0 && dev < MAX_DEVICES && last) atomic_fetch_add(&primary_refs[dev], 1);
  return rc;
}

EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
  NEED_REAL(cuDevicePrimaryCtxRelease);
  return primary_release(HOOK_cuDevicePrimaryCtxRelease, real_cuDevicePrimaryCtxRelease, dev);
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  NEED_REAL(cuDevicePrimaryCtxRelease_v2);
  return primary_release(HOOK_cuDevicePrimaryCtxRelease_v2, real_cuDevicePrimaryCtxRelease_v2, dev);
}

static CUresult primary_reset(enum hook_id id, cuDevicePrimaryCtxReset_fn f, CUdevice dev) {
  if (ctx_zeroize(id, primary_ctx(dev))) return CUDA_SUCCESS;
  CUresult rc = f(dev);
  if (rc == CUDA_SUCCESS && dev >= 0 && dev < MAX_DEVICES) atomic_store(&primary_refs[dev], 0); /* every reference is gone */
  return rc;
}

EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) {
  NEED_REAL(cuDevicePrimaryCtxReset);
  return primary_reset(HOOK_cuDevicePrimaryCtxReset, real_cuDevicePrimaryCtxReset, dev);
}

EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
  NEED_REAL(cuDevicePrimaryCtxReset_v2);
  return primary_reset(HOOK_cuDevicePrimaryCtxReset_v2, real_cuDevicePrimaryCtxReset_v2, dev);
}

/* ---- graph memory nodes ----------------------------------------------------
 *
 * Graph memory is allocated and freed when the graph runs, from a per-device
 * graph pool the driver reuses inside the process: what a free node gives
 * back, the next graph allocation gets, unzeroized. cuGraphAddMemAllocNode
 * is hooked to learn each allocation's address and size (tracked like a
 * stream-ordered allocation, so a cuMemFreeAsync of it outside any graph
 * zeroizes it too). cuGraphAddMemFreeNode adds a memset node that depends on
 * the caller's dependencies, and the free node depends on the memset alone:
 * at every launch the memory is zeroed after its last use and before the
 * pool has it. Nothing can verify it when the graph is built, so the record
 * says verify off. If the memset node cannot be added, enforce mode adds an
 * empty node in the free node's place (the memory stays allocated in the
 * graph, never handed back) and reports a quarantine. */

/* track_graph tracks a graph allocation with no context: its address is
 * backed only while the graph runs, so a context teardown must not try to
 * zeroize it (a memset of an unbacked address would fail and keep the whole
 * context from the driver in enforce mode); its free nodes zeroize it. */
static void track_graph(enum hook_id fn, uint64_t p, size_t n) {
  if (!p) return;
  struct slot v = {.key = p, .size = n, .kind = KVH_MEM_ASYNC, .owner = OWN_CREATOR, .graph = 1};
  table_put(&ptrs, &v);
  emit_alloc(fn, p, n, KVH_MEM_ASYNC, OWN_CREATOR, NULL);
}

EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *params) {
  NEED_REAL(cuGraphAddMemAllocNode);
  CUresult gate_rc = refused();
  if (unlikely(gate_rc)) return gate_rc;
  CUresult rc = real_cuGraphAddMemAllocNode(node, g, deps, ndeps, params);
  if (rc == CUDA_SUCCESS && params) track_graph(HOOK_cuGraphAddMemAllocNode, params->dptr, params->bytesize);
  return rc;
}

/* graph_free adds a free node of p to g after a memset node that depends on
 * deps: add_free(c, node, deps, ndeps) adds the free node itself, the way
 * the caller asked for it (cuGraphAddMemFreeNode or cuGraphAddNode). */
typedef CUresult (*add_free_cb)(void *c, CUgraphNode *node, const CUgraphNode *deps, size_t ndeps);

static CUresult graph_free(enum hook_id fn, CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUdeviceptr p, add_free_cb add_free, void *c) {
  if (cfg.mode == MODE_OFF || !p || !node) return add_free(c, node, deps, ndeps);
  struct kvh_record r = {0};
  r.type = KVH_REC_FREE;
  r.fn = (uint16_t)fn;
  r.ptr = p;
  r.mem_kind = KVH_MEM_ASYNC;
  r.flags = KVH_F_ASYNC;
  /* The size: from the alloc node (the entry stays: the node frees this
   * address at every launch), else the driver's range for it. */
  size_t n = 0;
  int owner = OWN_CREATOR;
  struct stripe *st;
  struct slot *e = table_find(&ptrs, p, &st);
  if (e && e->state == ST_LIVE) n = e->size, owner = e->owner;
  pthread_mutex_unlock(&st->mu);
  if (!e) {
    CUdeviceptr base = 0;
    size_t size = 0;
    resolve_helpers();
    if (p_range && p_range(&base, &size, p) == CUDA_SUCCESS && base == p && !import_may_be(p, base, size)) n = size;
  }
  if (!n || owner == OWN_IMPORTER) { /* nothing kvh can size, or not this process's: the driver decides */
    CUresult rc = add_free(c, node, deps, ndeps);
    r.result = KVH_RES_PASSTHROUGH;
    if (owner == OWN_IMPORTER) r.flags |= KVH_F_IMPORTER;
    emit(&r);
    return rc;
  }
  CUresult (*add_memset)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, const CUDA_MEMSET_NODE_PARAMS *, CUcontext);
  CUresult (*add_empty)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t);
  CUresult (*destroy_node)(CUgraphNode);
  *(void **)&add_memset = lookup("cuGraphAddMemsetNode");
  *(void **)&add_empty = lookup("cuGraphAddEmptyNode");
  *(void **)&destroy_node = lookup("cuGraphDestroyNode");
  const struct policy pol = policy_now();
  r.bytes = n;
  r.verify = KVH_VERIFY_OFF;
  if (pol.double_pass) r.flags |= KVH_F_DOUBLE_PASS;
  CUgraphNode added[2] = {NULL, NULL}, last = NULL;
  int nadded = 0;
  CUresult mrc = add_memset ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
  CUcontext ctx = (CUcontext)(uintptr_t)current_ctx();
  for (int pass = pol.double_pass ? 0 : 1; pass < 2 && mrc == CUDA_SUCCESS; pass++) {
    CUDA_MEMSET_NODE_PARAMS mp = {.dst = p, .pitch = n, .value = pass == 0 ? 0xA5 : 0, .elementSize = 1, .width = n, .height = 1};
    mrc = last ? add_memset(&added[nadded], g, &last, 1, &mp, ctx) : add_memset(&added[nadded], g, deps, ndeps, &mp, ctx);
    if (mrc == CUDA_SUCCESS) last = added[nadded++];
  }
  if (mrc != CUDA_SUCCESS) {
    for (int i = nadded - 1; i >= 0 && destroy_node; i--) destroy_node(added[i]);
    r.result = KVH_RES_ZEROIZE_FAILED;
    if (cfg.mode == MODE_ENFORCE && add_empty && add_empty(node, g, deps, ndeps) == CUDA_SUCCESS) {
      r.type = KVH_REC_QUARANTINE; /* the graph never frees it: never handed back unzeroized */
      emit(&r);
      return CUDA_SUCCESS;
    }
    CUresult rc = add_free(c, node, deps, ndeps);
    emit(&r);
    return rc;
  }
  CUresult rc = add_free(c, node, &last, 1);
  if (rc != CUDA_SUCCESS) { /* the driver refused the free: take the memsets out again */
    for (int i = nadded - 1; i >= 0 && destroy_node; i--) destroy_node(added[i]);
    return rc;
  }
  r.result = KVH_RES_OK;
  r.zeroed = n;
  emit(&r);
  return rc;
}

struct free_node_ctx {
  void *fn;
  CUgraph g;
  CUdeviceptr p;
  CUgraphNodeParams *params;
};

static CUresult call_add_free_node(void *c, CUgraphNode *node, const CUgraphNode *deps, size_t ndeps) {
  struct free_node_ctx *x = c;
  return ((cuGraphAddMemFreeNode_fn)x->fn)(node, x->g, deps, ndeps, x->p);
}

static CUresult call_add_node(void *c, CUgraphNode *node, const CUgraphNode *deps, size_t ndeps) {
  struct free_node_ctx *x = c;
  return ((cuGraphAddNode_fn)x->fn)(node, x->g, deps, ndeps, x->params);
}

EXPORT CUresult cuGraphAddMemFreeNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUdeviceptr p) {
  NEED_REAL(cuGraphAddMemFreeNode);
  struct free_node_ctx c = {(void *)real_cuGraphAddMemFreeNode, g, p, NULL};
  return graph_free(HOOK_cuGraphAddMemFreeNode, node, g, deps, ndeps, p, call_add_free_node, &c);
}

/* cuGraphAddNode (CUDA 12.2) adds any kind of node from one parameter
 * block: its memory alloc and free nodes are handled as the calls above. */
EXPORT CUresult cuGraphAddNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUgraphNodeParams *params) {
  NEED_REAL(cuGraphAddNode);
  if (params && params->type == CU_GRAPH_NODE_TYPE_MEM_FREE) {
    struct free_node_ctx c = {(void *)real_cuGraphAddNode, g, params->free.dptr, params};
    return graph_free(HOOK_cuGraphAddNode, node, g, deps, ndeps, params->free.dptr, call_add_node, &c);
  }
  if (params && params->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC) {
    CUresult gate_rc = refused();
    if (unlikely(gate_rc)) return gate_rc;
  }
  CUresult rc = real_cuGraphAddNode(node, g, deps, ndeps, params);
  if (rc == CUDA_SUCCESS && params && params->type == CU_GRAPH_NODE_TYPE_MEM_ALLOC)
    track_graph(HOOK_cuGraphAddNode, params->alloc.dptr, params->alloc.bytesize);
  return rc;
}

/* cuExternalMemoryGetMappedBuffer maps another API's memory (Vulkan, D3D,
 * NvSciBuf) as a device buffer, released with cuMemFree: its owner clears
 * it, and kvh must never write to it, table miss or not. */
EXPORT CUresult cuExternalMemoryGetMappedBuffer(CUdeviceptr *pdptr, CUexternalMemory ext, const CUDA_EXTERNAL_MEMORY_BUFFER_DESC *desc) {
  NEED_REAL(cuExternalMemoryGetMappedBuffer);
  CUresult rc = real_cuExternalMemoryGetMappedBuffer(pdptr, ext, desc);
  if (rc == CUDA_SUCCESS && pdptr) {
    import_add(*pdptr);
    track(HOOK_cuExternalMemoryGetMappedBuffer, *pdptr, 0, KVH_MEM_IPC_IMPORT, OWN_IMPORTER, NULL, 0);
  }
  return rc;
}

/* ---- graph launches ----------------------------------------------------------
 *
 * An alloc node that no free node of its graph frees leaves its allocation
 * live after a launch, until the application frees it (cuMemFree[Async],
 * hooked) or another graph's free node does. The next launch allocates it
 * again at the same address: libkvh tracks it again then, so that every
 * free of it is zeroized, not only the first. An executable instantiated
 * with CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH frees what the last
 * launch left live when it is launched again, with no call libkvh could put
 * a memset before but the launch itself: libkvh zeroizes it on the launch
 * stream before the launch — ordered, like the launch, behind the previous
 * launch of the executable, by an event recorded after it when the stream
 * changed — and attests it (verify off: nothing can read it back without
 * waiting for the stream).
 *
 * At instantiation libkvh walks the graph (cuGraphGetNodes and the node
 * queries, child graphs included) and keeps, per executable, the alloc nodes
 * its graph does not free and what its free nodes free of other graphs'
 * memory. A launch marks the first live and the second freed; a hooked free
 * (not a captured one: that frees nothing until its graph runs) marks its
 * address freed. Only memory marked live is written at an auto-free
 * relaunch: writing to graph memory that was freed would fault the context.
 * An executable whose graph cannot be walked is kept as opaque: each of its
 * launches may free anything, so it marks every graph allocation freed
 * (what an auto-free relaunch of it frees is then not zeroized, and its
 * instantiation says so in the trail). */
struct galloc {
  uint64_t p;
  size_t n;
  int live; /* a launch allocated it, and nothing freed it since */
};
struct gexec {
  CUgraphExec e;
  int auto_free, opaque;
  size_t nalloc, nfree;
  struct galloc *alloc; /* allocations the graph does not free */
  uint64_t *free;       /* other graphs' memory its free nodes free */
  CUevent ev;           /* auto-free: recorded after each launch (NULL: none) */
  CUstream last;        /* the stream of the last launch */
  int launched;
};
pthread_mutex_t graph_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gexec *gexecs; /* guarded by graph_mu */
static size_t ngexecs, gexecs_cap;
static atomic_int gexecs_any; /* lets launches and frees skip graph_mu when there are none */

static struct {
  CUresult (*nodes)(CUgraph, CUgraphNode *, size_t *);
  CUresult (*type)(CUgraphNode, int *);
  CUresult (*alloc)(CUgraphNode, CUDA_MEM_ALLOC_NODE_PARAMS *);
  CUresult (*freep)(CUgraphNode, CUdeviceptr *);
  CUresult (*child)(CUgraphNode, CUgraph *);
  CUresult (*ev_create)(CUevent *, unsigned int);
  CUresult (*ev_record)(CUevent, CUstream);
  CUresult (*ev_wait)(CUstream, CUevent, unsigned int);
  CUresult (*ev_destroy)(CUevent);
  CUresult (*ctx_sync)(void);
} gd; /* the driver calls the graph paths make, looked up once */
static pthread_once_t gd_once = PTHREAD_ONCE_INIT;

static void gd_init(void) {
  *(void **)&gd.nodes = lookup("cuGraphGetNodes");
  *(void **)&gd.type = lookup("cuGraphNodeGetType");
  *(void **)&gd.alloc = lookup("cuGraphMemAllocNodeGetParams");
  *(void **)&gd.freep = lookup("cuGraphMemFreeNodeGetParams");
  *(void **)&gd.child = lookup("cuGraphChildGraphNodeGetGraph");
  *(void **)&gd.ev_create = lookup("cuEventCreate");
  *(void **)&gd.ev_record = lookup("cuEventRecord");
  *(void **)&gd.ev_wait = lookup("cuStreamWaitEvent");
  *(void **)&gd.ev_destroy = lookup("cuEventDestroy_v2");
  *(void **)&gd.ctx_sync = lookup("cuCtxSynchronize");
}

/* grow doubles *a (of elements of size sz) when n reaches a power of two. */
static int grow(void **a, size_t n, size_t sz) {
  if (n && (n & (n - 1))) return 0;
  void *b = realloc(*a, (n ? n * 2 : 4) * sz);
  if (!b) return -1;
  *a = b;
  return 0;
}

/* walk lists g's alloc nodes and free nodes into x (child graphs to depth
 * 8); -1 when the driver cannot answer or memory runs out. */
static int walk(CUgraph g, struct gexec *x, int depth) {
  size_t n = 0;
  if (depth > 8 || gd.nodes(g, NULL, &n) != CUDA_SUCCESS) return -1;
  if (!n) return 0;
  CUgraphNode *nodes = calloc(n, sizeof *nodes);
  if (!nodes) return -1;
  int rc = gd.nodes(g, nodes, &n) == CUDA_SUCCESS ? 0 : -1;
  for (size_t i = 0; i < n && rc == 0; i++) {
    int t = -1;
    if (!nodes[i] || gd.type(nodes[i], &t) != CUDA_SUCCESS) {
      rc = -1;
    } else if (t == CU_GRAPH_NODE_TYPE_MEM_ALLOC) {
      CUDA_MEM_ALLOC_NODE_PARAMS ap;
      memset(&ap, 0, sizeof ap);
      rc = gd.alloc(nodes[i], &ap) == CUDA_SUCCESS && ap.dptr && grow((void **)&x->alloc, x->nalloc, sizeof *x->alloc) == 0 ? 0 : -1;
      if (rc == 0) x->alloc[x->nalloc++] = (struct galloc){ap.dptr, ap.bytesize, 0};
    } else if (t == CU_GRAPH_NODE_TYPE_MEM_FREE) {
      CUdeviceptr d = 0;
      rc = gd.freep(nodes[i], &d) == CUDA_SUCCESS && grow((void **)&x->free, x->nfree, sizeof *x->free) == 0 ? 0 : -1;
      if (rc == 0) x->free[x->nfree++] = d;
    } else if (t == CU_GRAPH_NODE_TYPE_GRAPH) {
      CUgraph c = NULL;
      rc = gd.child && gd.child(nodes[i], &c) == CUDA_SUCCESS && c ? walk(c, x, depth + 1) : -1;
    }
  }
  free(nodes);
  return rc;
}

/* graph_forget_locked takes executable e out (graph_mu held) and returns
 * its event, for the caller to destroy outside the lock. */
static CUevent graph_forget_locked(CUgraphExec e) {
  for (size_t i = 0; i < ngexecs; i++) {
    if (gexecs[i].e != e) continue;
    CUevent ev = gexecs[i].ev;
    free(gexecs[i].alloc);
    free(gexecs[i].free);
    gexecs[i] = gexecs[--ngexecs];
    atomic_store(&gexecs_any, ngexecs > 0);
    return ev;
  }
  return NULL;
}

/* instantiated lists executable e's graph memory. */
static void instantiated(enum hook_id fn, CUgraphExec e, CUgraph g, unsigned long long flags) {
  if (cfg.mode == MODE_OFF || !e || !g) return;
  pthread_once(&gd_once, gd_init);
  struct gexec x = {.e = e, .auto_free = (flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) != 0};
  int rc = gd.nodes && gd.type && gd.alloc && gd.freep ? walk(g, &x, 0) : -1;
  if (rc == 0) {
    /* What the graph allocates and frees itself is zeroized by the memset
     * node before its free node: keep the allocations it leaves live, and
     * the frees of memory it did not allocate. */
    size_t ka = 0, kf = 0;
    for (size_t i = 0; i < x.nalloc; i++) {
      int freed = 0;
      for (size_t j = 0; j < x.nfree && !freed; j++) freed = x.free[j] == x.alloc[i].p;
      if (!freed) x.alloc[ka++] = x.alloc[i];
    }
    for (size_t j = 0; j < x.nfree; j++) {
      int own = 0;
      for (size_t i = 0; i < x.nalloc && !own; i++) own = x.free[j] == x.alloc[i].p; /* (the full list) */
      if (!own) x.free[kf++] = x.free[j];
    }
    x.nalloc = ka, x.nfree = kf;
  } else {
    free(x.alloc);
    free(x.free);
    x = (struct gexec){.e = e, .auto_free = x.auto_free, .opaque = 1};
    struct kvh_record r = {0}; /* the trail says this executable's own memory is not watched */
    r.type = KVH_REC_FREE;
    r.fn = (uint16_t)fn;
    r.result = KVH_RES_ZEROIZE_FAILED;
    r.flags = KVH_F_ASYNC;
    r.mem_kind = KVH_MEM_ASYNC;
    emit(&r);
  }
  if (x.auto_free && x.nalloc && gd.ev_create && gd.ev_create(&x.ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) x.ev = NULL;
  int keep = x.opaque || x.nalloc || x.nfree;
  pthread_mutex_lock(&graph_mu);
  CUevent old = graph_forget_locked(e); /* a handle the driver reuses */
  if (keep && ngexecs == gexecs_cap) {
    size_t c = gexecs_cap ? gexecs_cap * 2 : 16;
    struct gexec *b = realloc(gexecs, c * sizeof *b);
    if (b) gexecs = b, gexecs_cap = c;
    else keep = 0; /* no memory: unwatched, as an opaque executable would be, but unmarked */
  }
  if (keep) {
    gexecs[ngexecs++] = x;
    atomic_store(&gexecs_any, 1);
  }
  pthread_mutex_unlock(&graph_mu);
  if (!keep) {
    free(x.alloc);
    free(x.free);
    if (x.ev && gd.ev_destroy) gd.ev_destroy(x.ev);
  }
  if (old && gd.ev_destroy) gd.ev_destroy(old);
}

/* graph_freed marks graph memory at p freed (the application's free of it
 * went through). */
void graph_freed(uint64_t p) {
  if (likely(!atomic_load_explicit(&gexecs_any, memory_order_relaxed))) return;
  pthread_mutex_lock(&graph_mu);
  for (size_t i = 0; i < ngexecs; i++)
    for (size_t j = 0; j < gexecs[i].nalloc; j++)
      if (gexecs[i].alloc[j].p == p) gexecs[i].alloc[j].live = 0;
  pthread_mutex_unlock(&graph_mu);
}

/* graph_mark records a launch of e on s: done, everything it allocates is
 * live and what its free nodes free is not (an opaque executable may free
 * anything); refused, what auto-free would have freed (was[].live) is live
 * still. */
static void graph_mark(CUgraphExec e, CUstream s, const struct galloc *was, size_t n, int done) {
  pthread_mutex_lock(&graph_mu);
  for (size_t i = 0; i < ngexecs; i++) {
    struct gexec *x = &gexecs[i];
    if (x->e != e) continue;
    if (done) x->last = s, x->launched = 1;
    for (size_t j = 0; j < x->nalloc; j++) {
      if (done) x->alloc[j].live = 1;
      for (size_t k = 0; !done && k < n; k++)
        if (was[k].p == x->alloc[j].p && was[k].live) x->alloc[j].live = 1;
    }
    for (size_t a = 0; done && (x->nfree || x->opaque) && a < ngexecs; a++)
      for (size_t j = 0; j < gexecs[a].nalloc; j++) {
        if (a == i) continue;
        int freed = x->opaque;
        for (size_t f = 0; f < x->nfree && !freed; f++) freed = gexecs[a].alloc[j].p == x->free[f];
        if (freed) gexecs[a].alloc[j].live = 0;
      }
    break;
  }
  pthread_mutex_unlock(&graph_mu);
}

typedef CUresult (*launch_fn)(CUgraphExec, CUstream);

static CUresult graph_launch(enum hook_id fn, launch_fn real_launch, CUgraphExec e, CUstream s) {
  if (likely(!atomic_load_explicit(&gexecs_any, memory_order_relaxed)) || cfg.mode == MODE_OFF) return real_launch(e, s);
  /* What this launch frees (auto-free) and then allocates: copied out, so
   * that no lock is held across the driver. */
  struct galloc small[32], *mine = small;
  size_t n = 0, live = 0;
  int auto_free = 0, found = 0, launched = 0;
  CUevent ev = NULL;
  CUstream last = NULL;
  pthread_mutex_lock(&graph_mu);
  for (size_t i = 0; i < ngexecs && !found; i++) {
    struct gexec *x = &gexecs[i];
    if (x->e != e) continue;
    found = 1;
    auto_free = x->auto_free, ev = x->ev, last = x->last, launched = x->launched;
    n = x->nalloc;
    if (n > 32 && !(mine = malloc(n * sizeof *mine))) mine = small, n = 32; /* (no memory: the first 32) */
    memcpy(mine, x->alloc, n * sizeof *mine);
    for (size_t j = 0; auto_free && j < n; j++) {
      live += mine[j].live;
      x->alloc[j].live = 0; /* freed by this launch, allocated again after it */
    }
  }
  pthread_mutex_unlock(&graph_mu);
  if (!found) return real_launch(e, s);
  if (live && launched && s != last) {
    /* The launch is ordered behind the previous one on another stream; so
     * must the memsets be. Without an event, wait for the device. */
    if (!ev || !gd.ev_wait || gd.ev_wait(s, ev, 0) != CUDA_SUCCESS)
      if (gd.ctx_sync) gd.ctx_sync();
  }
  const struct policy pol = policy_now();
  resolve_helpers();
  for (size_t j = 0; live && j < n; j++) {
    if (!mine[j].live) continue;
    struct kvh_record r = {0};
    r.type = KVH_REC_FREE;
    r.fn = (uint16_t)fn;
    r.ptr = mine[j].p;
    r.bytes = mine[j].n;
    r.mem_kind = KVH_MEM_ASYNC;
    r.flags = KVH_F_ASYNC | (pol.double_pass ? KVH_F_DOUBLE_PASS : 0);
    r.stream = (uint64_t)(uintptr_t)s;
    r.verify = KVH_VERIFY_OFF;
    CUresult mrc = p_memset_async ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
    for (int pass = pol.double_pass ? 0 : 1; pass < 2 && mrc == CUDA_SUCCESS; pass++)
      mrc = p_memset_async(mine[j].p, pass == 0 ? 0xA5 : 0, mine[j].n, s);
    r.result = mrc == CUDA_SUCCESS ? KVH_RES_OK : KVH_RES_ZEROIZE_FAILED;
    r.zeroed = mrc == CUDA_SUCCESS ? mine[j].n : 0;
    if (mrc != CUDA_SUCCESS && cfg.mode == MODE_ENFORCE) {
      /* Not launched: the launch would hand the memory back unzeroized.
       * It stays allocated, live and tracked; what was zeroized before it
       * is allocated again (its free was attested). */
      r.type = KVH_REC_QUARANTINE;
      emit(&r);
      for (size_t k = 0; k < j; k++)
        if (mine[k].live) track_graph(fn, mine[k].p, mine[k].n);
      graph_mark(e, s, mine, n, 0);
      if (mine != small) free(mine);
      return mrc;
    }
    struct stripe *st;
    struct slot *t = table_find(&ptrs, mine[j].p, &st);
    if (t) table_del(st, t); /* freed: tracked again when the launch allocates it */
    pthread_mutex_unlock(&st->mu);
    emit(&r);
  }
  CUresult rc = real_launch(e, s);
  if (rc == CUDA_SUCCESS && ev && gd.ev_record) gd.ev_record(ev, s);
  /* Allocated by this launch (or, refused, still allocated as before):
   * live, and tracked so that the application's free is zeroized. */
  for (size_t j = 0; j < n; j++) {
    if (rc != CUDA_SUCCESS && !(auto_free && mine[j].live)) continue;
    struct stripe *st;
    struct slot *t = table_find(&ptrs, mine[j].p, &st);
    if (t) t->graph = 1; /* (tracked by a captured cuMemAllocAsync, say): its free must mark it freed */
    pthread_mutex_unlock(&st->mu);
    if (!t) track_graph(fn, mine[j].p, mine[j].n);
  }
  graph_mark(e, s, mine, n, rc == CUDA_SUCCESS);
  if (mine != small) free(mine);
  return rc;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
  NEED_REAL(cuGraphLaunch);
  return graph_launch(HOOK_cuGraphLaunch, real_cuGraphLaunch, e, s);
}

/* (The memsets and the event go to the legacy stream when s is 0 here: it
 * waits for the per-thread default stream, so the order holds.) */
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) {
  NEED_REAL(cuGraphLaunch_ptsz);
  return graph_launch(HOOK_cuGraphLaunch_ptsz, real_cuGraphLaunch_ptsz, e, s);
}

EXPORT CUresult cuGraphInstantiate(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t logsz) {
  NEED_REAL(cuGraphInstantiate);
  CUresult rc = real_cuGraphInstantiate(e, g, err, log, logsz);
  if (rc == CUDA_SUCCESS && e) instantiated(HOOK_cuGraphInstantiate, *e, g, 0);
  return rc;
}

EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t logsz) {
  NEED_REAL(cuGraphInstantiate_v2);
  CUresult rc = real_cuGraphInstantiate_v2(e, g, err, log, logsz);
  if (rc == CUDA_SUCCESS && e) instantiated(HOOK_cuGraphInstantiate_v2, *e, g, 0);
  return rc;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
  NEED_REAL(cuGraphInstantiateWithFlags);
  CUresult rc = real_cuGraphInstantiateWithFlags(e, g, flags);
  if (rc == CUDA_SUCCESS && e) instantiated(HOOK_cuGraphInstantiateWithFlags, *e, g, flags);
  return rc;
}

EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *params) {
  NEED_REAL(cuGraphInstantiateWithParams);
  CUresult rc = real_cuGraphInstantiateWithParams(e, g, params);
  if (rc == CUDA_SUCCESS && e && params) instantiated(HOOK_cuGraphInstantiateWithParams, *e, g, params->flags);
  return rc;
}

EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *e, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS *params) {
  NEED_REAL(cuGraphInstantiateWithParams_ptsz);
  CUresult rc = real_cuGraphInstantiateWithParams_ptsz(e, g, params);
  if (rc == CUDA_SUCCESS && e && params) instantiated(HOOK_cuGraphInstantiateWithParams_ptsz, *e, g, params->flags);
  return rc;
}

/* cuGraphExecDestroy frees none of the executable's live allocations (they
 * stay valid until freed, by hooked calls): kvh forgets the executable. */
EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) {
  NEED_REAL(cuGraphExecDestroy);
  CUresult rc = real_cuGraphExecDestroy(e);
  if (rc == CUDA_SUCCESS && atomic_load(&gexecs_any)) {
    pthread_mutex_lock(&graph_mu);
    CUevent ev = graph_forget_locked(e);
    pthread_mutex_unlock(&graph_mu);
    if (ev && gd.ev_destroy) gd.ev_destroy(ev);
  }
  return rc;
}
