/* table_model.c — interpose/table.c against a model: random puts, finds,
 * deletes and context takes on a table with tiny stripes (long probe runs
 * that wrap), every answer checked against a plain array, and after every
 * change each stripe's invariant: every entry is reachable from its home
 * slot, and used counts the entries. Built and run by TestTableModel.
 *
 * With THREADS, that many threads run at once on one table, each on keys
 * of its own (key % THREADS) with a context of its own, so each keeps a
 * model of its own: their puts, deletes, grows and context takes share
 * stripes, and only the stripe locks keep the entries they move apart.
 *
 * usage: table_model SEED OPS KEYS FIRST_CAP FIXED [THREADS] */
#include "kvh_internal.h"

#include <stdio.h>
#include <stdlib.h>

struct config cfg;
pthread_mutex_t graph_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t rng;
static uint64_t next(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static int fail(const char *what, uint64_t key, long op) {
  printf("FAIL %s key=%llu op=%ld\n", what, (unsigned long long)key, op);
  exit(1);
}

/* check: every key in a stripe is found by probing from its home. */
static void check(struct table *t, long op) {
  for (int i = 0; i < STRIPES; i++) {
    struct stripe *s = &t->s[i];
    uint32_t n = 0;
    for (uint32_t j = 0; j < s->cap; j++) {
      uint64_t k = s->slots[j].key;
      if (!k) continue;
      n++;
      if ((mix(k) & (STRIPES - 1)) != (uint64_t)i) fail("entry in another key's stripe", k, op);
      for (uint32_t p = (uint32_t)(mix(k) >> 8) & (s->cap - 1);; p = (p + 1) & (s->cap - 1)) {
        if (p == j) break;
        if (!s->slots[p].key) fail("entry unreachable from its home", k, op);
      }
    }
    if (n != s->used) fail("used is not the entries' count", n, op);
  }
}

/* One thread of the threaded run: keys k+2 with k % n == id, context id+1. */
struct worker {
  struct table *t;
  long id, n, ops, nkeys, refused;
  uint64_t rng;
  pthread_t th;
};

static uint64_t wnext(struct worker *w) {
  w->rng ^= w->rng << 13, w->rng ^= w->rng >> 7, w->rng ^= w->rng << 17;
  return w->rng;
}

static void wfail(struct worker *w, const char *what, uint64_t key, long op) {
  printf("FAIL thread %ld: %s key=%llu op=%ld\n", w->id, what, (unsigned long long)key, op);
  fflush(stdout);
  exit(1);
}

static void *work(void *arg) {
  struct worker *w = arg;
  uint64_t ctx = (uint64_t)w->id + 1;
  char *model = calloc((size_t)w->nkeys, 1); /* 1: key live */
  for (long op = 0; op < w->ops; op++) {
    long k = (long)(wnext(w) % (uint64_t)(w->nkeys / w->n)) * w->n + w->id;
    uint64_t key = (uint64_t)k + 2, r = wnext(w) % 10000;
    struct stripe *st;
    if (r < 6000) {
      struct slot v = {.key = key, .size = key * 3, .ctx = ctx};
      if (table_put(w->t, &v)) model[k] = 1;
      else if (!cfg.table_fixed) wfail(w, "put refused while the table may grow", key, op);
      else w->refused++;
    } else if (r < 9990) {
      struct slot *e = table_find(w->t, key, &st);
      if (!e != !model[k]) wfail(w, e ? "found a key not live" : "lost a live key", key, op);
      if (e && (e->size != key * 3 || e->ctx != ctx)) wfail(w, "wrong value", key, op);
      if (e && (wnext(w) & 1)) table_del(st, e), model[k] = 0;
      pthread_mutex_unlock(&st->mu);
    } else { /* take this thread's entries, from every stripe, while the others change them */
      struct slot *out;
      size_t got = table_take_ctx(w->t, ctx, &out);
      long want = 0;
      for (long i = w->id; i < w->nkeys; i += w->n) want += model[i];
      if ((long)got != want) wfail(w, "take_ctx count", got, op);
      for (size_t i = 0; i < got; i++) {
        if (out[i].ctx != ctx || !model[out[i].key - 2]) wfail(w, "take_ctx took a wrong entry", out[i].key, op);
        model[out[i].key - 2] = 0;
      }
      free(out);
    }
  }
  for (long i = w->id; i < w->nkeys; i += w->n) { /* everything still there */
    struct stripe *st;
    struct slot *e = table_find(w->t, (uint64_t)i + 2, &st);
    if (!e != !model[i]) wfail(w, "final lookup", (uint64_t)i + 2, w->ops);
    pthread_mutex_unlock(&st->mu);
  }
  free(model);
  return NULL;
}

static int threaded(long nthreads, long ops, long nkeys, uint32_t first_cap) {
  struct table *t = calloc(1, sizeof *t);
  table_init(t, first_cap);
  struct worker *w = calloc((size_t)nthreads, sizeof *w);
  long refused = 0;
  for (long i = 0; i < nthreads; i++) {
    w[i] = (struct worker){.t = t, .id = i, .n = nthreads, .ops = ops, .nkeys = nkeys, .rng = next() | 1};
    if (pthread_create(&w[i].th, NULL, work, &w[i])) return 2;
  }
  for (long i = 0; i < nthreads; i++) pthread_join(w[i].th, NULL), refused += w[i].refused;
  check(t, ops);
  printf("OK ops=%ld threads=%ld refused=%ld untracked=%lu\n", ops, nthreads, refused, (unsigned long)atomic_load(&untracked));
  free(w);
  free(t); /* (its stripes' slots are mmap'd and die with the process) */
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 6 && argc != 7) return 2;
  rng = strtoull(argv[1], NULL, 10) | 1;
  long ops = atol(argv[2]), nkeys = atol(argv[3]);
  cfg.table_fixed = atoi(argv[5]);
  if (argc == 7) return threaded(atol(argv[6]), ops, nkeys, (uint32_t)atoi(argv[4]));
  struct table *t = calloc(1, sizeof *t);
  table_init(t, (uint32_t)atoi(argv[4]));
  /* model: key i+2 is live with ctx model[i] (0: not live). */
  uint64_t *model = calloc((size_t)nkeys, sizeof *model);
  long live = 0, refused = 0;
  for (long op = 0; op < ops; op++) {
    long i = (long)(next() % (uint64_t)nkeys);
    uint64_t key = (uint64_t)i + 2, r = next() % 10000;
    struct stripe *st;
    if (r < 6000) { /* put (insert or replace) */
      struct slot v = {.key = key, .size = key * 3, .ctx = 1 + next() % 4};
      if (table_put(t, &v)) {
        live += !model[i];
        model[i] = v.ctx;
      } else {
        if (!cfg.table_fixed) fail("put refused while the table may grow", key, op);
        refused++;
      }
    } else if (r < 9998) { /* find, and delete what is found half the time */
      struct slot *e = table_find(t, key, &st);
      if (!e != !model[i]) fail(e ? "found a key not live" : "lost a live key", key, op);
      if (e && (e->size != key * 3 || e->ctx != model[i])) fail("wrong value", key, op);
      if (e && (next() & 1)) {
        table_del(st, e);
        model[i] = 0, live--;
      }
      pthread_mutex_unlock(&st->mu);
    } else { /* take every entry of one context */
      uint64_t ctx = 1 + next() % 4;
      struct slot *out;
      size_t n = table_take_ctx(t, ctx, &out);
      long want = 0;
      for (long k = 0; k < nkeys; k++) want += model[k] == ctx;
      if ((long)n != want) fail("take_ctx count", n, op);
      for (size_t k = 0; k < n; k++) {
        if (out[k].ctx != ctx || model[out[k].key - 2] != ctx) fail("take_ctx took a wrong entry", out[k].key, op);
        model[out[k].key - 2] = 0, live--;
      }
      free(out);
    }
    if (op % 997 == 0 || r >= 9998) check(t, op);
  }
  check(t, ops);
  for (long k = 0; k < nkeys; k++) { /* everything still there */
    struct stripe *st;
    struct slot *e = table_find(t, (uint64_t)k + 2, &st);
    if (!e != !model[k]) fail("final lookup", (uint64_t)k + 2, ops);
    pthread_mutex_unlock(&st->mu);
  }
  free(model);
  printf("OK ops=%ld live=%ld refused=%ld untracked=%lu\n", ops, live, refused, (unsigned long)atomic_load(&untracked));
  return 0;
}
