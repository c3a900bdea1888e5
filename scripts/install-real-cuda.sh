#!/usr/bin/env bash
# NVIDIA's real user-space libraries, from Debian's non-free component, for
# the tests that hold libkvh, the witness and the fake driver to the real
# driver and runtime (internal/realcudatest, bpf, make ptx-check). No GPU is
# needed: without one cuInit answers CUDA_ERROR_NO_DEVICE and the rest of the
# ABI still answers (docs: ../shared/reference/real-nvidia-libs.md).
#
#   libcuda1             the user-mode driver (535 series, CUDA 12.2 API)
#   libcudart11.0        the runtime 11.8
#   nvidia-cuda-toolkit  nvcc and ptxas 11.8 (Debian's nvcc needs -ccbin clang-14)
#   clang-14             nvcc's host compiler here (Debian 12's gcc 12 is too new for it)
#
# Idempotent: does nothing when all are installed. Needs root. The mirror is
# read from the machine's own sources list, so no host is named here.
set -euo pipefail

pkgs=(libcuda1 libcudart11.0 nvidia-cuda-toolkit clang-14)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-real-cuda: already installed: ${pkgs[*]}"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install-real-cuda: needs root to install ${missing[*]}" >&2; exit 1; }

apt=(apt-get -o DPkg::Lock::Timeout=600)
src=/etc/apt/sources.list.d/debian.sources
nonfree=/etc/apt/sources.list.d/nonfree.sources
# non-free itself, not non-free-firmware (which Debian 12 enables by default).
if ! grep -rqsE '^(Components:|deb ).*[[:space:]]non-free([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # The URI of the stanza that serves the release itself (not -security).
  uri=""
  if [ -f "$src" ]; then
    uri=$(awk -v RS= '/Suites:[^\n]*bookworm( |\n|$)/ && !/bookworm-security/ {
            if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' "$src")
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "install-real-cuda: no Debian bookworm mirror found in $src or /etc/apt/sources.list" >&2; exit 1; }
  cat >"$nonfree" <<EOS
Types: deb
URIs: $uri
Suites: bookworm bookworm-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  echo "install-real-cuda: enabled non-free from $uri in $nonfree"
fi

start=$(date +%s)
"${apt[@]}" update -q
# nvidia-cuda-toolkit's recommends (the profiler, nsight, a JDK) are large
# and no test uses them.
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}"
echo "install-real-cuda: ${missing[*]} installed in $(( $(date +%s) - start ))s"
