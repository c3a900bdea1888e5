#!/usr/bin/env bash
# make demo: kvh end to end on the fake CUDA driver, on any Linux machine.
# Leaves DEMO_DIR/trail (the trail), DEMO_DIR/kvh.pub (its verification key),
# DEMO_DIR/metrics.json (seed-compatible metrics) and DEMO_DIR/report.html
# (the auditor's evidence report).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-./var/demo}
BIN=build/bin
FAKE=build/fakecuda
LIB=build/lib/libkvh.so
export LD_LIBRARY_PATH=$PWD/$FAKE

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
fail() { echo "demo: $*" >&2; exit 1; }

if [ -d "$DEMO_DIR" ]; then
  command -v chattr >/dev/null && chattr -R -a "$DEMO_DIR" 2>/dev/null || true # from a run with --append-only
  rm -rf "$DEMO_DIR" || fail "cannot clear $DEMO_DIR (append-only files from an earlier run? chattr -R -a it)"
fi
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
SOCK=$DEMO_DIR/kvh.sock

say "1. Keys: the node signs its trail; auditors get only the public key"
$BIN/kvh-verify keygen --out "$DEMO_DIR" --name kvh-demo | sed 's/^/  /'

say "2. Without kvh: the engine serves tenant-a, frees the KV block, serves tenant-b"
for way in runtime driver vmm; do
  $FAKE/kvh_demo $way || true
done

say "3. Start kvh-agent (socket and metrics on loopback, trail under $DEMO_DIR)"
# --trust-tenant-claims: this host runs no pods or containers, so the engine's
# own KVH_TENANT may name its tenant (on Kubernetes the pod does, whatever it says).
$BIN/kvh-agent --socket "$SOCK" --listen 127.0.0.1:0 --trail-dir "$DEMO_DIR/trail" \
  --signing-key "$DEMO_DIR/kvh.key" --metrics-json "$DEMO_DIR/metrics.json" \
  --metrics-textfile "$DEMO_DIR/metrics.prom" --export-interval 1s --append-only=false \
  --witness auto --witness-lib "$PWD/$FAKE/libcuda.so.1" --attest-window 1s \
  --trust-tenant-claims \
  >"$DEMO_DIR/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null || true' EXIT
PORT=""
for _ in $(seq 100); do
  PORT=$(sed -n 's/.*HTTP: listen=127.0.0.1:\([0-9]*\).*/\1/p' "$DEMO_DIR/agent.log" | head -1)
  [ -n "$PORT" ] && [ -S "$SOCK" ] && break
  kill -0 $AGENT 2>/dev/null || { cat "$DEMO_DIR/agent.log"; fail "the agent did not start"; }
  sleep 0.1
done
[ -n "$PORT" ] || fail "the agent did not report its HTTP port"
http_get() { # a tiny HTTP client: no curl needed
  exec 3<>"/dev/tcp/127.0.0.1/$PORT"
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
  sed '1,/^\r$/d' <&3
  exec 3>&-
}
echo "  agent pid $AGENT, metrics on http://127.0.0.1:$PORT/metrics: $(http_get /readyz)"

say "4. With kvh: the same engine, unmodified, with LD_PRELOAD=$LIB"
for way in runtime driver vmm; do
  LD_PRELOAD=$PWD/$LIB KVH_SOCKET=$SOCK KVH_TENANT=inference-engine $FAKE/kvh_demo $way ||
    fail "residue with kvh ($way)"
done

say "5. A faulty device (its memset leaves bytes behind): kvh verifies, finds them, quarantines"
LD_PRELOAD=$PWD/$LIB KVH_SOCKET=$SOCK KVH_TENANT=inference-engine KVH_VERIFY=full FAKECUDA_MEMSET_PARTIAL=4000 \
  $FAKE/kvh_demo driver || fail "the quarantined block was handed out again"
sleep 1.5 # one metrics export

WITNESS=$(http_get /metrics | sed -n 's/^kvh_witness_enabled \(.*\)/\1/p')
if [ "$WITNESS" = 1 ]; then
  say "5b. A process that bypasses kvh (no LD_PRELOAD, like a static binary): the eBPF witness sees its frees"
  $FAKE/kvh_demo driver || true
  sleep 2.5 # the attestation window, then the check
  http_get /metrics | grep -E '^kvh_(violations_total\{kind="(unattested_free|uncovered_process)"\}|witness_matched_frees_total|witness_unattested_frees_total)' | sed 's/^/  /'
  http_get /metrics | grep -q 'kind="unattested_free"' || fail "the witness did not catch the bypassing process"
fi

say "6. What the agent saw (/metrics)"
http_get /metrics | grep -E '^kvh_(frees_total|zeroized_bytes_total|quarantined_buffers_total|violations_total|actions_total|trail_records_total|trail_checkpoint_size)[{ ]' | grep -vE '^kvh_(violations|actions)_total\{.*\} 0$' | sed 's/^/  /'

say "7. Stop the agent (SIGTERM closes the trail with a signed checkpoint)"
kill -TERM $AGENT
wait $AGENT || fail "the agent did not stop cleanly: $(tail -3 "$DEMO_DIR/agent.log")"
trap - EXIT
grep -E 'WARN|ERROR' "$DEMO_DIR/agent.log" | sed 's/^/  /' | cut -c1-200 || true

say "8. The auditor: kvh-verify log with the public key only"
$BIN/kvh-verify log "$DEMO_DIR/trail" --pubkey "$DEMO_DIR/kvh.pub" | sed 's/^/  /' || fail "the trail does not verify"

say "9. The CI gate on the seed-compatible metrics"
set +e
$BIN/kvh-verify gate "$DEMO_DIR/metrics.json" --out "$DEMO_DIR/verdict.json" >/dev/null
gate=$?
set -e
case $gate in
  2) echo "  gate FAILED, as it should: the quarantined block is a hygiene failure ($DEMO_DIR/verdict.json)";;
  0) fail "the gate passed despite a quarantined block";;
  *) fail "the gate could not run";;
esac

say "Summary"
cat <<EOT
  Without kvh, tenant-b read tenant-a's card number and SSN out of a "fresh" block, three ways.
  With kvh (no change to the engine), every freed block was zeroized and verified first;
  the faulty one was quarantined instead of being handed out again.
  Everything is in a signed trail that verifies with only $DEMO_DIR/kvh.pub:
    trail       $DEMO_DIR/trail/
    public key  $DEMO_DIR/kvh.pub
    metrics     $DEMO_DIR/metrics.json (seed format; 'kvh-verify gate' reads it)
EOT
if [ "${WITNESS:-0}" = 1 ]; then
  echo "  The eBPF witness saw a process that bypassed kvh free memory with no attestation, and flagged it."
else
  echo "  (The eBPF witness needs root: run 'sudo make demo' to see a bypassing process caught.)"
fi

say "10. The auditor's evidence report (kvh-verify report: verifies first, then draws)"
$BIN/kvh-verify report "$DEMO_DIR/trail" --pubkey "$DEMO_DIR/kvh.pub" --controls compliance/controls.yaml \
  --out "$DEMO_DIR/report.html" | sed 's/^/  /' || fail "kvh-verify report could not draw the report"
echo "  report      $DEMO_DIR/report.html (one self-contained file: open it in a browser)"
