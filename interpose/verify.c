/* verify.c — zeroize and verify: memset (device or host), then read back
 * (off | sample | full). On a real GPU, full verify reads the buffer on the
 * device with an embedded PTX zero-check kernel once that kernel has proved
 * itself in this process; otherwise it copies back in chunks. */
#include "kvh_internal.h"

uint64_t seed_base;

/* ---- device-side full verify: a zero-check kernel from embedded PTX ------
 *
 * Full verification on a real GPU reads the buffer on the device instead of
 * copying it back. The kernel sets a flag when it finds a non-zero 64-bit
 * word. It is trusted only after a self-check proves, in this process, that
 * it reports a zero buffer as zero and a dirty one as dirty; anything that
 * fails (no cuModuleLoadData, another context, a launch error, an unaligned
 * or odd-sized buffer) falls back to chunked copy-back. */
static const char zero_check_ptx[] =
  ".version 6.0\n.target sm_52\n.address_size 64\n"
  ".visible .entry kvh_nonzero(.param .u64 p_ptr, .param .u64 p_words, .param .u64 p_flag)\n{\n"
  ".reg .pred %p<3>;\n.reg .b32 %r<6>;\n.reg .b64 %rd<14>;\n"
  "ld.param.u64 %rd1, [p_ptr];\nld.param.u64 %rd2, [p_words];\nld.param.u64 %rd3, [p_flag];\n"
  "cvta.to.global.u64 %rd4, %rd1;\ncvta.to.global.u64 %rd5, %rd3;\n"
  "mov.u32 %r1, %ctaid.x;\nmov.u32 %r2, %ntid.x;\nmov.u32 %r3, %tid.x;\n"
  "mul.wide.u32 %rd6, %r1, %r2;\ncvt.u64.u32 %rd7, %r3;\nadd.s64 %rd8, %rd6, %rd7;\n"
  "mov.u32 %r4, %nctaid.x;\nmul.wide.u32 %rd9, %r4, %r2;\n"
  "LOOP:\nsetp.ge.u64 %p1, %rd8, %rd2;\n@%p1 bra DONE;\n"
  "shl.b64 %rd10, %rd8, 3;\nadd.s64 %rd11, %rd4, %rd10;\nld.global.u64 %rd12, [%rd11];\n"
  "setp.eq.s64 %p2, %rd12, 0;\n@%p2 bra NEXT;\nmov.u32 %r5, 1;\nst.global.u32 [%rd5], %r5;\n"
  "NEXT:\nadd.s64 %rd8, %rd8, %rd9;\nbra.uni LOOP;\nDONE:\nret;\n}\n";

static struct {
  pthread_mutex_t mu;
  int state; /* 0 untried, 1 ready, -1 unavailable */
  CUcontext ctx;
  CUfunction fn;
  CUdeviceptr flag;
  CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **);
  CUresult (*memset32)(CUdeviceptr, unsigned int, size_t, CUstream); /* cuMemsetD32Async */
} kern = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* kernel_check runs the kernel over [p, p+n) (kern.mu held): 0 all zero,
 * 1 dirty, -1 could not run. */
static int kernel_check(CUdeviceptr p, size_t n, CUstream s) {
  uint64_t words = n / 8;
  unsigned grid = (unsigned)(words / 256 + 1);
  if (grid > 1024) grid = 1024;
  /* Reset the flag on the kernel's own stream: a synchronous cuMemsetD32 runs on
   * the legacy stream, which a non-blocking stream does not wait for, and may
   * return before it completes, so it could clear the flag after the kernel set it. */
  if (kern.memset32(kern.flag, 0, 1, s) != CUDA_SUCCESS) return -1;
  void *args[] = {&p, &words, &kern.flag};
  if (kern.launch(kern.fn, grid, 1, 1, 256, 1, 1, 0, s, args, NULL) != CUDA_SUCCESS) return -1;
  if (p_stream_sync && p_stream_sync(s) != CUDA_SUCCESS) return -1;
  uint32_t flag = 2;
  if (p_dtoh(&flag, kern.flag, sizeof flag) != CUDA_SUCCESS || flag > 1) return -1;
  return (int)flag;
}

/* kernel_ready loads the module in the current context and proves it works. */
static int kernel_ready(void) {
  CUresult (*get_ctx)(CUcontext *);
  CUresult (*load)(CUmodule *, const void *);
  CUresult (*getfn)(CUfunction *, CUmodule, const char *);
  *(void **)&get_ctx = lookup("cuCtxGetCurrent");
  CUcontext cur = NULL;
  if (!get_ctx || get_ctx(&cur) != CUDA_SUCCESS || !cur) return 0;
  if (kern.state == 1) return kern.ctx == cur;
  if (kern.state == -1) return 0;
  kern.state = -1;
  *(void **)&load = lookup("cuModuleLoadData");
  *(void **)&getfn = lookup("cuModuleGetFunction");
  *(void **)&kern.launch = lookup("cuLaunchKernel");
  *(void **)&kern.memset32 = lookup("cuMemsetD32Async");
  cuMemAlloc_v2_fn alloc = (cuMemAlloc_v2_fn)real_fn(HOOK_cuMemAlloc_v2);
  cuMemFree_v2_fn release_fn = (cuMemFree_v2_fn)real_fn(HOOK_cuMemFree_v2);
  CUmodule mod;
  if (!load || !getfn || !kern.launch || !kern.memset32 || !alloc || !release_fn || !p_memset || !p_dtoh) return 0;
  if (load(&mod, zero_check_ptx) != CUDA_SUCCESS || getfn(&kern.fn, mod, "kvh_nonzero") != CUDA_SUCCESS) return 0;
  CUdeviceptr probe;
  if (alloc(&kern.flag, 4) != CUDA_SUCCESS) return 0;
  if (alloc(&probe, 4096) != CUDA_SUCCESS) return 0;
  int ok = p_memset(probe, 0, 4096) == CUDA_SUCCESS && kernel_check(probe, 4096, NULL) == 0 &&
           p_memset(probe + 2731, 0x5a, 1) == CUDA_SUCCESS && kernel_check(probe, 4096, NULL) == 1;
  release_fn(probe);
  if (!ok) return 0; /* never trust a kernel that failed its own check */
  kern.ctx = cur;
  kern.state = 1;
  return 1;
}

/* device_full_verify: 1 verified zero, 0 dirty, -1 use copy-back instead. */
static int device_full_verify(CUdeviceptr p, size_t n, CUstream s) {
  if (n < 4096 || p % 8 || n % 8) return -1;
  pthread_mutex_lock(&kern.mu);
  int r = -1;
  if (kernel_ready()) {
    int c = kernel_check(p, n, s);
    r = c < 0 ? -1 : !c;
  }
  pthread_mutex_unlock(&kern.mu);
  return r;
}

/* ---- zeroize and verify ------------------------------------------------- */

#define WINDOW 64
#define CHUNK (16 << 10)

static inline uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static const unsigned char zero_block[4096];

/* is_zero compares against a zero block with libc's vectorised memcmp. */
static int is_zero(const unsigned char *p, size_t n) {
  for (size_t off = 0; off < n; off += sizeof zero_block) {
    size_t len = n - off < sizeof zero_block ? n - off : sizeof zero_block;
    if (memcmp(p + off, zero_block, len) != 0) return 0;
  }
  return 1;
}

/* zeroize clears [p, p+n) and verifies it. device selects cuMemsetD8 and
 * copy-back; otherwise host memset. It fills the attestation in r and
 * returns 0 when the memory is verified (or, with verify off, zeroed). */
int zeroize(uint64_t p, size_t n, int device, CUstream stream, int async, struct kvh_record *r) {
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  const struct policy pol = policy_now(); /* one snapshot: the record says what this free did */
  r->bytes = n;
  r->verify = (uint8_t)pol.verify;
  if (pol.double_pass) r->flags |= KVH_F_DOUBLE_PASS;
  int rc = 0;
  if (device) {
    resolve_helpers();
    if (!p_memset) {
      r->result = KVH_RES_ZEROIZE_FAILED;
      return -1;
    }
    for (int pass = pol.double_pass ? 0 : 1; pass < 2 && rc == 0; pass++) {
      unsigned char v = pass == 0 ? 0xA5 : 0;
      if (stream && p_memset_async) rc = p_memset_async(p, v, n, stream);
      else rc = p_memset(p, v, n);
    }
    if (rc == 0 && p_stream_sync && (!async || pol.verify != KVH_VERIFY_OFF)) p_stream_sync(stream);
  } else {
    if (pol.double_pass) {
      memset((void *)(uintptr_t)p, 0xA5, n);
      __asm__ __volatile__("" ::: "memory");
    }
    explicit_bzero((void *)(uintptr_t)p, n);
  }
  if (rc != 0) {
    r->result = KVH_RES_ZEROIZE_FAILED;
    r->dur_ns = now_ns(CLOCK_MONOTONIC) - t0;
    return -1;
  }
  int ok = 1;
  unsigned char buf[CHUNK];
  /* A sample that covers every window reads everything: read it as full
   * verify does, in a few large copies rather than many 64-byte ones. */
  int whole = pol.verify == KVH_VERIFY_FULL || (pol.verify == KVH_VERIFY_SAMPLE && (n + WINDOW - 1) / WINDOW <= (size_t)pol.samples);
  int on_device = device && pol.verify == KVH_VERIFY_FULL ? device_full_verify(p, n, stream) : -1;
  if (on_device >= 0) {
    ok = on_device;
  } else if (whole) {
    for (size_t off = 0; off < n && ok; off += CHUNK) {
      size_t len = n - off < CHUNK ? n - off : CHUNK;
      if (device) ok = p_dtoh && p_dtoh(buf, p + off, len) == CUDA_SUCCESS && is_zero(buf, len);
      else ok = is_zero((const unsigned char *)(uintptr_t)(p + off), len);
    }
  } else if (pol.verify == KVH_VERIFY_SAMPLE && n) {
    uint64_t seed = seed_base ^ mix(r->seq ^ p), x = seed;
    r->seed = seed;
    size_t windows = (n + WINDOW - 1) / WINDOW;
    for (int i = 0; i < pol.samples && ok; i++) {
      size_t w = (size_t)(windows <= (size_t)pol.samples ? (uint64_t)i : splitmix(&x) % windows);
      if (w >= windows) break;
      size_t off = w * WINDOW, len = n - off < WINDOW ? n - off : WINDOW;
      if (device) ok = p_dtoh && p_dtoh(buf, p + off, len) == CUDA_SUCCESS && is_zero(buf, len);
      else ok = is_zero((const unsigned char *)(uintptr_t)(p + off), len);
    }
  }
  r->dur_ns = now_ns(CLOCK_MONOTONIC) - t0;
  if (!ok) {
    r->result = KVH_RES_VERIFY_FAILED;
    r->zeroed = 0;
    return -1;
  }
  if (pol.verify != KVH_VERIFY_OFF) r->flags |= KVH_F_VERIFIED;
  r->zeroed = n;
  r->result = KVH_RES_OK;
  return 0;
}
