#!/usr/bin/env bash
# versitygw (the Versity S3 Gateway, Apache-2.0): a real S3-compatible server
# with Object Lock, which the trail shipping tests (ship/, cmd/kvh-verify)
# start on 127.0.0.1. Built once from the Go module proxy into the Go build
# cache and never rebuilt when present; prints the binary's path. No root
# needed. About 2.5 minutes cold on 2 cores.
set -euo pipefail
GO=${GO:-go}
ver=v1.8.0
dir="$($GO env GOCACHE)/kvh-tools/versitygw-$ver"
bin="$dir/versitygw"
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  exec 9>"$dir.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    echo "install-versitygw: building versitygw $ver from the Go module proxy into $dir" >&2
    if ! (cd / && GOBIN="$dir" GOFLAGS=-mod=mod "$GO" install "github.com/versity/versitygw/cmd/versitygw@$ver") >&2; then
      echo "install-versitygw: could not build versitygw $ver from the Go module proxy ($("$GO" env GOPROXY)); the object storage tests need it" >&2
      exit 1
    fi
  fi
fi
echo "$bin"
