#!/usr/bin/env bash
# Builds what `make e2e` drives, once, from the Go module proxy: containerd
# (and its runc shim and ctr) and crictl, into directories under the Go
# build cache named by version, so a second run finds them and builds
# nothing. Installs runc, busybox-static and umoci from Debian when missing
# (root). Prints the directory to put on PATH. A build that fails says so
# and exits non-zero: the end-to-end test never passes without containerd.
set -euo pipefail
GO=${GO:-go}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
CRICTL_VERSION=${CRICTL_VERSION:-v1.37.0}
cache=$($GO env GOCACHE)/kvh-tools
cdir=$cache/containerd-$CONTAINERD_VERSION
xdir=$cache/crictl-$CRICTL_VERSION

need=()
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v umoci >/dev/null || need+=(umoci)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "build-containerd: needs root to install ${need[*]} (or install them yourself)" >&2; exit 1; }
  apt-get -o DPkg::Lock::Timeout=600 update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${need[@]}" >&2
fi

if ! [ -x "$cdir/containerd" ] || ! [ -x "$cdir/containerd-shim-runc-v2" ] || ! [ -x "$cdir/ctr" ]; then
  echo "build-containerd: building containerd $CONTAINERD_VERSION from the Go module proxy into $cdir (about 3 minutes on 2 cores, once)" >&2
  mkdir -p "$cdir.tmp"
  if ! GOBIN="$cdir.tmp" GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1 $GO install \
      github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION \
      github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION >&2; then
    echo "build-containerd: FAILED to build containerd $CONTAINERD_VERSION (Go $($GO env GOVERSION); it needs the module proxy and Go >= 1.26)" >&2
    exit 1
  fi
  rm -rf "$cdir" && mv "$cdir.tmp" "$cdir"
fi
if ! [ -x "$xdir/crictl" ]; then
  echo "build-containerd: building crictl $CRICTL_VERSION into $xdir (once)" >&2
  mkdir -p "$xdir.tmp"
  if ! GOBIN="$xdir.tmp" GOTOOLCHAIN=local $GO install sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION >&2; then
    echo "build-containerd: FAILED to build crictl $CRICTL_VERSION" >&2
    exit 1
  fi
  rm -rf "$xdir" && mv "$xdir.tmp" "$xdir"
fi
echo "$cdir:$xdir"
