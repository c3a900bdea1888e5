/* coop.c — the cooperative API: what a serving framework may call on
 * purpose (tenant and request tags, a PyTorch pluggable allocator) and the
 * counters tests and diagnostics read. */
#include "kvh_internal.h"

/* kvh_set_tenant and kvh_set_request tag this thread's later events (claims
 * the agent records beside the kernel's identity). NULL clears. */
EXPORT void kvh_set_tenant(const char *tenant) {
  memset(tl_tenant, 0, sizeof tl_tenant);
  if (tenant) strncpy(tl_tenant, tenant, sizeof tl_tenant - 1);
}

EXPORT void kvh_set_request(const char *request) {
  memset(tl_request, 0, sizeof tl_request);
  if (request) strncpy(tl_request, request, sizeof tl_request - 1);
}

/* PyTorch CUDAPluggableAllocator signatures:
 *   void* alloc(ssize_t size, int device, cudaStream_t stream)
 *   void free(void* ptr, ssize_t size, int device, cudaStream_t stream)
 * Frees are stream-ordered and zeroized on the tensor's stream. */
EXPORT void *kvh_torch_malloc(ssize_t size, int device, cudaStream_t stream) {
  (void)device;
  CUdeviceptr p = 0;
  if (size < 0 || cuMemAllocAsync(&p, (size_t)size, stream) != CUDA_SUCCESS) return NULL;
  return (void *)(uintptr_t)p;
}

EXPORT void kvh_torch_free(void *ptr, ssize_t size, int device, cudaStream_t stream) {
  (void)size;
  (void)device;
  if (ptr) cuMemFreeAsync((CUdeviceptr)(uintptr_t)ptr, stream);
}

/* kvh_stats reports counters for tests and diagnostics. */
EXPORT void kvh_stats(unsigned long *dropped_out, unsigned long *untracked_out, int *deny_out) {
  if (dropped_out) *dropped_out = atomic_load(&dropped) + atomic_load(&dropped_reported); /* since load */
  if (untracked_out) *untracked_out = atomic_load(&untracked);
  if (deny_out) *deny_out = (atomic_load(&gate) & GATE_DENY) != 0;
}
