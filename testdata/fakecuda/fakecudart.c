/* A fake libcudart.so.12 that reaches the driver the way the real runtime
 * does: dlopen("libcuda.so.1"), dlsym(cuGetProcAddress_v2), then one
 * cuGetProcAddress per driver function. It never links libcuda directly. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "kvh_cuda.h"

#define EXPORT __attribute__((visibility("default")))
typedef CUresult (*gpa_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static gpa_t gpa;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static CUresult (*p_init)(unsigned int);
static CUresult (*p_alloc)(CUdeviceptr *, size_t);
static CUresult (*p_free)(CUdeviceptr);
static CUresult (*p_alloc_async)(CUdeviceptr *, size_t, CUstream);
static CUresult (*p_free_async)(CUdeviceptr, CUstream);
static CUresult (*p_host_alloc)(void **, size_t, unsigned int);
static CUresult (*p_free_host)(void *);
static CUresult (*p_memset)(CUdeviceptr, unsigned char, size_t);
static CUresult (*p_dtoh)(void *, CUdeviceptr, size_t);
static CUresult (*p_htod)(CUdeviceptr, const void *, size_t);

static void get(const char *name, void *slot) {
  void *fn = NULL;
  if (gpa && gpa(name, &fn, 12040, CU_GET_PROC_ADDRESS_DEFAULT, NULL) == CUDA_SUCCESS) memcpy(slot, &fn, sizeof fn);
}

static void load(void) {
  void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return;
  gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2");
  get("cuInit", &p_init);
  get("cuMemAlloc", &p_alloc);
  get("cuMemFree", &p_free);
  get("cuMemAllocAsync", &p_alloc_async);
  get("cuMemFreeAsync", &p_free_async);
  get("cuMemHostAlloc", &p_host_alloc);
  get("cuMemFreeHost", &p_free_host);
  get("cuMemsetD8", &p_memset);
  get("cuMemcpyDtoH", &p_dtoh);
  get("cuMemcpyHtoD", &p_htod);
  if (p_init) p_init(0);
}

static int ready(void) { pthread_once(&once, load); return gpa != NULL; }
/* The runtime's error for a driver error, as cudart maps them. */
static cudaError_t err(CUresult r) {
  switch (r) {
  case CUDA_SUCCESS: return cudaSuccess;
  case CUDA_ERROR_OUT_OF_MEMORY: return cudaErrorMemoryAllocation;
  case CUDA_ERROR_NOT_PERMITTED: return cudaErrorNotPermitted;
  default: return 1;
  }
}

EXPORT cudaError_t cudaMalloc(void **p, size_t n) {
  if (!ready() || !p_alloc) return 3;
  CUdeviceptr d;
  CUresult r = p_alloc(&d, n);
  if (r == CUDA_SUCCESS) *p = (void *)(uintptr_t)d;
  return err(r);
}
EXPORT cudaError_t cudaFree(void *p) { if (!ready() || !p_free) return 3; return p ? err(p_free((CUdeviceptr)(uintptr_t)p)) : cudaSuccess; }
EXPORT cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t s) {
  if (!ready() || !p_alloc_async) return 3;
  CUdeviceptr d;
  CUresult r = p_alloc_async(&d, n, s);
  if (r == CUDA_SUCCESS) *p = (void *)(uintptr_t)d;
  return err(r);
}
EXPORT cudaError_t cudaFreeAsync(void *p, cudaStream_t s) { if (!ready() || !p_free_async) return 3; return err(p_free_async((CUdeviceptr)(uintptr_t)p, s)); }
EXPORT cudaError_t cudaMallocHost(void **p, size_t n) { if (!ready() || !p_host_alloc) return 3; return err(p_host_alloc(p, n, 0)); }
EXPORT cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int f) { if (!ready() || !p_host_alloc) return 3; return err(p_host_alloc(p, n, f)); }
EXPORT cudaError_t cudaFreeHost(void *p) { if (!ready() || !p_free_host) return 3; return err(p_free_host(p)); }
EXPORT cudaError_t cudaMemset(void *p, int v, size_t n) { if (!ready() || !p_memset) return 3; return err(p_memset((CUdeviceptr)(uintptr_t)p, (unsigned char)v, n)); }
/* kind: 1 host->device, 2 device->host (cudaMemcpyKind) */
EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, int kind) {
  if (!ready()) return 3;
  if (kind == 1) return err(p_htod((CUdeviceptr)(uintptr_t)dst, src, n));
  if (kind == 2) return err(p_dtoh(dst, (CUdeviceptr)(uintptr_t)src, n));
  memmove(dst, src, n);
  return cudaSuccess;
}
EXPORT cudaError_t cudaGetDriverEntryPoint(const char *sym, void **fn, unsigned long long flags, cudaDriverEntryPointQueryResult *st) {
  if (!ready()) return 3;
  return gpa(sym, fn, 12040, flags, st) == CUDA_SUCCESS && *fn ? cudaSuccess : 500;
}
EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fn, unsigned int ver, unsigned long long flags, cudaDriverEntryPointQueryResult *st) {
  if (!ready()) return 3;
  return gpa(sym, fn, (int)ver, flags, st) == CUDA_SUCCESS && *fn ? cudaSuccess : 500;
}
