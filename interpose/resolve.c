/* resolve.c — the hook table, the real functions behind it, and the ways a
 * caller resolves an entry point by name: dlsym, cuGetProcAddress[_v2[_ptsz]]
 * and cudaGetDriverEntryPoint[ByVersion][_ptsz]. The real resolver runs
 * first; its answer is substituted by kvh's wrapper only on success. */
#include "kvh_internal.h"

#include <dlfcn.h>
#include <link.h>

/* hooks[id]: the name table, generated from hooks.def. */
const struct hook hooks[HOOK_COUNT] = {
#define KVH_HOOK(name, base, minver, ptsz, params, args) [HOOK_##name] = {#name, base, minver, ptsz, (void *)name},
#include "hooks.def"
#undef KVH_HOOK
};

/* real[id] is the driver's (or runtime's) entry point for hook id. */
_Atomic(void *) real[HOOK_COUNT];

/* Driver functions kvh calls itself; never hooked. */
CUresult (*p_memset)(CUdeviceptr, unsigned char, size_t);
CUresult (*p_memset_async)(CUdeviceptr, unsigned char, size_t, CUstream);
CUresult (*p_dtoh)(void *, CUdeviceptr, size_t);
CUresult (*p_stream_sync)(CUstream);
CUresult (*p_range)(CUdeviceptr *, size_t *, CUdeviceptr);

/* ---- resolving the real functions -------------------------------------- */

typedef void *(*dlsym_fn)(void *, const char *);
static _Atomic(dlsym_fn) real_dlsym_p;

NO_SANITIZE static dlsym_fn real_dlsym(void) {
  dlsym_fn f = atomic_load_explicit(&real_dlsym_p, memory_order_acquire);
  if (likely(f)) return f;
  f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (!f) f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  atomic_store_explicit(&real_dlsym_p, f, memory_order_release);
  return f;
}

static int is_wrapper(void *p);

/* in_object looks name up in the loaded object file and its dependencies
 * (its local scope), never returning one of kvh's own wrappers. */
static void *in_object(const char *file, const char *name) {
  dlsym_fn ds = real_dlsym();
  if (!ds || !file || !file[0]) return NULL;
  void *h = dlopen(file, RTLD_NOW | RTLD_NOLOAD);
  if (!h) return NULL;
  void *p = ds(h, name);
  dlclose(h);
  return p && !is_wrapper(p) ? p : NULL;
}

struct runtime_search {
  const char *name;
  void *found;
};

static int runtime_cb(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  struct runtime_search *q = arg;
  const char *base = info->dlpi_name ? strrchr(info->dlpi_name, '/') : NULL;
  base = base ? base + 1 : info->dlpi_name;
  if (!base || strncmp(base, "libcudart.so", 12) != 0) return 0;
  q->found = in_object(info->dlpi_name, q->name);
  return q->found != NULL;
}

/* any_runtime finds name in any loaded CUDA runtime (libcudart.so.11.0,
 * .12, ...), loaded globally or not. */
static void *any_runtime(const char *name) {
  struct runtime_search q = {name, NULL};
  dl_iterate_phdr(runtime_cb, &q);
  return q.found;
}

/* lookup finds a driver (or runtime) symbol: first in the global scope after
 * us, then in an already loaded libcuda.so.1 (a framework may have loaded it
 * locally), or for a runtime function in any loaded runtime. */
void *lookup(const char *name) {
  dlsym_fn ds = real_dlsym();
  if (!ds) return NULL;
  void *p = ds(RTLD_NEXT, name);
  if (!p && !strncmp(name, "cuda", 4)) return any_runtime(name);
  if (!p) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (h) {
      p = ds(h, name);
      dlclose(h);
    }
  }
  return p;
}

/* runtime_fn is the real runtime entry point id for a caller whose return
 * address is ret. A runtime in the global scope is found once and kept. A
 * runtime loaded RTLD_LOCAL (as Python extensions load it) is not there:
 * the caller's own object (dladdr of ret) and its dependencies are searched,
 * so the caller gets the runtime copy it links against, whatever its soname;
 * then any loaded runtime. Those answers are not kept: another caller may
 * use another copy. */
static void *runtime_fn(enum hook_id id, void *ret) {
  void *p = atomic_load_explicit(&real[id], memory_order_acquire);
  if (likely(p)) return p;
  dlsym_fn ds = real_dlsym();
  if (!ds) return NULL;
  p = ds(RTLD_NEXT, hooks[id].name);
  if (p && !is_wrapper(p)) {
    atomic_store_explicit(&real[id], p, memory_order_release);
    return p;
  }
  Dl_info info;
  p = ret && dladdr(ret, &info) ? in_object(info.dli_fname, hooks[id].name) : NULL;
  return p ? p : any_runtime(hooks[id].name);
}

#define NEED_RUNTIME(name)                                                                    \
  ensure_init();                                                                              \
  name##_fn real_##name = (name##_fn)runtime_fn(HOOK_##name, __builtin_return_address(0));  \
  if (unlikely(!real_##name)) return CUDA_ERROR_NOT_INITIALIZED

/* resolve_helpers looks up the driver functions kvh calls itself. */
void resolve_helpers(void) {
  if (p_memset && p_dtoh) return;
  *(void **)&p_memset = lookup("cuMemsetD8_v2");
  *(void **)&p_memset_async = lookup("cuMemsetD8Async");
  *(void **)&p_dtoh = lookup("cuMemcpyDtoH_v2");
  *(void **)&p_stream_sync = lookup("cuStreamSynchronize");
  *(void **)&p_range = lookup("cuMemGetAddressRange_v2");
}

/* ---- resolvers ------------------------------------------------------------- */

static int is_wrapper(void *p) {
  for (int i = 1; i < HOOK_COUNT; i++)
    if (hooks[i].wrapper == p) return 1;
  return 0;
}

/* substitute replaces *pfn, a real entry point a resolver handed out for
 * symbol, by kvh's wrapper for that same entry point: by address when kvh
 * already knows it; else by comparing it with each hooked entry point of that
 * base name (v1, v2, per-thread), looked up by its exported name, then with
 * every hooked entry point — so the answer is wrapped at every version and
 * flag the driver gives it, and never by a wrapper of another ABI. Only when those names cannot be looked up
 * does it fall back to name, version and stream semantics. Anything else is
 * left alone. */
static void substitute(const char *symbol, void **pfn, int version, unsigned long long flags) {
  void *got = *pfn;
  if (!got || is_wrapper(got)) return;
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (atomic_load_explicit(&real[i], memory_order_acquire) == got) {
      *pfn = hooks[i].wrapper;
      return;
    }
  }
  if (!symbol) return;
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (strcmp(hooks[i].base, symbol) != 0 || strncmp(hooks[i].name, "cuda", 4) == 0) continue;
    if (real_fn((enum hook_id)i) == got) {
      *pfn = hooks[i].wrapper;
      return;
    }
  }
  /* A name can resolve to an entry point exported under another name
   * (cuGraphInstantiate at 12000 is cuGraphInstantiateWithFlags): the same
   * address is the same function, whatever it was asked for by. */
  static _Atomic unsigned char absent[HOOK_COUNT]; /* the driver does not export it: not looked up again */
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (strncmp(hooks[i].name, "cuda", 4) == 0 || atomic_load_explicit(&absent[i], memory_order_relaxed)) continue;
    void *f = real_fn((enum hook_id)i);
    if (!f) atomic_store_explicit(&absent[i], 1, memory_order_relaxed);
    if (f == got) {
      *pfn = hooks[i].wrapper;
      return;
    }
  }
  int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  int best = 0;
  for (int i = 1; i < HOOK_COUNT; i++) {
    const struct hook *h = &hooks[i];
    if (strcmp(h->base, symbol) != 0 || h->ptsz != ptsz || (version && h->minver > version)) continue;
    if (!best || h->minver > hooks[best].minver) best = i;
  }
  if (!best) return;
  void *expected = NULL;
  atomic_compare_exchange_strong(&real[best], &expected, got);
  if (atomic_load(&real[best]) == got) *pfn = hooks[best].wrapper;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  NEED_REAL(cuGetProcAddress);
  CUresult rc = real_cuGetProcAddress(symbol, pfn, version, flags);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *status) {
  NEED_REAL(cuGetProcAddress_v2);
  CUresult rc = real_cuGetProcAddress_v2(symbol, pfn, version, flags, status);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cuGetProcAddress_v2_ptsz(const char *symbol, void **pfn, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *status) {
  NEED_REAL(cuGetProcAddress_v2_ptsz);
  CUresult rc = real_cuGetProcAddress_v2_ptsz(symbol, pfn, version, flags, status);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_RUNTIME(cudaGetDriverEntryPoint);
  CUresult rc = real_cudaGetDriverEntryPoint(symbol, fn, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, 0, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPoint_ptsz(const char *symbol, void **fn, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_RUNTIME(cudaGetDriverEntryPoint_ptsz);
  CUresult rc = real_cudaGetDriverEntryPoint_ptsz(symbol, fn, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, 0, flags | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_RUNTIME(cudaGetDriverEntryPointByVersion);
  CUresult rc = real_cudaGetDriverEntryPointByVersion(symbol, fn, version, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, (int)version, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPointByVersion_ptsz(const char *symbol, void **fn, unsigned int version, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_RUNTIME(cudaGetDriverEntryPointByVersion_ptsz);
  CUresult rc = real_cudaGetDriverEntryPointByVersion_ptsz(symbol, fn, version, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, (int)version, flags | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return rc;
}

/* dlsym: callers that dlopen libcuda and look entry points up by name get
 * the wrappers. Unversioned, so it answers references to both
 * dlsym@GLIBC_2.2.5 and dlsym@GLIBC_2.34. */
NO_SANITIZE EXPORT void *dlsym(void *handle, const char *name) {
  dlsym_fn ds = real_dlsym();
  if (unlikely(!ds)) return NULL;
  void *p = ds(handle, name);
  if (!p || name[0] != 'c' || name[1] != 'u') return p; /* p != NULL: name was valid */
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (strcmp(hooks[i].name, name) == 0) {
      void *expected = NULL;
      if (p != hooks[i].wrapper) atomic_compare_exchange_strong(&real[i], &expected, p);
      return hooks[i].wrapper;
    }
  }
  return p;
}
