/* The end-to-end test's container program: a serving process that knows
 * nothing of kvh. It links the (fake) CUDA driver, waits so the agent's
 * witness can find the library it maps, then:
 *   workload write SECRET  writes SECRET across a device block, frees it
 *   workload read          allocates a block and prints how many of its
 *                          bytes are not zero (another tenant's residue)
 * and prints whether libkvh is in its own /proc/self/maps. It stays a few
 * seconds after, so the agent can name it while it lives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kvh_cuda.h"

#define BLOCK 65536

extern CUresult cuInit(unsigned int);
extern CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
extern CUresult cuMemFree_v2(CUdeviceptr);
extern CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
extern CUresult cuMemcpyDtoH_v2(void *, CUdeviceptr, size_t);

static int mapped(const char *name) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  while (f && fgets(line, sizeof line, f))
    if (strstr(line, name)) found = 1;
  if (f) fclose(f);
  return found;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *d = getenv("WORKLOAD_DELAY");
  sleep(d ? (unsigned)atoi(d) : 3);
  printf("LIBKVH %s\n", mapped("libkvh.so") ? "mapped" : "absent");
  static unsigned char buf[BLOCK];
  CUdeviceptr p;
  if (cuInit(0) || cuMemAlloc_v2(&p, BLOCK)) { printf("ALLOC failed\n"); return 1; }
  if (!strcmp(argv[1], "write") && argc > 2) {
    size_t n = strlen(argv[2]);
    for (size_t i = 0; i < BLOCK; i++) buf[i] = (unsigned char)argv[2][i % n];
    cuMemcpyHtoD_v2(p, buf, BLOCK);
    cuMemFree_v2(p);
    printf("WROTE %zu\n", (size_t)BLOCK);
  } else {
    cuMemcpyDtoH_v2(buf, p, BLOCK);
    size_t nz = 0;
    for (size_t i = 0; i < BLOCK; i++) nz += buf[i] != 0;
    printf("RESIDUE %zu\n", nz);
    cuMemFree_v2(p);
  }
  fflush(stdout);
  const char *l = getenv("WORKLOAD_LINGER");
  sleep(l ? (unsigned)atoi(l) : 4);
  return 0;
}
