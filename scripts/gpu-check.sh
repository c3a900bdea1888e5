#!/usr/bin/env bash
# make gpu-check: libkvh against the real driver, on a machine with an NVIDIA
# GPU and the CUDA toolkit. Finishes in well under 5 minutes; results go to
# build/gpu-check.txt.
#
# Knobs: NVCC (nvcc), NVCC_CCBIN (nvcc's host compiler; default clang-14 on
# Debian, whose nvcc 11.8 refuses gcc 12; set it empty for nvcc's default),
# NVCCFLAGS (-O2), GPU_CHECK_OUT.
#
# Exit: 0 pass; 1 fail (a build, a run, a residue, or an inconclusive
# control); 2 built, but there is no CUDA device here to run on.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-build/gpu-check.txt}
BIN=build/gpu
mkdir -p "$BIN" "$(dirname "$OUT")"
exec > >(tee "$OUT") 2>&1

fail() { echo "gpu-check: FAIL: $*"; exit 1; }

NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || fail "$NVCC not found (needs the CUDA toolkit; on Debian: make real-cuda)"
if [ -z "${NVCC_CCBIN+set}" ]; then
  NVCC_CCBIN=""
  [ -f /etc/debian_version ] && command -v clang-14 >/dev/null && NVCC_CCBIN=clang-14
fi
read -r -a nvccflags <<<"${NVCCFLAGS:--O2}"
ccbin=()
[ -n "$NVCC_CCBIN" ] && ccbin=(-ccbin "$NVCC_CCBIN")
# nvcc adds no rpath: point the binaries at the toolkit's runtime, wherever
# it is (/usr/local/cuda/lib64, targets/<arch>/lib; on Debian the default
# library path, where an rpath is harmless).
root=$(dirname "$(dirname "$(readlink -f "$(command -v "$NVCC")")")")
rpath=()
for d in "$root/lib64" "$root/targets/$(uname -m)-linux/lib" "$root/lib"; do
  compgen -G "$d/libcudart.so*" >/dev/null && rpath+=(-Xlinker -rpath -Xlinker "$d")
done

host=${NVCC_CCBIN:-"the default"}
echo "gpu-check: $("$NVCC" --version | tail -1); host compiler $host; flags ${nvccflags[*]}"
make -s interpose || fail "make interpose"
LIB=$PWD/build/lib/libkvh.so

# Build everything first, and never leave a binary from an earlier build
# behind: a failed build must not run a stale one.
rm -f "$BIN"/residue_*
for cudart in shared static; do
  exe=$BIN/residue_$cudart
  "$NVCC" "${ccbin[@]}" "${nvccflags[@]}" -cudart "$cudart" "${rpath[@]}" -o "$exe.tmp" testdata/gpu/residue.cu -lcuda ||
    fail "build with -cudart $cudart"
  mv "$exe.tmp" "$exe"
done
echo "gpu-check: built $BIN/residue_shared and $BIN/residue_static"

devs=$("$BIN/residue_shared" devices 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  echo "gpu-check: no CUDA device here ($devs): built, nothing run"
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# run LABEL CMD...: prints the output, fails the check on a non-zero exit,
# leaves the output in $got.
got=""
run() {
  local label=$1
  shift
  got=$("$@" 2>&1)
  local rc=$?
  echo "$got" | sed 's/^/  /'
  [ $rc -eq 0 ] || fail "$label exited $rc"
}
value() { echo "$got" | sed -n "s/^$1 //p" | head -1; }

export KVH_SOCKET=${KVH_SOCKET:-$PWD/build/gpu/no-agent.sock} # no agent needed: libkvh zeroizes without one
for cudart in shared static; do
  exe=$BIN/residue_$cudart
  echo "== cudart $cudart: residue without libkvh (the control: must leak)"
  run "control ($cudart)" timeout 60 "$exe" residue
  [ "$(value POOL_REUSED)" = 1 ] && [ "$(value POOL_RESIDUE)" -gt 0 ] ||
    fail "INCONCLUSIVE: without libkvh the pool block was not reused with residue (cudart $cudart): a clean run with libkvh would prove nothing"
  echo "== cudart $cudart: residue with libkvh (enforce, full verify)"
  run "libkvh ($cudart)" env KVH_VERIFY=full LD_PRELOAD="$LIB" timeout 60 "$exe" residue
  [ "$(value POOL_REUSED)" = 1 ] || fail "INCONCLUSIVE: with libkvh the pool block was not reused (cudart $cudart)"
  [ "$(value POOL_RESIDUE)" = 0 ] || fail "residue through the pool with libkvh (cudart $cudart)"
  [ "$(value MALLOC_RESIDUE)" = 0 ] || fail "residue through cudaMalloc/cudaFree with libkvh (cudart $cudart)"
done

echo "== bandwidth, 1 GiB, after warm-up: raw cuMemsetD8 and a read kernel, then cudaFree"
echo "-- without libkvh"
run "bandwidth without libkvh" timeout 120 "$BIN/residue_shared" bandwidth 1024
for v in off sample full; do
  echo "-- libkvh, KVH_VERIFY=$v"
  run "bandwidth KVH_VERIFY=$v" env KVH_VERIFY=$v LD_PRELOAD="$LIB" timeout 120 "$BIN/residue_shared" bandwidth 1024
done
echo "gpu-check: PASS"
