/* table.c — the allocation table: what this process allocated, keyed by
 * pointer (ptrs) or by VMM handle (handles). Lock-striped open addressing:
 * a call locks one stripe of 256, never the whole table. */
#include "kvh_internal.h"

#include <sys/mman.h>

struct table ptrs, handles;
atomic_ulong untracked;

void table_init(struct table *t, uint32_t cap) {
  for (int i = 0; i < STRIPES; i++) {
    pthread_mutex_init(&t->s[i].mu, NULL);
    void *m = mmap(NULL, (size_t)cap * sizeof(struct slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    t->s[i].slots = m == MAP_FAILED ? NULL : m;
    t->s[i].cap = m == MAP_FAILED ? 0 : cap;
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

int table_put(struct table *t, const struct slot *v) {
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

/* lock_all takes the VMM lock and every stripe of both tables (fork);
 * unlock_all gives them back. */
void lock_all(void) {
  pthread_mutex_lock(&vmm_mu);
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&ptrs.s[i].mu);
  for (int i = 0; i < STRIPES; i++) pthread_mutex_lock(&handles.s[i].mu);
}
void unlock_all(void) {
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&handles.s[i].mu);
  for (int i = STRIPES - 1; i >= 0; i--) pthread_mutex_unlock(&ptrs.s[i].mu);
  pthread_mutex_unlock(&vmm_mu);
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
