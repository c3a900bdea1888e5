#!/usr/bin/env python3
"""Regenerates the seed-format fixtures: a faithful copy of the Python seed's
ForensicLogger.append (tools/forensic_logger.py, see shared/seed/BEHAVIOUR.md
section 2.1), run with a fixed clock and trace ids so the output is stable.

    python3 gen.py            # writes clean/ (HMAC key b"secret")
"""
import hashlib, hmac, json, os, shutil

KEY = b"secret"

class SeedLogger:
    def __init__(self, path, max_bytes, key):
        self.path, self.max_bytes, self.key = path, max_bytes, key
        self.prev = "GENESIS"
        self.t = 1700000000.0
        self.n = 0

    def _hash(self, rec):
        canon = json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        data = (rec["prev_hash"] + canon).encode()
        rec["curr_hash"] = hashlib.sha256(data).hexdigest()
        if self.key:
            rec["hmac"] = hmac.new(self.key, data, hashlib.sha256).hexdigest()
        return json.dumps(rec, ensure_ascii=False)

    def append(self, record):
        self.t += 0.25
        self.n += 1
        record.setdefault("schema", 1)
        record.setdefault("ts", self.t)
        record.setdefault("trace_id", "t-%d" % self.n)
        record["prev_hash"] = self.prev
        line = self._hash(record)
        if os.path.exists(self.path) and os.path.getsize(self.path) + len(line) + 1 > self.max_bytes:
            stem, ext = os.path.splitext(self.path)
            rotated = "%s-%d%s" % (stem, int(self.t), ext)
            os.rename(self.path, rotated)
            rot = {"schema": 1, "event_type": "rotate", "ts": self.t, "trace_id": "r-%d" % self.n,
                   "prev_hash": "GENESIS", "prev_file": os.path.basename(rotated),
                   "prev_file_last_hash": self.prev}
            rline = self._hash(rot)
            with open(self.path, "a") as f:
                f.write(rline + "\n")
            record.pop("curr_hash", None); record.pop("hmac", None)
            record["prev_hash"] = rot["curr_hash"]
            line = self._hash(record)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        self.prev = record["curr_hash"]

def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clean")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    log = SeedLogger(os.path.join(out, "kv_cache.log"), 2500, KEY)
    for i in range(24):
        log.t += 3  # rotations one or more seconds apart, so none is lost here
        log.append({"event_type": "allocate", "handle": "h-%d" % i, "tenant_id": "tenant-ä\u00e9", "request_id": "r\n\t\"%d\"" % i,
                    "model_id": "m<&>", "device": "cpu", "shape": [2, 3], "dtype": "float32", "ptr": 140000000 + i,
                    "nbytes": 24, "stream_id": None, "pinned": False, "ttl_sec": None, "max_reuse": 0})
        log.append({"event_type": "sanitize_end", "handle": "h-%d" % i, "tenant_id": "t", "request_id": "r",
                    "model_id": "m", "coverage_pct": float("nan") if i == 5 else 100.0, "duration_ms": 0.0,
                    "verify_samples": [0, 1, 2e-05, 1e+16, "\u2028\x01"]})

if __name__ == "__main__":
    main()
