/* libkvh.so — zeroize-and-verify before frees reach the CUDA driver.
 *
 * Loaded with LD_PRELOAD (or /etc/ld.so.preload) into an unmodified process.
 * It interposes the driver API's allocation and free families (hooks.def)
 * on all four ways a caller reaches them: direct ELF binding (the exported
 * wrappers), dlsym (interposed), cuGetProcAddress[_v2[_ptsz]] and
 * cudaGetDriverEntryPoint[ByVersion][_ptsz] (the real resolver runs first and
 * its answer is substituted only on success). Memory this process created is
 * zeroized (cuMemsetD8 on the allocation's stream; memset for pinned host),
 * verified (off | sample | full copy-back), and only then released. A buffer
 * that fails is quarantined in enforce mode: never handed back to the driver.
 *
 * Rules this file keeps: no DT_NEEDED on libcuda/libcudart; config read once;
 * no getenv, malloc, printf or global lock on the hot path (the allocation
 * table is lock-striped, events go through a lock-free ring drained by one
 * background thread); out-params untouched on failure; unknown pointers and
 * failing real calls pass through; nothing here blocks on the agent.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kvh_cuda.h"
#include "kvh_wire.h"

#define EXPORT __attribute__((visibility("default")))
#define UNUSED __attribute__((unused))
/* Code that runs before a sanitizer runtime has initialised (the sanitizer
 * itself calls dlsym while starting) must not be instrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- hooks: ids, real-function slots, name table (generated) ---------- */

enum hook_id {
  HOOK_NONE = 0,
#define KVH_HOOK(name, base, minver, ptsz, params, args) HOOK_##name,
#include "hooks.def"
#undef KVH_HOOK
  HOOK_COUNT
};

#define KVH_HOOK(name, base, minver, ptsz, params, args) typedef CUresult(*name##_fn) params;
#include "hooks.def"
#undef KVH_HOOK

#define KVH_HOOK(name, base, minver, ptsz, params, args) EXPORT CUresult name params;
#include "hooks.def"
#undef KVH_HOOK

struct hook {
  const char *name, *base;
  int minver, ptsz;
  void *wrapper;
};

static const struct hook hooks[HOOK_COUNT] = {
#define KVH_HOOK(name, base, minver, ptsz, params, args) [HOOK_##name] = {#name, base, minver, ptsz, (void *)name},
#include "hooks.def"
#undef KVH_HOOK
};

/* real[id] is the driver's (or runtime's) entry point for hook id. */
static _Atomic(void *) real[HOOK_COUNT];

/* Driver functions kvh calls itself; never hooked. */
static CUresult (*p_memset)(CUdeviceptr, unsigned char, size_t);
static CUresult (*p_memset_async)(CUdeviceptr, unsigned char, size_t, CUstream);
static CUresult (*p_dtoh)(void *, CUdeviceptr, size_t);
static CUresult (*p_stream_sync)(CUstream);

/* ---- configuration, read once ----------------------------------------- */

enum mode { MODE_ENFORCE, MODE_OBSERVE, MODE_OFF };

static struct {
  enum mode mode;
  int verify; /* enum kvh_verify_mode */
  int samples;
  int double_pass;
  char tenant[24];
  char socket[108];
} cfg;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_int deny;
static atomic_uint_fast64_t seq;
static uint64_t seed_base;
static __thread char tl_tenant[24], tl_request[24];
static atomic_uint fork_gen; /* bumped in a forked child: cached ids are stale */
static uint32_t cached_pid;
static __thread uint32_t tl_tid, tl_gen;

static void warn(const char *msg) {
  /* once at init, never on the hot path */
  char buf[256];
  int n = snprintf(buf, sizeof buf, "libkvh: %s\n", msg);
  if (n > 0) (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static int env_bool(const char *v) {
  return v && (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"));
}

static void read_config(void) {
  const char *v;
  cfg.mode = MODE_ENFORCE;
  if ((v = getenv("KVH_MODE")) && *v) {
    if (!strcmp(v, "enforce")) cfg.mode = MODE_ENFORCE;
    else if (!strcmp(v, "observe")) cfg.mode = MODE_OBSERVE;
    else if (!strcmp(v, "off")) cfg.mode = MODE_OFF;
    else warn("KVH_MODE is not enforce, observe or off: using enforce");
  }
  cfg.verify = KVH_VERIFY_SAMPLE;
  if ((v = getenv("KVH_VERIFY")) && *v) {
    if (!strcmp(v, "off")) cfg.verify = KVH_VERIFY_OFF;
    else if (!strcmp(v, "sample")) cfg.verify = KVH_VERIFY_SAMPLE;
    else if (!strcmp(v, "full")) cfg.verify = KVH_VERIFY_FULL;
    else { warn("KVH_VERIFY is not off, sample or full: using full"); cfg.verify = KVH_VERIFY_FULL; }
  }
  cfg.samples = 8;
  if (!(v = getenv("KVH_VERIFY_SAMPLES")) || !*v) v = getenv("KV_VERIFY_SAMPLES_DEFAULT");
  if (v && *v) {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > 1 << 20) warn("KVH_VERIFY_SAMPLES is not a positive integer: using 8");
    else cfg.samples = (int)n;
  }
  if (!(v = getenv("KVH_DOUBLE_PASS")) || !*v) v = getenv("KV_DOUBLE_PASS_DEFAULT");
  cfg.double_pass = env_bool(v);
  if ((v = getenv("KVH_TENANT"))) strncpy(cfg.tenant, v, sizeof cfg.tenant - 1);
  v = getenv("KVH_SOCKET");
  strncpy(cfg.socket, v && *v ? v : "/run/kvh/kvh.sock", sizeof cfg.socket - 1);
}

/* ---- resolving the real functions -------------------------------------- */

typedef void *(*dlsym_fn)(void *, const char *);
static _Atomic(dlsym_fn) real_dlsym_p;

NO_SANITIZE static dlsym_fn real_dlsym(void) {
  dlsym_fn f = atomic_load_explicit(&real_dlsym_p, memory_order_acquire);
  if (likely(f)) return f;
  f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (!f) f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
  atomic_store_explicit(&real_dlsym_p, f, memory_order_release);
  return f;
}

/* lookup finds a driver symbol: first in the global scope after us, then in
 * an already loaded libcuda.so.1 (a framework may have loaded it locally). */
static void *lookup(const char *name) {
  dlsym_fn ds = real_dlsym();
  if (!ds) return NULL;
  void *p = ds(RTLD_NEXT, name);
  if (!p) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h && !strncmp(name, "cuda", 4)) h = dlopen("libcudart.so.12", RTLD_NOW | RTLD_NOLOAD);
    if (h) {
      p = ds(h, name);
      dlclose(h);
    }
  }
  return p;
}

static void *real_fn(enum hook_id id) {
  void *p = atomic_load_explicit(&real[id], memory_order_acquire);
  if (likely(p)) return p;
  p = lookup(hooks[id].name);
  if (p) atomic_store_explicit(&real[id], p, memory_order_release);
  return p;
}

static void resolve_helpers(void) {
  if (p_memset && p_dtoh) return;
  *(void **)&p_memset = lookup("cuMemsetD8_v2");
  *(void **)&p_memset_async = lookup("cuMemsetD8Async");
  *(void **)&p_dtoh = lookup("cuMemcpyDtoH_v2");
  *(void **)&p_stream_sync = lookup("cuStreamSynchronize");
}

/* ---- the allocation table: lock-striped open addressing ---------------- */

enum owner { OWN_CREATOR = 1, OWN_IMPORTER = 2 };
enum slot_state { ST_LIVE = 0, ST_QUARANTINED = 1 };

struct slot {
  uint64_t key; /* 0 empty, 1 deleted */
  uint64_t size;
  uint64_t stream;
  uint64_t aux; /* VMM: the generic allocation handle */
  uint8_t kind, owner, state, pad;
  int32_t device;
};

#define STRIPES 256
#define TOMB 1

struct stripe {
  pthread_mutex_t mu;
  struct slot *slots;
  uint32_t cap;
};

struct table {
  struct stripe s[STRIPES];
};

static struct table ptrs, handles;
static atomic_ulong untracked;

static void table_init(struct table *t, uint32_t cap) {
  for (int i = 0; i < STRIPES; i++) {
    pthread_mutex_init(&t->s[i].mu, NULL);
    void *m = mmap(NULL, (size_t)cap * sizeof(struct slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    t->s[i].slots = m == MAP_FAILED ? NULL : m;
    t->s[i].cap = m == MAP_FAILED ? 0 : cap;
  }
}

static inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

static inline struct stripe *stripe_of(struct table *t, uint64_t key, uint64_t *h) {
  *h = mix(key);
  return &t->s[*h & (STRIPES - 1)];
}

/* find returns the live slot for key; the stripe is locked on return. */
static struct slot *table_find(struct table *t, uint64_t key, struct stripe **sp) {
  uint64_t h;
  struct stripe *s = stripe_of(t, key, &h);
  pthread_mutex_lock(&s->mu);
  *sp = s;
  if (!s->cap) return NULL;
  for (uint32_t i = 0, j = (uint32_t)(h >> 8) & (s->cap - 1); i < s->cap; i++, j = (j + 1) & (s->cap - 1)) {
    if (s->slots[j].key == key) return &s->slots[j];
    if (s->slots[j].key == 0) return NULL;
  }
  return NULL;
}

static int table_put(struct table *t, const struct slot *v) {
  uint64_t h;
  struct stripe *s = stripe_of(t, v->key, &h);
  pthread_mutex_lock(&s->mu);
  struct slot *free_slot = NULL;
  for (uint32_t i = 0, j = (uint32_t)(h >> 8) & (s->cap - 1); i < s->cap; i++, j = (j + 1) & (s->cap - 1)) {
    struct slot *x = &s->slots[j];
    if (x->key == v->key) { free_slot = x; break; }
    if (x->key == TOMB && !free_slot) free_slot = x;
    if (x->key == 0) { if (!free_slot) free_slot = x; break; }
  }
  if (free_slot) *free_slot = *v;
  pthread_mutex_unlock(&s->mu);
  if (!free_slot) atomic_fetch_add(&untracked, 1);
  return free_slot != NULL;
}

static void lock_all(void) {
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&ptrs.s[i].mu);
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&handles.s[i].mu);
}
static void unlock_all(void) {
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&handles.s[i].mu);
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&ptrs.s[i].mu);
}

/* ---- events: a lock-free ring drained by one background thread --------- */

#define RING 8192

struct cell {
  atomic_uint_fast64_t seq;
  struct kvh_record rec;
};

static struct cell ring[RING];
static atomic_uint_fast64_t ring_head; /* next slot to fill */
static uint64_t ring_tail;              /* next slot to drain (consumer only) */
static atomic_ulong dropped;            /* records lost while the agent was away or slow */
static atomic_ulong dropped_reported;   /* of those, already reported to the agent */
static pthread_mutex_t consumer = PTHREAD_MUTEX_INITIALIZER;
static int sock = -1;
static atomic_int thread_started;
static struct timespec next_connect;

static void ring_reset(void) {
  for (uint64_t i = 0; i < RING; i++) atomic_store_explicit(&ring[i].seq, i, memory_order_relaxed);
  atomic_store(&ring_head, 0);
  ring_tail = 0;
}

static uint64_t now_ns(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void start_thread(void);

/* emit enqueues r (Vyukov's bounded queue); a full ring counts a drop. */
static void emit(struct kvh_record *r) {
  if (cfg.mode == MODE_OFF) return;
  r->magic = KVH_WIRE_MAGIC;
  r->version = KVH_WIRE_VERSION;
  r->seq = atomic_fetch_add_explicit(&seq, 1, memory_order_relaxed) + 1;
  r->ts_ns = now_ns(CLOCK_REALTIME);
  unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
  if (unlikely(!tl_tid || tl_gen != gen)) {
    tl_tid = (uint32_t)syscall(SYS_gettid);
    tl_gen = gen;
  }
  if (unlikely(!cached_pid)) cached_pid = (uint32_t)getpid();
  r->pid = cached_pid;
  r->tid = tl_tid;
  memcpy(r->tenant, tl_tenant[0] ? tl_tenant : cfg.tenant, sizeof r->tenant);
  memcpy(r->request, tl_request, sizeof r->request);
  if (cfg.mode == MODE_ENFORCE) r->flags |= KVH_F_ENFORCE;
  uint64_t pos = atomic_load_explicit(&ring_head, memory_order_relaxed);
  for (;;) {
    struct cell *c = &ring[pos & (RING - 1)];
    uint64_t s = atomic_load_explicit(&c->seq, memory_order_acquire);
    int64_t dif = (int64_t)s - (int64_t)pos;
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ring_head, &pos, pos + 1, memory_order_relaxed, memory_order_relaxed)) {
        c->rec = *r;
        atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
        break;
      }
    } else if (dif < 0) {
      atomic_fetch_add_explicit(&dropped, 1, memory_order_relaxed);
      break;
    } else {
      pos = atomic_load_explicit(&ring_head, memory_order_relaxed);
    }
  }
  if (unlikely(!atomic_load_explicit(&thread_started, memory_order_acquire))) start_thread();
}

static int try_connect(void) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  memcpy(a.sun_path, cfg.socket, sizeof a.sun_path - 1);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void disconnect(void) {
  if (sock >= 0) close(sock);
  sock = -1;
}

/* While exiting, the flush gives up at this CLOCK_MONOTONIC time (0: no limit). */
static uint64_t flush_deadline;
/* send_mu serialises use of the socket (sending, connecting, closing); the
 * consumer mutex only covers taking records off the ring, so fork() never
 * waits on a slow agent. */
static pthread_mutex_t send_mu = PTHREAD_MUTEX_INITIALIZER;

/* send_batch sends n records (send_mu held). A slow agent is waited for, up
 * to 5 s (the ring keeps filling meanwhile, and a full ring counts drops);
 * a dead one is dropped and reconnected later. */
static void send_batch(struct kvh_record *b, int n) {
  uint64_t give_up = now_ns(CLOCK_MONOTONIC) + 5000000000ULL;
  while (sock >= 0) {
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    if (now > give_up || (flush_deadline && now > flush_deadline)) break;
    ssize_t w = send(sock, b, (size_t)n * sizeof *b, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w == (ssize_t)((size_t)n * sizeof *b)) return;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR)) {
      struct pollfd p = {.fd = sock, .events = POLLOUT};
      poll(&p, 1, 20);
      continue;
    }
    disconnect();
  }
  atomic_fetch_add(&dropped, (unsigned long)n);
}

static void report_drops(void);

static void hello(void) {
  struct kvh_record h = {0};
  h.magic = KVH_WIRE_MAGIC;
  h.version = KVH_WIRE_VERSION;
  h.type = KVH_REC_HELLO;
  h.ts_ns = now_ns(CLOCK_REALTIME);
  h.pid = (uint32_t)getpid();
  h.verify = (uint8_t)cfg.verify;
  h.flags = (cfg.double_pass ? KVH_F_DOUBLE_PASS : 0) | (cfg.mode == MODE_ENFORCE ? KVH_F_ENFORCE : 0);
  h.count = (uint64_t)cfg.samples;
  h.result = (uint8_t)cfg.mode;
  memcpy(h.tenant, cfg.tenant, sizeof h.tenant);
  send_batch(&h, 1);
  report_drops();
}

static atomic_int inflight; /* records taken off the ring, not yet delivered */

/* take_batch moves up to KVH_WIRE_MAX_BATCH records off the ring. */
static int take_batch(struct kvh_record *batch) {
  int n = 0;
  pthread_mutex_lock(&consumer);
  while (n < KVH_WIRE_MAX_BATCH) {
    struct cell *c = &ring[ring_tail & (RING - 1)];
    uint64_t s = atomic_load_explicit(&c->seq, memory_order_acquire);
    if ((int64_t)s - (int64_t)(ring_tail + 1) < 0) break;
    batch[n++] = c->rec;
    atomic_store_explicit(&c->seq, ring_tail + RING, memory_order_release);
    ring_tail++;
  }
  atomic_fetch_add(&inflight, n);
  pthread_mutex_unlock(&consumer);
  return n;
}

/* deliver sends a batch, or counts it dropped when there is no agent. */
static void deliver(struct kvh_record *batch, int n) {
  pthread_mutex_lock(&send_mu);
  if (sock >= 0) send_batch(batch, n);
  else atomic_fetch_add(&dropped, (unsigned long)n);
  pthread_mutex_unlock(&send_mu);
  atomic_fetch_sub(&inflight, n);
}

static void maybe_connect(void) { /* send_mu held */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (now.tv_sec < next_connect.tv_sec || (now.tv_sec == next_connect.tv_sec && now.tv_nsec < next_connect.tv_nsec)) return;
  next_connect = now;
  next_connect.tv_nsec += 200 * 1000000L;
  if (next_connect.tv_nsec >= 1000000000L) { next_connect.tv_sec++; next_connect.tv_nsec -= 1000000000L; }
  sock = try_connect();
  if (sock >= 0) hello();
}

static void read_control(void) { /* send_mu held */
  struct kvh_control c[8];
  for (;;) {
    ssize_t n = recv(sock, c, sizeof c, MSG_DONTWAIT);
    if (n == 0) { disconnect(); return; }
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) disconnect();
      return;
    }
    for (size_t i = 0; i + 1 <= (size_t)n / sizeof c[0]; i++) {
      if (c[i].magic != KVH_WIRE_MAGIC || c[i].version != KVH_WIRE_VERSION) continue;
      if (c[i].type == KVH_CTL_DENY) atomic_store(&deny, 1);
      if (c[i].type == KVH_CTL_ALLOW) atomic_store(&deny, 0);
    }
  }
}

/* report_drops tells the agent how many records were lost since the last
 * report (send_mu held). */
static void report_drops(void) {
  unsigned long d = atomic_exchange(&dropped, 0);
  if (!d) return;
  if (sock < 0) {
    atomic_fetch_add(&dropped, d);
    return;
  }
  struct kvh_record r = {0};
  r.magic = KVH_WIRE_MAGIC;
  r.version = KVH_WIRE_VERSION;
  r.type = KVH_REC_DROPS;
  r.ts_ns = now_ns(CLOCK_REALTIME);
  r.pid = (uint32_t)getpid();
  r.count = d;
  atomic_fetch_add(&dropped_reported, d);
  send_batch(&r, 1);
}

static void *reporter(void *arg) {
  (void)arg;
  struct kvh_record batch[KVH_WIRE_MAX_BATCH];
  for (;;) {
    pthread_mutex_lock(&send_mu);
    if (sock < 0) maybe_connect();
    int fd = sock;
    pthread_mutex_unlock(&send_mu);
    int n = take_batch(batch);
    if (n) {
      deliver(batch, n);
      continue;
    }
    if (fd >= 0) {
      if (atomic_load_explicit(&dropped, memory_order_relaxed)) {
        pthread_mutex_lock(&send_mu);
        report_drops();
        pthread_mutex_unlock(&send_mu);
      }
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, 2) > 0) {
        pthread_mutex_lock(&send_mu);
        if (sock == fd) read_control();
        pthread_mutex_unlock(&send_mu);
      }
    } else {
      struct timespec d = {0, 5 * 1000000L};
      nanosleep(&d, NULL);
    }
  }
  return NULL;
}

static void start_thread(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&thread_started, &expected, 1)) return;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 256 << 10);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the reporter takes no signals */
  pthread_t t;
  if (pthread_create(&t, &a, reporter, NULL) != 0) atomic_store(&thread_started, 0);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
}

/* At exit, deliver what is queued, within 200 ms: the process must not hang
 * on a stalled agent. (_exit skips this, as it skips every destructor.) */
__attribute__((destructor)) static void flush_at_exit(void) {
  if (cfg.mode == MODE_OFF) return;
  struct kvh_record batch[KVH_WIRE_MAX_BATCH];
  struct timespec d = {0, 1000000L};
  flush_deadline = now_ns(CLOCK_MONOTONIC) + 200 * 1000000ULL;
  pthread_mutex_lock(&send_mu);
  if (sock < 0) {
    sock = try_connect();
    if (sock >= 0) hello();
  }
  pthread_mutex_unlock(&send_mu);
  while (now_ns(CLOCK_MONOTONIC) < flush_deadline) {
    int n = take_batch(batch);
    if (n) {
      deliver(batch, n);
      continue;
    }
    pthread_mutex_lock(&consumer);
    int empty = atomic_load(&ring_head) == ring_tail;
    pthread_mutex_unlock(&consumer);
    if (empty && atomic_load(&inflight) == 0) break; /* the reporter's batch is out too */
    nanosleep(&d, NULL);
  }
  pthread_mutex_lock(&send_mu);
  report_drops();
  pthread_mutex_unlock(&send_mu);
}

/* ---- fork safety -------------------------------------------------------- */

static void atfork_prepare(void) {
  pthread_mutex_lock(&consumer);
  lock_all();
}
static void atfork_parent(void) {
  unlock_all();
  pthread_mutex_unlock(&consumer);
}
static void atfork_child(void) {
  unlock_all();
  pthread_mutex_init(&send_mu, NULL); /* a parent thread may have held it */
  /* The child has no reporter thread and must not speak on the parent's
   * connection (the agent knows it by the parent's credentials). */
  if (sock >= 0) close(sock);
  sock = -1;
  next_connect.tv_sec = 0;
  next_connect.tv_nsec = 0;
  ring_reset();
  atomic_store(&inflight, 0);
  atomic_store(&dropped, 0);
  atomic_store(&dropped_reported, 0);
  cached_pid = 0;
  atomic_fetch_add(&fork_gen, 1);
  atomic_store(&thread_started, 0);
  atomic_store(&deny, 0);
  pthread_mutex_unlock(&consumer);
}

static void init(void) {
  read_config();
  table_init(&ptrs, 4096);
  table_init(&handles, 256);
  ring_reset();
  uint64_t s = 0;
  if (getrandom(&s, sizeof s, GRND_NONBLOCK) != sizeof s) s = now_ns(CLOCK_MONOTONIC);
  seed_base = s | 1;
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  /* Say hello now, while the process is surely alive: the agent reads its
   * identity from /proc when it accepts. (Connecting a Unix socket does not
   * block; no thread is started here.) */
  if (cfg.mode != MODE_OFF) {
    sock = try_connect();
    if (sock >= 0) hello();
    clock_gettime(CLOCK_MONOTONIC, &next_connect);
  }
}

static inline void ensure_init(void) { pthread_once(&init_once, init); }

__attribute__((constructor)) static void kvh_ctor(void) { ensure_init(); }

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
  CUresult (*memset32)(CUdeviceptr, unsigned int, size_t);
} kern = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* kernel_check runs the kernel over [p, p+n) (kern.mu held): 0 all zero,
 * 1 dirty, -1 could not run. */
static int kernel_check(CUdeviceptr p, size_t n, CUstream s) {
  uint64_t words = n / 8;
  unsigned grid = (unsigned)(words / 256 + 1);
  if (grid > 1024) grid = 1024;
  if (kern.memset32(kern.flag, 0, 1) != CUDA_SUCCESS) return -1;
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
  *(void **)&kern.memset32 = lookup("cuMemsetD32_v2");
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
static int zeroize(uint64_t p, size_t n, int device, CUstream stream, int async, struct kvh_record *r) {
  uint64_t t0 = now_ns(CLOCK_MONOTONIC);
  r->bytes = n;
  r->verify = (uint8_t)cfg.verify;
  if (cfg.double_pass) r->flags |= KVH_F_DOUBLE_PASS;
  int rc = 0;
  if (device) {
    resolve_helpers();
    if (!p_memset) {
      r->result = KVH_RES_ZEROIZE_FAILED;
      return -1;
    }
    for (int pass = cfg.double_pass ? 0 : 1; pass < 2 && rc == 0; pass++) {
      unsigned char v = pass == 0 ? 0xA5 : 0;
      if (stream && p_memset_async) rc = p_memset_async(p, v, n, stream);
      else rc = p_memset(p, v, n);
    }
    if (rc == 0 && p_stream_sync && (!async || cfg.verify != KVH_VERIFY_OFF)) p_stream_sync(stream);
  } else {
    if (cfg.double_pass) {
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
  int on_device = device && cfg.verify == KVH_VERIFY_FULL ? device_full_verify(p, n, stream) : -1;
  if (on_device >= 0) {
    ok = on_device;
  } else if (cfg.verify == KVH_VERIFY_FULL) {
    for (size_t off = 0; off < n && ok; off += CHUNK) {
      size_t len = n - off < CHUNK ? n - off : CHUNK;
      if (device) ok = p_dtoh && p_dtoh(buf, p + off, len) == CUDA_SUCCESS && is_zero(buf, len);
      else ok = is_zero((const unsigned char *)(uintptr_t)(p + off), len);
    }
  } else if (cfg.verify == KVH_VERIFY_SAMPLE && n) {
    uint64_t seed = seed_base ^ mix(r->seq ^ p), x = seed;
    r->seed = seed;
    size_t windows = (n + WINDOW - 1) / WINDOW;
    for (int i = 0; i < cfg.samples && ok; i++) {
      size_t w = (size_t)(windows <= (size_t)cfg.samples ? (uint64_t)i : splitmix(&x) % windows);
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
  if (cfg.verify != KVH_VERIFY_OFF) r->flags |= KVH_F_VERIFIED;
  r->zeroed = n;
  r->result = KVH_RES_OK;
  return 0;
}

/* ---- common paths ------------------------------------------------------- */

static void track(enum hook_id fn, uint64_t p, size_t n, int kind, int owner, CUstream s, uint64_t aux) {
  if (!p) return;
  struct slot v = {.key = p, .size = n, .stream = (uint64_t)(uintptr_t)s, .aux = aux, .kind = (uint8_t)kind, .owner = (uint8_t)owner};
  table_put(&ptrs, &v);
  struct kvh_record r = {0};
  r.type = KVH_REC_ALLOC;
  r.fn = (uint16_t)fn;
  r.ptr = p;
  r.bytes = n;
  r.mem_kind = (uint8_t)kind;
  r.stream = v.stream;
  if (owner == OWN_IMPORTER) r.flags |= KVH_F_IMPORTER;
  emit(&r);
}

/* release runs the free path for p: zeroize and verify what this process
 * created, then call do_free unless the buffer is quarantined. do_free
 * returns the real call's result. */
typedef CUresult (*free_cb)(void *ctx);

static CUresult release(enum hook_id fn, uint64_t p, int device, int async, CUstream s, size_t len_hint, free_cb do_free, void *ctx) {
  struct stripe *st;
  struct slot *e = table_find(&ptrs, p, &st);
  if (!e) { /* unknown pointer or double free: the driver decides */
    pthread_mutex_unlock(&st->mu);
    CUresult rc = do_free(ctx);
    if (p) {
      struct kvh_record r = {0};
      r.type = KVH_REC_FREE;
      r.fn = (uint16_t)fn;
      r.ptr = p;
      r.result = KVH_RES_PASSTHROUGH;
      emit(&r);
    }
    return rc;
  }
  struct slot v = *e;
  if (v.state == ST_QUARANTINED) { /* already kept from the driver */
    pthread_mutex_unlock(&st->mu);
    return CUDA_SUCCESS;
  }
  /* Take the entry out before the driver can hand the address to anyone
   * else: a concurrent allocation of the same address must not find it. */
  e->key = TOMB;
  pthread_mutex_unlock(&st->mu);
  struct kvh_record r = {0};
  r.type = KVH_REC_FREE;
  r.fn = (uint16_t)fn;
  r.ptr = p;
  r.mem_kind = v.kind;
  r.stream = s ? (uint64_t)(uintptr_t)s : v.stream;
  if (async) r.flags |= KVH_F_ASYNC;
  size_t n = len_hint && len_hint < v.size ? len_hint : v.size;
  int failed = 0;
  if (v.owner == OWN_IMPORTER) {
    r.flags |= KVH_F_IMPORTER;
    r.result = KVH_RES_PASSTHROUGH;
    r.bytes = n;
  } else if (cfg.mode != MODE_OFF) {
    failed = zeroize(p, n, device, (CUstream)(uintptr_t)r.stream, async, &r) != 0;
  }
  if (failed && cfg.mode == MODE_ENFORCE) {
    v.state = ST_QUARANTINED; /* kept in the table so a second free stays a no-op */
    table_put(&ptrs, &v);
    r.type = KVH_REC_QUARANTINE;
    emit(&r);
    return CUDA_SUCCESS; /* the caller's memory is gone from its point of view */
  }
  CUresult rc = do_free(ctx);
  if (rc != CUDA_SUCCESS) table_put(&ptrs, &v); /* still allocated: keep tracking it */
  emit(&r);
  return rc;
}

static inline int denied(void) { return atomic_load_explicit(&deny, memory_order_relaxed); }

#define REAL(name) ((name##_fn)real_fn(HOOK_##name))
#define NEED_REAL(name)                          \
  ensure_init();                                 \
  name##_fn real_##name = REAL(name);            \
  if (unlikely(!real_##name)) return CUDA_ERROR_NOT_INITIALIZED

/* ---- device allocations --------------------------------------------------- */

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t n) {
  NEED_REAL(cuMemAlloc_v2);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAlloc_v2(dptr, n);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAlloc_v2, *dptr, n, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t n, unsigned int flags) {
  NEED_REAL(cuMemAllocManaged);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAllocManaged(dptr, n, flags);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocManaged, *dptr, n, KVH_MEM_MANAGED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t w, size_t h, unsigned int esz) {
  NEED_REAL(cuMemAllocPitch_v2);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAllocPitch_v2(dptr, pitch, w, h, esz);
  if (rc == CUDA_SUCCESS && dptr && pitch) track(HOOK_cuMemAllocPitch_v2, *dptr, *pitch * h, KVH_MEM_DEVICE, OWN_CREATOR, NULL, 0);
  return rc;
}

struct free_ctx {
  void *fn;
  uint64_t p;
  CUstream s;
  size_t n;
};

static CUresult call_free(void *c) { struct free_ctx *x = c; return ((cuMemFree_v2_fn)x->fn)(x->p); }
static CUresult call_free_async(void *c) { struct free_ctx *x = c; return ((cuMemFreeAsync_fn)x->fn)(x->p, x->s); }
static CUresult call_free_host(void *c) { struct free_ctx *x = c; return ((cuMemFreeHost_fn)x->fn)((void *)(uintptr_t)x->p); }
static CUresult call_unregister(void *c) { struct free_ctx *x = c; return ((cuMemHostUnregister_fn)x->fn)((void *)(uintptr_t)x->p); }
static CUresult call_unmap(void *c) { struct free_ctx *x = c; return ((cuMemUnmap_fn)x->fn)(x->p, x->n); }
static CUresult call_ipc_close(void *c) { struct free_ctx *x = c; return ((cuIpcCloseMemHandle_fn)x->fn)(x->p); }

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
  NEED_REAL(cuMemFree_v2);
  struct free_ctx c = {(void *)real_cuMemFree_v2, p, NULL, 0};
  return release(HOOK_cuMemFree_v2, p, 1, 0, NULL, 0, call_free, &c);
}

static CUresult alloc_async(enum hook_id id, cuMemAllocAsync_fn f, CUdeviceptr *dptr, size_t n, CUstream s) {
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = f(dptr, n, s);
  if (rc == CUDA_SUCCESS && dptr) track(id, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t n, CUstream s) {
  NEED_REAL(cuMemAllocAsync);
  return alloc_async(HOOK_cuMemAllocAsync, real_cuMemAllocAsync, dptr, n, s);
}

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t n, CUstream s) {
  NEED_REAL(cuMemAllocAsync_ptsz);
  return alloc_async(HOOK_cuMemAllocAsync_ptsz, real_cuMemAllocAsync_ptsz, dptr, n, s);
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
  NEED_REAL(cuMemAllocFromPoolAsync);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAllocFromPoolAsync(dptr, n, pool, s);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocFromPoolAsync, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t n, CUmemoryPool pool, CUstream s) {
  NEED_REAL(cuMemAllocFromPoolAsync_ptsz);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAllocFromPoolAsync_ptsz(dptr, n, pool, s);
  if (rc == CUDA_SUCCESS && dptr) track(HOOK_cuMemAllocFromPoolAsync_ptsz, *dptr, n, KVH_MEM_ASYNC, OWN_CREATOR, s, 0);
  return rc;
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  NEED_REAL(cuMemFreeAsync);
  struct free_ctx c = {(void *)real_cuMemFreeAsync, p, s, 0};
  return release(HOOK_cuMemFreeAsync, p, 1, 1, s, 0, call_free_async, &c);
}

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
  NEED_REAL(cuMemFreeAsync_ptsz);
  struct free_ctx c = {(void *)real_cuMemFreeAsync_ptsz, p, s, 0};
  return release(HOOK_cuMemFreeAsync_ptsz, p, 1, 1, s, 0, call_free_async, &c);
}

/* Pool pages leave at trim or destroy; their buffers were zeroized when they
 * were freed into the pool (cuMemFreeAsync), so these pass through. */
EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
  NEED_REAL(cuMemPoolTrimTo);
  return real_cuMemPoolTrimTo(pool, keep);
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
  NEED_REAL(cuMemPoolDestroy);
  return real_cuMemPoolDestroy(pool);
}

/* ---- pinned host ----------------------------------------------------------- */

EXPORT CUresult cuMemHostAlloc(void **pp, size_t n, unsigned int flags) {
  NEED_REAL(cuMemHostAlloc);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemHostAlloc(pp, n, flags);
  if (rc == CUDA_SUCCESS && pp) track(HOOK_cuMemHostAlloc, (uint64_t)(uintptr_t)*pp, n, KVH_MEM_HOST_PINNED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemAllocHost_v2(void **pp, size_t n) {
  NEED_REAL(cuMemAllocHost_v2);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemAllocHost_v2(pp, n);
  if (rc == CUDA_SUCCESS && pp) track(HOOK_cuMemAllocHost_v2, (uint64_t)(uintptr_t)*pp, n, KVH_MEM_HOST_PINNED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemFreeHost(void *p) {
  NEED_REAL(cuMemFreeHost);
  struct free_ctx c = {(void *)real_cuMemFreeHost, (uint64_t)(uintptr_t)p, NULL, 0};
  return release(HOOK_cuMemFreeHost, c.p, 0, 0, NULL, 0, call_free_host, &c);
}

EXPORT CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned int flags) {
  NEED_REAL(cuMemHostRegister_v2);
  CUresult rc = real_cuMemHostRegister_v2(p, n, flags);
  if (rc == CUDA_SUCCESS) track(HOOK_cuMemHostRegister_v2, (uint64_t)(uintptr_t)p, n, KVH_MEM_HOST_REGISTERED, OWN_CREATOR, NULL, 0);
  return rc;
}

EXPORT CUresult cuMemHostUnregister(void *p) {
  NEED_REAL(cuMemHostUnregister);
  struct free_ctx c = {(void *)real_cuMemHostUnregister, (uint64_t)(uintptr_t)p, NULL, 0};
  return release(HOOK_cuMemHostUnregister, c.p, 0, 0, NULL, 0, call_unregister, &c);
}

/* ---- virtual memory management (vLLM sleep mode, expandable segments) ----- */

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop, unsigned long long flags) {
  NEED_REAL(cuMemCreate);
  if (denied()) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult rc = real_cuMemCreate(h, n, prop, flags);
  if (rc == CUDA_SUCCESS && h) {
    struct slot v = {.key = *h, .size = n, .owner = OWN_CREATOR, .kind = KVH_MEM_VMM};
    table_put(&handles, &v);
  }
  return rc;
}

EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *h, void *os, CUmemAllocationHandleType t) {
  NEED_REAL(cuMemImportFromShareableHandle);
  CUresult rc = real_cuMemImportFromShareableHandle(h, os, t);
  if (rc == CUDA_SUCCESS && h) {
    struct slot v = {.key = *h, .owner = OWN_IMPORTER, .kind = KVH_MEM_VMM};
    table_put(&handles, &v);
  }
  return rc;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  NEED_REAL(cuMemRelease);
  CUresult rc = real_cuMemRelease(h);
  if (rc == CUDA_SUCCESS) {
    struct stripe *st;
    struct slot *e = table_find(&handles, h, &st);
    if (e) e->key = TOMB;
    pthread_mutex_unlock(&st->mu);
  }
  return rc;
}

EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t n, size_t off, CUmemGenericAllocationHandle h, unsigned long long flags) {
  NEED_REAL(cuMemMap);
  CUresult rc = real_cuMemMap(ptr, n, off, h, flags);
  if (rc == CUDA_SUCCESS) {
    struct stripe *st;
    struct slot *e = table_find(&handles, h, &st);
    int owner = e ? e->owner : OWN_IMPORTER; /* a handle we did not see created is not ours to clear */
    pthread_mutex_unlock(&st->mu);
    track(HOOK_cuMemMap, ptr, n, KVH_MEM_VMM, owner, NULL, h);
  }
  return rc;
}

/* The mapping is zeroized while it is still mapped, before the real unmap. */
EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t n) {
  NEED_REAL(cuMemUnmap);
  struct free_ctx c = {(void *)real_cuMemUnmap, ptr, NULL, n};
  return release(HOOK_cuMemUnmap, ptr, 1, 0, NULL, n, call_unmap, &c);
}

EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t n) {
  NEED_REAL(cuMemAddressFree);
  return real_cuMemAddressFree(ptr, n);
}

/* ---- IPC: an importer never zeroizes memory it does not own ---------------- */

EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle h, unsigned int flags) {
  NEED_REAL(cuIpcOpenMemHandle_v2);
  CUresult rc = real_cuIpcOpenMemHandle_v2(pdptr, h, flags);
  if (rc == CUDA_SUCCESS && pdptr) track(HOOK_cuIpcOpenMemHandle_v2, *pdptr, 0, KVH_MEM_IPC_IMPORT, OWN_IMPORTER, NULL, 0);
  return rc;
}

EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
  NEED_REAL(cuIpcCloseMemHandle);
  struct free_ctx c = {(void *)real_cuIpcCloseMemHandle, p, NULL, 0};
  return release(HOOK_cuIpcCloseMemHandle, p, 1, 0, NULL, 0, call_ipc_close, &c);
}

/* ---- resolvers ------------------------------------------------------------- */

static int is_wrapper(void *p) {
  for (int i = 1; i < HOOK_COUNT; i++)
    if (hooks[i].wrapper == p) return 1;
  return 0;
}

/* substitute replaces *pfn, a real entry point a resolver handed out for
 * symbol, by kvh's wrapper: by address when it is an entry point kvh knows,
 * else by name, version and stream semantics. Anything else is left alone. */
static void substitute(const char *symbol, void **pfn, int version, unsigned long long flags) {
  void *got = *pfn;
  if (!got || is_wrapper(got)) return;
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (atomic_load_explicit(&real[i], memory_order_acquire) == got) {
      *pfn = hooks[i].wrapper;
      return;
    }
  }
  if (!symbol) return;
  int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  int best = 0;
  for (int i = 1; i < HOOK_COUNT; i++) {
    const struct hook *h = &hooks[i];
    if (strcmp(h->base, symbol) != 0 || h->ptsz != ptsz || (version && h->minver > version)) continue;
    if (!best || h->minver > hooks[best].minver) best = i;
  }
  if (!best) return;
  void *expected = NULL;
  atomic_compare_exchange_strong(&real[best], &expected, got);
  if (atomic_load(&real[best]) == got) *pfn = hooks[best].wrapper;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
  NEED_REAL(cuGetProcAddress);
  CUresult rc = real_cuGetProcAddress(symbol, pfn, version, flags);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *status) {
  NEED_REAL(cuGetProcAddress_v2);
  CUresult rc = real_cuGetProcAddress_v2(symbol, pfn, version, flags, status);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cuGetProcAddress_v2_ptsz(const char *symbol, void **pfn, int version, cuuint64_t flags, CUdriverProcAddressQueryResult *status) {
  NEED_REAL(cuGetProcAddress_v2_ptsz);
  CUresult rc = real_cuGetProcAddress_v2_ptsz(symbol, pfn, version, flags, status);
  if (rc == CUDA_SUCCESS && pfn) substitute(symbol, pfn, version, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_REAL(cudaGetDriverEntryPoint);
  CUresult rc = real_cudaGetDriverEntryPoint(symbol, fn, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, 0, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPoint_ptsz(const char *symbol, void **fn, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_REAL(cudaGetDriverEntryPoint_ptsz);
  CUresult rc = real_cudaGetDriverEntryPoint_ptsz(symbol, fn, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, 0, flags | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_REAL(cudaGetDriverEntryPointByVersion);
  CUresult rc = real_cudaGetDriverEntryPointByVersion(symbol, fn, version, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, (int)version, flags);
  return rc;
}

EXPORT CUresult cudaGetDriverEntryPointByVersion_ptsz(const char *symbol, void **fn, unsigned int version, unsigned long long flags, cudaDriverEntryPointQueryResult *status) {
  NEED_REAL(cudaGetDriverEntryPointByVersion_ptsz);
  CUresult rc = real_cudaGetDriverEntryPointByVersion_ptsz(symbol, fn, version, flags, status);
  if (rc == 0 && fn) substitute(symbol, fn, (int)version, flags | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
  return rc;
}

/* dlsym: callers that dlopen libcuda and look entry points up by name get
 * the wrappers. Unversioned, so it answers references to both
 * dlsym@GLIBC_2.2.5 and dlsym@GLIBC_2.34. */
NO_SANITIZE EXPORT void *dlsym(void *handle, const char *name) {
  dlsym_fn ds = real_dlsym();
  if (unlikely(!ds)) return NULL;
  void *p = ds(handle, name);
  if (!p || name[0] != 'c' || name[1] != 'u') return p; /* p != NULL: name was valid */
  for (int i = 1; i < HOOK_COUNT; i++) {
    if (strcmp(hooks[i].name, name) == 0) {
      void *expected = NULL;
      if (p != hooks[i].wrapper) atomic_compare_exchange_strong(&real[i], &expected, p);
      return hooks[i].wrapper;
    }
  }
  return p;
}

/* ---- cooperative API --------------------------------------------------------- */

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
  if (deny_out) *deny_out = atomic_load(&deny);
}
