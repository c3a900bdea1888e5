#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (make fuzz).
#
# Go 1.26's fuzzing coordinator can fail a target at the end of a
# duration -fuzztime with a bare "context deadline exceeded", having found
# nothing (golang/go#75804, fixed in Go 1.27): a worker still busy when the
# deadline fires, most often on a loaded machine. Such a run wrote no
# failing input and printed no panic; it is run once more, and fails only
# if it fails again. Anything else — a failing input, a panic, a test
# error — fails at once, with its output.
set -euo pipefail
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}

bare_deadline() { # the output of a failed run: only the coordinator's deadline
  grep -q 'context deadline exceeded' "$1" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1"
}

for pkg in $($GO list ./...); do
  for f in $($GO test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "fuzz $pkg $f"
    out=$(mktemp)
    for try in 1 2; do
      if $GO test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
        break
      fi
      if [ "$try" = 1 ] && bare_deadline "$out"; then
        echo "  $f: the fuzzing engine's deadline race (golang/go#75804), nothing found: once more"
        continue
      fi
      grep -v '^fuzz: elapsed' "$out"
      rm -f "$out"
      exit 1
    done
    rm -f "$out"
  done
done
