/* Test clients, one binary per way a serving process reaches the driver
 * (WAY is set at compile time; see the Makefile):
 *   runtime   cudaMalloc/cudaFree through libcudart (dynamic link)
 *   driver    cuMemAlloc_v2/cuMemFree_v2 bound directly to libcuda
 *   dlopen    dlopen(libcuda.so.1) + dlsym, no link to CUDA at all
 *   entry     cudaGetDriverEntryPoint, as PyTorch and NCCL reach cuMem*
 *   vmm       cuMemCreate/AddressReserve/Map ... Unmap/Release (vLLM sleep mode)
 *   async     cuMemAllocAsync/cuMemFreeAsync on a stream
 *   host      pinned host: cuMemHostAlloc/cuMemFreeHost
 *   ipc       a forked importer opens and closes an IPC handle
 *   stress    16 threads x N alloc/write/free, checking every new buffer
 *   fork      the parent and a forked child both allocate and free
 *   edge      unknown pointer, double free, failing real calls, out-params, NULL frees
 *   deny      allocates every 10 ms until the agent denies (prints DENIED), then
 *             forks a child that tries for a second to allocate
 *   bench     times N alloc/free pairs and a 64 MiB pinned-host free
 *   churn     keeps L buffers live while making N allocations in all, at R per ms,
 *             of S bytes (default 4096); prints CALLS, the hooked calls made
 *   failclosed  calls every allocation hook once and prints each result;
 *             with "hold", first holds a filled buffer until allocations are
 *             refused, then frees it
 *   vmmalias  VMM beyond one mapping per unmap: one cuMemUnmap over three
 *             mappings, a handle mapped at two addresses, a handle released
 *             while still mapped
 *   table     keeps L (argv[1]) 256-byte buffers live, then frees them all,
 *             counting the freed buffers that still hold their bytes (DIRTY)
 *   register  registers and unregisters memory the application owns: a heap
 *             buffer, a MAP_SHARED file mapping, a read-only mapping
 *   ctx       memory that leaves with its context: cuCtxDestroy (v1, fetched
 *             at 3020) of a created context, the last cuDevicePrimaryCtxRelease_v2
 *             (an earlier one must leave the memory intact), and
 *             cuDevicePrimaryCtxReset (v1, fetched at 10000), and the
 *             cuCtxDetach that drops a context's last usage count (an
 *             earlier one, after a cuCtxAttach, must leave it intact)
 *   graph     graph memory nodes: a graph allocates, writes a secret and frees;
 *             the next graph allocation of that size gets the memory
 *             (GRAPH_RESIDUE); the same after cuDeviceGraphMemTrim, for an
 *             ordinary cuMemAlloc (TRIM_RESIDUE); and a stream capture of
 *             cuMemAllocAsync, a memset and cuMemFreeAsync, which must still
 *             capture (CAPTURE_OK) and leave nothing (CAPTURE_RESIDUE); and
 *             the first graph again through cuGraphAddNode (ADDNODE_RESIDUE)
 *   imports   a forked exporter shares a buffer by IPC and one from its pool;
 *             this process, its table full, releases both (EXPORTER 0: the
 *             exporter found every byte intact)
 *   v1        the v1 entry points (32-bit CUdeviceptr_v1): cuMemAlloc/cuMemFree
 *             bound directly and fetched with cuGetProcAddress at 3010,
 *             cuMemAllocPitch, cuMemAllocHost, cuMemHostRegister (left
 *             intact) and cuIpcOpenMemHandle (an importer, left intact)
 *
 * Each prints "RESIDUE n": how many bytes of tenant A's freed buffer tenant B
 * could read back from its own new allocation (0 = clean).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "kvh_cuda.h"

#define N (64 << 10)
__attribute__((unused)) static int pace_us; /* stress: optional pause per operation (argv[2]) */
static const char secret[] = "TENANT-A-KV-BLOCK:the quick brown fox jumps over the lazy dog";

static void (*peek)(void *, CUdeviceptr, size_t);
static int residue_of(const unsigned char *b, size_t n) {
  int r = 0;
  for (size_t i = 0; i < n; i++) r += b[i] == (unsigned char)secret[i % (sizeof secret - 1)];
  return r;
}
__attribute__((unused)) static int count_byte(const unsigned char *b, size_t n, unsigned char v) {
  int r = 0;
  for (size_t i = 0; i < n; i++) r += b[i] == v;
  return r;
}
static void fill(unsigned char *b, size_t n) { for (size_t i = 0; i < n; i++) b[i] = (unsigned char)secret[i % (sizeof secret - 1)]; }
static void die(const char *what, int rc) { fprintf(stderr, "client: %s failed: %d\n", what, rc); exit(1); }
#define CHECK(call) do { int rc_ = (call); if (rc_) die(#call, rc_); } while (0)

/* The driver functions this client uses, however it obtained them. */
static CUresult (*d_alloc)(CUdeviceptr *, size_t);
static CUresult (*d_free)(CUdeviceptr);
static CUresult (*d_htod)(CUdeviceptr, const void *, size_t);

__attribute__((unused)) static int residue_device(CUdeviceptr p, size_t n) {
  unsigned char *b = malloc(n);
  peek(b, p, n);
  int r = residue_of(b, n);
  free(b);
  return r;
}

/* One tenant A / tenant B round on device memory through d_alloc/d_free. */
__attribute__((unused)) static void round_device(void) {
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUdeviceptr a, b;
  CHECK(d_alloc(&a, N));
  CHECK(d_htod(a, buf, N));
  CHECK(d_free(a));
  CHECK(d_alloc(&b, N));
  printf("REUSED %d\n", a == b);
  printf("RESIDUE %d\n", residue_device(b, N));
  CHECK(d_free(b));
  free(buf);
}

extern CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
extern CUresult cuMemFree_v2(CUdeviceptr);
extern CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);

#if defined(WAY_runtime) || defined(WAY_entry)
extern cudaError_t cudaMalloc(void **, size_t);
extern cudaError_t cudaFree(void *);
extern cudaError_t cudaMemcpy(void *, const void *, size_t, int);
extern cudaError_t cudaGetDriverEntryPoint(const char *, void **, unsigned long long, cudaDriverEntryPointQueryResult *);
__attribute__((unused)) static CUresult rt_alloc(CUdeviceptr *p, size_t n) { void *v; int rc = cudaMalloc(&v, n); if (!rc) *p = (CUdeviceptr)(uintptr_t)v; return rc; }
__attribute__((unused)) static CUresult rt_free(CUdeviceptr p) { return cudaFree((void *)(uintptr_t)p); }
__attribute__((unused)) static CUresult rt_htod(CUdeviceptr p, const void *h, size_t n) { return cudaMemcpy((void *)(uintptr_t)p, h, n, 1); }
#endif

static void *libcuda(void) {
  void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "client: %s\n", dlerror()); exit(1); }
  return h;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* A process that lives only milliseconds can be gone before the agent reads
   * its /proc; tests that check identity let the client linger a moment. */
  if (getenv("CLIENT_LINGER_MS")) usleep((useconds_t)atoi(getenv("CLIENT_LINGER_MS")) * 1000);
  void *cu = libcuda();
  *(void **)&peek = dlsym(cu, "fakecuda_peek");
  if (!peek) { fprintf(stderr, "client: needs the fake libcuda (fakecuda_peek)\n"); return 1; }
  int iters = argc > 1 ? atoi(argv[1]) : 1;
  (void)iters;
#if defined(WAY_runtime)
  d_alloc = rt_alloc, d_free = rt_free, d_htod = rt_htod;
  round_device();
#elif defined(WAY_driver)
  d_alloc = cuMemAlloc_v2, d_free = cuMemFree_v2, d_htod = cuMemcpyHtoD_v2;
  round_device();
#elif defined(WAY_dlopen)
  *(void **)&d_alloc = dlsym(cu, "cuMemAlloc_v2");
  *(void **)&d_free = dlsym(cu, "cuMemFree_v2");
  *(void **)&d_htod = dlsym(cu, "cuMemcpyHtoD_v2");
  round_device();
#elif defined(WAY_entry)
  cudaDriverEntryPointQueryResult st;
  CHECK(cudaGetDriverEntryPoint("cuMemAlloc", (void **)&d_alloc, cudaEnableDefault, &st));
  CHECK(cudaGetDriverEntryPoint("cuMemFree", (void **)&d_free, cudaEnableDefault, &st));
  CHECK(cudaGetDriverEntryPoint("cuMemcpyHtoD", (void **)&d_htod, cudaEnableDefault, &st));
  round_device();
#elif defined(WAY_vmm)
  extern CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
  extern CUresult cuMemRelease(CUmemGenericAllocationHandle);
  extern CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
  extern CUresult cuMemAddressFree(CUdeviceptr, size_t);
  extern CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  extern CUresult cuMemUnmap(CUdeviceptr, size_t);
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUmemGenericAllocationHandle h1, h2;
  CUdeviceptr va1, va2;
  /* vLLM sleep: the KV cache's physical memory is unmapped and released */
  CHECK(cuMemCreate(&h1, N, &prop, 0));
  CHECK(cuMemAddressReserve(&va1, N, 0, 0, 0));
  CHECK(cuMemMap(va1, N, 0, h1, 0));
  CHECK(cuMemcpyHtoD_v2(va1, buf, N));
  CHECK(cuMemUnmap(va1, N));
  CHECK(cuMemRelease(h1));
  CHECK(cuMemAddressFree(va1, N));
  /* wake up for another tenant: "empty memory" */
  CHECK(cuMemCreate(&h2, N, &prop, 0));
  CHECK(cuMemAddressReserve(&va2, N, 0, 0, 0));
  CHECK(cuMemMap(va2, N, 0, h2, 0));
  printf("RESIDUE %d\n", residue_device(va2, N));
  CHECK(cuMemUnmap(va2, N));
  CHECK(cuMemRelease(h2));
  CHECK(cuMemAddressFree(va2, N));
  free(buf);
#elif defined(WAY_async)
  extern CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  CUstream s = (CUstream)(uintptr_t)0x5;
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUdeviceptr a, b;
  CHECK(cuMemAllocAsync(&a, N, s));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CHECK(cuMemFreeAsync(a, s));
  CHECK(cuMemAllocAsync(&b, N, s));
  printf("REUSED %d\n", a == b);
  printf("RESIDUE %d\n", residue_device(b, N));
  CHECK(cuMemFreeAsync(b, s));
  free(buf);
#elif defined(WAY_host)
  extern CUresult cuMemHostAlloc(void **, size_t, unsigned int);
  extern CUresult cuMemFreeHost(void *);
  void *a, *b;
  CHECK(cuMemHostAlloc(&a, N, 0));
  fill(a, N);
  CHECK(cuMemFreeHost(a));
  CHECK(cuMemHostAlloc(&b, N, 0));
  printf("REUSED %d\n", a == b);
  printf("RESIDUE %d\n", residue_of(b, N));
  CHECK(cuMemFreeHost(b));
#elif defined(WAY_ipc)
  extern CUresult cuIpcGetMemHandle(CUipcMemHandle *, CUdeviceptr);
  extern CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *, CUipcMemHandle, unsigned int);
  extern CUresult cuIpcCloseMemHandle(CUdeviceptr);
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUdeviceptr a;
  CHECK(cuMemAlloc_v2(&a, N));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CUipcMemHandle ih;
  CHECK(cuIpcGetMemHandle(&ih, a));
  pid_t pid = fork();
  if (pid == 0) { /* the importer maps, reads and closes: it must not clear the exporter's data */
    CUdeviceptr m;
    if (cuIpcOpenMemHandle_v2(&m, ih, 1)) _exit(2);
    int seen = residue_device(m, N);
    if (cuIpcCloseMemHandle(m)) _exit(3);
    _exit(seen == N ? 0 : 4);
  }
  int st;
  waitpid(pid, &st, 0);
  printf("IMPORTER %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 99);
  printf("INTACT %d\n", residue_device(a, N) == N);
  d_alloc = cuMemAlloc_v2, d_free = cuMemFree_v2, d_htod = cuMemcpyHtoD_v2;
  CHECK(cuMemFree_v2(a));
  CUdeviceptr b;
  CHECK(cuMemAlloc_v2(&b, N));
  printf("RESIDUE %d\n", residue_device(b, N));
  CHECK(cuMemFree_v2(b));
  free(buf);
#elif defined(WAY_stress)
  d_alloc = cuMemAlloc_v2, d_free = cuMemFree_v2, d_htod = cuMemcpyHtoD_v2;
  extern void *stress(void *);
  int threads = 16;
  pthread_t t[16];
  pace_us = argc > 2 ? atoi(argv[2]) : 0;
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, stress, (void *)(intptr_t)(iters > 1 ? iters : 1000));
  long total = 0;
  for (int i = 0; i < threads; i++) { void *r; pthread_join(t[i], &r); total += (long)(intptr_t)r; }
  printf("RESIDUE %ld\n", total);
#elif defined(WAY_fork)
  d_alloc = cuMemAlloc_v2, d_free = cuMemFree_v2, d_htod = cuMemcpyHtoD_v2;
  round_device();
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    round_device();
    exit(0); /* exit, not _exit: destructors (libkvh's final flush) run */
  }
  int st;
  waitpid(pid, &st, 0);
  printf("CHILD %d %d\n", (int)pid, WIFEXITED(st) ? WEXITSTATUS(st) : 99);
#elif defined(WAY_edge)
  CUdeviceptr a = 0xabcdef;
  /* a failing real call leaves the out-param alone */
  int rc = cuMemAlloc_v2(&a, (size_t)1 << 40);
  printf("OOM %d UNTOUCHED %d\n", rc, a == 0xabcdef);
  /* unknown pointer and double free pass through to the driver */
  printf("UNKNOWN %d\n", cuMemFree_v2(0x1234));
  CHECK(cuMemAlloc_v2(&a, 4096));
  CHECK(cuMemFree_v2(a));
  printf("DOUBLE %d\n", cuMemFree_v2(a));
  /* a failing free: the memory stays allocated and tracked */
  CHECK(cuMemAlloc_v2(&a, 4096));
  setenv("FAKECUDA_FREE_FAIL", "1", 1);
  printf("FREEFAIL %d\n", cuMemFree_v2(a));
  unsetenv("FAKECUDA_FREE_FAIL");
  CHECK(cuMemFree_v2(a));
  /* NULL frees: the driver's own answer, whatever it is */
  extern CUresult cuMemFreeHost(void *);
  extern CUresult cuMemHostUnregister(void *);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  extern CUresult cuMemUnmap(CUdeviceptr, size_t);
  extern CUresult cuIpcCloseMemHandle(CUdeviceptr);
  printf("NULLFREE %d NULLHOST %d NULLUNREG %d NULLASYNC %d NULLUNMAP %d NULLIPC %d\n", cuMemFree_v2(0), cuMemFreeHost(NULL),
         cuMemHostUnregister(NULL), cuMemFreeAsync(0, (CUstream)(uintptr_t)0x5), cuMemUnmap(0, 4096), cuIpcCloseMemHandle(0));
  printf("RESIDUE 0\n");
#elif defined(WAY_deny)
  unsigned char kv[4096];
  fill(kv, sizeof kv);
  for (int i = 0; i < 500; i++) {
    CUdeviceptr p;
    int rc = cuMemAlloc_v2(&p, sizeof kv);
    if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
      printf("DENIED %d\n", i);
      /* A denied process's child stays denied until the agent allows it. */
      pid_t pid = fork();
      if (pid == 0) {
        for (int j = 0; j < 100; j++) {
          rc = cuMemAlloc_v2(&p, sizeof kv);
          if (j == 0) printf("CHILD_FIRST %d\n", rc);
          if (rc == 0) {
            cuMemFree_v2(p);
            printf("CHILD_ALLOWED %d\n", j);
            exit(0);
          }
          usleep(10000);
        }
        printf("CHILD_DENIED 1\n");
        exit(0);
      }
      int st;
      waitpid(pid, &st, 0);
      printf("CHILD_EXIT %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : 99);
      return 0;
    }
    if (rc == 0) {
      cuMemcpyHtoD_v2(p, kv, sizeof kv); /* a request's KV data */
      cuMemFree_v2(p);
    }
    usleep(10000);
  }
  printf("NOT DENIED\n");
#elif defined(WAY_churn)
  long total = iters > 1 ? iters : 1000000, live = argc > 2 ? atol(argv[2]) : 10000, rate = argc > 3 ? atol(argv[3]) : 100;
  size_t size = argc > 4 ? (size_t)atol(argv[4]) : 4096;
  CUdeviceptr *ps = calloc((size_t)live, sizeof *ps);
  unsigned long long x = 88172645463325252ULL;
  long calls = 0; /* hooked calls made: the outside count of events */
  for (long i = 0; i < live; i++, calls++) CHECK(cuMemAlloc_v2(&ps[i], size));
  for (long i = live; i < total; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    long k = (long)(x % (unsigned long long)live);
    CHECK(cuMemFree_v2(ps[k]));
    CHECK(cuMemAlloc_v2(&ps[k], size));
    calls += 2;
    if (rate > 0 && i % rate == 0) usleep(1000);
  }
  for (long i = 0; i < live; i++, calls++) CHECK(cuMemFree_v2(ps[i]));
  printf("CALLS %ld\n", calls);
  printf("RESIDUE 0\n");
  free(ps);
#elif defined(WAY_bench)
  long n = iters > 1 ? iters : 400000, live = 1024; /* a few thousand live KV blocks, as in serving */
  struct timespec t0, t1, t2;
  CUdeviceptr *ps = malloc((size_t)live * sizeof *ps);
  uint64_t ta = 0, tf = 0;
  long done = 0;
  for (; done + live <= n; done += live) {
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < live; i++) CHECK(cuMemAlloc_v2(&ps[i], 256));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (long i = live - 1; i >= 0; i--) CHECK(cuMemFree_v2(ps[i]));
    clock_gettime(CLOCK_MONOTONIC, &t2);
    ta += (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
    tf += (uint64_t)((t2.tv_sec - t1.tv_sec) * 1000000000L + (t2.tv_nsec - t1.tv_nsec));
  }
  printf("ALLOC_NS %.1f\nFREE_NS %.1f\n", (double)ta / (double)done, (double)tf / (double)done);
  extern CUresult cuMemHostAlloc(void **, size_t, unsigned int);
  extern CUresult cuMemFreeHost(void *);
  size_t hn = 64 << 20;
  void *h;
  CHECK(cuMemHostAlloc(&h, hn, 0));
  memset(h, 1, hn);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  memset(h, 0, hn);
  __asm__ __volatile__("" ::: "memory");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  memset(h, 1, hn);
  clock_gettime(CLOCK_MONOTONIC, &t2);
  (void)t2;
  struct timespec t3, t4;
  clock_gettime(CLOCK_MONOTONIC, &t3);
  CHECK(cuMemFreeHost(h));
  clock_gettime(CLOCK_MONOTONIC, &t4);
  double ms = (double)((t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
  double fr = (double)((t4.tv_sec - t3.tv_sec) * 1000000000L + (t4.tv_nsec - t3.tv_nsec));
  printf("HOST_MEMSET_GBS %.2f\nHOST_FREE_GBS %.2f\n", (double)hn / ms, (double)hn / fr);
  free(ps);
#elif defined(WAY_failclosed)
  extern CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
  extern CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
  extern CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
  extern CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
  extern CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  extern CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  extern CUresult cuMemHostAlloc(void **, size_t, unsigned int);
  extern CUresult cuMemAllocHost_v2(void **, size_t);
  extern CUresult cuMemFreeHost(void *);
  extern CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
  extern CUresult cuMemRelease(CUmemGenericAllocationHandle);
  CUstream s = (CUstream)(uintptr_t)0x5;
  if (argc > 1 && !strcmp(argv[1], "hold")) {
    /* Memory allocated while the agent was there is freed after it left:
     * the free still zeroizes and goes through. */
    unsigned char *buf = malloc(N);
    fill(buf, N);
    CUdeviceptr held;
    CHECK(cuMemAlloc_v2(&held, N));
    CHECK(cuMemcpyHtoD_v2(held, buf, N));
    for (int i = 0; i < 500; i++) {
      CUdeviceptr q;
      int rc = cuMemAlloc_v2(&q, 256);
      if (rc) { printf("CLOSED %d\n", rc); break; }
      CHECK(cuMemFree_v2(q));
      usleep(10000);
    }
    printf("HELD_FREE %d\n", cuMemFree_v2(held));
    printf("HELD_RESIDUE %d\n", residue_device(held, N));
    free(buf);
  }
  CUdeviceptr d;
  size_t pitch;
  void *h;
  CUmemGenericAllocationHandle vh;
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  int rc;
#define TRY(name, call, release) do { rc = (call); printf("%s %d\n", name, rc); if (!rc) CHECK(release); } while (0)
  TRY("cuMemAlloc_v2", cuMemAlloc_v2(&d, 256), cuMemFree_v2(d));
  TRY("cuMemAllocManaged", cuMemAllocManaged(&d, 256, 1), cuMemFree_v2(d));
  TRY("cuMemAllocPitch_v2", cuMemAllocPitch_v2(&d, &pitch, 100, 4, 4), cuMemFree_v2(d));
  TRY("cuMemAllocAsync", cuMemAllocAsync(&d, 256, s), cuMemFreeAsync(d, s));
  TRY("cuMemAllocAsync_ptsz", cuMemAllocAsync_ptsz(&d, 256, s), cuMemFreeAsync(d, s));
  TRY("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync(&d, 256, NULL, s), cuMemFreeAsync(d, s));
  TRY("cuMemAllocFromPoolAsync_ptsz", cuMemAllocFromPoolAsync_ptsz(&d, 256, NULL, s), cuMemFreeAsync(d, s));
  TRY("cuMemHostAlloc", cuMemHostAlloc(&h, 256, 0), cuMemFreeHost(h));
  TRY("cuMemAllocHost_v2", cuMemAllocHost_v2(&h, 256), cuMemFreeHost(h));
  TRY("cuMemCreate", cuMemCreate(&vh, 4096, &prop, 0), cuMemRelease(vh));
#undef TRY
  printf("RESIDUE 0\n");
#elif defined(WAY_vmmalias)
  extern CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
  extern CUresult cuMemRelease(CUmemGenericAllocationHandle);
  extern CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
  extern CUresult cuMemAddressFree(CUdeviceptr, size_t);
  extern CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  extern CUresult cuMemUnmap(CUdeviceptr, size_t);
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUmemGenericAllocationHandle h[3], g[3];
  CUdeviceptr va, vb, v2;
  int res;
  /* 1. One cuMemUnmap over three mappings: each one's memory is zeroized
   * before the driver can hand it out again. */
  CHECK(cuMemAddressReserve(&va, 3 * N, 0, 0, 0));
  for (int i = 0; i < 3; i++) {
    CHECK(cuMemCreate(&h[i], N, &prop, 0));
    CHECK(cuMemMap(va + (CUdeviceptr)i * N, N, 0, h[i], 0));
    CHECK(cuMemcpyHtoD_v2(va + (CUdeviceptr)i * N, buf, N));
  }
  CHECK(cuMemUnmap(va, 3 * N));
  for (int i = 0; i < 3; i++) CHECK(cuMemRelease(h[i]));
  res = 0;
  for (int i = 0; i < 3; i++) { /* the next tenant gets the same three memfds back */
    CHECK(cuMemCreate(&g[i], N, &prop, 0));
    CHECK(cuMemMap(va + (CUdeviceptr)i * N, N, 0, g[i], 0));
    res += residue_device(va + (CUdeviceptr)i * N, N);
  }
  printf("MULTI_RESIDUE %d\n", res);
  CHECK(cuMemUnmap(va, 3 * N));
  for (int i = 0; i < 3; i++) CHECK(cuMemRelease(g[i]));
  CHECK(cuMemAddressFree(va, 3 * N));
  /* 2. A handle mapped at two addresses: unmapping one alias leaves the data
   * at the other; unmapping the last clears it. */
  CHECK(cuMemCreate(&h[0], N, &prop, 0));
  CHECK(cuMemAddressReserve(&va, N, 0, 0, 0));
  CHECK(cuMemAddressReserve(&vb, N, 0, 0, 0));
  CHECK(cuMemMap(va, N, 0, h[0], 0));
  CHECK(cuMemMap(vb, N, 0, h[0], 0));
  CHECK(cuMemcpyHtoD_v2(va, buf, N));
  CHECK(cuMemUnmap(vb, N));
  printf("ALIAS_INTACT %d\n", residue_device(va, N) == N);
  CHECK(cuMemUnmap(va, N));
  CHECK(cuMemRelease(h[0]));
  CHECK(cuMemCreate(&g[0], N, &prop, 0));
  CHECK(cuMemMap(va, N, 0, g[0], 0));
  printf("ALIAS_RESIDUE %d\n", residue_device(va, N));
  /* ... and both aliases in one unmap: cleared once, no residue. */
  CHECK(cuMemAddressReserve(&v2, 2 * N, 0, 0, 0));
  CHECK(cuMemUnmap(va, N));
  CHECK(cuMemMap(v2, N, 0, g[0], 0));
  CHECK(cuMemMap(v2 + N, N, 0, g[0], 0));
  CHECK(cuMemcpyHtoD_v2(v2, buf, N));
  CHECK(cuMemUnmap(v2, 2 * N));
  CHECK(cuMemRelease(g[0]));
  CHECK(cuMemCreate(&h[0], N, &prop, 0));
  CHECK(cuMemMap(va, N, 0, h[0], 0));
  printf("BOTH_RESIDUE %d\n", residue_device(va, N));
  CHECK(cuMemUnmap(va, N));
  CHECK(cuMemRelease(h[0]));
  /* 3. Released while still mapped: the memory lives until the last unmap,
   * which clears it. */
  CHECK(cuMemCreate(&h[1], N, &prop, 0));
  CHECK(cuMemMap(vb, N, 0, h[1], 0));
  CHECK(cuMemcpyHtoD_v2(vb, buf, N));
  CHECK(cuMemRelease(h[1]));
  printf("RELEASED_INTACT %d\n", residue_device(vb, N) == N);
  CHECK(cuMemUnmap(vb, N));
  CHECK(cuMemCreate(&g[1], N, &prop, 0));
  CHECK(cuMemMap(vb, N, 0, g[1], 0));
  printf("RELEASED_RESIDUE %d\n", residue_device(vb, N));
  CHECK(cuMemUnmap(vb, N));
  CHECK(cuMemRelease(g[1]));
  CHECK(cuMemAddressFree(va, N));
  CHECK(cuMemAddressFree(vb, N));
  CHECK(cuMemAddressFree(v2, 2 * N));
  free(buf);
  printf("RESIDUE 0\n");
#elif defined(WAY_table)
  long live = iters > 1 ? iters : 1100000, dirty = 0;
  CUdeviceptr *ps = calloc((size_t)live, sizeof *ps);
  unsigned char kv[256], chk[256];
  fill(kv, sizeof kv);
  for (long i = 0; i < live; i++) {
    CHECK(cuMemAlloc_v2(&ps[i], sizeof kv));
    CHECK(cuMemcpyHtoD_v2(ps[i], kv, sizeof kv));
  }
  for (long i = 0; i < live; i++) {
    CHECK(cuMemFree_v2(ps[i]));
    peek(chk, ps[i], sizeof chk); /* the freed block, as the next owner would get it */
    dirty += residue_of(chk, sizeof chk) > 0;
  }
  printf("LIVE %ld\nDIRTY %ld\n", live, dirty);
  void (*st)(unsigned long *, unsigned long *, int *);
  *(void **)&st = dlsym(RTLD_DEFAULT, "kvh_stats");
  if (st) {
    unsigned long d, u;
    int deny;
    st(&d, &u, &deny);
    printf("UNTRACKED %lu\n", u);
  }
  free(ps);
  printf("RESIDUE %ld\n", dirty);
#elif defined(WAY_register)
  /* cuMemHostRegister pins memory the application owns; unregistering it
   * must leave every byte where it was (and never write to it at all). */
  extern CUresult cuMemHostRegister_v2(void *, size_t, unsigned int);
  extern CUresult cuMemHostUnregister(void *);
  size_t n = 4 * 4096;
  unsigned char *heap = aligned_alloc(4096, n);
  fill(heap, n);
  CHECK(cuMemHostRegister_v2(heap, n, 0));
  CHECK(cuMemHostUnregister(heap));
  printf("HEAP_INTACT %d\n", residue_of(heap, n) == (int)n);
  free(heap);
  char path[] = "/tmp/kvh-register-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) die("mkstemp", fd);
  unlink(path);
  unsigned char *content = malloc(n), *back = malloc(n);
  fill(content, n);
  if (write(fd, content, n) != (ssize_t)n) die("write", 1);
  unsigned char *shared = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (shared == MAP_FAILED) die("mmap shared", 1);
  CHECK(cuMemHostRegister_v2(shared, n, 0));
  CHECK(cuMemHostUnregister(shared));
  munmap(shared, n);
  printf("FILE_INTACT %d\n", pread(fd, back, n, 0) == (ssize_t)n && memcmp(back, content, n) == 0);
  unsigned char *ro = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0); /* mmapped weights */
  if (ro == MAP_FAILED) die("mmap read-only", 1);
  CHECK(cuMemHostRegister_v2(ro, n, 0));
  CHECK(cuMemHostUnregister(ro));
  printf("RO_INTACT %d\n", memcmp(ro, content, n) == 0);
  munmap(ro, n);
  close(fd);
  free(content);
  free(back);
  printf("RESIDUE 0\n");
#elif defined(WAY_ctx)
  extern CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
  extern CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
  extern CUresult cuDevicePrimaryCtxRelease_v2(CUdevice);
  extern CUresult cuMemHostAlloc(void **, size_t, unsigned int);
  extern CUresult cuMemFreeHost(void *);
  extern CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
  CUresult (*destroy)(CUcontext), (*reset)(CUdevice);
  CHECK(cuGetProcAddress("cuCtxDestroy", (void **)&destroy, 3020, 0));
  CHECK(cuGetProcAddress("cuDevicePrimaryCtxReset", (void **)&reset, 10000, 0));
  unsigned char *buf = malloc(N);
  fill(buf, N);
  CUdeviceptr a, b;
  void *ha, *hb;
  CUcontext c, pc;
  /* a created context, destroyed with a device and a pinned host buffer live */
  CHECK(cuCtxCreate_v2(&c, 0, 0));
  CHECK(cuMemAlloc_v2(&a, N));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CHECK(cuMemHostAlloc(&ha, N, 0));
  fill(ha, N);
  CHECK(destroy(c));
  CHECK(cuMemAlloc_v2(&b, N));
  CHECK(cuMemHostAlloc(&hb, N, 0));
  printf("REUSED %d\n", a == b && ha == hb);
  int ctx_residue = residue_device(b, N) + residue_of(hb, N);
  printf("CTX_RESIDUE %d\n", ctx_residue);
  CHECK(cuMemFree_v2(b));
  CHECK(cuMemFreeHost(hb));
  /* the primary context, retained twice: the first release leaves the memory
   * live and intact, the last frees it */
  CHECK(cuDevicePrimaryCtxRetain(&pc, 0));
  CHECK(cuDevicePrimaryCtxRetain(&pc, 0));
  CHECK(cuMemAlloc_v2(&a, N));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CHECK(cuDevicePrimaryCtxRelease_v2(0));
  printf("LIVE_INTACT %d\n", residue_device(a, N) == N);
  CHECK(cuDevicePrimaryCtxRelease_v2(0));
  CHECK(cuMemAlloc_v2(&b, N));
  int release_residue = residue_device(b, N);
  printf("RELEASE_RESIDUE %d\n", release_residue);
  CHECK(cuMemFree_v2(b));
  /* reset (what cudaDeviceReset does) */
  CHECK(cuDevicePrimaryCtxRetain(&pc, 0));
  CHECK(cuMemAlloc_v2(&a, N));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CHECK(reset(0));
  CHECK(cuMemAlloc_v2(&b, N));
  int reset_residue = residue_device(b, N);
  printf("RESET_RESIDUE %d\n", reset_residue);
  CHECK(cuMemFree_v2(b));
  /* the pre-4.0 usage count: attached once more, the first detach leaves the
   * memory live and intact, the second destroys the context */
  extern CUresult cuCtxAttach(CUcontext *, unsigned int);
  extern CUresult cuCtxDetach(CUcontext);
  CUcontext c2, c3;
  CHECK(cuCtxCreate_v2(&c2, 0, 0));
  CHECK(cuMemAlloc_v2(&a, N));
  CHECK(cuMemcpyHtoD_v2(a, buf, N));
  CHECK(cuCtxAttach(&c3, 0));
  CHECK(cuCtxDetach(c2));
  printf("DETACH_INTACT %d\n", c3 == c2 && residue_device(a, N) == N);
  CHECK(cuCtxDetach(c2));
  CHECK(cuMemAlloc_v2(&b, N));
  int detach_residue = residue_device(b, N);
  printf("DETACH_RESIDUE %d\n", detach_residue);
  CHECK(cuMemFree_v2(b));
  /* a destroy the driver refuses frees nothing (the witness counts it) */
  extern CUresult cuCtxDestroy_v2(CUcontext);
  printf("REFUSED %d\n", cuCtxDestroy_v2(NULL) != CUDA_SUCCESS);
  free(buf);
  printf("RESIDUE %d\n", ctx_residue + release_residue + reset_residue + detach_residue);
#elif defined(WAY_graph)
  extern CUresult cuGraphCreate(CUgraph *, unsigned int);
  extern CUresult cuGraphAddMemAllocNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUDA_MEM_ALLOC_NODE_PARAMS *);
  extern CUresult cuGraphAddMemFreeNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUdeviceptr);
  extern CUresult cuGraphAddMemsetNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, const CUDA_MEMSET_NODE_PARAMS *, CUcontext);
  extern CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
  extern CUresult cuGraphLaunch(CUgraphExec, CUstream);
  extern CUresult cuDeviceGraphMemTrim(CUdevice);
  extern CUresult cuStreamBeginCapture_v2(CUstream, CUstreamCaptureMode);
  extern CUresult cuStreamEndCapture(CUstream, CUgraph *);
  extern CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  extern CUresult cuMemsetD8Async(CUdeviceptr, unsigned char, size_t, CUstream);
  CUstream s = (CUstream)(uintptr_t)0x5100;
  unsigned char *look = malloc(N);
#define SECRET_BYTES(p) (peek(look, (p), N), count_byte(look, N, 0x5a))
  /* a graph: alloc, write the secret, free; launched */
  CUgraph g;
  CUgraphNode a, m, f;
  CUgraphExec e;
  CUDA_MEM_ALLOC_NODE_PARAMS ap;
  CUdeviceptr p1, p2, p3, q;
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  p1 = ap.dptr;
  CUDA_MEMSET_NODE_PARAMS mp = {.dst = p1, .pitch = N, .value = 0x5a, .elementSize = 1, .width = N, .height = 1};
  CHECK(cuGraphAddMemsetNode(&m, g, &a, 1, &mp, NULL));
  CHECK(cuGraphAddMemFreeNode(&f, g, &m, 1, p1));
  CHECK(cuGraphInstantiateWithFlags(&e, g, 0));
  CHECK(cuGraphLaunch(e, s));
  CHECK(cuGraphLaunch(e, s)); /* twice: every launch frees it again */
  /* the next graph allocation of that size */
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  printf("GRAPH_REUSED %d\n", ap.dptr == p1);
  int graph_residue = SECRET_BYTES(ap.dptr);
  printf("GRAPH_RESIDUE %d\n", graph_residue);
  /* again, then trim the pool: an ordinary allocation gets the memory */
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  p2 = ap.dptr;
  mp.dst = p2;
  CHECK(cuGraphAddMemsetNode(&m, g, &a, 1, &mp, NULL));
  CHECK(cuGraphAddMemFreeNode(&f, g, &m, 1, p2));
  CHECK(cuGraphInstantiateWithFlags(&e, g, 0));
  CHECK(cuGraphLaunch(e, s));
  CHECK(cuDeviceGraphMemTrim(0));
  CHECK(cuMemAlloc_v2(&q, N));
  printf("TRIM_REUSED %d\n", q == p2);
  int trim_residue = SECRET_BYTES(q);
  printf("TRIM_RESIDUE %d\n", trim_residue);
  CHECK(cuMemFree_v2(q));
  /* stream capture: the free (and what kvh adds before it) become nodes */
  CUgraph cg = NULL;
  CHECK(cuStreamBeginCapture_v2(s, 0));
  CHECK(cuMemAllocAsync(&p3, N, s));
  CHECK(cuMemsetD8Async(p3, 0x5a, N, s));
  CHECK(cuMemFreeAsync(p3, s));
  CUresult end = cuStreamEndCapture(s, &cg);
  printf("CAPTURE_OK %d\n", end == CUDA_SUCCESS && cg != NULL);
  int capture_residue = 0;
  if (end == CUDA_SUCCESS && cg) {
    CHECK(cuGraphInstantiateWithFlags(&e, cg, 0));
    CHECK(cuGraphLaunch(e, s));
    memset(&ap, 0, sizeof ap);
    ap.bytesize = N;
    CHECK(cuGraphCreate(&g, 0));
    CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
    printf("CAPTURE_REUSED %d\n", ap.dptr == p3);
    capture_residue = SECRET_BYTES(ap.dptr);
  }
  printf("CAPTURE_RESIDUE %d\n", capture_residue);
  /* the same graph as the first, built with cuGraphAddNode (CUDA 12.2) */
  extern CUresult cuGraphAddNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUgraphNodeParams *);
  CUgraphNodeParams np;
  memset(&np, 0, sizeof np);
  np.type = CU_GRAPH_NODE_TYPE_MEM_ALLOC;
  np.alloc.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddNode(&a, g, NULL, 0, &np));
  CUdeviceptr p4 = np.alloc.dptr;
  memset(&np, 0, sizeof np);
  np.type = CU_GRAPH_NODE_TYPE_MEMSET;
  np.memset.p = (CUDA_MEMSET_NODE_PARAMS){.dst = p4, .pitch = N, .value = 0x5a, .elementSize = 1, .width = N, .height = 1};
  CHECK(cuGraphAddNode(&m, g, &a, 1, &np));
  memset(&np, 0, sizeof np);
  np.type = CU_GRAPH_NODE_TYPE_MEM_FREE;
  np.free.dptr = p4;
  CHECK(cuGraphAddNode(&f, g, &m, 1, &np));
  CHECK(cuGraphInstantiateWithFlags(&e, g, 0));
  CHECK(cuGraphLaunch(e, s));
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  printf("ADDNODE_REUSED %d\n", ap.dptr == p4);
  int addnode_residue = SECRET_BYTES(ap.dptr);
  printf("ADDNODE_RESIDUE %d\n", addnode_residue);
  free(look);
  printf("RESIDUE %d\n", graph_residue + trim_residue + capture_residue + addnode_residue);
#elif defined(WAY_graphlaunch)
  /* Graph allocations that no free node in their graph frees: the memory
   * stays allocated after a launch, until the application frees it — or,
   * for an executable instantiated with AUTO_FREE_ON_LAUNCH, until the next
   * launch frees it (no free call, no free node). */
  extern CUresult cuGraphCreate(CUgraph *, unsigned int);
  extern CUresult cuGraphAddMemAllocNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUDA_MEM_ALLOC_NODE_PARAMS *);
  extern CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
  extern CUresult cuGraphLaunch(CUgraphExec, CUstream);
  extern CUresult cuGraphExecDestroy(CUgraphExec);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  extern CUresult cuMemsetD8Async(CUdeviceptr, unsigned char, size_t, CUstream);
  CUstream s = (CUstream)(uintptr_t)0x5200;
  unsigned char *look = malloc(N);
#define SECRET_BYTES(p) (peek(look, (p), N), count_byte(look, N, 0x5a))
  CUgraph g;
  CUgraphNode a;
  CUgraphExec e;
  CUDA_MEM_ALLOC_NODE_PARAMS ap;
  /* 1. AUTO_FREE_ON_LAUNCH: one tenant's launch leaves its bytes in the
   * graph's allocation; the next launch (another tenant's request) frees
   * it and allocates it again */
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  CUdeviceptr pa = ap.dptr;
  CHECK(cuGraphInstantiateWithFlags(&e, g, 1 /* CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH */));
  CHECK(cuGraphLaunch(e, s));
  CHECK(cuMemsetD8Async(pa, 0x5a, N, s));
  CHECK(cuGraphLaunch(e, s));
  int autofree_residue = SECRET_BYTES(pa);
  printf("AUTOFREE_RESIDUE %d\n", autofree_residue);
  /* and again, on another stream: the launch is ordered behind the last
   * one (CUDA), and what frees its memory must be too */
  extern int fakecuda_cross_waits(void);
  int waits = fakecuda_cross_waits();
  CHECK(cuGraphLaunch(e, (CUstream)(uintptr_t)0x5201));
  printf("CROSS_STREAM_WAITS %d\n", fakecuda_cross_waits() - waits);
  CHECK(cuMemFreeAsync(pa, s));
  CHECK(cuGraphExecDestroy(e));
  /* 2. Without the flag, a relaunch with the allocation unfreed fails, and
   * the application frees it after each launch: every launch allocates it
   * again, and every free must zeroize it (not only the first) */
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  CUdeviceptr pb = ap.dptr;
  CHECK(cuGraphInstantiateWithFlags(&e, g, 0));
  for (int i = 0; i < 3; i++) {
    CHECK(cuGraphLaunch(e, s));
    CHECK(cuMemsetD8Async(pb, 0x5a, N, s));
    if (i == 0) printf("UNFREED_RELAUNCH_REFUSED %d\n", cuGraphLaunch(e, s) == CUDA_ERROR_INVALID_VALUE);
    CHECK(cuMemFreeAsync(pb, s));
  }
  /* the next graph allocation of that size gets the memory */
  memset(&ap, 0, sizeof ap);
  ap.bytesize = N;
  CHECK(cuGraphCreate(&g, 0));
  CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
  printf("RELAUNCH_REUSED %d\n", ap.dptr == pb);
  int relaunch_residue = SECRET_BYTES(ap.dptr);
  printf("RELAUNCH_RESIDUE %d\n", relaunch_residue);
  /* 3. (review) A captured cuMemFreeAsync of an auto-free executable's live
   * allocation frees nothing until the captured graph runs; the capture is
   * discarded (never instantiated), so the allocation stays live and the
   * next relaunch auto-frees it: that free must be zeroized too. Only with
   * GRAPHLAUNCH_CAPFREE=1, so that the records of part 1 and 2 stay as
   * TestGraphRelaunchZeroized counts them. */
  if (getenv("GRAPHLAUNCH_CAPFREE")) {
    extern CUresult cuStreamBeginCapture_v2(CUstream, CUstreamCaptureMode);
    extern CUresult cuStreamEndCapture(CUstream, CUgraph *);
    extern CUresult cuGraphDestroy(CUgraph);
    CUstream s2 = (CUstream)(uintptr_t)0x5300;
    memset(&ap, 0, sizeof ap);
    ap.bytesize = N;
    CHECK(cuGraphCreate(&g, 0));
    CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
    CUdeviceptr pc = ap.dptr;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 1));
    CHECK(cuGraphLaunch(e, s));
    CHECK(cuMemsetD8Async(pc, 0x5a, N, s));
    CUgraph cg = NULL;
    CHECK(cuStreamBeginCapture_v2(s2, 0));
    CHECK(cuMemFreeAsync(pc, s2)); /* captured: a node of cg, nothing freed now */
    CHECK(cuStreamEndCapture(s2, &cg));
    CHECK(cuGraphDestroy(cg)); /* discarded: pc is still allocated */
    CHECK(cuGraphLaunch(e, s)); /* auto-free: frees pc (and allocates it again) */
    printf("CAPFREE_RESIDUE %d\n", SECRET_BYTES(pc));
    CHECK(cuMemFreeAsync(pc, s));
    CHECK(cuGraphExecDestroy(e));
  }
  /* 4. (review) Executable Y frees the auto-free executable X's allocation
   * with a free node; libkvh could not walk Y's graph (stands in for any
   * walk() failure: the lazy lookup race, depth > 8, no memory, a query the
   * driver refuses). X's relaunch then memsets memory Y already freed. */
  if (getenv("GRAPHLAUNCH_WALKFAIL")) {
    extern CUresult cuGraphAddMemFreeNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUdeviceptr);
    extern int fakecuda_freed_writes(void);
    CUgraph gy;
    CUgraphNode fy;
    CUgraphExec ey;
    memset(&ap, 0, sizeof ap);
    ap.bytesize = N;
    CHECK(cuGraphCreate(&g, 0));
    CHECK(cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap));
    CUdeviceptr px = ap.dptr;
    CHECK(cuGraphInstantiateWithFlags(&e, g, 1));
    CHECK(cuGraphCreate(&gy, 0));
    CHECK(cuGraphAddMemFreeNode(&fy, gy, NULL, 0, px));
    setenv("FAKECUDA_GRAPHQUERY_FAIL", "1", 1);
    CHECK(cuGraphInstantiateWithFlags(&ey, gy, 0));
    unsetenv("FAKECUDA_GRAPHQUERY_FAIL");
    CHECK(cuGraphLaunch(e, s));  /* X allocates px */
    CHECK(cuGraphLaunch(ey, s)); /* Y frees px */
    setenv("FAKECUDA_FAULT_FREED", "1", 1);
    CUresult lrc = cuGraphLaunch(e, s); /* legal: px is freed, nothing to auto-free */
    unsetenv("FAKECUDA_FAULT_FREED");
    printf("WALKFAIL_RELAUNCH_RC %d\n", (int)lrc);
    printf("FREED_WRITES %d\n", fakecuda_freed_writes());
  }
  free(look);
  printf("RESIDUE %d\n", autofree_residue + relaunch_residue);
#elif defined(WAY_imports)
  /* Another process (a forked exporter) shares two buffers, one by IPC and
   * one from its pool; this process fills its allocation table first (run it
   * with a table that cannot grow), then releases both imports the ways a
   * program might — cuMemFree of the IPC import (the driver refuses it),
   * cuIpcCloseMemHandle, cuMemFreeAsync of the pool import. The exporter
   * then checks that every byte it shared is still there. */
  extern CUresult cuIpcGetMemHandle(CUipcMemHandle *, CUdeviceptr);
  extern CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *, CUipcMemHandle, unsigned int);
  extern CUresult cuIpcCloseMemHandle(CUdeviceptr);
  extern CUresult cuMemPoolExportPointer(CUmemPoolPtrExportData *, CUdeviceptr);
  extern CUresult cuMemPoolImportPointer(CUdeviceptr *, CUmemoryPool, CUmemPoolPtrExportData *);
  extern CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
  long fillers = iters > 1 ? iters : 20000;
  extern CUresult cuInit(unsigned int);
  CHECK(cuInit(0)); /* before the fork: the two processes share one device */
  int to_parent[2], to_child[2];
  if (pipe(to_parent) || pipe(to_child)) die("pipe", 1);
  pid_t pid = fork();
  if (pid == 0) { /* the exporter */
    unsigned char *buf = malloc(N);
    fill(buf, N);
    CUdeviceptr a, b;
    if (cuMemAlloc_v2(&a, N) || cuMemAlloc_v2(&b, N) || cuMemcpyHtoD_v2(a, buf, N) || cuMemcpyHtoD_v2(b, buf, N)) _exit(2);
    CUipcMemHandle ih;
    CUmemPoolPtrExportData pd;
    if (cuIpcGetMemHandle(&ih, a) || cuMemPoolExportPointer(&pd, b)) _exit(3);
    if (write(to_parent[1], &ih, sizeof ih) != sizeof ih || write(to_parent[1], &pd, sizeof pd) != sizeof pd) _exit(4);
    char go;
    if (read(to_child[0], &go, 1) != 1) _exit(5);
    _exit(residue_device(a, N) == N && residue_device(b, N) == N ? 0 : 6);
  }
  CUipcMemHandle ih;
  CUmemPoolPtrExportData pd;
  if (read(to_parent[0], &ih, sizeof ih) != sizeof ih || read(to_parent[0], &pd, sizeof pd) != sizeof pd) die("read handles", 1);
  CUdeviceptr *ps = calloc((size_t)fillers, sizeof *ps);
  for (long i = 0; i < fillers; i++) CHECK(cuMemAlloc_v2(&ps[i], 256));
  CUdeviceptr m1, m2;
  CHECK(cuIpcOpenMemHandle_v2(&m1, ih, 1));
  CHECK(cuMemPoolImportPointer(&m2, NULL, &pd));
  printf("WRONG_FREE_REFUSED %d\n", cuMemFree_v2(m1) != CUDA_SUCCESS);
  CHECK(cuIpcCloseMemHandle(m1));
  CHECK(cuMemFreeAsync(m2, NULL));
  void (*st)(unsigned long *, unsigned long *, int *);
  *(void **)&st = dlsym(RTLD_DEFAULT, "kvh_stats");
  if (st) {
    unsigned long d, u;
    int deny;
    st(&d, &u, &deny);
    printf("UNTRACKED %lu\n", u);
  }
  if (write(to_child[1], "g", 1) != 1) die("write", 1);
  int wst;
  waitpid(pid, &wst, 0);
  printf("EXPORTER %d\n", WIFEXITED(wst) ? WEXITSTATUS(wst) : 99);
  for (long i = 0; i < fillers; i++) CHECK(cuMemFree_v2(ps[i]));
  free(ps);
  printf("RESIDUE %d\n", WIFEXITED(wst) && WEXITSTATUS(wst) == 0 ? 0 : 1);
#elif defined(WAY_v1)
  extern CUresult cuMemAlloc(CUdeviceptr_v1 *, unsigned int);
  extern CUresult cuMemFree(CUdeviceptr_v1);
  extern CUresult cuMemAllocPitch(CUdeviceptr_v1 *, unsigned int *, unsigned int, unsigned int, unsigned int);
  extern CUresult cuMemAllocHost(void **, unsigned int);
  extern CUresult cuMemFreeHost(void *);
  extern CUresult cuMemHostRegister(void *, size_t, unsigned int);
  extern CUresult cuMemHostUnregister(void *);
  extern CUresult cuIpcGetMemHandle(CUipcMemHandle *, CUdeviceptr);
  extern CUresult cuIpcOpenMemHandle(CUdeviceptr *, CUipcMemHandle, unsigned int);
  extern CUresult cuIpcCloseMemHandle(CUdeviceptr);
  extern CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
  unsigned char *buf = malloc(N);
  fill(buf, N);
  int residue = 0;
  /* cuMemAlloc/cuMemFree bound directly, then as cuGetProcAddress hands them
   * out at 3010 (which must be what dlsym gives: libkvh's wrapper with it). */
  CUresult (*gpa_alloc)(CUdeviceptr_v1 *, unsigned int), (*gpa_free)(CUdeviceptr_v1);
  CHECK(cuGetProcAddress("cuMemAlloc", (void **)&gpa_alloc, 3010, 0));
  CHECK(cuGetProcAddress("cuMemFree", (void **)&gpa_free, 2000, 0));
  printf("GPA_SAME %d\n", (void *)gpa_alloc == dlsym(RTLD_DEFAULT, "cuMemAlloc") && (void *)gpa_free == dlsym(RTLD_DEFAULT, "cuMemFree"));
  for (int way = 0; way < 2; way++) {
    CUresult (*al)(CUdeviceptr_v1 *, unsigned int) = way ? gpa_alloc : cuMemAlloc;
    CUresult (*fr)(CUdeviceptr_v1) = way ? gpa_free : cuMemFree;
    CUdeviceptr_v1 a, b;
    CHECK(al(&a, N));
    CHECK(cuMemcpyHtoD_v2(a, buf, N));
    CHECK(fr(a));
    CHECK(al(&b, N));
    printf("REUSED %d\n", a == b);
    residue += residue_device(b, N);
    CHECK(fr(b));
  }
  { /* pitch: 256 rows of 256 bytes, N in all */
    CUdeviceptr_v1 a, b;
    unsigned int pa, pb;
    CHECK(cuMemAllocPitch(&a, &pa, 256, N / 256, 4));
    CHECK(cuMemcpyHtoD_v2(a, buf, (size_t)pa * (N / 256)));
    CHECK(cuMemFree(a));
    CHECK(cuMemAllocPitch(&b, &pb, 256, N / 256, 4));
    residue += residue_device(b, (size_t)pb * (N / 256));
    CHECK(cuMemFree(b));
  }
  { /* pinned host */
    void *a, *b;
    CHECK(cuMemAllocHost(&a, N));
    fill(a, N);
    CHECK(cuMemFreeHost(a));
    CHECK(cuMemAllocHost(&b, N));
    residue += residue_of(b, N);
    CHECK(cuMemFreeHost(b));
  }
  { /* registered: the application's memory, never written */
    unsigned char *h = malloc(N);
    fill(h, N);
    CHECK(cuMemHostRegister(h, N, 0));
    CHECK(cuMemHostUnregister(h));
    printf("REGISTERED_INTACT %d\n", residue_of(h, N) == N);
    free(h);
  }
  { /* IPC v1: the importer's close leaves the exporter's data */
    CUdeviceptr a, m;
    CUipcMemHandle ih;
    CHECK(cuMemAlloc_v2(&a, N));
    CHECK(cuMemcpyHtoD_v2(a, buf, N));
    CHECK(cuIpcGetMemHandle(&ih, a));
    CHECK(cuIpcOpenMemHandle(&m, ih, 1));
    CHECK(cuIpcCloseMemHandle(m));
    printf("IPC_INTACT %d\n", residue_device(a, N) == N);
    CHECK(cuMemFree_v2(a));
  }
  free(buf);
  printf("RESIDUE %d\n", residue);
#else
#error "define WAY_<name>"
#endif
  /* A serving process lives on after its work: CLIENT_HOLD_MS keeps it
   * alive (its reporter retrying the agent) before it exits. */
  if (getenv("CLIENT_HOLD_MS")) usleep((useconds_t)atoi(getenv("CLIENT_HOLD_MS")) * 1000);
  return 0;
}

/* With FAKECUDA_KERNEL, how often libkvh's zero-check kernel ran on the fake,
 * and how many of those launches found their flag reset on another stream. */
__attribute__((destructor)) static void kernel_stats(void) {
  void (*st)(int *, int *);
  *(void **)&st = getenv("FAKECUDA_KERNEL") ? dlsym(RTLD_DEFAULT, "fakecuda_kernel_stats") : NULL;
  if (st) {
    int l, u;
    st(&l, &u);
    printf("KERNEL_LAUNCHES %d\nKERNEL_UNORDERED %d\n", l, u);
  }
}

#if defined(WAY_stress) || defined(WAY_driver)
/* kvh_stats, when libkvh is loaded, says how many reports were dropped. */
__attribute__((destructor)) static void report_stats(void) {
  void (*st)(unsigned long *, unsigned long *, int *);
  *(void **)&st = dlsym(RTLD_DEFAULT, "kvh_stats");
  if (st) {
    unsigned long d, u;
    int deny;
    st(&d, &u, &deny);
    printf("DROPPED %lu\n", d);
  }
}
#endif

#if defined(WAY_stress)
/* stress: every new buffer must hold nothing from any earlier owner. */
void *stress(void *arg) {
  long n = (long)(intptr_t)arg, bad = 0;
  size_t sz = 4096;
  unsigned char *buf = malloc(sz), *chk = malloc(sz);
  fill(buf, sz);
  for (long i = 0; i < n; i++) {
    CUdeviceptr p;
    if (d_alloc(&p, sz)) continue;
    peek(chk, p, sz);
    bad += residue_of(chk, sz) > (int)(sz / 8);
    d_htod(p, buf, sz);
    d_free(p);
    if (pace_us) usleep((useconds_t)pace_us);
  }
  free(buf);
  free(chk);
  return (void *)(intptr_t)bad;
}
#endif
