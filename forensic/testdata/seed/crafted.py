#!/usr/bin/env python3
"""Crafted one-record seed logs and the seed's own verdict on each.

    crafted.py OUT_DIR < CASES_JSON

CASES_JSON is a list of [name, text, hashed_as]: text is a JSON object
(without curr_hash), written as it is; its curr_hash is what the seed's
verify_chain computes for it (hashed_as null), or sha256("GENESIS" +
hashed_as) (what a verifier that hashes some other form would compute).
Each case goes to OUT_DIR/NAME/kv_cache.log; the seed's verify_chain
(seedref.py, a faithful copy) then judges each, and the verdicts are printed
as one JSON object: name -> "ok" | "fail" | "crash".
"""
import hashlib, importlib.util, json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("seedref", os.path.join(here, "seedref.py"))
seedref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seedref)
FL = seedref.ForensicLogger


def seed_hash(text):
    try:
        obj = json.loads(text)
        tmp = {k: v for k, v in obj.items() if k not in ("curr_hash", "hmac")}
        return hashlib.sha256(("GENESIS" + FL._canonical(tmp)).encode("utf-8")).hexdigest()
    except Exception:
        return "0" * 64


out = sys.argv[1]
verdicts = {}
for name, text, hashed_as in json.load(sys.stdin):
    h = seed_hash(text) if hashed_as is None else hashlib.sha256(("GENESIS" + hashed_as).encode("utf-8")).hexdigest()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "kv_cache.log")
    with open(path, "wb") as f:
        f.write((text[:-1] + ',"curr_hash":"%s"}\n' % h).encode("utf-8"))
    os.environ.pop("FORENSIC_HMAC_SECRET", None)
    try:
        verdicts[name] = "ok" if FL.verify_chain(path)["ok"] else "fail"
    except Exception:
        verdicts[name] = "crash"
print(json.dumps(verdicts))
