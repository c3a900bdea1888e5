#!/usr/bin/env python3
"""Crafted seed logs and the seed's own verdict on each.

    crafted.py OUT_DIR < CASES_JSON

CASES_JSON is a list of [name, records, sep, key]. Each record is
[text, hashed_as]: text is a JSON object (without curr_hash), written as it
is, its curr_hash chained on the record before it; hashed_as null hashes
what the seed's verify_chain hashes, a string hashes prev + hashed_as (what a
verifier hashing some other form computes), and "raw" writes text alone, as
a line of its own. With a key (a string, or null), each hashed record
without an hmac member gets the seed's HMAC. The lines are joined by sep
(normally "\\n") and end with a newline. Each case goes to
OUT_DIR/NAME/kv_cache.log; the seed's verify_chain (seedref.py, a faithful
copy) then judges each with that key, and the verdicts are printed as one
JSON object: name -> "ok" | "fail" | "crash".
"""
import hashlib, hmac, importlib.util, json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("seedref", os.path.join(here, "seedref.py"))
seedref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seedref)
FL = seedref.ForensicLogger


def seed_data(prev, text):
    try:
        obj = json.loads(text)
        tmp = {k: v for k, v in obj.items() if k not in ("curr_hash", "hmac")}
        return (prev + FL._canonical(tmp)).encode("utf-8")
    except Exception:
        return None


out = sys.argv[1]
verdicts = {}
for name, records, sep, key in json.load(sys.stdin):
    prev, lines = "GENESIS", []
    for text, hashed_as in records:
        if hashed_as == "raw":
            lines.append(text)
            continue
        data = seed_data(prev, text) if hashed_as is None else (prev + hashed_as).encode("utf-8")
        h = hashlib.sha256(data).hexdigest() if data is not None else "0" * 64
        extra = ',"curr_hash":"%s"' % h
        if key is not None and data is not None and '"hmac"' not in text:
            extra += ',"hmac":"%s"' % hmac.new(key.encode(), data, hashlib.sha256).hexdigest()
        lines.append(text[:-1] + extra + "}")
        prev = h
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "kv_cache.log")
    with open(path, "wb") as f:
        f.write((sep.join(lines) + "\n").encode("utf-8"))
    os.environ.pop("FORENSIC_HMAC_SECRET", None)
    try:
        r = FL.verify_chain(path, hmac_secret=key.encode() if key is not None else None)
        verdicts[name] = "ok" if r["ok"] else "fail"
    except Exception:
        verdicts[name] = "crash"
print(json.dumps(verdicts))
