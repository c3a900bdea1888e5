/* config.c — the configuration, read once at init from the environment.
 *
 * Every knob has a default; a value that does not parse is reported once on
 * stderr, naming the variable, and the strictest setting is used instead
 * (enforce, full verify, the most samples, double pass on, agent required).
 * Only KVH_MODE=off outranks KVH_REQUIRE_AGENT: off means kvh does nothing. */
#include "kvh_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

struct config cfg;
_Atomic uint64_t policy_word;

void warn(const char *fmt, ...) {
  /* at init or once per process, never on the hot path */
  char buf[320];
  va_list ap;
  va_start(ap, fmt);
  int n = snprintf(buf, sizeof buf - 1, "libkvh: ");
  if (n > 0) n += vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  (void)!write(2, buf, (size_t)n);
}

/* env reads name, or the seed's alias when name is unset or empty; *which
 * says which was read (for the warning). */
static const char *env(const char *name, const char *alias, const char **which) {
  const char *v = getenv(name);
  *which = name;
  if ((!v || !*v) && alias) {
    v = getenv(alias);
    *which = alias;
  }
  return v && *v ? v : NULL;
}

static void invalid(const char *which, const char *v, const char *valid, const char *using) {
  warn("%s=\"%.32s\" is not %s: using %s, the strictest setting", which, v, valid, using);
}

/* env_bool: 1/true/yes/on and 0/false/no/off; anything else is invalid and
 * reads as on (every boolean knob's strict side is on). */
static int env_bool(const char *name, const char *alias, int def) {
  const char *which, *v = env(name, alias, &which);
  if (!v) return def;
  if (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on")) return 1;
  if (!strcasecmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off")) return 0;
  invalid(which, v, "1, true, yes, on, 0, false, no or off", "1");
  return 1;
}

void read_config(void) {
  const char *v, *which;
  cfg.mode = MODE_ENFORCE;
  if ((v = env("KVH_MODE", NULL, &which))) {
    if (!strcmp(v, "enforce")) cfg.mode = MODE_ENFORCE;
    else if (!strcmp(v, "observe")) cfg.mode = MODE_OBSERVE;
    else if (!strcmp(v, "off")) cfg.mode = MODE_OFF;
    else invalid(which, v, "enforce, observe or off", "enforce");
  }
  cfg.verify = KVH_VERIFY_SAMPLE;
  if ((v = env("KVH_VERIFY", NULL, &which))) {
    if (!strcmp(v, "off")) cfg.verify = KVH_VERIFY_OFF;
    else if (!strcmp(v, "sample")) cfg.verify = KVH_VERIFY_SAMPLE;
    else if (!strcmp(v, "full")) cfg.verify = KVH_VERIFY_FULL;
    else {
      invalid(which, v, "off, sample or full", "full");
      cfg.verify = KVH_VERIFY_FULL;
    }
  }
  cfg.samples = 8;
  if ((v = env("KVH_VERIFY_SAMPLES", "KV_VERIFY_SAMPLES_DEFAULT", &which))) {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 1 || n > KVH_MAX_SAMPLES) {
      invalid(which, v, "an integer from 1 to 1048576", "1048576 (every window of a buffer up to 64 MiB)");
      cfg.samples = KVH_MAX_SAMPLES;
    } else {
      cfg.samples = (int)n;
    }
  }
  cfg.double_pass = env_bool("KVH_DOUBLE_PASS", "KV_DOUBLE_PASS_DEFAULT", 0);
  cfg.require_agent = env_bool("KVH_REQUIRE_AGENT", NULL, 0);
  if (cfg.require_agent && cfg.mode == MODE_OFF) {
    warn("KVH_REQUIRE_AGENT has no effect with KVH_MODE=off (kvh does nothing)");
    cfg.require_agent = 0;
  }
  if ((v = getenv("KVH_TENANT"))) {
    if (strlen(v) >= sizeof cfg.tenant) warn("KVH_TENANT is longer than %zu bytes: cut to \"%.*s\"", sizeof cfg.tenant - 1, (int)sizeof cfg.tenant - 1, v);
    strncpy(cfg.tenant, v, sizeof cfg.tenant - 1);
  }
  atomic_store(&policy_word, policy_pack((struct policy){cfg.verify, cfg.double_pass, cfg.samples}));
  /* Test-only: a small first table and no growth reach its limits fast. */
  cfg.table_slots = TABLE_SLOTS;
  if ((v = env("KVH_TEST_TABLE_SLOTS", NULL, &which))) {
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < 4 || n > TABLE_SLOTS || (n & (n - 1))) warn("%s=\"%.32s\" is not a power of two from 4 to %d: using %d", which, v, TABLE_SLOTS, TABLE_SLOTS);
    else cfg.table_slots = (uint32_t)n;
  }
  cfg.table_fixed = 0;
  if ((v = env("KVH_TEST_TABLE_FIXED", NULL, &which)) && strcmp(v, "1") != 0) warn("%s=\"%.32s\" is not 1: the table grows", which, v);
  else if (v) cfg.table_fixed = 1;
  v = getenv("KVH_SOCKET");
  if (v && strlen(v) >= sizeof cfg.socket) {
    /* Not a path a Unix socket can have: nothing answers there. */
    warn("KVH_SOCKET is longer than %zu bytes: no agent can be reached", sizeof cfg.socket - 1);
    cfg.socket_invalid = 1;
  }
  strncpy(cfg.socket, v && *v ? v : "/run/kvh/kvh.sock", sizeof cfg.socket - 1);
}

struct policy policy_raise(struct policy floor) {
  uint64_t old = atomic_load(&policy_word), want;
  struct policy p;
  do {
    p = (struct policy){(int)(old & 0xff), (int)(old >> 8 & 1), (int)(old >> 32)};
    if (floor.verify > p.verify) p.verify = floor.verify > KVH_VERIFY_FULL ? KVH_VERIFY_FULL : floor.verify;
    if (floor.double_pass) p.double_pass = 1;
    if (floor.samples > p.samples) p.samples = floor.samples > KVH_MAX_SAMPLES ? KVH_MAX_SAMPLES : floor.samples;
    want = policy_pack(p);
  } while (want != old && !atomic_compare_exchange_weak(&policy_word, &old, want));
  return p;
}
