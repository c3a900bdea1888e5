/* gpa_audit.c — an LD_AUDIT library that records which driver entry points
 * a CUDA runtime fetches and what it gets back, for
 * internal/realcudatest (TestRuntimeFetchesComeBackWrapped).
 *
 * The runtime reaches the driver by dlopen("libcuda.so.1"), dlsym of
 * cuGetProcAddress[_v2], then one cuGetProcAddress call per entry point. This
 * library redirects the runtime's own binding of dlsym (la_symbind64; glibc
 * >= 2.35 reports BIND_NOW bindings too) to audit_dlsym, which calls what the
 * runtime would have called — libkvh's dlsym when it is preloaded, else
 * libc's — and hands back, for cuGetProcAddress[_v2], a logging trampoline
 * around whatever that returned. The trampolines wrap the answers to
 * "cuGetProcAddress" itself too, so every lookup the runtime makes is seen
 * with the pointer it finally holds.
 *
 * Log ($KVH_AUDIT_LOG, appended; one line per event, tab-separated):
 *   dlsym  NAME  SYM  FILE
 *   gpa1   NAME  VER  FLAGS  RC  SYM  FILE  -
 *   gpa2   NAME  VER  FLAGS  RC  SYM  FILE  STATUS
 * SYM/FILE: what dladdr finds at the pointer returned ("null" and "-" when
 * none, "internal" when it is not an exported entry point).
 * Bindings from objects whose name contains "libkvh" are never redirected:
 * what libkvh does inside is not the runtime's view. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*gpa1_t)(const char *, void **, int, unsigned long long);
typedef int (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef void *(*dlsym_t)(void *, const char *);

static int logfd = -1;
static dlsym_t next_dlsym;

static void emit(const char *line) {
  if (logfd < 0) return;
  size_t n = strlen(line);
  if (write(logfd, line, n) != (ssize_t)n) {
    /* nothing to do: the test sees a short log */
  }
}

static void where(const void *p, char *sym, size_t ns, char *file, size_t nf) {
  Dl_info info;
  if (!p) {
    snprintf(sym, ns, "null");
    snprintf(file, nf, "-");
    return;
  }
  if (!dladdr(p, &info)) {
    snprintf(sym, ns, "unknown");
    snprintf(file, nf, "-");
    return;
  }
  const char *base = info.dli_fname ? strrchr(info.dli_fname, '/') : NULL;
  snprintf(file, nf, "%s", base ? base + 1 : info.dli_fname ? info.dli_fname : "-");
  if (info.dli_saddr != p || !info.dli_sname) snprintf(sym, ns, "internal");
  else snprintf(sym, ns, "%s", info.dli_sname);
}

/* Trampolines, one per distinct target, for each signature. */
#define SLOTS 8
static gpa1_t g1_target[SLOTS];
static gpa2_t g2_target[SLOTS];
static void *wrap1(void *target);
static void *wrap2(void *target);

/* A returned pointer to a resolver is itself wrapped, so the runtime's
 * later lookups through it are seen too. */
static void *rewrap(const char *name, void *p) {
  if (!p) return p;
  Dl_info info;
  const char *s = dladdr(p, &info) && info.dli_saddr == p ? info.dli_sname : NULL;
  if (!s) s = name;
  if (!strcmp(s, "cuGetProcAddress")) return wrap1(p);
  if (!strncmp(s, "cuGetProcAddress_v2", 19)) return wrap2(p);
  return p;
}

static void log_gpa(int v, const char *name, int ver, unsigned long long flags, int rc, void *p, const int *st) {
  char sym[128], file[128], line[512];
  where(p, sym, sizeof sym, file, sizeof file);
  char sbuf[16] = "-";
  if (st) snprintf(sbuf, sizeof sbuf, "%d", *st);
  snprintf(line, sizeof line, "gpa%d\t%s\t%d\t%llu\t%d\t%s\t%s\t%s\n", v, name ? name : "(null)", ver, flags, rc, sym, file, sbuf);
  emit(line);
}

#define G1(i)                                                                             \
  static int g1_##i(const char *name, void **pfn, int ver, unsigned long long flags) {    \
    int rc = g1_target[i](name, pfn, ver, flags);                                         \
    void *p = rc == 0 && pfn ? *pfn : NULL;                                               \
    log_gpa(1, name, ver, flags, rc, p, NULL);                                            \
    if (rc == 0 && pfn) *pfn = rewrap(name, *pfn);                                        \
    return rc;                                                                            \
  }
#define G2(i)                                                                                     \
  static int g2_##i(const char *name, void **pfn, int ver, unsigned long long flags, int *st) {   \
    int local = -1;                                                                               \
    int rc = g2_target[i](name, pfn, ver, flags, st ? st : &local);                              \
    void *p = rc == 0 && pfn ? *pfn : NULL;                                                       \
    log_gpa(2, name, ver, flags, rc, p, st ? st : &local);                                        \
    if (rc == 0 && pfn) *pfn = rewrap(name, *pfn);                                                \
    return rc;                                                                                    \
  }
G1(0) G1(1) G1(2) G1(3) G1(4) G1(5) G1(6) G1(7)
G2(0) G2(1) G2(2) G2(3) G2(4) G2(5) G2(6) G2(7)
static void *const g1_tramp[SLOTS] = {g1_0, g1_1, g1_2, g1_3, g1_4, g1_5, g1_6, g1_7};
static void *const g2_tramp[SLOTS] = {g2_0, g2_1, g2_2, g2_3, g2_4, g2_5, g2_6, g2_7};

static void *wrap_in(void **targets, void *const *tramps, void *target) {
  for (int i = 0; i < SLOTS; i++) {
    if (tramps[i] == target) return target; /* already ours */
  }
  for (int i = 0; i < SLOTS; i++) {
    if (targets[i] == target) return tramps[i];
    if (!targets[i]) {
      targets[i] = target;
      return tramps[i];
    }
  }
  emit("error\tout of trampoline slots\n");
  return target;
}
static void *wrap1(void *target) { return wrap_in((void **)g1_target, g1_tramp, target); }
static void *wrap2(void *target) { return wrap_in((void **)g2_target, g2_tramp, target); }

/* The runtime's dlsym. The handle is always the runtime's own dlopen handle
 * for libcuda (checked: a special handle is logged, and would be resolved
 * in this library's namespace, so the test fails on it). */
static void *audit_dlsym(void *handle, const char *name) {
  char sym[128], file[128], line[512];
  if (handle == RTLD_DEFAULT || handle == RTLD_NEXT) {
    snprintf(line, sizeof line, "error\tdlsym with a special handle for %s\n", name ? name : "(null)");
    emit(line);
  }
  void *p = next_dlsym(handle, name);
  where(p, sym, sizeof sym, file, sizeof file);
  snprintf(line, sizeof line, "dlsym\t%s\t%s\t%s\n", name ? name : "(null)", sym, file);
  emit(line);
  return name ? rewrap(name, p) : p;
}

/* self is this library's own link map: lookups audit_dlsym makes are not
 * the runtime's. */
static struct link_map *self(void) {
  static struct link_map *me;
  Dl_info info;
  if (!me && !dladdr1((void *)self, &info, (void **)&me, RTLD_DL_LINKMAP)) me = NULL;
  return me;
}

unsigned int la_version(unsigned int version) {
  const char *path = getenv("KVH_AUDIT_LOG");
  if (path && logfd < 0) logfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  return version < LAV_CURRENT ? version : LAV_CURRENT;
}

unsigned int la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie) {
  (void)lmid;
  *cookie = (uintptr_t)map;
  return LA_FLG_BINDTO | LA_FLG_BINDFROM;
}

uintptr_t la_symbind64(Elf64_Sym *sym, unsigned int ndx, uintptr_t *refcook, uintptr_t *defcook, unsigned int *flags,
                       const char *symname) {
  (void)ndx;
  (void)defcook;
  *flags |= LA_SYMB_NOPLTENTER | LA_SYMB_NOPLTEXIT;
  struct link_map *from = (struct link_map *)*refcook;
  /* NULL: an object never reported to la_objopen, i.e. this library. */
  if (!from || from == self() || (from->l_name && strstr(from->l_name, "libkvh"))) return sym->st_value;
  if (!strcmp(symname, "dlsym")) {
    if (!next_dlsym) next_dlsym = (dlsym_t)sym->st_value;
    if ((uintptr_t)next_dlsym != sym->st_value) {
      emit("error\ttwo different dlsym targets\n");
      return sym->st_value;
    }
    return (uintptr_t)audit_dlsym;
  }
  /* A program linked against libcuda that calls the resolvers directly. */
  if (!strcmp(symname, "cuGetProcAddress")) return (uintptr_t)wrap1((void *)sym->st_value);
  if (!strncmp(symname, "cuGetProcAddress_v2", 19)) return (uintptr_t)wrap2((void *)sym->st_value);
  return sym->st_value;
}
