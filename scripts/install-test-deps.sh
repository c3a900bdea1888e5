#!/usr/bin/env bash
# What `make test` needs beyond Go, gcc and make, from Debian's packages:
# clang and llvm (bpf2go), libbpf-dev and bpftool (the witness), the ASan and
# UBSan runtimes (libkvh's sanitizer build), chromium (the auditor's report is
# tested in a real browser), and NVIDIA's real user-space libraries
# (scripts/install-real-cuda.sh), and versitygw, a real S3 server with Object
# Lock for the trail shipping tests, built from the Go module proxy into the Go
# build cache (scripts/install-versitygw.sh). Idempotent: installs only what is missing.
# Installing needs root; without it, it names what is missing and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for cmd in clang llvm-strip; do command -v $cmd >/dev/null || need+=("$cmd"); done
need=("${need[@]/llvm-strip/llvm}")
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
command -v bpftool >/dev/null || [ -x /usr/sbin/bpftool ] || need+=(bpftool)
dpkg -s libasan8 >/dev/null 2>&1 || need+=(libasan8 libubsan1)
command -v chromium >/dev/null || need+=(chromium)
command -v python3 >/dev/null || need+=(python3) # make bench runs the seed's own code as its reference
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-test-deps: needs root to install ${need[*]} (or install them yourself)" >&2; exit 1; }
  apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}"
fi
bash scripts/install-real-cuda.sh
bash scripts/install-versitygw.sh >/dev/null
