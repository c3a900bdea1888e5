#!/usr/bin/env bash
# make gpu-check: libkvh against the real driver, on a machine with an NVIDIA
# GPU and the CUDA toolkit. Finishes in well under 5 minutes; results go to
# build/gpu-check.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-build/gpu-check.txt}
mkdir -p build/gpu "$(dirname "$OUT")"
exec > >(tee "$OUT") 2>&1
command -v nvcc >/dev/null || { echo "gpu-check: nvcc not found (needs the CUDA toolkit)"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "gpu-check: no GPU"; exit 1; }
make -s interpose || exit 1
LIB=$PWD/build/lib/libkvh.so
fail=0
for cudart in shared static; do
  exe=build/gpu/residue_$cudart
  nvcc -O2 -cudart $cudart -o $exe testdata/gpu/residue.cu -lcuda || { echo "build ($cudart) failed"; fail=1; continue; }
  echo "== cudart $cudart: residue without libkvh"
  timeout 60 $exe
  echo "== cudart $cudart: residue with libkvh (enforce, full verify)"
  r=$(KVH_VERIFY=full LD_PRELOAD=$LIB timeout 60 $exe); echo "$r"
  echo "$r" | grep -q '^RESIDUE 0$' || { echo "FAIL: residue with libkvh ($cudart)"; fail=1; }
done
echo "== bandwidth, 1 GiB: raw cuMemsetD8 and a read kernel, then cudaFree through libkvh"
for v in off sample full; do
  echo "-- KVH_VERIFY=$v"
  KVH_VERIFY=$v LD_PRELOAD=$LIB timeout 120 build/gpu/residue_shared bandwidth 1024
done
echo "gpu-check: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
