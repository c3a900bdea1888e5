/* config.c — the configuration, read once at init from the environment. */
#include "kvh_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

struct config cfg;

void warn(const char *msg) {
  /* once at init, never on the hot path */
  char buf[256];
  int n = snprintf(buf, sizeof buf, "libkvh: %s\n", msg);
  if (n > 0) (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static int env_bool(const char *v) {
  return v && (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"));
}

void read_config(void) {
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
