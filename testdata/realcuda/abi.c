/* abi.c — the driver ABI questions the real libcuda.so.1 answers without a
 * GPU, asked of whichever driver library argv[1] names, with no libkvh.
 * internal/realcudatest runs it against the fake driver and the real one and
 * compares the answers line by line (TestFakeDriverMatchesRealABI).
 *
 * Output: one "key<TAB>answer" line per question, in a fixed order.
 *   dlsym NAME                      exported | absent
 *   pre  CALL                       rc=N [out=untouched|changed]   before cuInit
 *   init                            rc=N                           cuInit(0)
 *   {pre,post} gpa1 NAME VER FLAGS  rc=N pfn=untouched|null|SYM|internal
 *   {pre,post} gpa2 NAME VER FLAGS  rc=N pfn=... status=N|untouched
 *   {pre,post} gpa1|gpa2 bad-flags, gpa2 NULL-status   (asked in a child)
 * SYM is the exported name dladdr finds at the pointer (offset 0), "internal"
 * a pointer into the library that is not an exported entry point. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef CUresult (*init_t)(unsigned int);
typedef CUresult (*gpa1_t)(const char *, void **, int, unsigned long long);
typedef CUresult (*gpa2_t)(const char *, void **, int, unsigned long long, int *);

#define SENTINEL ((void *)(uintptr_t)0x5a5a5a5a5a5a5a5aULL)
#define STATUS_SENTINEL 0x7a7a

static void *lib;

static const char *where(void *p) {
  static char buf[256];
  Dl_info info;
  if (p == SENTINEL) return "untouched";
  if (!p) return "null";
  if (!dladdr(p, &info)) return "unknown";
  if (info.dli_saddr != p || !info.dli_sname) return "internal";
  snprintf(buf, sizeof buf, "%s", info.dli_sname);
  return buf;
}

/* Names asked for by base name, as runtimes and frameworks do. Unknown and
 * too-new names are included on purpose. */
static const char *const names[] = {
  "cuInit", "cuDriverGetVersion", "cuGetProcAddress", "cuGetExportTable",
  "cuMemAlloc", "cuMemFree", "cuMemAllocPitch", "cuMemAllocHost", "cuMemHostAlloc", "cuMemFreeHost",
  "cuMemHostRegister", "cuMemHostUnregister", "cuMemAllocManaged",
  "cuMemAllocAsync", "cuMemAllocFromPoolAsync", "cuMemFreeAsync", "cuMemPoolTrimTo", "cuMemPoolDestroy",
  "cuMemCreate", "cuMemRelease", "cuMemMap", "cuMemUnmap", "cuMemAddressReserve", "cuMemAddressFree",
  "cuMemImportFromShareableHandle", "cuMemExportToShareableHandle", "cuMemSetAccess",
  "cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuIpcCloseMemHandle",
  "cuMemsetD8", "cuMemsetD8Async", "cuMemcpyDtoH", "cuMemcpyHtoD", "cuMemGetAddressRange",
  "cuCtxSynchronize", "cuStreamSynchronize",
  "cuCtxDestroy", "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxReset", "cuArrayDestroy",
  "cuGraphAddMemFreeNode", "cuDeviceGraphMemTrim",
  "cuKvhNoSuchFunction",       /* unknown to every driver */
  "cuMemBatchDecompressAsync", /* newer than this driver (CUDA 12.6) */
};
/* CUDA versions real runtimes ask at: old ones get v1 functions. 13000 is
 * newer than the driver. */
static const int versions[] = {2000, 3010, 3020, 4000, 6000, 10000, 11020, 11080, 12000, 12020, 13000};
static const unsigned long long flagset[] = {0, 1, 2}; /* DEFAULT, LEGACY_STREAM, PER_THREAD_DEFAULT_STREAM */

/* bad asks one malformed question of cuGetProcAddress in a child process:
 * flags as given, and the status pointer NULL when null_status. */
static void bad(const char *phase, const char *what, gpa1_t g1, gpa2_t g2, int null_status, unsigned long long flags) {
  fflush(stdout);
  int fd[2];
  if (pipe(fd) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    void *p = SENTINEL;
    int st = STATUS_SENTINEL;
    CUresult rc = g1 ? g1("cuMemAlloc", &p, 12000, flags) : g2("cuMemAlloc", &p, 12000, flags, null_status ? NULL : &st);
    char buf[128];
    int n = snprintf(buf, sizeof buf, "rc=%d pfn=%s", rc, where(p));
    if (write(fd[1], buf, (size_t)n) != n) _exit(1);
    _exit(0);
  }
  close(fd[1]);
  char buf[128] = {0};
  ssize_t n = read(fd[0], buf, sizeof buf - 1);
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  printf("%s %s\t%s\n", phase, what, n > 0 ? buf : WIFSIGNALED(status) ? "crash" : "no answer");
}

static void gpa(const char *phase) {
  gpa1_t g1 = (gpa1_t)dlsym(lib, "cuGetProcAddress");
  gpa2_t g2 = (gpa2_t)dlsym(lib, "cuGetProcAddress_v2");
  for (size_t n = 0; n < sizeof names / sizeof names[0]; n++)
    for (size_t v = 0; v < sizeof versions / sizeof versions[0]; v++)
      for (size_t f = 0; f < sizeof flagset / sizeof flagset[0]; f++) {
        if (g1) {
          void *p = SENTINEL;
          CUresult rc = g1(names[n], &p, versions[v], flagset[f]);
          printf("%s gpa1 %s %d %llu\trc=%d pfn=%s\n", phase, names[n], versions[v], flagset[f], rc, where(p));
        }
        if (g2) {
          void *p = SENTINEL;
          int st = STATUS_SENTINEL;
          CUresult rc = g2(names[n], &p, versions[v], flagset[f], &st);
          char sbuf[32];
          if (st == STATUS_SENTINEL) snprintf(sbuf, sizeof sbuf, "untouched");
          else snprintf(sbuf, sizeof sbuf, "%d", st);
          printf("%s gpa2 %s %d %llu\trc=%d pfn=%s status=%s\n", phase, names[n], versions[v], flagset[f], rc, where(p), sbuf);
        }
      }
  /* Bad arguments, each in a child, so a crash is an answer too. Not asked:
   * a NULL symbol or pfn, on which the real driver (535) crashes. */
  if (g1) bad(phase, "gpa1 bad-flags", g1, NULL, 0, 8);
  if (g2) {
    bad(phase, "gpa2 NULL-status", NULL, g2, 1, 0);
    bad(phase, "gpa2 bad-flags", NULL, g2, 0, 8);
  }
}

/* The memory calls that must keep the driver's answer whatever the pointer:
 * NULL frees and allocations, before cuInit. */
static void before_init(void) {
  typedef CUresult (*free_d)(CUdeviceptr);
  typedef CUresult (*free_h)(void *);
  typedef CUresult (*free_a)(CUdeviceptr, void *);
  typedef CUresult (*alloc_d)(CUdeviceptr *, size_t);
  typedef CUresult (*alloc_h)(void **, size_t);
  const char *dfrees[] = {"cuMemFree", "cuMemFree_v2", "cuIpcCloseMemHandle"};
  for (size_t i = 0; i < sizeof dfrees / sizeof dfrees[0]; i++) {
    free_d f = (free_d)dlsym(lib, dfrees[i]);
    if (f) printf("pre %s(0)\trc=%d\n", dfrees[i], f(0));
  }
  const char *hfrees[] = {"cuMemFreeHost", "cuMemHostUnregister"};
  for (size_t i = 0; i < sizeof hfrees / sizeof hfrees[0]; i++) {
    free_h f = (free_h)dlsym(lib, hfrees[i]);
    if (f) printf("pre %s(NULL)\trc=%d\n", hfrees[i], f(NULL));
  }
  const char *afrees[] = {"cuMemFreeAsync", "cuMemFreeAsync_ptsz"};
  for (size_t i = 0; i < sizeof afrees / sizeof afrees[0]; i++) {
    free_a f = (free_a)dlsym(lib, afrees[i]);
    if (f) printf("pre %s(0, 0)\trc=%d\n", afrees[i], f(0, NULL));
  }
  const char *dallocs[] = {"cuMemAlloc", "cuMemAlloc_v2"};
  for (size_t i = 0; i < sizeof dallocs / sizeof dallocs[0]; i++) {
    alloc_d f = (alloc_d)dlsym(lib, dallocs[i]);
    if (!f) continue;
    CUdeviceptr p = 0x5a5a;
    CUresult rc = f(&p, 4096);
    printf("pre %s(&p, 4096)\trc=%d out=%s\n", dallocs[i], rc, p == 0x5a5a ? "untouched" : "changed");
  }
  const char *hallocs[] = {"cuMemAllocHost", "cuMemAllocHost_v2"};
  for (size_t i = 0; i < sizeof hallocs / sizeof hallocs[0]; i++) {
    alloc_h f = (alloc_h)dlsym(lib, hallocs[i]);
    if (!f) continue;
    void *p = SENTINEL;
    CUresult rc = f(&p, 4096);
    printf("pre %s(&p, 4096)\trc=%d out=%s\n", hallocs[i], rc, p == SENTINEL ? "untouched" : "changed");
  }
}

/* Entry points a caller may bind by name (dlsym): the v1 names, the v2 names
 * and the per-thread-stream variants of the memory family. */
static const char *const exported[] = {
  "cuGetProcAddress", "cuGetProcAddress_v2", "cuGetExportTable", "cuInit", "cuDriverGetVersion",
  "cuMemAlloc", "cuMemAlloc_v2", "cuMemFree", "cuMemFree_v2", "cuMemAllocPitch", "cuMemAllocPitch_v2",
  "cuMemAllocHost", "cuMemAllocHost_v2", "cuMemHostAlloc", "cuMemFreeHost", "cuMemHostRegister",
  "cuMemHostRegister_v2", "cuMemHostUnregister", "cuMemAllocManaged", "cuMemAllocAsync", "cuMemAllocAsync_ptsz",
  "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz", "cuMemFreeAsync", "cuMemFreeAsync_ptsz",
  "cuMemPoolTrimTo", "cuMemPoolDestroy", "cuMemCreate", "cuMemRelease", "cuMemMap", "cuMemUnmap",
  "cuMemAddressReserve", "cuMemAddressFree", "cuMemImportFromShareableHandle", "cuMemExportToShareableHandle",
  "cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2", "cuIpcCloseMemHandle", "cuIpcGetMemHandle",
  "cuMemsetD8", "cuMemsetD8_v2", "cuMemsetD8_v2_ptds", "cuMemsetD8Async", "cuMemsetD8Async_ptsz",
  "cuMemcpyDtoH", "cuMemcpyDtoH_v2", "cuMemcpyHtoD_v2", "cuMemGetAddressRange", "cuMemGetAddressRange_v2",
  "cuCtxSynchronize", "cuStreamSynchronize", "cuStreamSynchronize_ptsz",
  "cuCtxDestroy", "cuCtxDestroy_v2", "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2",
  "cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2", "cuArrayDestroy", "cuGraphAddMemFreeNode",
  "cuDeviceGraphMemTrim",
};

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s /path/to/libcuda.so.1\n", argv[0]);
    return 2;
  }
  lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  setvbuf(stdout, NULL, _IOFBF, 1 << 16);
  for (size_t i = 0; i < sizeof exported / sizeof exported[0]; i++)
    printf("dlsym %s\t%s\n", exported[i], dlsym(lib, exported[i]) ? "exported" : "absent");
  before_init();
  gpa("pre");
  init_t init = (init_t)dlsym(lib, "cuInit");
  printf("init\trc=%d\n", init ? init(0) : -1);
  gpa("post");
  return 0;
}
