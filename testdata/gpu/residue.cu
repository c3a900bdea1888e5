// residue.cu — make gpu-check's workload, for a machine with an NVIDIA GPU.
//
//   devices            prints "DEVICES <n>"; exits 3 when there is none.
//   residue            tenant A writes a KV-sized buffer and frees it; tenant B
//                      allocates the same size and counts A's bytes it can read.
//                      Two ways: "pool" — cudaMallocAsync from the device's
//                      default pool with its release threshold at the maximum,
//                      so the freed block is reused in stream order (the
//                      control run without libkvh must show residue, or the
//                      check proves nothing) — and "malloc" — cudaMalloc and
//                      cudaFree, where the driver may or may not reuse.
//                      Prints POOL_REUSED/POOL_RESIDUE and MALLOC_REUSED/
//                      MALLOC_RESIDUE.
//   bandwidth <MiB>    raw cuMemsetD8 and a plain read kernel over one buffer,
//                      then the same buffer freed through whatever LD_PRELOAD
//                      holds (libkvh zeroizes and verifies inside cudaFree).
//                      Everything is warmed up first — the context, the
//                      kernels' JIT, and a small free through LD_PRELOAD (libkvh
//                      loads and self-checks its verify kernel on its first
//                      full verify) — so the figures are steady-state GB/s.
// Every CUDA call is checked; any failure exits 1 with the call named.
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define CHECK_CU(x) do { CUresult e_ = (x); if (e_ != CUDA_SUCCESS) { fprintf(stderr, "%s: CUresult %d\n", #x, (int)e_); exit(1); } } while (0)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

__global__ void fill(unsigned char *p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = (unsigned char)(0x41 + i % 23);
}

__global__ void readsum(const unsigned long long *p, size_t n, unsigned long long *out) {
  unsigned long long acc = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) acc |= p[i];
  if (acc) atomicOr(out, acc);
}

static size_t count_a(const unsigned char *h, size_t n) {
  size_t same = 0;
  for (size_t i = 0; i < n; i++) same += h[i] == (unsigned char)(0x41 + i % 23);
  return same;
}

static int devices(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    printf("DEVICES 0 (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none");
    return 3;
  }
  printf("DEVICES %d\n", n);
  return 0;
}

static int residue(void) {
  const size_t n = 64 << 20;
  unsigned char *h = (unsigned char *)malloc(n);
  if (!h) return 1;
  /* pool: stream-ordered reuse of the same block, forced. */
  cudaMemPool_t pool;
  CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
  uint64_t keep = UINT64_MAX;
  CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  unsigned char *a, *b;
  CHECK(cudaMallocAsync((void **)&a, n, s));
  fill<<<1024, 256, 0, s>>>(a, n);
  CHECK(cudaGetLastError());
  CHECK(cudaFreeAsync(a, s));
  CHECK(cudaMallocAsync((void **)&b, n, s));
  CHECK(cudaMemcpyAsync(h, b, n, cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  printf("POOL_REUSED %d\nPOOL_RESIDUE %zu\n", a == b, count_a(h, n));
  CHECK(cudaFreeAsync(b, s));
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaStreamDestroy(s));
  /* malloc: the driver decides whether to hand the block back. */
  CHECK(cudaMalloc((void **)&a, n));
  fill<<<1024, 256>>>(a, n);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(a));
  CHECK(cudaMalloc((void **)&b, n));
  CHECK(cudaMemcpy(h, b, n, cudaMemcpyDeviceToHost));
  printf("MALLOC_REUSED %d\nMALLOC_RESIDUE %zu\n", a == b, count_a(h, n));
  CHECK(cudaFree(b));
  free(h);
  return 0;
}

static int bandwidth(size_t mib) {
  size_t n = mib << 20;
  unsigned char *p, *w;
  unsigned long long *flag;
  /* Warm-up: context, both kernels (JIT from PTX on a newer GPU), the
   * driver's memset, and one free through LD_PRELOAD. */
  CHECK(cudaFree(0));
  CHECK(cudaMalloc((void **)&flag, sizeof *flag));
  CHECK(cudaMalloc((void **)&w, 1 << 20));
  fill<<<64, 256>>>(w, 1 << 20);
  readsum<<<64, 256>>>((const unsigned long long *)w, (1 << 20) / 8, flag);
  CHECK(cudaGetLastError());
  CHECK_CU(cuMemsetD8((CUdeviceptr)w, 0, 1 << 20));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(w));
  CHECK(cudaMalloc((void **)&p, n));
  CHECK(cudaMemset(p, 1, n));
  CHECK(cudaDeviceSynchronize());
  double best_set = 1e9, best_read = 1e9;
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    CHECK_CU(cuMemsetD8((CUdeviceptr)p, 0, n));
    CHECK(cudaDeviceSynchronize());
    double t1 = now();
    readsum<<<1024, 512>>>((const unsigned long long *)p, n / 8, flag);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    double t2 = now();
    if (t1 - t0 < best_set) best_set = t1 - t0;
    if (t2 - t1 < best_read) best_read = t2 - t1;
  }
  CHECK(cudaMemset(p, 1, n));
  CHECK(cudaDeviceSynchronize());
  double t0 = now();
  CHECK(cudaFree(p)); // with libkvh: zeroize + verify + free
  double t1 = now();
  printf("MEMSET_GBS %.1f\nREAD_GBS %.1f\nFREE_GBS %.1f\n", n / best_set / 1e9, n / best_read / 1e9, n / (t1 - t0) / 1e9);
  CHECK(cudaFree(flag));
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "devices")) return devices();
  if (argc > 1 && !strcmp(argv[1], "bandwidth")) return bandwidth(argc > 2 ? strtoul(argv[2], NULL, 10) : 1024);
  if (argc > 1 && strcmp(argv[1], "residue")) {
    fprintf(stderr, "usage: %s [devices | residue | bandwidth MiB]\n", argv[0]);
    return 2;
  }
  return residue();
}
