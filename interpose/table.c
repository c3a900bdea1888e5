/* table.c — the allocation table: what this process allocated, keyed by
 * pointer (ptrs) or by VMM handle (handles), and the VMM mappings.
 *
 * Lock-striped open addressing: a call locks one stripe of 256, never the
 * whole table, for lookups as for changes. A stripe grows on its own, under
 * its own lock, when live entries and tombstones would fill three quarters
 * of it: into a new mapping twice the live entries' need, without the
 * tombstones. So the table has no fixed capacity; only an mmap that fails
 * leaves an allocation untracked (counted, said once on stderr), and its
 * device free then asks the driver for its range (hooks.c). */
#include "kvh_internal.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

struct table ptrs, handles;
atomic_ulong untracked;

static struct slot *slots_new(uint32_t cap) {
  void *m = mmap(NULL, (size_t)cap * sizeof(struct slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return m == MAP_FAILED ? NULL : m;
}

void table_init(struct table *t, uint32_t cap) {
  for (int i = 0; i < STRIPES; i++) {
    pthread_mutex_init(&t->s[i].mu, NULL);
    t->s[i].slots = slots_new(cap);
    t->s[i].cap = t->s[i].slots ? cap : 0;
    t->s[i].used = 0;
    t->s[i].grow_at = t->s[i].cap / 4 * 3;
  }
}

static inline struct stripe *stripe_of(struct table *t, uint64_t key, uint64_t *h) {
  *h = mix(key);
  return &t->s[*h & (STRIPES - 1)];
}

/* table_find returns the live slot for key; the stripe is locked on return. */
struct slot *table_find(struct table *t, uint64_t key, struct stripe **sp) {
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

void table_del(struct stripe *s, struct slot *e) {
  (void)s; /* the tombstone still counts as used until the stripe grows */
  e->key = TOMB;
}

static void say_once(atomic_int *said, const char *msg, size_t n) {
  if (!atomic_exchange(said, 1)) (void)!write(2, msg, n); /* no formatting on the hot path */
}

/* grow rehashes s into room for twice its live entries (s->mu held): 0 when
 * it may not (KVH_TEST_TABLE_FIXED) or cannot (no memory). */
__attribute__((noinline, cold)) static int grow(struct stripe *s) {
  static atomic_int said;
  static const char msg[] = "libkvh: the allocation table cannot grow (out of memory): device frees it missed are "
                            "zeroized over the range cuMemGetAddressRange reports; other untracked frees pass through\n";
  uint32_t live = 0, cap = s->cap ? s->cap : 16;
  for (uint32_t i = 0; i < s->cap; i++) live += s->slots[i].key > TOMB;
  while ((uint64_t)(live + 1) * 2 > cap && cap < (1u << 30)) cap *= 2;
  struct slot *n = cfg.table_fixed ? NULL : slots_new(cap);
  if (!n) {
    say_once(&said, msg, sizeof msg - 1);
    s->grow_at = s->cap; /* try again only when it is full */
    return 0;
  }
  for (uint32_t i = 0; i < s->cap; i++) {
    const struct slot *x = &s->slots[i];
    if (x->key <= TOMB) continue;
    uint32_t j = (uint32_t)(mix(x->key) >> 8) & (cap - 1);
    while (n[j].key) j = (j + 1) & (cap - 1);
    n[j] = *x;
  }
  if (s->slots) munmap(s->slots, (size_t)s->cap * sizeof(struct slot));
  s->slots = n;
  s->cap = cap;
  s->used = live;
  s->grow_at = cap / 4 * 3;
  return 1;
}

int table_put(struct table *t, const struct slot *v) {
  uint64_t h;
  struct stripe *s = stripe_of(t, v->key, &h);
  pthread_mutex_lock(&s->mu);
  if (unlikely(s->used >= s->grow_at)) grow(s);
  struct slot *free_slot = NULL;
  int fresh = 0; /* an empty slot, not a tombstone or the key's own */
  for (uint32_t i = 0, j = (uint32_t)(h >> 8) & (s->cap - 1); i < s->cap; i++, j = (j + 1) & (s->cap - 1)) {
    struct slot *x = &s->slots[j];
    if (x->key == v->key) {
      free_slot = x;
      break;
    }
    if (x->key == TOMB && !free_slot) free_slot = x;
    if (x->key == 0) {
      if (!free_slot) free_slot = x, fresh = 1;
      break;
    }
  }
  if (free_slot) {
    *free_slot = *v;
    s->used += (uint32_t)fresh;
  }
  pthread_mutex_unlock(&s->mu);
  if (!free_slot) atomic_fetch_add(&untracked, 1);
  return free_slot != NULL;
}

size_t table_take_ctx(struct table *t, uint64_t ctx, struct slot **out) {
  size_t n = 0, cap = 0;
  struct slot *v = NULL;
  for (int i = 0; i < STRIPES; i++) {
    struct stripe *s = &t->s[i];
    pthread_mutex_lock(&s->mu);
    for (uint32_t j = 0; j < s->cap; j++) {
      struct slot *e = &s->slots[j];
      if (e->key <= TOMB || e->ctx != ctx) continue;
      if (n == cap) {
        size_t c2 = cap ? 2 * cap : 64;
        struct slot *v2 = realloc(v, c2 * sizeof *v);
        if (!v2) break; /* left in the table: released with the context, unzeroized */
        v = v2, cap = c2;
      }
      v[n++] = *e;
      table_del(s, e);
    }
    pthread_mutex_unlock(&s->mu);
  }
  *out = v;
  return n;
}

/* lock_all takes the VMM lock and every stripe of both tables (fork);
 * unlock_all gives them back. */
void lock_all(void) {
  pthread_mutex_lock(&graph_mu);
  pthread_mutex_lock(&vmm_mu);
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&ptrs.s[i].mu);
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&handles.s[i].mu);
}
void unlock_all(void) {
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&handles.s[i].mu);
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&ptrs.s[i].mu);
  pthread_mutex_unlock(&vmm_mu);
  pthread_mutex_unlock(&graph_mu);
}

/* ---- VMM mappings: a sorted array (mmap, not malloc), under vmm_mu ------- */

pthread_mutex_t vmm_mu = PTHREAD_MUTEX_INITIALIZER;
struct vmap *vmaps;
size_t nvmaps;
static size_t vmaps_cap;

size_t vmap_lower(uint64_t va) {
  size_t lo = 0, hi = nvmaps;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (vmaps[mid].va < va) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

int vmap_insert(const struct vmap *m) {
  if (nvmaps == vmaps_cap) {
    size_t cap = vmaps_cap ? 2 * vmaps_cap : 256;
    void *p = mmap(NULL, cap * sizeof *vmaps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
    if (vmaps) {
      memcpy(p, vmaps, nvmaps * sizeof *vmaps);
      munmap(vmaps, vmaps_cap * sizeof *vmaps);
    }
    vmaps = p;
    vmaps_cap = cap;
  }
  size_t i = vmap_lower(m->va);
  memmove(&vmaps[i + 1], &vmaps[i], (nvmaps - i) * sizeof *vmaps);
  vmaps[i] = *m;
  nvmaps++;
  return 1;
}
