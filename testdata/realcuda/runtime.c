/* runtime.c — a small CUDA runtime client for internal/realcudatest
 * (TestRuntimeFetchesComeBackWrapped). Built four ways: with nvcc (-x cu,
 * -cudart shared and -cudart static) and with gcc against libcudart.so.11.0,
 * linked or (-DVIA_DLOPEN) dlopened RTLD_LOCAL as Python extensions load it.
 * Without a GPU every call fails; the answers are printed one per line
 * ("name<TAB>rc[ ptr=null|set]") so that a run with libkvh can be compared
 * with a run without it: libkvh must change none of them. Lines starting
 * with '#' are informational and not compared. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef VIA_DLOPEN
static void *rt;
#define FN(name) ((__typeof__(&name))sym(#name))
static void *sym(const char *name) {
  void *p = dlsym(rt, name);
  if (!p) {
    fprintf(stderr, "runtime.c: no %s in libcudart: %s\n", name, dlerror());
    exit(2);
  }
  return p;
}
#else
#define FN(name) (&name)
#endif

static char host[1 << 16] __attribute__((aligned(4096)));

static void ptr(const char *name, cudaError_t rc, void *p) {
  printf("%s\t%d ptr=%s\n", name, (int)rc, p ? "set" : "null");
}
static void res(const char *name, cudaError_t rc) { printf("%s\t%d\n", name, (int)rc); }

int main(void) {
#ifdef VIA_DLOPEN
  rt = dlopen("libcudart.so.11.0", RTLD_NOW | RTLD_LOCAL);
  if (!rt) {
    fprintf(stderr, "runtime.c: %s\n", dlerror());
    return 2;
  }
#endif
  int n = -1;
  void *p = NULL;
  size_t pitch = 0;
  res("cudaGetDeviceCount", FN(cudaGetDeviceCount)(&n));
  p = NULL;
  ptr("cudaMalloc", FN(cudaMalloc)(&p, 4096), p);
  res("cudaFree(NULL)", FN(cudaFree)(NULL));
  res("cudaFree(bogus)", FN(cudaFree)((void *)(uintptr_t)0x7f0000001000ULL));
  p = NULL;
  ptr("cudaMallocPitch", FN(cudaMallocPitch)(&p, &pitch, 256, 16), p);
  p = NULL;
  ptr("cudaMallocManaged", FN(cudaMallocManaged)(&p, 4096, cudaMemAttachGlobal), p);
  p = NULL;
  ptr("cudaMallocHost", FN(cudaMallocHost)(&p, 4096), p);
  res("cudaFreeHost(NULL)", FN(cudaFreeHost)(NULL));
  p = NULL;
  ptr("cudaHostAlloc", FN(cudaHostAlloc)(&p, 4096, cudaHostAllocDefault), p);
  res("cudaHostRegister", FN(cudaHostRegister)(host, sizeof host, cudaHostRegisterDefault));
  res("cudaHostUnregister", FN(cudaHostUnregister)(host));
  p = NULL;
  ptr("cudaMallocAsync", FN(cudaMallocAsync)(&p, 4096, 0), p);
  res("cudaFreeAsync(bogus)", FN(cudaFreeAsync)((void *)(uintptr_t)0x7f0000001000ULL, 0));
  cudaIpcMemHandle_t h;
  memset(&h, 0, sizeof h);
  p = NULL;
  ptr("cudaIpcOpenMemHandle", FN(cudaIpcOpenMemHandle)(&p, h, cudaIpcMemLazyEnablePeerAccess), p);
  void *entry = NULL;
  cudaError_t rc = FN(cudaGetDriverEntryPoint)("cuMemAlloc", &entry, cudaEnableDefault);
  ptr("cudaGetDriverEntryPoint(cuMemAlloc)", rc, entry);
  Dl_info info;
  if (entry && dladdr(entry, &info)) printf("# cuMemAlloc entry point in %s (%s)\n", info.dli_fname, info.dli_sname);
  res("cudaDeviceReset", FN(cudaDeviceReset)());
  return 0;
}
