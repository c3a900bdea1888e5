/* init.c — init, run once (pthread_once) from the constructor or the first
 * hook, and fork safety: no lock a parent's thread held survives into the
 * child, and the child starts its reporting afresh. */
#include "kvh_internal.h"

#include <sys/random.h>

pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void atfork_prepare(void) {
  report_fork_prepare();
  lock_all();
}
static void atfork_parent(void) {
  unlock_all();
  report_fork_parent();
}
static void atfork_child(void) {
  unlock_all();
  report_fork_child();
}

void init(void) {
  read_config();
  table_init(&ptrs, cfg.table_slots);
  table_init(&handles, 256);
  ring_reset();
  uint64_t s = 0;
  if (getrandom(&s, sizeof s, GRND_NONBLOCK) != sizeof s) s = now_ns(CLOCK_MONOTONIC);
  seed_base = s | 1;
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  /* Say hello now, while the process is surely alive: the agent reads its
   * identity from /proc when it accepts. */
  if (cfg.mode != MODE_OFF) report_connect();
}

__attribute__((constructor)) static void kvh_ctor(void) { ensure_init(); }
