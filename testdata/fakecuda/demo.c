/* kvh_demo: a small multi-tenant "serving process". It handles tenant A's
 * request (writing its KV cache into device memory), frees the block, then
 * handles tenant B's request in a new block and prints what B can read.
 * argv[1] picks how it reaches the driver: runtime (cudaMalloc/cudaFree),
 * driver (cuMemAlloc_v2/cuMemFree_v2) or vmm (cuMemCreate/Map ... Unmap/Release,
 * as vLLM's sleep mode does). */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvh_cuda.h"

#define BLOCK 4096
static const char kv_a[] = "KV[tenant-a] user: my card is 4111-1111-1111-1111, ssn 078-05-1120; assistant: noted.";

extern cudaError_t cudaMalloc(void **, size_t);
extern cudaError_t cudaFree(void *);
extern cudaError_t cudaMemcpy(void *, const void *, size_t, int);
extern CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
extern CUresult cuMemFree_v2(CUdeviceptr);
extern CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
extern CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);
extern CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
extern CUresult cuMemRelease(CUmemGenericAllocationHandle);
extern CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
extern CUresult cuMemAddressFree(CUdeviceptr, size_t);
extern CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
extern CUresult cuMemUnmap(CUdeviceptr, size_t);

static const char *way;
static CUmemGenericAllocationHandle vmm_h;

static void tag(const char *tenant) {
  /* cooperative tagging, when libkvh is loaded */
  void (*set)(const char *);
  *(void **)&set = dlsym(RTLD_DEFAULT, "kvh_set_tenant");
  if (set) set(tenant);
}

static CUdeviceptr alloc_block(void) {
  CUdeviceptr p = 0;
  if (!strcmp(way, "runtime")) {
    void *v;
    if (cudaMalloc(&v, BLOCK)) exit(1);
    p = (CUdeviceptr)(uintptr_t)v;
  } else if (!strcmp(way, "driver")) {
    if (cuMemAlloc_v2(&p, BLOCK)) exit(1);
  } else {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    if (cuMemCreate(&vmm_h, BLOCK, &prop, 0) || cuMemAddressReserve(&p, BLOCK, 0, 0, 0) || cuMemMap(p, BLOCK, 0, vmm_h, 0)) exit(1);
  }
  return p;
}

static void free_block(CUdeviceptr p) {
  if (!strcmp(way, "runtime")) cudaFree((void *)(uintptr_t)p);
  else if (!strcmp(way, "driver")) cuMemFree_v2(p);
  else { cuMemUnmap(p, BLOCK); cuMemRelease(vmm_h); cuMemAddressFree(p, BLOCK); }
}

int main(int argc, char **argv) {
  way = argc > 1 ? argv[1] : "runtime";
  char buf[BLOCK];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = kv_a[i % (sizeof kv_a - 1)]; /* a full KV block */

  tag("tenant-a");
  CUdeviceptr a = alloc_block();
  cuMemcpyHtoD_v2(a, buf, BLOCK);
  free_block(a); /* request done: the engine returns the block */

  tag("tenant-b");
  CUdeviceptr b = alloc_block();
  char got[BLOCK];
  cuMemcpyDtoH_v2(got, b, BLOCK);
  size_t nonzero = 0;
  for (size_t i = 0; i < BLOCK; i++) nonzero += got[i] != 0;
  if (nonzero) {
    char text[120];
    size_t n = 0;
    size_t first = 0;
    while (first < BLOCK && !got[first]) first++;
    for (size_t i = first; i < BLOCK && n < sizeof text - 1; i++) text[n++] = isprint((unsigned char)got[i]) ? got[i] : '.';
    text[n] = 0;
    printf("  [%-7s] tenant-b's fresh block holds %zu bytes of tenant-a's data: \"%.86s...\"\n", way, nonzero, text);
  } else {
    printf("  [%-7s] tenant-b's fresh block holds only zeros (%d bytes checked)\n", way, BLOCK);
  }
  free_block(b);
  return nonzero ? 3 : 0;
}
