#!/usr/bin/env python3
"""The seed's ForensicLogger, as the reference the forensic benchmarks measure
kvh against in the same run: append (tools/forensic_logger.py, see
shared/seed/BEHAVIOUR.md section 2.1: a threading.Lock, the file opened per
call, no fsync at all) and verify_chain (section 2.4), copied faithfully.

    seedref.py append DIR N THREADS BODY   # N appends of BODY (a JSON object) from THREADS threads
    seedref.py write PATH N                # an N-line log of seed lifecycle events
    seedref.py verify PATH                 # verify_chain, timed

The HMAC key comes from FORENSIC_HMAC_SECRET, as in the seed. Each command
prints one line of "key value" pairs that the Go benchmarks parse.
"""
import hashlib, hmac, json, os, sys, threading, time, uuid
from pathlib import Path


class ForensicLogger:
    def __init__(self, log_path, *, max_bytes=5_000_000, hmac_secret=None):
        self.path = Path(log_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
            os.chmod(self.path, 0o600)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._prev_hash = self._load_last_hash_from(self.path)
        env = os.environ.get("FORENSIC_HMAC_SECRET", "")
        self._key = hmac_secret or (env.encode() if env else None)

    @staticmethod
    def _canonical(rec):
        return json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def _load_last_hash_from(path):
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 4096))
                tail = f.read().decode("utf-8", errors="ignore")
        except FileNotFoundError:
            return "GENESIS"
        for line in reversed(tail.splitlines()):
            try:
                return json.loads(line).get("curr_hash", "GENESIS")
            except Exception:
                continue
        return "GENESIS"

    def _seal(self, record):
        canon = self._canonical(record)
        data = (record["prev_hash"] + canon).encode("utf-8")
        record["curr_hash"] = hashlib.sha256(data).hexdigest()
        if self._key:
            record["hmac"] = hmac.new(self._key, data, hashlib.sha256).hexdigest()
        return json.dumps(record, ensure_ascii=False)

    def append(self, record):
        with self._lock:
            record.setdefault("schema", 1)
            record.setdefault("ts", time.time())
            record.setdefault("trace_id", str(uuid.uuid4()))
            record["prev_hash"] = self._prev_hash
            line = self._seal(record)
            if self.path.exists() and self.path.stat().st_size + len(line) + 1 > self.max_bytes:
                rotated = self.path.with_name("%s-%d%s" % (self.path.stem, int(time.time()), self.path.suffix))
                self.path.rename(rotated)
                rot = {"schema": 1, "event_type": "rotate", "ts": time.time(), "trace_id": str(uuid.uuid4()),
                       "prev_hash": "GENESIS", "prev_file": rotated.name,
                       "prev_file_last_hash": self._load_last_hash_from(rotated)}
                rline = self._seal(rot)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(rline + "\n")
                os.chmod(self.path, 0o600)
                record.pop("curr_hash", None)
                record.pop("hmac", None)
                record["prev_hash"] = rot["curr_hash"]
                line = self._seal(record)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            self._prev_hash = record["curr_hash"]
            return record["curr_hash"]

    @staticmethod
    def verify_chain(path, *, hmac_secret=None):
        env = os.environ.get("FORENSIC_HMAC_SECRET", "")
        key = hmac_secret or (env.encode() if env else None)
        prev = "GENESIS"
        lines = 0
        with open(path, "r", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                obj = json.loads(line)
                tmp = {k: v for k, v in obj.items() if k not in ("curr_hash", "hmac")}
                data = (prev + ForensicLogger._canonical(tmp)).encode("utf-8")
                calc = hashlib.sha256(data).hexdigest()
                if obj.get("curr_hash") != calc:
                    return {"ok": False, "lines": lines, "first_bad_line": i}
                if key and obj.get("hmac"):
                    if not hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), obj["hmac"]):
                        return {"ok": False, "lines": lines, "first_bad_line": i}
                prev = calc
                lines += 1
        return {"ok": True, "lines": lines, "first_bad_line": None}


def cmd_append(d, n, threads, body):
    log = ForensicLogger(os.path.join(d, "kv_cache.log"))
    template = json.loads(body)
    per, rest = divmod(n, threads)

    def producer(k):
        for _ in range(k):
            log.append(dict(template))  # append mutates its argument

    ts = [threading.Thread(target=producer, args=(per + (1 if i < rest else 0),)) for i in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.perf_counter() - start
    print("appends %d seconds %.6f appends_per_s %.1f" % (n, el, n / el))


def cmd_write(path, n):
    # One file: the seed rotates at 5 MB by renaming to <stem>-<second>.log,
    # which loses a file when two rotations fall in one second.
    log = ForensicLogger(path, max_bytes=1 << 62)
    i = 0
    while i < n:
        h = str(uuid.uuid4())
        ids = {"handle": h, "tenant_id": "tenant-%d" % (i % 7), "request_id": "req-%06d" % i, "model_id": "llama-3-70b"}
        for ev in (
            dict(event_type="allocate", **ids, device="cuda:0", shape=[32, 128, 8, 128], dtype="float16",
                 ptr=139812345678848 + i * 4096, nbytes=8388608, stream_id=None, pinned=False, ttl_sec=None,
                 max_reuse=0),
            dict(event_type="write", **ids),
            dict(event_type="sanitize_start", **ids, device="cuda:0", stream_id=None),
            dict(event_type="sanitize_end", **ids, coverage_pct=100.0, duration_ms=0.41,
                 verify_samples=[0, 4096, 1048576, 8384512]),
            dict(event_type="free", **ids),
        ):
            if i == n:
                break
            log.append(ev)
            i += 1
    print("lines %d bytes %d" % (n, os.path.getsize(path)))


def cmd_verify(path):
    start = time.perf_counter()
    r = ForensicLogger.verify_chain(path)
    el = time.perf_counter() - start
    print("ok %d lines %d seconds %.6f lines_per_s %.1f" % (r["ok"], r["lines"], el, r["lines"] / el))


def main(argv):
    if len(argv) >= 6 and argv[1] == "append":
        cmd_append(argv[2], int(argv[3]), int(argv[4]), argv[5])
    elif len(argv) == 4 and argv[1] == "write":
        cmd_write(argv[2], int(argv[3]))
    elif len(argv) == 3 and argv[1] == "verify":
        cmd_verify(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
