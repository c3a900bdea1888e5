/* kvh_wire.h — the one definition of what libkvh.so tells the kvh agent.
 *
 * Transport: a SOCK_SEQPACKET Unix socket (KVH_SOCKET, default
 * /run/kvh/kvh.sock). Each packet carries one or more kvh_record structs back
 * to back: at most KVH_WIRE_BASE_BATCH, which every agent takes, until the
 * agent's FLOOR says it takes more (max_batch, at most KVH_WIRE_MAX_BATCH).
 * Everything is little-endian, fixed
 * layout, no pointers; the Go mirror (package wire) pins it with golden bytes.
 * The agent takes identity (pid, uid, cgroup) from the kernel (SO_PEERCRED,
 * /proc), never from these fields: pid, tenant and request are claims.
 *
 * The agent answers with kvh_control packets: deny / allow new allocations,
 * and a verify floor (KVH_CTL_FLOOR) that the interposer applies by raising
 * its own settings to at least the floor (never lowering them), then
 * acknowledges with a KVH_REC_FLOOR_ACK record carrying its settings now.
 */
#ifndef KVH_WIRE_H
#define KVH_WIRE_H
#include <stddef.h>
#include <stdint.h>

#define KVH_WIRE_MAGIC 0x3148564bu /* "KVH1" little-endian */
#define KVH_WIRE_VERSION 1
#define KVH_WIRE_BASE_BATCH 32 /* records a packet may carry to any agent */
#define KVH_WIRE_MAX_BATCH 128 /* the most a packet carries, to an agent that said it takes them */

enum kvh_record_type {
  KVH_REC_HELLO = 1,      /* first record after connect: mode, verify, config */
  KVH_REC_ALLOC = 2,      /* an allocation this process made or imported */
  KVH_REC_FREE = 3,       /* memory given back, with its zeroize attestation */
  KVH_REC_QUARANTINE = 4, /* zeroize or verify failed: kept from the driver */
  KVH_REC_DROPS = 5,      /* count = records dropped while the agent was away or slow, since the last DROPS */
  KVH_REC_FLOOR_ACK = 6,  /* a floor was applied: verify, flags (KVH_F_DOUBLE_PASS) and
                             count (samples) are the interposer's settings now */
};

enum kvh_mem_kind {
  KVH_MEM_DEVICE = 1,
  KVH_MEM_ASYNC = 2,      /* stream-ordered allocation */
  KVH_MEM_MANAGED = 3,
  KVH_MEM_HOST_PINNED = 4,
  KVH_MEM_HOST_REGISTERED = 5,
  KVH_MEM_VMM = 6,        /* cuMemCreate/cuMemMap mapping */
  KVH_MEM_IPC_IMPORT = 7, /* imported from another process: never zeroized here */
};

enum kvh_verify_mode { KVH_VERIFY_OFF = 0, KVH_VERIFY_SAMPLE = 1, KVH_VERIFY_FULL = 2 };

enum kvh_result {
  KVH_RES_OK = 0,
  KVH_RES_ZEROIZE_FAILED = 1,
  KVH_RES_VERIFY_FAILED = 2,
  KVH_RES_PASSTHROUGH = 3, /* not zeroized: importer, registered host memory, mode off, or unknown pointer */
};

enum kvh_flags {
  KVH_F_DOUBLE_PASS = 1 << 0,
  KVH_F_IMPORTER = 1 << 1, /* not this process's driver memory (an import, registered host memory): never zeroized here */
  KVH_F_ASYNC = 1 << 2,
  KVH_F_ENFORCE = 1 << 3,  /* enforce mode: failures were quarantined */
  KVH_F_VERIFIED = 1 << 4, /* a verification ran and found only zeros */
};

/* kvh_record: 160 bytes. */
struct kvh_record {
  uint32_t magic;      /*   0 */
  uint16_t version;    /*   4 */
  uint16_t type;       /*   6 enum kvh_record_type */
  uint64_t seq;        /*   8 per-process sequence, from 1 */
  uint64_t ts_ns;      /*  16 CLOCK_REALTIME */
  uint64_t ptr;        /*  24 device or host address */
  uint64_t bytes;      /*  32 size of the allocation */
  uint64_t zeroed;     /*  40 bytes verified zero (or zeroed when unverified) */
  uint64_t dur_ns;     /*  48 zeroize + verify time */
  uint64_t seed;       /*  56 sample seed, when sampled */
  uint64_t stream;     /*  64 CUstream, 0 for the legacy default */
  uint64_t count;      /*  72 DROPS: records dropped; HELLO, FLOOR_ACK: sample count */
  uint32_t pid;        /*  80 claimed; the agent uses SO_PEERCRED */
  uint32_t tid;        /*  84 */
  uint16_t fn;         /*  88 hooked function id (hooks.def order, from 1) */
  uint8_t mem_kind;    /*  90 enum kvh_mem_kind */
  uint8_t verify;      /*  91 enum kvh_verify_mode */
  uint8_t result;      /*  92 enum kvh_result */
  uint8_t flags;       /*  93 enum kvh_flags */
  uint16_t reserved0;  /*  94 */
  int32_t device;      /*  96 */
  uint32_t reserved1;  /* 100 */
  char tenant[24];     /* 104 kvh_set_tenant or KVH_TENANT, NUL-padded (a claim) */
  char request[24];    /* 128 kvh_set_request, NUL-padded (a claim) */
  uint64_t reserved2;  /* 152 */
};

enum kvh_control_type {
  KVH_CTL_DENY = 1,  /* refuse new allocations */
  KVH_CTL_ALLOW = 2, /* allow them again */
  KVH_CTL_FLOOR = 3, /* verify at least this strictly (verify, flags, samples) */
};

/* kvh_control: 16 bytes, agent to interposer. verify, flags, samples and
 * max_batch are FLOOR's (zero otherwise): the least verify mode (off <
 * sample < full), KVH_F_DOUBLE_PASS to require double pass, the least
 * sample count; and the most records per packet this agent takes, from
 * KVH_WIRE_BASE_BATCH to KVH_WIRE_MAX_BATCH (0, as from an agent that
 * predates the field, or less: the base). An agent sends a FLOOR first on
 * every connection. */
struct kvh_control {
  uint32_t magic;     /*  0 */
  uint16_t version;   /*  4 */
  uint16_t type;      /*  6 enum kvh_control_type */
  uint8_t verify;     /*  8 enum kvh_verify_mode */
  uint8_t flags;      /*  9 KVH_F_DOUBLE_PASS or 0 */
  uint16_t samples;   /* 10 */
  uint32_t max_batch; /* 12 */
};

/* kvh_counters: the process's event account, 64 bytes at offset 0 of a
 * memfd (sealed against shrinking) that libkvh passes with its HELLO as
 * SCM_RIGHTS ancillary data. libkvh keeps it up to date as it works, so the
 * agent can read the final counts after the process exited or was killed,
 * and behind whatever backlog: every record given a seq was either received
 * by the agent, or counted in dropped, or lost with the process (emitted -
 * received - dropped, exactly). A claim, like every other field. An agent
 * that ignores ancillary data loses nothing but the account. */
#define KVH_COUNTERS_MAGIC 0x3143564bu /* "KVC1" little-endian */
struct kvh_counters {
  uint32_t magic;      /*  0 KVH_COUNTERS_MAGIC */
  uint16_t version;    /*  4 KVH_WIRE_VERSION */
  uint16_t reserved0;  /*  6 */
  uint64_t emitted;    /*  8 records given a seq (ALLOC, FREE, QUARANTINE, FLOOR_ACK): the last seq */
  uint64_t dropped;    /* 16 of those, records lost before reaching the agent's socket */
  uint64_t reserved[5]; /* 24 */
};

#ifdef __cplusplus
static_assert(sizeof(struct kvh_counters) == 64, "kvh_counters layout");
static_assert(offsetof(struct kvh_counters, emitted) == 8 && offsetof(struct kvh_counters, dropped) == 16, "kvh_counters layout (wire.DecodeCounters)");
static_assert(sizeof(struct kvh_record) == 160, "kvh_record layout");
static_assert(sizeof(struct kvh_control) == 16, "kvh_control layout");
#else
_Static_assert(sizeof(struct kvh_counters) == 64, "kvh_counters layout");
_Static_assert(offsetof(struct kvh_counters, emitted) == 8 && offsetof(struct kvh_counters, dropped) == 16, "kvh_counters layout (wire.DecodeCounters)");
_Static_assert(sizeof(struct kvh_record) == 160, "kvh_record layout");
_Static_assert(sizeof(struct kvh_control) == 16, "kvh_control layout");
#endif

#endif
