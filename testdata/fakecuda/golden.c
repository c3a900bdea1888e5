/* Writes the golden bytes the Go mirror (package wire) is pinned to, produced
 * by the C layout itself: a kvh_record with every field set to a distinct
 * value, a DENY control, a FLOOR control and a FLOOR_ACK record. */
#include <stdio.h>
#include <string.h>
#include "kvh_wire.h"

int main(void) {
  struct kvh_record r;
  memset(&r, 0, sizeof r);
  r.magic = KVH_WIRE_MAGIC;
  r.version = KVH_WIRE_VERSION;
  r.type = KVH_REC_FREE;
  r.seq = 0x0102030405060708ULL;
  r.ts_ns = 1764220800123456789ULL;
  r.ptr = 0x7e0000001000ULL;
  r.bytes = 65536;
  r.zeroed = 65280;
  r.dur_ns = 12345;
  r.seed = 0xdeadbeefcafef00dULL;
  r.stream = 5;
  r.count = 77;
  r.pid = 4242;
  r.tid = 4243;
  r.fn = 4;
  r.mem_kind = KVH_MEM_ASYNC;
  r.verify = KVH_VERIFY_SAMPLE;
  r.result = KVH_RES_VERIFY_FAILED;
  r.flags = KVH_F_ENFORCE | KVH_F_ASYNC;
  r.device = -1;
  strcpy(r.tenant, "tenant-a");
  strcpy(r.request, "req-42");
  struct kvh_control c;
  memset(&c, 0, sizeof c);
  c.magic = KVH_WIRE_MAGIC;
  c.version = KVH_WIRE_VERSION;
  c.type = KVH_CTL_DENY;
  struct kvh_control f;
  memset(&f, 0, sizeof f);
  f.magic = KVH_WIRE_MAGIC;
  f.version = KVH_WIRE_VERSION;
  f.type = KVH_CTL_FLOOR;
  f.verify = KVH_VERIFY_FULL;
  f.flags = KVH_F_DOUBLE_PASS;
  f.samples = 0x1234;
  f.max_batch = KVH_WIRE_MAX_BATCH;
  struct kvh_record a;
  memset(&a, 0, sizeof a);
  a.magic = KVH_WIRE_MAGIC;
  a.version = KVH_WIRE_VERSION;
  a.type = KVH_REC_FLOOR_ACK;
  a.seq = 9;
  a.ts_ns = 1764220800987654321ULL;
  a.count = 0x1234;
  a.pid = 4242;
  a.verify = KVH_VERIFY_FULL;
  a.flags = KVH_F_DOUBLE_PASS;
  /* record, DENY, FLOOR, FLOOR_ACK */
  fwrite(&r, sizeof r, 1, stdout);
  fwrite(&c, sizeof c, 1, stdout);
  fwrite(&f, sizeof f, 1, stdout);
  fwrite(&a, sizeof a, 1, stdout);
  return 0;
}
