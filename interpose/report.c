/* report.c — events for the agent: a lock-free ring that the hooks fill,
 * drained by one background thread onto the agent's Unix socket, and the
 * agent's control messages back (deny, allow, the verify floor). Nothing
 * here blocks a hook on the agent: a full ring counts a drop, and drops are
 * reported. */
#include "kvh_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

atomic_int gate;
__thread char tl_tenant[24], tl_request[24]; /* kvh_set_tenant, kvh_set_request */

static atomic_uint fork_gen; /* bumped in a forked child: cached ids are stale */
static uint32_t cached_pid;
static __thread uint32_t tl_tid, tl_gen;

/* ---- the account: what this process emitted and dropped ---------------- */

/* ctr is the process's kvh_counters: a shared memfd page once
 * counters_open succeeded (the agent receives the fd with the HELLO and
 * reads it after the process is gone), else local_ctr. Its emitted field is
 * the seq counter itself, so the account costs the hot path nothing. */
static struct kvh_counters local_ctr = {.magic = KVH_COUNTERS_MAGIC, .version = KVH_WIRE_VERSION};
static struct kvh_counters *ctr = &local_ctr;
static int ctr_fd = -1;

/* counters_open puts the account in a fresh sealed memfd page (init and a
 * forked child, single-threaded). A child must not count into its parent's
 * page, which it inherits mapped: it starts its own at zero. */
static void counters_open(void) {
  if (ctr != &local_ctr) munmap(ctr, sizeof *ctr);
  if (ctr_fd >= 0) close(ctr_fd);
  ctr = &local_ctr;
  ctr_fd = -1;
  memset(&local_ctr, 0, sizeof local_ctr);
  local_ctr.magic = KVH_COUNTERS_MAGIC;
  local_ctr.version = KVH_WIRE_VERSION;
  int fd = (int)syscall(SYS_memfd_create, "kvh-account", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return;
  struct kvh_counters *p = MAP_FAILED;
  if (ftruncate(fd, (off_t)sizeof *p) == 0 && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
    p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return;
  }
  *p = local_ctr;
  ctr = p;
  ctr_fd = fd;
}

static inline uint64_t next_seq(void) { return __atomic_add_fetch(&ctr->emitted, 1, __ATOMIC_RELAXED); }

/* lost counts n records given a seq that will never reach the agent. */
static void lost(unsigned long n) {
  atomic_fetch_add(&dropped, n);
  __atomic_add_fetch(&ctr->dropped, (uint64_t)n, __ATOMIC_RELAXED);
}

/* ---- events: a lock-free ring drained by one background thread --------- */

/* RING records (5.5 MB) absorb an agent's stall of about half a second at a
 * busy process's 60k events/s: 8,192 dropped events at 1M events/s from 16
 * processes in BenchmarkAgentIngest where 32,768 dropped none. The ring is
 * mapped, not touched, at start: a process that never calls CUDA makes no
 * page of it resident, and a busy one faults its pages in once. */
#define RING 32768

struct cell {
  /* the cell's sequence number less its index, so that a zero page is an
   * empty ring (Vyukov's queue starts cell i at sequence i) */
  atomic_uint_fast64_t seq;
  struct kvh_record rec;
};

static struct cell *ring; /* RING cells; NULL if they could not be mapped (every event counts a drop) */

static inline uint64_t cell_seq(const struct cell *c, uint64_t i) {
  return atomic_load_explicit(&c->seq, memory_order_acquire) + i;
}
static inline void cell_set_seq(struct cell *c, uint64_t i, uint64_t seq) {
  atomic_store_explicit(&c->seq, seq - i, memory_order_release);
}
static atomic_uint_fast64_t ring_head; /* next slot to fill */
static uint64_t ring_tail;              /* next slot to drain (consumer only) */
atomic_ulong dropped;                   /* records lost while the agent was away or slow */
atomic_ulong dropped_reported;          /* of those, already reported to the agent */
static pthread_mutex_t consumer = PTHREAD_MUTEX_INITIALIZER;
static int sock = -1;
static atomic_int thread_started;
static struct timespec next_connect;

/* ring_reset empties the ring: at init (mapping it) and in a forked child,
 * which drops the parent's pages rather than writing every cell. */
void ring_reset(void) {
  size_t size = RING * sizeof(struct cell);
  if (!ring) {
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m != MAP_FAILED) ring = m;
  } else if (madvise(ring, size, MADV_DONTNEED) != 0) {
    memset(ring, 0, size);
  }
  atomic_store(&ring_head, 0);
  ring_tail = 0;
}

static void start_thread(void);

/* emit enqueues r (Vyukov's bounded queue); a full ring counts a drop. */
void emit(struct kvh_record *r) {
  if (cfg.mode == MODE_OFF) return;
  r->magic = KVH_WIRE_MAGIC;
  r->version = KVH_WIRE_VERSION;
  r->seq = next_seq();
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
  /* With no ring every event is a drop, but the reporter still starts: it
   * alone reads the agent's deny and floor, and reports the drops. */
  uint64_t pos = atomic_load_explicit(&ring_head, memory_order_relaxed);
  if (unlikely(!ring)) lost(1);
  else for (;;) {
    uint64_t i = pos & (RING - 1);
    struct cell *c = &ring[i];
    uint64_t s = cell_seq(c, i);
    int64_t dif = (int64_t)s - (int64_t)pos;
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&ring_head, &pos, pos + 1, memory_order_relaxed, memory_order_relaxed)) {
        c->rec = *r;
        cell_set_seq(c, i, pos + 1);
        break;
      }
    } else if (dif < 0) {
      lost(1);
      break;
    } else {
      pos = atomic_load_explicit(&ring_head, memory_order_relaxed);
    }
  }
  if (unlikely(!atomic_load_explicit(&thread_started, memory_order_acquire))) start_thread();
}

/* agent_up keeps GATE_NO_AGENT in step with the connection (send_mu held,
 * or single-threaded at init and in a forked child). */
static void agent_up(int up) {
  if (!cfg.require_agent) return;
  if (up) atomic_fetch_and(&gate, ~GATE_NO_AGENT);
  else atomic_fetch_or(&gate, GATE_NO_AGENT);
}

static atomic_int said_unreachable; /* once per process tree: a fork keeps it */

/* unreachable says once on stderr that the agent cannot be reached, and why. */
static void unreachable(int err) {
  if (atomic_exchange(&said_unreachable, 1)) return;
  char b[96];
  const char *why = strerror_r(err, b, sizeof b);
  warn("cannot reach the kvh agent at %s: %s (errno %d); %s", cfg.socket, why, err,
       cfg.require_agent ? "allocations are refused until it answers (KVH_REQUIRE_AGENT=1)"
                         : "memory is still zeroized, but nothing is reported until it answers");
}

static int try_connect(void) {
  int fd = -1, err = ENAMETOOLONG;
  if (!cfg.socket_invalid && (fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) err = errno;
  if (fd >= 0) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, cfg.socket, sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
      agent_up(1);
      return fd;
    }
    err = errno;
    close(fd);
  }
  unreachable(err);
  return -1;
}

static void disconnect(void) {
  if (sock >= 0) close(sock);
  sock = -1;
  agent_up(0);
}

/* batch_max is the most records a packet carries to the agent connected
 * now: KVH_WIRE_BASE_BATCH, which every agent takes, until its FLOOR says
 * it takes more. Fewer, larger packets: with 128 records a packet instead
 * of 32, BenchmarkAgentIngest's clients and agent together ingested about
 * 1.4x as many events on the same two cores, the sendmsg and recvmsg per
 * packet being what they spent most on after the work itself. */
static atomic_int batch_max = KVH_WIRE_BASE_BATCH;

/* While exiting, the flush gives up at this CLOCK_MONOTONIC time (0: no limit). */
static uint64_t flush_deadline;
/* send_mu serialises use of the socket (sending, connecting, closing); the
 * consumer mutex only covers taking records off the ring, so fork() never
 * waits on a slow agent. */
static pthread_mutex_t send_mu = PTHREAD_MUTEX_INITIALIZER;

/* send_records sends n records in one packet, with fd as SCM_RIGHTS when
 * fd >= 0 (send_mu held), and reports whether they went out. A slow agent
 * is waited for, up to 5 s (the ring keeps filling meanwhile, and a full
 * ring counts drops); a dead one is dropped and reconnected later. */
static int send_records(struct kvh_record *b, int n, int fd) {
  uint64_t give_up = now_ns(CLOCK_MONOTONIC) + 5000000000ULL;
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct iovec iov = {.iov_base = b, .iov_len = (size_t)n * sizeof *b};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&u, 0, sizeof u);
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  while (sock >= 0) {
    uint64_t now = now_ns(CLOCK_MONOTONIC);
    if (now > give_up || (flush_deadline && now > flush_deadline)) break;
    ssize_t w = sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w == (ssize_t)iov.iov_len) return 1;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR)) {
      struct pollfd p = {.fd = sock, .events = POLLOUT};
      poll(&p, 1, 20);
      continue;
    }
    disconnect();
  }
  return 0;
}

/* send_batch sends n records given a seq; those that cannot go are lost. */
static void send_batch(struct kvh_record *b, int n) {
  if (!send_records(b, n, -1)) lost((unsigned long)n);
}

static void report_drops(void);

static void hello(void) {
  struct kvh_record h = {0};
  h.magic = KVH_WIRE_MAGIC;
  h.version = KVH_WIRE_VERSION;
  h.type = KVH_REC_HELLO;
  h.ts_ns = now_ns(CLOCK_REALTIME);
  /* a new connection: its agent's FLOOR says how many records it takes */
  atomic_store_explicit(&batch_max, KVH_WIRE_BASE_BATCH, memory_order_relaxed);
  h.pid = (uint32_t)getpid();
  struct policy pol = policy_now(); /* as configured, or raised by a floor */
  h.verify = (uint8_t)pol.verify;
  h.flags = (pol.double_pass ? KVH_F_DOUBLE_PASS : 0) | (cfg.mode == MODE_ENFORCE ? KVH_F_ENFORCE : 0);
  h.count = (uint64_t)pol.samples;
  h.result = (uint8_t)cfg.mode;
  memcpy(h.tenant, cfg.tenant, sizeof h.tenant);
  send_records(&h, 1, ctr_fd); /* with the account's page: the agent keeps it */
  report_drops();
}

static atomic_int inflight; /* records taken off the ring, not yet delivered */

/* take_batch moves up to batch_max records off the ring. */
static int take_batch(struct kvh_record *batch) {
  int n = 0, lim = atomic_load_explicit(&batch_max, memory_order_relaxed);
  pthread_mutex_lock(&consumer);
  while (ring && n < lim) {
    uint64_t i = ring_tail & (RING - 1);
    struct cell *c = &ring[i];
    if ((int64_t)cell_seq(c, i) - (int64_t)(ring_tail + 1) < 0) break;
    batch[n++] = c->rec;
    cell_set_seq(c, i, ring_tail + RING);
    ring_tail++;
  }
  atomic_fetch_add(&inflight, n);
  pthread_mutex_unlock(&consumer);
  return n;
}

/* deliver sends a batch, or counts it dropped when there is no agent; in
 * packets the agent connected now takes (a batch taken for an agent that
 * took more may meet a new connection, to an agent that takes fewer). */
static void deliver(struct kvh_record *batch, int n) {
  pthread_mutex_lock(&send_mu);
  for (int off = 0, k; off < n; off += k) {
    k = n - off;
    int lim = atomic_load_explicit(&batch_max, memory_order_relaxed);
    if (k > lim) k = lim;
    if (sock >= 0) send_batch(batch + off, k);
    else lost((unsigned long)k);
  }
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

/* apply_floor raises the policy to the agent's floor and acknowledges it
 * with the settings now in force (send_mu held). */
static void apply_floor(const struct kvh_control *c) {
  /* every agent takes KVH_WIRE_BASE_BATCH: fewer is no limit it can ask for */
  if (c->max_batch > KVH_WIRE_BASE_BATCH) {
    int b = c->max_batch < KVH_WIRE_MAX_BATCH ? (int)c->max_batch : KVH_WIRE_MAX_BATCH;
    atomic_store_explicit(&batch_max, b, memory_order_relaxed);
  }
  struct policy now = policy_raise((struct policy){c->verify, (c->flags & KVH_F_DOUBLE_PASS) != 0, c->samples});
  struct kvh_record a = {0};
  a.magic = KVH_WIRE_MAGIC;
  a.version = KVH_WIRE_VERSION;
  a.type = KVH_REC_FLOOR_ACK;
  a.seq = next_seq();
  a.ts_ns = now_ns(CLOCK_REALTIME);
  a.pid = (uint32_t)getpid();
  a.verify = (uint8_t)now.verify;
  a.flags = now.double_pass ? KVH_F_DOUBLE_PASS : 0;
  a.count = (uint64_t)now.samples;
  memcpy(a.tenant, cfg.tenant, sizeof a.tenant);
  send_batch(&a, 1);
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
      if (c[i].type == KVH_CTL_DENY) atomic_fetch_or(&gate, GATE_DENY);
      if (c[i].type == KVH_CTL_ALLOW) atomic_fetch_and(&gate, ~GATE_DENY);
      if (c[i].type == KVH_CTL_FLOOR) apply_floor(&c[i]);
      if (sock < 0) return; /* the acknowledgement found the agent gone */
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
  if (send_records(&r, 1, -1)) atomic_fetch_add(&dropped_reported, d);
  else atomic_fetch_add(&dropped, d); /* still to report: not lost twice */
}

static void *reporter(void *arg) {
  (void)arg;
  struct kvh_record batch[KVH_WIRE_MAX_BATCH];
  uint64_t next_control = 0;
  for (;;) {
    pthread_mutex_lock(&send_mu);
    if (sock < 0) maybe_connect();
    int fd = sock;
    pthread_mutex_unlock(&send_mu);
    int n = take_batch(batch);
    if (n) {
      deliver(batch, n);
      /* A ring that never empties would keep the agent unheard (a deny, a
       * floor) and the drops untold: every millisecond, busy or not. */
      uint64_t now = now_ns(CLOCK_MONOTONIC);
      if (fd >= 0 && now >= next_control) {
        next_control = now + 1000000;
        pthread_mutex_lock(&send_mu);
        if (sock == fd) read_control();
        if (sock == fd) report_drops();
        pthread_mutex_unlock(&send_mu);
      }
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

CUresult gate_refuse(void) {
  if (!atomic_load_explicit(&thread_started, memory_order_acquire)) start_thread();
  if ((atomic_load(&gate) & GATE_NO_AGENT) && pthread_mutex_trylock(&send_mu) == 0) {
    if (sock < 0) maybe_connect();
    pthread_mutex_unlock(&send_mu);
  }
  int g = atomic_load(&gate);
  if (g & GATE_DENY) return CUDA_ERROR_OUT_OF_MEMORY;
  if (g & GATE_NO_AGENT) return CUDA_ERROR_NOT_PERMITTED;
  return CUDA_SUCCESS;
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
  static struct kvh_record batch[KVH_WIRE_MAX_BATCH]; /* 20 KiB: not on the stack of whichever thread exits */
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
  /* Past the deadline, what is still queued will not be sent: count it, so
   * the account closes (the reporter's batch in flight gives up at the same
   * deadline and counts itself). */
  int left;
  while ((left = take_batch(batch)) > 0) {
    lost((unsigned long)left);
    atomic_fetch_sub(&inflight, left);
  }
  for (int i = 0; i < 100 && atomic_load(&inflight); i++) nanosleep(&d, NULL);
  pthread_mutex_lock(&send_mu);
  report_drops();
  pthread_mutex_unlock(&send_mu);
}

/* report_connect says hello at init. Connecting a Unix socket does not block;
 * no thread is started here. */
void report_connect(void) {
  counters_open();
  agent_up(0);
  sock = try_connect();
  if (sock >= 0) hello();
  clock_gettime(CLOCK_MONOTONIC, &next_connect);
}

/* ---- fork safety -------------------------------------------------------- */

void report_fork_prepare(void) { pthread_mutex_lock(&consumer); }

void report_fork_parent(void) { pthread_mutex_unlock(&consumer); }

void report_fork_child(void) {
  pthread_mutex_init(&send_mu, NULL); /* a parent thread may have held it */
  /* The child has no reporter thread and must not speak on the parent's
   * connection (the agent knows it by the parent's credentials). */
  if (sock >= 0) close(sock);
  sock = -1;
  agent_up(0);
  next_connect.tv_sec = 0;
  next_connect.tv_nsec = 0;
  ring_reset();
  atomic_store(&inflight, 0);
  atomic_store(&batch_max, KVH_WIRE_BASE_BATCH);
  atomic_store(&dropped, 0);
  atomic_store(&dropped_reported, 0);
  if (cfg.mode != MODE_OFF) counters_open();
  cached_pid = 0;
  atomic_fetch_add(&fork_gen, 1);
  atomic_store(&thread_started, 0);
  /* The gate stays as the parent had it: a denied process's children are
   * denied until the agent allows them (gate_refuse connects them). */
  pthread_mutex_unlock(&consumer);
}
