// residue.cu — make gpu-check's workload, for a machine with an NVIDIA GPU.
//
//   residue            tenant A writes a KV-sized buffer and frees it; tenant B
//                      allocates the same size and counts A's bytes it can read.
//                      Prints "RESIDUE <bytes>".
//   bandwidth <MiB>    raw cuMemsetD8 and a plain read kernel over one buffer,
//                      then the same buffer freed through whatever LD_PRELOAD
//                      holds (libkvh zeroizes and verifies inside cudaFree).
//                      Prints GB/s figures.
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

__global__ void fill(unsigned char *p, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = (unsigned char)(0x41 + i % 23);
}

__global__ void readsum(const unsigned long long *p, size_t n, unsigned long long *out) {
  unsigned long long acc = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) acc |= p[i];
  if (acc) atomicOr(out, acc);
}

static int residue(void) {
  const size_t n = 64 << 20;
  unsigned char *a, *b;
  CHECK(cudaMalloc(&a, n));
  fill<<<1024, 256>>>(a, n);
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaFree(a));
  CHECK(cudaMalloc(&b, n));
  unsigned char *h = (unsigned char *)malloc(n);
  CHECK(cudaMemcpy(h, b, n, cudaMemcpyDeviceToHost));
  size_t same = 0;
  for (size_t i = 0; i < n; i++) same += h[i] == (unsigned char)(0x41 + i % 23);
  printf("REUSED %d\nRESIDUE %zu\n", a == b, same);
  CHECK(cudaFree(b));
  free(h);
  return 0;
}

static int bandwidth(size_t mib) {
  size_t n = mib << 20;
  unsigned char *p;
  unsigned long long *flag;
  CHECK(cudaMalloc(&p, n));
  CHECK(cudaMalloc(&flag, sizeof *flag));
  CHECK(cudaMemset(p, 1, n));
  CHECK(cudaDeviceSynchronize());
  double best_set = 1e9, best_read = 1e9;
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    cuMemsetD8((CUdeviceptr)p, 0, n);
    CHECK(cudaDeviceSynchronize());
    double t1 = now();
    readsum<<<1024, 512>>>((const unsigned long long *)p, n / 8, flag);
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
  if (argc > 1 && !strcmp(argv[1], "bandwidth")) return bandwidth(argc > 2 ? strtoul(argv[2], NULL, 10) : 1024);
  return residue();
}
