/* table.c — the allocation table: what this process allocated, keyed by
 * pointer (ptrs) or by VMM handle (handles), and the VMM mappings.
 *
 * Lock-striped open addressing with linear probing: a call locks one stripe
 * of 256, never the whole table, for lookups as for changes. A delete
 * shifts the entries after it back into the hole (no tombstones), so a
 * stripe holds only live entries and a lookup probes past live ones only.
 * A stripe grows on its own, under its own lock, when its entries would
 * fill three quarters of it: into a new mapping twice their need. So the
 * table has no fixed capacity and starts small (TABLE_SLOTS a stripe: it
 * stays in cache, which a churning process's lookups showed they need);
 * only an mmap that fails leaves an allocation untracked (counted, said
 * once on stderr), and its device free then asks the driver for its range
 * (hooks.c). */
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

static inline uint32_t home_of(const struct stripe *s, uint64_t key) { return (uint32_t)(mix(key) >> 8) & (s->cap - 1); }

/* table_del empties e's slot and moves each later entry of its probe run
 * that may live there back into the hole (Knuth's algorithm R): every
 * entry stays reachable from its home slot without a tombstone. */
void table_del(struct stripe *s, struct slot *e) {
  uint32_t mask = s->cap - 1, hole = (uint32_t)(e - s->slots);
  s->slots[hole] = (struct slot){0}; /* the run ends at the hole at the latest, in a full stripe too */
  for (uint32_t j = (hole + 1) & mask; s->slots[j].key; j = (j + 1) & mask) {
    /* the entry at j may fill the hole if the hole lies on its probe path,
     * cyclically from its home up to j */
    if (((j - home_of(s, s->slots[j].key)) & mask) >= ((j - hole) & mask)) {
      s->slots[hole] = s->slots[j];
      s->slots[j] = (struct slot){0};
      hole = j;
    }
  }
  s->used--;
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
  uint32_t live = s->used, cap = s->cap ? s->cap : 16;
  while ((uint64_t)(live + 1) * 2 > cap && cap < (1u << 30)) cap *= 2;
  struct slot *n = cfg.table_fixed ? NULL : slots_new(cap);
  if (!n) {
    say_once(&said, msg, sizeof msg - 1);
    s->grow_at = s->cap; /* try again only when it is full */
    return 0;
  }
  for (uint32_t i = 0; i < s->cap; i++) {
    const struct slot *x = &s->slots[i];
    if (!x->key) continue;
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
  int fresh = 0; /* an empty slot, not the key's own */
  for (uint32_t i = 0, j = (uint32_t)(h >> 8) & (s->cap - 1); i < s->cap; i++, j = (j + 1) & (s->cap - 1)) {
    struct slot *x = &s->slots[j];
    if (x->key == v->key || x->key == 0) {
      free_slot = x, fresh = x->key == 0;
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
    /* A delete may move a later entry back into slot j (look at j again)
     * or one from the stripe's start to its end (seen twice: not ctx's,
     * or it would have been taken). */
    for (uint32_t j = 0; j < s->cap;) {
      struct slot *e = &s->slots[j];
      if (!e->key || e->ctx != ctx) {
        j++;
        continue;
      }
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
