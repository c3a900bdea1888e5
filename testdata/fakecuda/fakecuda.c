/* A fake libcuda.so.1 for tests: the driver API backed by host memory.
 *
 * Device memory lives in one shared anonymous arena (so a forked child sees
 * the same "device", as IPC importers need). Freed blocks go on a LIFO list
 * and the next allocation of a size that fits gets the most recently freed
 * block back, with its bytes: residue is real when nothing zeroizes.
 *
 * Fault switches (read at each call, for tests):
 *   FAKECUDA_MEMSET_FAIL=1        cuMemsetD8* returns CUDA_ERROR_INVALID_VALUE
 *   FAKECUDA_MEMSET_PARTIAL=N     cuMemsetD8* leaves the last N bytes untouched and reports success
 *   FAKECUDA_COPYBACK_LIE=1       cuMemcpyDtoH* returns zeros whatever the memory holds
 *   FAKECUDA_FREE_FAIL=1          cuMemFree_v2 fails (and frees nothing)
 *   FAKECUDA_KERNEL=1             cuModuleLoadData succeeds and cuLaunchKernel runs libkvh's
 *                                 kvh_nonzero zero check on the host (else modules fail to load)
 * Size, read once:
 *   FAKECUDA_ARENA_MB=N           device memory in all (default 256; a million live 256-byte blocks need 512)
 *   FAKECUDA_ARENA_FILE=PATH      device memory is this file, shared by the processes that name it: the next
 *                                 process's first allocations get the blocks the last one freed, with their bytes
 *                                 (the end-to-end test's tenants, in separate pods, share one "GPU" so)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kvh_cuda.h"

#define EXPORT __attribute__((visibility("default")))
static size_t ARENA = 256u << 20;
#define MAXB 65536

/* Blocks are carved from the arena and never merged. Free blocks wait on a
 * LIFO stack per (size class, host) so the most recently freed block of a
 * size is the next one handed out; live blocks are found by address in a
 * hash table. Both are O(1), so benchmarks measure kvh, not the fake. */
struct block { CUdeviceptr p; size_t size; int host; void *ctx; }; /* ctx: the context it was allocated in */
#define CLASSES 64
#define HASH (1u << 21)
struct klass { size_t size; int host; int n, cap; struct block *stack; };
static struct klass classes[CLASSES];
static int nclasses;
static struct block live[HASH]; /* p == 0: empty; size == 0 with p: tombstone */
static unsigned char *arena;
static size_t top;
/* The v1 calls (32-bit CUdeviceptr_v1) allocate from a low arena below 4 GiB,
 * so their pointers fit; host == 2 marks its blocks. */
#define LOW_ARENA (64u << 20)
static unsigned char *low;
static size_t ltop;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long next_handle = 1;
/* Contexts: one current context a thread (the primary one by default). */
static struct { int id; } primary_ctx;
static __thread CUcontext cur_ctx;
static void *ctx_now(void) { return cur_ctx ? (void *)cur_ctx : (void *)&primary_ctx; }

static int env_int(const char *k) { const char *v = getenv(k); return v ? atoi(v) : 0; }

/* A forked child carves new blocks from the arena's upper half: its
 * bookkeeping is its own from the fork on, and blocks it allocates must not
 * collide with the parent's later ones in the memory they share. */
static void fork_child(void) {
  if (top < ARENA / 2) top = ARENA / 2;
  pthread_mutex_unlock(&mu);
}
/* mu is held across fork, so a child forked while another thread is inside
 * the driver does not inherit it locked (and hang on its first call). */
static void fork_prepare(void) { pthread_mutex_lock(&mu); }
static void fork_parent(void) { pthread_mutex_unlock(&mu); }

static void init(void) {
  static int atfork;
  if (!atfork) atfork = 1, pthread_atfork(fork_prepare, fork_parent, fork_child);
  if (!arena) {
    size_t mb = (size_t)env_int("FAKECUDA_ARENA_MB");
    if (mb >= 1 && mb <= 4096) ARENA = mb << 20;
    const char *file = getenv("FAKECUDA_ARENA_FILE");
    if (file && *file) { /* one "device" for several processes, one after another */
      int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0 || ftruncate(fd, (off_t)ARENA) != 0) abort();
      arena = mmap((void *)0x7e0000000000ULL, ARENA, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
      close(fd);
    } else {
      arena = mmap((void *)0x7e0000000000ULL, ARENA, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    }
    if (arena == MAP_FAILED) abort();
  }
  if (!low) {
    low = mmap((void *)0x30000000ULL, LOW_ARENA, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (low == MAP_FAILED) low = NULL, ltop = LOW_ARENA; /* no low memory: v1 allocations fail */
  }
}

static size_t round_up(size_t n) { return (n + 255) & ~(size_t)255; }

static struct klass *klass_of(size_t n, int host) {
  for (int i = 0; i < nclasses; i++)
    if (classes[i].size == n && classes[i].host == host) return &classes[i];
  if (nclasses == CLASSES) return NULL;
  classes[nclasses] = (struct klass){n, host, 0, 0, NULL};
  return &classes[nclasses++];
}

/* hslot keeps neighbours together: blocks are 256-byte aligned and mostly
 * carved one after another, so consecutive blocks take consecutive slots and
 * a client churning a few thousand buffers touches a few pages of live[], not
 * one page a buffer (the benchmarks' clients spent a fifth of their time
 * there). Blocks 512 MiB apart share a home slot; linear probing copes. */
static unsigned hslot(CUdeviceptr p) { return (unsigned)(p >> 8) & (HASH - 1); }

static int live_put(struct block b) {
  for (unsigned i = hslot(b.p), k = 0; k < HASH; i = (i + 1) & (HASH - 1), k++)
    if (live[i].p == 0 || live[i].size == 0) { live[i] = b; return 1; }
  return 0;
}

static int live_take(CUdeviceptr p, struct block *out) {
  for (unsigned i = hslot(p), step = 0; step < HASH; i = (i + 1) & (HASH - 1), step++) {
    if (live[i].p == 0) return 0;
    if (live[i].p == p && live[i].size) { *out = live[i]; live[i].size = 0; return 1; }
  }
  return 0; /* a full table of live blocks and tombstones: not there */
}

/* take returns a block of n bytes: the most recently freed of that size, or new space. */
static CUdeviceptr take(size_t n, int host) {
  if (n == 0) n = 1;
  n = round_up(n);
  pthread_mutex_lock(&mu);
  init();
  struct klass *k = klass_of(n, host);
  struct block b = {0, n, host, NULL};
  if (k && k->n) b = k->stack[--k->n];
  else if (host == 2) { if (low && ltop + n <= LOW_ARENA) { b.p = (CUdeviceptr)(uintptr_t)(low + ltop); ltop += n; } }
  else if (top + n <= ARENA) { b.p = (CUdeviceptr)(uintptr_t)(arena + top); top += n; }
  b.ctx = ctx_now();
  if (b.p && !live_put(b)) b.p = 0; /* (leaks the block: the table is full) */
  pthread_mutex_unlock(&mu);
  return b.p;
}

/* push_free puts a block on top of its size's stack (mu held). */
static void push_free(struct block b) {
  struct klass *k = klass_of(b.size, b.host);
  if (k && k->n == k->cap) {
    k->cap = k->cap ? 2 * k->cap : 64;
    k->stack = realloc(k->stack, (size_t)k->cap * sizeof *k->stack);
  }
  if (k) k->stack[k->n++] = b;
}

/* give puts a live block on top of its size's stack. */
static CUresult give(CUdeviceptr p) {
  pthread_mutex_lock(&mu);
  struct block b;
  CUresult r = CUDA_ERROR_INVALID_VALUE;
  if (live_take(p, &b)) {
    if (b.host == 4) live_put(b); /* an IPC import: cuMemFree refuses it (cuIpcCloseMemHandle unmaps it) */
    else if (b.host != 5) push_free(b); /* a pool import is only unmapped here: the exporter owns it */
    if (b.host != 4) r = CUDA_SUCCESS;
  }
  pthread_mutex_unlock(&mu);
  return r;
}

/* free_ctx frees every live block of context c, as the real driver does when
 * the context goes: bytes and all, for the next allocation to see. */
static void free_ctx(void *c) {
  pthread_mutex_lock(&mu);
  for (unsigned i = 0; i < HASH; i++) {
    if (live[i].p && live[i].size && live[i].ctx == c) {
      push_free(live[i]);
      live[i].size = 0;
    }
  }
  pthread_mutex_unlock(&mu);
}

/* Stream capture (graphs section below): while a stream captures, the
 * stream-ordered calls on it become graph nodes, and a synchronous call that
 * would wait for the captured work fails and invalidates the capture, as
 * the real driver does in the default (global) capture mode. */
static CUstream cap_stream;
static int capturing(CUstream s) { return cap_stream && s == cap_stream; }
static CUresult capture_unsupported(void);
static CUresult capture_alloc(CUdeviceptr *d, size_t n);
static CUresult capture_free(CUdeviceptr d);
static CUresult capture_memset(CUdeviceptr d, unsigned char v, size_t n);

EXPORT CUresult cuInit(unsigned int f) { (void)f; pthread_mutex_lock(&mu); init(); pthread_mutex_unlock(&mu); return CUDA_SUCCESS; }
EXPORT CUresult cuDriverGetVersion(int *v) { *v = 12040; return CUDA_SUCCESS; }
EXPORT CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }
EXPORT CUresult cuStreamSynchronize(CUstream s) { return capturing(s) ? capture_unsupported() : CUDA_SUCCESS; }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { return capturing(s) ? capture_unsupported() : CUDA_SUCCESS; }

/* dev_alloc is every device allocation's body. The exported calls use it
 * rather than each other: a call through an exported name would reach an
 * interposer's wrapper again (NVIDIA's driver makes no such calls). */
static CUresult dev_alloc(CUdeviceptr *d, size_t n) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr p = take(n, 0);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  *d = p;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *d, size_t n) { return dev_alloc(d, n); }
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *d, size_t n, unsigned int f) { (void)f; return dev_alloc(d, n); }
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *d, size_t *pitch, size_t w, size_t h, unsigned int e) {
  (void)e;
  size_t pw = round_up(w);
  CUresult r = dev_alloc(d, pw * h);
  if (r == CUDA_SUCCESS) *pitch = pw;
  return r;
}
/* NULL frees fail as an initialised real driver's do (CUDA_ERROR_INVALID_VALUE;
 * before cuInit it answers CUDA_ERROR_NOT_INITIALIZED): kvh must hand back
 * the driver's answer, not its own. */
EXPORT CUresult cuMemFree_v2(CUdeviceptr d) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  if (env_int("FAKECUDA_FREE_FAIL")) return CUDA_ERROR_INVALID_VALUE;
  return give(d);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *d, size_t n, CUstream s) { return capturing(s) ? capture_alloc(d, n) : dev_alloc(d, n); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *d, size_t n, CUstream s) { return capturing(s) ? capture_alloc(d, n) : dev_alloc(d, n); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *d, size_t n, CUmemoryPool p, CUstream s) { (void)p; (void)s; return dev_alloc(d, n); }
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *d, size_t n, CUmemoryPool p, CUstream s) { (void)p; (void)s; return dev_alloc(d, n); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr d, CUstream s) { return !d ? CUDA_ERROR_INVALID_VALUE : capturing(s) ? capture_free(d) : give(d); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr d, CUstream s) { return !d ? CUDA_ERROR_INVALID_VALUE : capturing(s) ? capture_free(d) : give(d); }
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool p, size_t keep) { (void)p; (void)keep; return CUDA_SUCCESS; }
EXPORT CUresult cuMemPoolDestroy(CUmemoryPool p) { (void)p; return CUDA_SUCCESS; }

static int block_live(CUdeviceptr p);
static int freed_writes; /* memsets of graph memory that was not allocated (a real GPU faults the context) */
EXPORT int fakecuda_freed_writes(void) { return freed_writes; }
static CUresult memset8(CUdeviceptr d, unsigned char v, size_t n) {
  if (!d || env_int("FAKECUDA_MEMSET_FAIL")) return CUDA_ERROR_INVALID_VALUE;
  if (cap_stream) return capture_unsupported(); /* a synchronous call during a global-mode capture */
  if (env_int("FAKECUDA_FAULT_FREED")) {
    pthread_mutex_lock(&mu);
    int l = block_live(d);
    pthread_mutex_unlock(&mu);
    if (!l) {
      freed_writes++;
      return (CUresult)700; /* CUDA_ERROR_ILLEGAL_ADDRESS */
    }
  }
  size_t leave = (size_t)env_int("FAKECUDA_MEMSET_PARTIAL");
  memset((void *)(uintptr_t)d, v, n > leave ? n - leave : 0);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset8(d, v, n); }
EXPORT CUresult cuMemsetD8_v2_ptds(CUdeviceptr d, unsigned char v, size_t n) { return memset8(d, v, n); }
static CUresult memset8_async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
  if (!capturing(s)) {
    CUstream keep = cap_stream;
    cap_stream = NULL; /* not captured: runs now (another stream's work is not the capture's) */
    CUresult r = memset8(d, v, n);
    cap_stream = keep;
    return r;
  }
  if (!d || env_int("FAKECUDA_MEMSET_FAIL")) return CUDA_ERROR_INVALID_VALUE;
  return capture_memset(d, v, n);
}
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset8_async(d, v, n, s); }
EXPORT CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream s) { return memset8_async(d, v, n, s); }

static CUresult dtoh(void *h, CUdeviceptr d, size_t n) {
  if (!d || !h) return CUDA_ERROR_INVALID_VALUE;
  if (cap_stream) return capture_unsupported(); /* a synchronous copy during a global-mode capture */
  if (env_int("FAKECUDA_COPYBACK_LIE")) memset(h, 0, n);
  else memcpy(h, (void *)(uintptr_t)d, n);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoH_v2(void *h, CUdeviceptr d, size_t n) { return dtoh(h, d, n); }
EXPORT CUresult cuMemcpyDtoH_v2_ptds(void *h, CUdeviceptr d, size_t n) { return dtoh(h, d, n); }
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void *h, size_t n) { memcpy((void *)(uintptr_t)d, h, n); return CUDA_SUCCESS; }
EXPORT CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr d, const void *h, size_t n) { memcpy((void *)(uintptr_t)d, h, n); return CUDA_SUCCESS; }

/* cuMemGetAddressRange_v2: the base and size of the live allocation that
 * starts at d (the real driver also answers for interior pointers). */
EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr d) {
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_NOT_FOUND;
  for (unsigned i = hslot(d), k = 0; d && k < HASH; i = (i + 1) & (HASH - 1), k++) {
    if (live[i].p == 0) break;
    if (live[i].p == d && live[i].size && live[i].host != 1) {
      if (base) *base = d;
      if (size) *size = live[i].size;
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

/* Pinned host memory comes from the same arena (host=1 blocks). */
static CUresult host_alloc(void **pp, size_t n); /* (below; as dev_alloc) */
EXPORT CUresult cuMemHostAlloc(void **pp, size_t n, unsigned int f) { (void)f; return host_alloc(pp, n); }
EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t n) { return host_alloc(pp, n); }
EXPORT CUresult cuMemFreeHost(void *p) { return p ? give((CUdeviceptr)(uintptr_t)p) : CUDA_ERROR_INVALID_VALUE; }
EXPORT CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned int f) { (void)p; (void)n; (void)f; return CUDA_SUCCESS; }
EXPORT CUresult cuMemHostUnregister(void *p) { return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

/* VMM: a physical allocation is a memfd; cuMemAddressReserve reserves
 * PROT_NONE address space and cuMemMap maps the memfd there. As on the real
 * driver, physical memory is freed only when its handle is released and its
 * last mapping is gone; freed memfds are reused LIFO by the next cuMemCreate
 * that fits, contents and all, so a new mapping shows the previous owner's
 * bytes when nothing zeroizes. cuMemUnmap must cover whole mappings. */
struct phys { unsigned long long h; int fd; size_t size; int used, maps; }; /* used: the handle is live */
static struct phys phys[4096];
static int nphys;
struct fmap { CUdeviceptr va; size_t n; unsigned long long h; };
static struct fmap fmaps[4096];
static int nfmaps;

static struct phys *by_handle(unsigned long long h) {
  for (int i = 0; i < nphys; i++) if (phys[i].used && phys[i].h == h) return &phys[i];
  return NULL;
}
/* maybe_free moves a physical allocation nothing holds any more to the top of
 * the reuse stack (mu held). */
static void maybe_free(int i) {
  if (phys[i].used || phys[i].maps) return;
  struct phys p = phys[i];
  memmove(&phys[i], &phys[i + 1], (size_t)(nphys - i - 1) * sizeof p);
  phys[nphys - 1] = p;
}
EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long f) {
  (void)prop; (void)f;
  if (!h || n == 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  unsigned long long id = next_handle++;
  for (int i = nphys - 1; i >= 0; i--) {
    if (!phys[i].used && !phys[i].maps && phys[i].size >= n) {
      struct phys p = phys[i];
      memmove(&phys[i], &phys[i + 1], (size_t)(nphys - i - 1) * sizeof p);
      p.used = 1;
      p.h = id;
      phys[nphys - 1] = p;
      pthread_mutex_unlock(&mu);
      *h = id;
      return CUDA_SUCCESS;
    }
  }
  int fd = nphys < 4096 ? memfd_create("fakecuda-vmm", MFD_CLOEXEC) : -1;
  if (fd < 0 || ftruncate(fd, (off_t)n) != 0) {
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&mu);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  phys[nphys++] = (struct phys){ id, fd, n, 1, 0 };
  pthread_mutex_unlock(&mu);
  *h = id;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < nphys; i++) {
    if (phys[i].used && phys[i].h == h) {
      phys[i].used = 0;
      maybe_free(i);
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}
EXPORT CUresult cuMemAddressReserve(CUdeviceptr *p, size_t n, size_t a, CUdeviceptr addr, unsigned long long f) {
  (void)a; (void)addr; (void)f;
  void *m = mmap(NULL, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  *p = (CUdeviceptr)(uintptr_t)m;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAddressFree(CUdeviceptr p, size_t n) { return munmap((void *)(uintptr_t)p, n) == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t n, size_t off, CUmemGenericAllocationHandle h, unsigned long long f) {
  (void)f;
  pthread_mutex_lock(&mu);
  struct phys *p = by_handle(h);
  if (!p || !ptr || !n || off + n > p->size || nfmaps == 4096) {
    pthread_mutex_unlock(&mu);
    return CUDA_ERROR_INVALID_VALUE;
  }
  void *m = mmap((void *)(uintptr_t)ptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, p->fd, (off_t)off);
  if (m != MAP_FAILED) {
    p->maps++;
    fmaps[nfmaps++] = (struct fmap){ptr, n, h};
  }
  pthread_mutex_unlock(&mu);
  return m == MAP_FAILED ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}
EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t n) {
  if (!ptr || !n) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nfmaps; i++) { /* a sub-range of a mapping is an error */
    struct fmap *x = &fmaps[i];
    if (x->va < ptr + n && ptr < x->va + x->n && (x->va < ptr || x->va + x->n > ptr + n)) {
      pthread_mutex_unlock(&mu);
      return CUDA_ERROR_INVALID_VALUE;
    }
  }
  void *m = mmap((void *)(uintptr_t)ptr, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    pthread_mutex_unlock(&mu);
    return CUDA_ERROR_INVALID_VALUE;
  }
  for (int i = 0; i < nfmaps;) {
    if (fmaps[i].va >= ptr && fmaps[i].va < ptr + n) {
      for (int j = 0; j < nphys; j++) {
        if (phys[j].h == fmaps[i].h && phys[j].maps) {
          phys[j].maps--;
          maybe_free(j);
          break;
        }
      }
      fmaps[i] = fmaps[--nfmaps];
    } else {
      i++;
    }
  }
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t n, const void *desc, size_t count) { (void)ptr; (void)n; (void)desc; (void)count; return CUDA_SUCCESS; }
EXPORT CUresult cuMemExportToShareableHandle(void *sh, CUmemGenericAllocationHandle h, CUmemAllocationHandleType t, unsigned long long f) {
  (void)t; (void)f;
  memcpy(sh, &h, sizeof h);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *os, CUmemAllocationHandleType t) {
  (void)t;
  memcpy(h, &os, sizeof *h);
  return CUDA_SUCCESS;
}

/* IPC and pool exports: the handle carries the address and the size; the
 * arena is shared across fork. An importer that does not have the block
 * live already gets it as an import (host class 4 for IPC, 5 for a pool
 * import): cuMemGetAddressRange answers for it, as the real driver does for
 * mapped imports; cuIpcCloseMemHandle unmaps an IPC import, cuMemFree
 * refuses one; cuMemFree[Async] of a pool import unmaps it. Neither ever
 * reaches this process's free lists: the exporter owns the memory. */
static size_t live_size(CUdeviceptr p) {
  size_t n = 0;
  pthread_mutex_lock(&mu);
  for (unsigned i = hslot(p), k = 0; p && k < HASH; i = (i + 1) & (HASH - 1), k++) {
    if (live[i].p == 0) break;
    if (live[i].p == p && live[i].size) { n = live[i].size; break; }
  }
  pthread_mutex_unlock(&mu);
  return n;
}
static void export_to(unsigned char *out, CUdeviceptr p) {
  size_t n = live_size(p);
  memset(out, 0, 64);
  memcpy(out, &p, sizeof p);
  memcpy(out + 8, &n, sizeof n);
}
static CUresult import_from(CUdeviceptr *out, const unsigned char *in, int host) {
  CUdeviceptr p;
  size_t n;
  memcpy(&p, in, sizeof p);
  memcpy(&n, in + 8, sizeof n);
  if (!out || !p) return CUDA_ERROR_INVALID_VALUE;
  if (n && !live_size(p)) {
    pthread_mutex_lock(&mu);
    live_put((struct block){p, n, host, ctx_now()});
    pthread_mutex_unlock(&mu);
  }
  *out = p;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) {
  export_to((unsigned char *)h->reserved, p);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned int f) {
  (void)f;
  return import_from(p, (const unsigned char *)h.reserved, 4);
}
EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  struct block b;
  if (live_take(p, &b) && b.host != 4) live_put(b); /* not an import here (a forked test's inherited block): left alone */
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolExportPointer(CUmemPoolPtrExportData *d, CUdeviceptr p) {
  if (!d || !p) return CUDA_ERROR_INVALID_VALUE;
  export_to(d->reserved, p);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolImportPointer(CUdeviceptr *p, CUmemoryPool pool, CUmemPoolPtrExportData *d) {
  (void)pool;
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  return import_from(p, d->reserved, 5);
}

/* The v1 calls use these, not the exported v2 functions: a call between
 * exported functions goes through the PLT, where libkvh would see it twice. */
static CUresult host_alloc(void **pp, size_t n) {
  if (!pp) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr p = take(n, 1);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  *pp = (void *)(uintptr_t)p;
  return CUDA_SUCCESS;
}
static CUresult ipc_open(CUdeviceptr *p, CUipcMemHandle h) { return import_from(p, (const unsigned char *)h.reserved, 4); }
static CUresult range(CUdeviceptr *base, size_t *size, CUdeviceptr d) {
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_NOT_FOUND;
  for (unsigned i = hslot(d), k = 0; d && k < HASH; i = (i + 1) & (HASH - 1), k++) {
    if (live[i].p == 0) break;
    if (live[i].p == d && live[i].size && live[i].host != 1) {
      *base = d;
      *size = live[i].size;
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  return r;
}

/* The v1 entry points (the pre-3.2 ABI: 32-bit device pointers and sizes, as
 * cuda.h's PFN_..._v2000), which the real driver still exports and hands out
 * at old versions. Device memory comes from the low arena. */
EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *d, unsigned int n) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr p = take(n, 2);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  *d = (CUdeviceptr_v1)p;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *d, unsigned int *pitch, unsigned int w, unsigned int h, unsigned int e) {
  (void)e;
  if (!d || !pitch) return CUDA_ERROR_INVALID_VALUE;
  unsigned int pw = (unsigned int)round_up(w);
  CUdeviceptr p = take((size_t)pw * h, 2);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  *d = (CUdeviceptr_v1)p;
  *pitch = pw;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemFree(CUdeviceptr_v1 d) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  if (env_int("FAKECUDA_FREE_FAIL")) return CUDA_ERROR_INVALID_VALUE;
  return give(d);
}
EXPORT CUresult cuMemAllocHost(void **pp, unsigned int n) { return host_alloc(pp, n); }
EXPORT CUresult cuMemHostRegister(void *p, size_t n, unsigned int f) { (void)p; (void)n; (void)f; return CUDA_SUCCESS; }
EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned int f) { (void)f; return ipc_open(p, h); }
EXPORT CUresult cuMemsetD8(CUdeviceptr_v1 d, unsigned char v, unsigned int n) { return memset8(d, v, n); }
EXPORT CUresult cuMemcpyDtoH(void *h, CUdeviceptr_v1 d, unsigned int n) { return dtoh(h, d, n); }
EXPORT CUresult cuMemcpyHtoD(CUdeviceptr_v1 d, const void *h, unsigned int n) { memcpy((void *)(uintptr_t)d, h, n); return CUDA_SUCCESS; }
EXPORT CUresult cuMemGetAddressRange(CUdeviceptr_v1 *base, unsigned int *size, CUdeviceptr_v1 d) {
  CUdeviceptr b;
  size_t n;
  CUresult r = range(&b, &n, d);
  if (r == CUDA_SUCCESS && (b > 0xffffffffULL || n > 0xffffffffULL)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    if (base) *base = (CUdeviceptr_v1)b;
    if (size) *size = (unsigned int)n;
  }
  return r;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *c) {
  if (!c) return CUDA_ERROR_INVALID_VALUE;
  *c = (CUcontext)ctx_now();
  return CUDA_SUCCESS;
}
/* Created contexts are slots of ctxs; destroying one frees its memory. The
 * primary context is reference counted: its last release, or a reset, frees
 * its memory. A thread's context stack is a few deep. */
static struct { int live, refs; } ctxs[64]; /* refs: the usage count cuCtxAttach/cuCtxDetach keep */
static int primary_refs;
static __thread CUcontext ctx_stack[8];
static __thread int ctx_depth;
EXPORT CUresult cuCtxCreate_v2(CUcontext *pc, unsigned int flags, CUdevice dev) {
  (void)flags; (void)dev;
  if (!pc) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  int i = 0;
  while (i < 64 && ctxs[i].live) i++;
  if (i < 64) ctxs[i].live = 1, ctxs[i].refs = 1;
  pthread_mutex_unlock(&mu);
  if (i == 64) return CUDA_ERROR_OUT_OF_MEMORY;
  *pc = cur_ctx = (CUcontext)(void *)&ctxs[i];
  return CUDA_SUCCESS;
}
static int ctx_index(CUcontext c) {
  int i = (int)((uintptr_t)c - (uintptr_t)ctxs) / (int)sizeof ctxs[0];
  if ((uintptr_t)c < (uintptr_t)ctxs || i >= 64 || (void *)&ctxs[i] != (void *)c || !ctxs[i].live) return -1;
  return i;
}
/* The pre-4.0 usage count: cuCtxAttach adds one to the current (created)
 * context's, cuCtxDetach takes one off and destroys the context, memory and
 * all, when it reaches 0. */
EXPORT CUresult cuCtxAttach(CUcontext *pc, unsigned int flags) {
  int i = ctx_index(cur_ctx);
  if (!pc || flags || i < 0) return CUDA_ERROR_INVALID_VALUE;
  __atomic_add_fetch(&ctxs[i].refs, 1, __ATOMIC_SEQ_CST);
  *pc = cur_ctx;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxDetach(CUcontext c) {
  int i = ctx_index(c);
  if (i < 0) return CUDA_ERROR_INVALID_VALUE;
  if (__atomic_sub_fetch(&ctxs[i].refs, 1, __ATOMIC_SEQ_CST) > 0) return CUDA_SUCCESS;
  free_ctx(c);
  ctxs[i].live = 0;
  if (cur_ctx == c) cur_ctx = NULL;
  return CUDA_SUCCESS;
}
static CUresult ctx_destroy(CUcontext c) {
  int i = (int)((uintptr_t)c - (uintptr_t)ctxs) / (int)sizeof ctxs[0];
  if ((uintptr_t)c < (uintptr_t)ctxs || i >= 64 || (void *)&ctxs[i] != (void *)c || !ctxs[i].live) return CUDA_ERROR_INVALID_VALUE;
  free_ctx(c);
  ctxs[i].live = 0;
  if (cur_ctx == c) cur_ctx = NULL;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxDestroy(CUcontext c) { return ctx_destroy(c); }
EXPORT CUresult cuCtxDestroy_v2(CUcontext c) { return ctx_destroy(c); }
EXPORT CUresult cuCtxPushCurrent_v2(CUcontext c) {
  if (ctx_depth == 8) return CUDA_ERROR_INVALID_VALUE;
  ctx_stack[ctx_depth++] = cur_ctx;
  cur_ctx = c;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *pc) {
  if (!ctx_depth) return CUDA_ERROR_INVALID_VALUE;
  if (pc) *pc = (CUcontext)ctx_now();
  cur_ctx = ctx_stack[--ctx_depth];
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pc, CUdevice dev) {
  if (!pc || dev != 0) return CUDA_ERROR_INVALID_VALUE;
  __atomic_add_fetch(&primary_refs, 1, __ATOMIC_SEQ_CST);
  *pc = (CUcontext)(void *)&primary_ctx;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active) {
  if (dev != 0 || !flags || !active) return CUDA_ERROR_INVALID_VALUE;
  *flags = 0;
  *active = __atomic_load_n(&primary_refs, __ATOMIC_SEQ_CST) > 0;
  return CUDA_SUCCESS;
}
static CUresult primary_release(CUdevice dev) {
  if (dev != 0 || __atomic_load_n(&primary_refs, __ATOMIC_SEQ_CST) <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (__atomic_sub_fetch(&primary_refs, 1, __ATOMIC_SEQ_CST) == 0) free_ctx(&primary_ctx);
  return CUDA_SUCCESS;
}
static CUresult primary_reset(CUdevice dev) {
  if (dev != 0) return CUDA_ERROR_INVALID_VALUE;
  free_ctx(&primary_ctx);
  __atomic_store_n(&primary_refs, 0, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return primary_release(dev); }
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) { return primary_release(dev); }
EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return primary_reset(dev); }
EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) { return primary_reset(dev); }

/* Kernels (FAKECUDA_KERNEL=1): only libkvh's zero check, run on the host at
 * launch. The fake records on which stream each 32-bit memset last wrote an
 * address, and counts launches whose flag was last reset on another stream
 * than the launch's (a synchronous cuMemsetD32 is on the legacy stream, which
 * a non-blocking stream is not ordered with): fakecuda_kernel_stats. */
static struct { int id; } the_module, the_function;
static int launches, unordered;
static CUdeviceptr set32_at;
static CUstream set32_on;
static int set32_sync;
EXPORT CUresult cuModuleLoadData(CUmodule *m, const void *image) {
  if (!m || !image || !env_int("FAKECUDA_KERNEL")) return CUDA_ERROR_INVALID_VALUE;
  *m = (CUmodule)(void *)&the_module;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
  if (!f || m != (CUmodule)(void *)&the_module || !name || strcmp(name, "kvh_nonzero") != 0) return CUDA_ERROR_NOT_FOUND;
  *f = (CUfunction)(void *)&the_function;
  return CUDA_SUCCESS;
}
static CUresult set32(CUdeviceptr d, unsigned int v, size_t n, CUstream s, int sync) {
  if (!d) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < n; i++) ((unsigned int *)(uintptr_t)d)[i] = v;
  pthread_mutex_lock(&mu);
  set32_at = d, set32_on = s, set32_sync = sync;
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return set32(d, v, n, NULL, 1); }
EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) { return set32(d, v, n, s, 0); }
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shm,
                               CUstream s, void **args, void **extra) {
  (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shm; (void)extra;
  if (f != (CUfunction)(void *)&the_function || !args) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr p = *(CUdeviceptr *)args[0], flag = *(CUdeviceptr *)args[2];
  uint64_t words = *(uint64_t *)args[1];
  pthread_mutex_lock(&mu);
  launches++;
  if (set32_at != flag || (set32_sync ? s != NULL : set32_on != s)) unordered++;
  pthread_mutex_unlock(&mu);
  for (uint64_t i = 0; i < words; i++)
    if (((const uint64_t *)(uintptr_t)p)[i]) *(unsigned int *)(uintptr_t)flag = 1;
  return CUDA_SUCCESS;
}
EXPORT void fakecuda_kernel_stats(int *l, int *u) {
  pthread_mutex_lock(&mu);
  *l = launches, *u = unordered;
  pthread_mutex_unlock(&mu);
}


/* ---- events ------------------------------------------------------------------
 *
 * The fake runs everything at once, so an event orders nothing; it keeps the
 * stream it was last recorded on, and counts the waits of one stream on an
 * event recorded on another (fakecuda_cross_waits): how a test sees that
 * work on a new stream was ordered behind work on the old one. */
struct fevent {
  unsigned int magic;
  CUstream recorded_on;
  int recorded;
};
#define FEVENT_MAGIC 0x45564e54u
static int cross_waits;
EXPORT int fakecuda_cross_waits(void) { return __atomic_load_n(&cross_waits, __ATOMIC_SEQ_CST); }
EXPORT CUresult cuEventCreate(CUevent *ev, unsigned int flags) {
  if (!ev || flags & ~0xfu) return CUDA_ERROR_INVALID_VALUE;
  struct fevent *x = calloc(1, sizeof *x);
  if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
  x->magic = FEVENT_MAGIC;
  *ev = (CUevent)(void *)x;
  return CUDA_SUCCESS;
}
static struct fevent *fevent_of(CUevent ev) {
  struct fevent *x = (struct fevent *)(void *)ev;
  return x && x->magic == FEVENT_MAGIC ? x : NULL;
}
EXPORT CUresult cuEventRecord(CUevent ev, CUstream s) {
  struct fevent *x = fevent_of(ev);
  if (!x) return CUDA_ERROR_INVALID_VALUE;
  x->recorded_on = s;
  x->recorded = 1;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent ev, unsigned int flags) {
  struct fevent *x = fevent_of(ev);
  if (!x || flags) return CUDA_ERROR_INVALID_VALUE;
  if (x->recorded && x->recorded_on != s) __atomic_add_fetch(&cross_waits, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(CUevent ev) {
  struct fevent *x = fevent_of(ev);
  if (!x) return CUDA_ERROR_INVALID_VALUE;
  x->magic = 0;
  free(x);
  return CUDA_SUCCESS;
}

/* ---- graphs: memory nodes and stream capture -------------------------------
 *
 * A graph is its nodes in creation order. Graph memory comes from the graph
 * pool (blocks of host class 3): an alloc node gets its address when it is
 * added — the most recently freed graph block of its size, else new space —
 * so memory a launched free node gave back is handed to the next graph
 * allocation in this process with its bytes, as the real driver's graph
 * pool reuses memory inside a process without clearing it.
 * cuDeviceGraphMemTrim hands the pool's free blocks to ordinary allocations
 * (the memory goes back to the driver, and anything may get it next).
 *
 * A launch runs the nodes in an order their dependencies allow, choosing a
 * ready free node before any other ready node: work not ordered before a free
 * by an edge runs after it, as a real GPU may run it. A captured stream's
 * calls become a chain of nodes, each depending on the one before. */
enum { GN_DEAD = 0, GN_ALLOC, GN_FREE, GN_MEMSET, GN_EMPTY };
#define GMAXN 256
#define GMAXD 8
struct gnode {
  int type, ndeps, deps[GMAXD];
  CUdeviceptr p;
  size_t n, width, height, pitch;
  unsigned int value, esz;
};
struct fgraph {
  int n, exec, launched;
  unsigned long long flags; /* an executable's instantiate flags */
  struct gnode nodes[GMAXN];
};
#define FAKE_AUTO_FREE_ON_LAUNCH 1ULL /* CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH */
static struct fgraph *cap_graph;
static int cap_invalid;
static int graph_launches;

static CUresult capture_unsupported(void) {
  cap_invalid = 1;
  return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

static int node_index(struct fgraph *g, CUgraphNode n) {
  struct gnode *x = (struct gnode *)(void *)n;
  if (x < g->nodes || x >= g->nodes + g->n || (uintptr_t)((char *)x - (char *)g->nodes) % sizeof *x) return -1;
  return (int)(x - g->nodes);
}

/* add_node appends v to g with deps; 0 on success. */
static CUresult add_node(CUgraphNode *out, CUgraph gh, const CUgraphNode *deps, size_t ndeps, struct gnode v) {
  struct fgraph *g = (struct fgraph *)(void *)gh;
  if (!g || g->exec || (ndeps && !deps) || ndeps > GMAXD) return CUDA_ERROR_INVALID_VALUE;
  if (g->n == GMAXN) return CUDA_ERROR_OUT_OF_MEMORY;
  v.ndeps = (int)ndeps;
  for (size_t i = 0; i < ndeps; i++)
    if ((v.deps[i] = node_index(g, deps[i])) < 0) return CUDA_ERROR_INVALID_VALUE;
  g->nodes[g->n] = v;
  if (out) *out = (CUgraphNode)(void *)&g->nodes[g->n];
  g->n++;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int flags) {
  if (!g || flags) return CUDA_ERROR_INVALID_VALUE;
  struct fgraph *x = calloc(1, sizeof *x);
  if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
  *g = (CUgraph)(void *)x;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphDestroy(CUgraph g) {
  if (!g) return CUDA_ERROR_INVALID_VALUE;
  free(g);
  return CUDA_SUCCESS;
}

static CUresult fg_alloc(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *p) {
  if (!out || !p || !p->bytesize) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr d = take(p->bytesize, 3);
  if (!d) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = add_node(out, g, deps, ndeps, (struct gnode){.type = GN_ALLOC, .p = d, .n = round_up(p->bytesize)});
  if (r != CUDA_SUCCESS) give(d);
  else p->dptr = d;
  return r;
}
static CUresult fg_free(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUdeviceptr d) {
  if (!out || !d) return CUDA_ERROR_INVALID_VALUE;
  return add_node(out, g, deps, ndeps, (struct gnode){.type = GN_FREE, .p = d});
}
static CUresult fg_memset(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, const CUDA_MEMSET_NODE_PARAMS *p, CUcontext c) {
  (void)c;
  if (!out || !p || !p->dst || (p->elementSize != 1 && p->elementSize != 2 && p->elementSize != 4) || !p->height ||
      (p->height > 1 && p->pitch < p->width * p->elementSize))
    return CUDA_ERROR_INVALID_VALUE;
  return add_node(out, g, deps, ndeps, (struct gnode){.type = GN_MEMSET, .p = p->dst, .value = p->value, .esz = p->elementSize,
                                                     .width = p->width, .height = p->height, .pitch = p->pitch});
}

static CUresult fg_empty(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps) {
  if (!out) return CUDA_ERROR_INVALID_VALUE;
  return add_node(out, g, deps, ndeps, (struct gnode){.type = GN_EMPTY});
}
/* cuGraphDestroyNode: the node no longer runs (and orders nothing). */
EXPORT CUresult cuGraphDestroyNode(CUgraphNode n) {
  struct gnode *x = (struct gnode *)(void *)n;
  if (!x || x->type == GN_DEAD) return CUDA_ERROR_INVALID_VALUE;
  x->type = GN_DEAD;
  x->ndeps = 0;
  return CUDA_SUCCESS;
}

/* The exported node calls; internal calls use the static ones, as the real
 * driver's do (an exported name would reach libkvh's wrapper again). */
EXPORT CUresult cuGraphAddMemAllocNode(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *p) {
  return fg_alloc(out, g, deps, ndeps, p);
}
EXPORT CUresult cuGraphAddMemFreeNode(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUdeviceptr d) {
  return fg_free(out, g, deps, ndeps, d);
}
EXPORT CUresult cuGraphAddMemsetNode(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, const CUDA_MEMSET_NODE_PARAMS *p, CUcontext c) {
  return fg_memset(out, g, deps, ndeps, p, c);
}
EXPORT CUresult cuGraphAddEmptyNode(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps) { return fg_empty(out, g, deps, ndeps); }

/* cuGraphAddNode (12.2): the node kinds the fake models. */
EXPORT CUresult cuGraphAddNode(CUgraphNode *out, CUgraph g, const CUgraphNode *deps, size_t ndeps, CUgraphNodeParams *p) {
  if (!p) return CUDA_ERROR_INVALID_VALUE;
  switch (p->type) {
  case CU_GRAPH_NODE_TYPE_MEM_ALLOC: return fg_alloc(out, g, deps, ndeps, &p->alloc);
  case CU_GRAPH_NODE_TYPE_MEM_FREE: return fg_free(out, g, deps, ndeps, p->free.dptr);
  case CU_GRAPH_NODE_TYPE_MEMSET: return fg_memset(out, g, deps, ndeps, &p->memset.p, p->memset.ctx);
  case CU_GRAPH_NODE_TYPE_EMPTY: return fg_empty(out, g, deps, ndeps);
  default: return CUDA_ERROR_INVALID_VALUE;
  }
}

/* The graph queries libkvh walks a graph with at instantiation. */
EXPORT CUresult cuGraphGetNodes(CUgraph gh, CUgraphNode *nodes, size_t *num) {
  struct fgraph *g = (struct fgraph *)(void *)gh;
  if (!g || !num) return CUDA_ERROR_INVALID_VALUE;
  size_t k = 0;
  for (int i = 0; i < g->n; i++) {
    if (g->nodes[i].type == GN_DEAD) continue;
    if (nodes && k < *num) nodes[k] = (CUgraphNode)(void *)&g->nodes[i];
    k++;
  }
  if (nodes)
    for (size_t i = k; i < *num; i++) nodes[i] = NULL;
  if (!nodes || k < *num) *num = k;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphNodeGetType(CUgraphNode n, int *type) {
  if (env_int("FAKECUDA_GRAPHQUERY_FAIL")) return (CUresult)801; /* CUDA_ERROR_NOT_SUPPORTED */
  static const int types[] = {[GN_ALLOC] = CU_GRAPH_NODE_TYPE_MEM_ALLOC, [GN_FREE] = CU_GRAPH_NODE_TYPE_MEM_FREE,
                              [GN_MEMSET] = CU_GRAPH_NODE_TYPE_MEMSET, [GN_EMPTY] = CU_GRAPH_NODE_TYPE_EMPTY};
  struct gnode *x = (struct gnode *)(void *)n;
  if (!x || !type || x->type == GN_DEAD) return CUDA_ERROR_INVALID_VALUE;
  *type = types[x->type];
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphMemAllocNodeGetParams(CUgraphNode n, CUDA_MEM_ALLOC_NODE_PARAMS *out) {
  struct gnode *x = (struct gnode *)(void *)n;
  if (!x || !out || x->type != GN_ALLOC) return CUDA_ERROR_INVALID_VALUE;
  memset(out, 0, sizeof *out);
  out->bytesize = x->n;
  out->dptr = x->p;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphMemFreeNodeGetParams(CUgraphNode n, CUdeviceptr *out) {
  struct gnode *x = (struct gnode *)(void *)n;
  if (!x || !out || x->type != GN_FREE) return CUDA_ERROR_INVALID_VALUE;
  *out = x->p;
  return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
  if (!e || !g) return CUDA_ERROR_INVALID_VALUE;
  struct fgraph *x = malloc(sizeof *x);
  if (!x) return CUDA_ERROR_OUT_OF_MEMORY;
  *x = *(struct fgraph *)(void *)g;
  x->exec = 1;
  x->launched = 0;
  x->flags = flags;
  *e = (CUgraphExec)(void *)x;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) {
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  free(e);
  return CUDA_SUCCESS;
}

/* reclaim takes graph block p back out of the pool for an alloc node's
 * launch (mu held); a block the pool no longer holds (trimmed, reused) is
 * simply made live again at its address. */
static void reclaim(CUdeviceptr p, size_t n) {
  struct klass *k = klass_of(n, 3);
  for (int i = 0; k && i < k->n; i++)
    if (k->stack[i].p == p) {
      k->stack[i] = k->stack[--k->n];
      break;
    }
  for (unsigned i = hslot(p), step = 0; step < HASH; i = (i + 1) & (HASH - 1), step++) {
    if (live[i].p == 0) break;
    if (live[i].p == p && live[i].size) return; /* still live */
  }
  live_put((struct block){p, n, 3, ctx_now()});
}

static void run_node(const struct gnode *x) {
  switch (x->type) {
  case GN_ALLOC:
    pthread_mutex_lock(&mu);
    reclaim(x->p, x->n);
    pthread_mutex_unlock(&mu);
    break;
  case GN_FREE:
    give(x->p);
    break;
  case GN_MEMSET:
    for (size_t r = 0; r < x->height; r++) {
      unsigned char *row = (unsigned char *)(uintptr_t)(x->p + r * x->pitch);
      for (size_t i = 0; i < x->width; i++) {
        if (x->esz == 1) row[i] = (unsigned char)x->value;
        else if (x->esz == 2) ((uint16_t *)(void *)row)[i] = (uint16_t)x->value;
        else ((uint32_t *)(void *)row)[i] = x->value;
      }
    }
    break;
  }
}

/* block_live says whether p is a live block (mu held). */
static int block_live(CUdeviceptr p) {
  for (unsigned i = hslot(p), step = 0; step < HASH; i = (i + 1) & (HASH - 1), step++) {
    if (live[i].p == 0) return 0;
    if (live[i].p == p && live[i].size) return 1;
  }
  return 0;
}

/* unfreed_live says whether the executable's alloc node i allocates memory
 * no free node of its graph frees, and a previous launch left it live. */
static int unfreed_live(const struct fgraph *g, int i) {
  if (g->nodes[i].type != GN_ALLOC) return 0;
  for (int j = 0; j < g->n; j++)
    if (g->nodes[j].type == GN_FREE && g->nodes[j].p == g->nodes[i].p) return 0;
  pthread_mutex_lock(&mu);
  int l = block_live(g->nodes[i].p);
  pthread_mutex_unlock(&mu);
  return l;
}

/* cuGraphLaunch: as CUDA documents it, a relaunch while allocations of the
 * previous launch are unfreed fails with CUDA_ERROR_INVALID_VALUE, unless
 * the executable was instantiated with AUTO_FREE_ON_LAUNCH: then they are
 * freed first — to the graph pool, bytes and all — and the launch's alloc
 * nodes take them again. */
EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
  (void)s;
  struct fgraph *g = (struct fgraph *)(void *)e;
  if (!g || !g->exec) return CUDA_ERROR_INVALID_VALUE;
  if (g->launched) {
    for (int i = 0; i < g->n; i++)
      if (unfreed_live(g, i) && !(g->flags & FAKE_AUTO_FREE_ON_LAUNCH)) return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < g->n; i++)
      if (unfreed_live(g, i)) give(g->nodes[i].p);
  }
  g->launched = 1;
  unsigned char done[GMAXN] = {0};
  for (int left = g->n; left > 0; left--) {
    int pick = -1;
    for (int i = 0; i < g->n; i++) {
      if (done[i]) continue;
      int ready = 1;
      for (int d = 0; d < g->nodes[i].ndeps; d++) ready &= done[g->nodes[i].deps[d]];
      if (!ready) continue;
      if (pick < 0 || (g->nodes[i].type == GN_FREE && g->nodes[pick].type != GN_FREE)) pick = i;
    }
    if (pick < 0) return CUDA_ERROR_INVALID_VALUE; /* unreachable: dependencies point backwards */
    run_node(&g->nodes[pick]);
    done[pick] = 1;
  }
  __atomic_add_fetch(&graph_launches, 1, __ATOMIC_SEQ_CST);
  return CUDA_SUCCESS;
}

/* cuDeviceGraphMemTrim: the graph pool's free blocks go back to the driver,
 * where the next ordinary allocation of a size can get one, bytes and all. */
EXPORT CUresult cuDeviceGraphMemTrim(CUdevice dev) {
  if (dev != 0) return CUDA_ERROR_INVALID_VALUE;
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nclasses; i++) {
    if (classes[i].host != 3) continue;
    while (classes[i].n) {
      struct block b = classes[i].stack[--classes[i].n];
      b.host = 0;
      push_free(b);
    }
  }
  pthread_mutex_unlock(&mu);
  return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  if (!s || mode != 0) return CUDA_ERROR_INVALID_VALUE; /* the legacy stream cannot capture; only global mode is modelled */
  if (cap_stream) return CUDA_ERROR_INVALID_VALUE;
  CUgraph g;
  if (cuGraphCreate(&g, 0) != CUDA_SUCCESS) return CUDA_ERROR_OUT_OF_MEMORY;
  cap_graph = (struct fgraph *)(void *)g;
  cap_stream = s;
  cap_invalid = 0;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph *out) {
  if (!out || !capturing(s)) return CUDA_ERROR_INVALID_VALUE;
  cap_stream = NULL;
  if (cap_invalid) {
    free(cap_graph);
    cap_graph = NULL;
    *out = NULL;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *out = (CUgraph)(void *)cap_graph;
  cap_graph = NULL;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st) {
  if (!st) return CUDA_ERROR_INVALID_VALUE;
  *st = capturing(s) ? (cap_invalid ? 2 : CU_STREAM_CAPTURE_STATUS_ACTIVE) : CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st) { return cuStreamIsCapturing(s, st); }

/* A captured call's node depends on the node captured before it. */
static CUresult capture_node(struct gnode v) {
  if (cap_invalid) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  CUgraphNode prev = cap_graph->n ? (CUgraphNode)(void *)&cap_graph->nodes[cap_graph->n - 1] : NULL;
  return add_node(NULL, (CUgraph)(void *)cap_graph, prev ? &prev : NULL, prev ? 1 : 0, v);
}
static CUresult capture_alloc(CUdeviceptr *d, size_t n) {
  if (!d || !n) return CUDA_ERROR_INVALID_VALUE;
  CUdeviceptr p = take(n, 3);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = capture_node((struct gnode){.type = GN_ALLOC, .p = p, .n = round_up(n)});
  if (r != CUDA_SUCCESS) give(p);
  else *d = p;
  return r;
}
static CUresult capture_free(CUdeviceptr d) { return capture_node((struct gnode){.type = GN_FREE, .p = d}); }
static CUresult capture_memset(CUdeviceptr d, unsigned char v, size_t n) {
  return capture_node((struct gnode){.type = GN_MEMSET, .p = d, .value = v, .esz = 1, .width = n, .height = 1, .pitch = n});
}

/* cuGetProcAddress: like the real driver, resolves a base name to the entry
 * point for the requested CUDA version and stream semantics. */
struct entry { const char *base; int minver; int ptsz; void *fn; };
#define E(b, v, pt, f) { b, v, pt, (void *)f }
static const struct entry table[] = {
  E("cuInit", 2000, 0, cuInit), E("cuDriverGetVersion", 2020, 0, cuDriverGetVersion),
  E("cuCtxSynchronize", 2000, 0, cuCtxSynchronize),
  E("cuStreamSynchronize", 2000, 0, cuStreamSynchronize), E("cuStreamSynchronize", 7000, 1, cuStreamSynchronize_ptsz),
  E("cuMemAlloc", 2000, 0, cuMemAlloc), E("cuMemAllocPitch", 2000, 0, cuMemAllocPitch), E("cuMemFree", 2000, 0, cuMemFree),
  E("cuMemAllocHost", 2000, 0, cuMemAllocHost), E("cuMemHostRegister", 4000, 0, cuMemHostRegister),
  E("cuIpcOpenMemHandle", 4010, 0, cuIpcOpenMemHandle), E("cuMemsetD8", 2000, 0, cuMemsetD8),
  E("cuMemcpyDtoH", 2000, 0, cuMemcpyDtoH), E("cuMemcpyHtoD", 2000, 0, cuMemcpyHtoD),
  E("cuMemGetAddressRange", 2000, 0, cuMemGetAddressRange),
  E("cuCtxDestroy", 2000, 0, cuCtxDestroy), E("cuCtxDestroy", 4000, 0, cuCtxDestroy_v2),
  E("cuCtxAttach", 2000, 0, cuCtxAttach), E("cuCtxDetach", 2000, 0, cuCtxDetach),
  E("cuDevicePrimaryCtxRelease", 7000, 0, cuDevicePrimaryCtxRelease), E("cuDevicePrimaryCtxRelease", 11000, 0, cuDevicePrimaryCtxRelease_v2),
  E("cuDevicePrimaryCtxReset", 7000, 0, cuDevicePrimaryCtxReset), E("cuDevicePrimaryCtxReset", 11000, 0, cuDevicePrimaryCtxReset_v2),
  E("cuDevicePrimaryCtxRetain", 7000, 0, cuDevicePrimaryCtxRetain),
  E("cuMemAlloc", 3020, 0, cuMemAlloc_v2), E("cuMemAllocManaged", 6000, 0, cuMemAllocManaged),
  E("cuMemAllocPitch", 3020, 0, cuMemAllocPitch_v2),
  E("cuMemFree", 3020, 0, cuMemFree_v2),
  E("cuMemAllocAsync", 11020, 0, cuMemAllocAsync), E("cuMemAllocAsync", 11020, 1, cuMemAllocAsync_ptsz),
  E("cuMemAllocFromPoolAsync", 11020, 0, cuMemAllocFromPoolAsync), E("cuMemAllocFromPoolAsync", 11020, 1, cuMemAllocFromPoolAsync_ptsz),
  E("cuMemFreeAsync", 11020, 0, cuMemFreeAsync), E("cuMemFreeAsync", 11020, 1, cuMemFreeAsync_ptsz),
  E("cuMemPoolTrimTo", 11020, 0, cuMemPoolTrimTo), E("cuMemPoolDestroy", 11020, 0, cuMemPoolDestroy),
  E("cuMemsetD8", 3020, 0, cuMemsetD8_v2), E("cuMemsetD8", 7000, 1, cuMemsetD8_v2_ptds),
  E("cuMemsetD8Async", 3020, 0, cuMemsetD8Async), E("cuMemsetD8Async", 7000, 1, cuMemsetD8Async_ptsz),
  E("cuMemcpyDtoH", 3020, 0, cuMemcpyDtoH_v2), E("cuMemcpyDtoH", 7000, 1, cuMemcpyDtoH_v2_ptds),
  E("cuMemGetAddressRange", 3020, 0, cuMemGetAddressRange_v2),
  E("cuMemcpyHtoD", 3020, 0, cuMemcpyHtoD_v2), E("cuMemcpyHtoD", 7000, 1, cuMemcpyHtoD_v2_ptds),
  E("cuMemHostAlloc", 2020, 0, cuMemHostAlloc), E("cuMemAllocHost", 3020, 0, cuMemAllocHost_v2),
  E("cuMemFreeHost", 2000, 0, cuMemFreeHost), E("cuMemHostRegister", 6050, 0, cuMemHostRegister_v2),
  E("cuMemHostUnregister", 4000, 0, cuMemHostUnregister),
  E("cuMemCreate", 10020, 0, cuMemCreate), E("cuMemRelease", 10020, 0, cuMemRelease),
  E("cuMemAddressReserve", 10020, 0, cuMemAddressReserve), E("cuMemAddressFree", 10020, 0, cuMemAddressFree),
  E("cuMemMap", 10020, 0, cuMemMap), E("cuMemUnmap", 10020, 0, cuMemUnmap), E("cuMemSetAccess", 10020, 0, cuMemSetAccess),
  E("cuMemExportToShareableHandle", 10020, 0, cuMemExportToShareableHandle),
  E("cuMemImportFromShareableHandle", 10020, 0, cuMemImportFromShareableHandle),
  E("cuIpcGetMemHandle", 4010, 0, cuIpcGetMemHandle), E("cuIpcOpenMemHandle", 11000, 0, cuIpcOpenMemHandle_v2),
  E("cuIpcCloseMemHandle", 4010, 0, cuIpcCloseMemHandle),
  E("cuMemPoolExportPointer", 11020, 0, cuMemPoolExportPointer), E("cuMemPoolImportPointer", 11020, 0, cuMemPoolImportPointer),
  E("cuGraphCreate", 10000, 0, cuGraphCreate), E("cuGraphDestroy", 10000, 0, cuGraphDestroy),
  E("cuGraphAddMemAllocNode", 11040, 0, cuGraphAddMemAllocNode), E("cuGraphAddMemFreeNode", 11040, 0, cuGraphAddMemFreeNode),
  E("cuGraphAddMemsetNode", 10000, 0, cuGraphAddMemsetNode), E("cuGraphAddEmptyNode", 10000, 0, cuGraphAddEmptyNode),
  E("cuGraphDestroyNode", 10000, 0, cuGraphDestroyNode), E("cuGraphAddNode", 12020, 0, cuGraphAddNode), E("cuGraphInstantiateWithFlags", 11040, 0, cuGraphInstantiateWithFlags),
  E("cuGraphExecDestroy", 10000, 0, cuGraphExecDestroy), E("cuGraphLaunch", 10000, 0, cuGraphLaunch),
  E("cuGraphGetNodes", 10000, 0, cuGraphGetNodes), E("cuGraphNodeGetType", 10000, 0, cuGraphNodeGetType),
  E("cuGraphMemAllocNodeGetParams", 11040, 0, cuGraphMemAllocNodeGetParams), E("cuGraphMemFreeNodeGetParams", 11040, 0, cuGraphMemFreeNodeGetParams),
  E("cuDeviceGraphMemTrim", 11040, 0, cuDeviceGraphMemTrim),
  E("cuStreamBeginCapture", 10010, 0, cuStreamBeginCapture_v2), E("cuStreamEndCapture", 10000, 0, cuStreamEndCapture),
  E("cuEventCreate", 2000, 0, cuEventCreate), E("cuEventRecord", 2000, 0, cuEventRecord),
  E("cuStreamWaitEvent", 3020, 0, cuStreamWaitEvent), E("cuEventDestroy", 4000, 0, cuEventDestroy_v2),
  E("cuStreamIsCapturing", 10000, 0, cuStreamIsCapturing), E("cuStreamIsCapturing", 10000, 1, cuStreamIsCapturing_ptsz),
};

/* resolve answers as NVIDIA's 535 resolver does without a GPU: unknown flags
 * are refused (CUDA_ERROR_INVALID_VALUE, *pfn untouched); the per-thread flag
 * below version 7000 is "version not sufficient" for a function that has a
 * per-thread variant; a name it cannot hand out is, for v2, success with
 * *pfn NULL and the reason in *st, and for v1 CUDA_ERROR_NOT_FOUND with *pfn
 * untouched. */
static CUresult resolve(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st, int v2) {
  if (!sym || !pfn) return CUDA_ERROR_INVALID_VALUE;
  if (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)) return CUDA_ERROR_INVALID_VALUE;
  int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  const struct entry *best = NULL;
  int found = 0, has_ptsz = 0;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    const struct entry *e = &table[i];
    if (strcmp(e->base, sym) != 0) continue;
    found = 1;
    has_ptsz |= e->ptsz;
    if (e->minver > ver) continue;
    if (e->ptsz && !ptsz) continue;
    if (!best || e->minver > best->minver || (e->ptsz && !best->ptsz)) best = e;
  }
  if (ptsz && has_ptsz && ver < 7000) best = NULL; /* per-thread streams arrived in 7.0 */
  if (!best) {
    if (st) *st = found ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (!v2) return CUDA_ERROR_NOT_FOUND;
    *pfn = NULL;
    return CUDA_SUCCESS;
  }
  if (st) *st = CU_GET_PROC_ADDRESS_SUCCESS;
  *pfn = best->fn;
  return CUDA_SUCCESS;
}
EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) { return resolve(sym, pfn, ver, flags, NULL, 0); }
EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st) { return resolve(sym, pfn, ver, flags, st, 1); }

/* fakecuda_peek reads device memory as it is, whatever the fault switches
 * say: the test clients use it to look for residue honestly. */
EXPORT void fakecuda_peek(void *dst, CUdeviceptr src, size_t n) { memcpy(dst, (void *)(uintptr_t)src, n); }
