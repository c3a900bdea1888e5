#!/usr/bin/env bash
# make cover: every test once, with coverage. Prints one table of statement
# coverage per Go package, unit and end-to-end tests merged, then libkvh.so's
# line coverage per file. Everything lands in build/cover/:
#   data/         covdata from the test binaries and every kvh-agent they ran
#   profile.txt   the merged profile (go tool cover -func/-html reads it)
#   cover.html    the same, annotated source
#   gcov/         libkvh.so's .gcov files (annotated source) and gcov's summary
#   test.log      go test's output
#
# How: one go test -race -coverpkg=<all kvh packages> run, so a test binary
# counts every kvh package it links, not just its own. With KVH_COVERDIR set,
# cmd/kvh-agent's TestMain builds the agent it runs with -cover and has it
# write its counters there too; KVH_TEST_LIB points the tests that preload
# libkvh.so at build/gcov/libkvh.so, its gcov twin.
#
# The exit status is go test's: a failing test fails make cover, and the
# table it still prints says so.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
MOD=github.com/kvhygiene/kvh
OUT=build/cover
DATA=$PWD/$OUT/data
LIB=$PWD/build/gcov/libkvh.so

rm -rf "$OUT"
mkdir -p "$DATA" "$OUT/gcov"
[ -f "$LIB" ] || { echo "cover: $LIB missing (make cover builds it)"; exit 1; }
# Counts from an earlier run would add up with this one's.
find build/gcov -name '*.gcda' -delete

start=$SECONDS
# -p 1 for the reason make test gives.
KVH_COVERDIR=$DATA KVH_TEST_LIB=$LIB \
  $GO test -race -count=1 -p 1 -timeout 30m -coverpkg="$MOD/..." ./... -args -test.gocoverdir="$DATA" 2>&1 | tee "$OUT/test.log"
status=${PIPESTATUS[0]}
echo "cover: go test took $((SECONDS - start))s"

# Killed agents leave their counters in snapshot directories under DATA.
dirs=$(find "$DATA" -type d | paste -sd, -)
if ! $GO tool covdata textfmt -i="$dirs" -o "$OUT/profile.txt" || [ ! -s "$OUT/profile.txt" ]; then
  echo "cover: no coverage data (go test exit $status)"
  exit $(( status ? status : 1 ))
fi
$GO tool cover -html="$OUT/profile.txt" -o "$OUT/cover.html" || true

echo
echo "Go statement coverage: unit tests (go test -race -coverpkg=$MOD/...) and"
echo "end-to-end runs of kvh-agent (go build -race -cover -coverpkg=$MOD/...) merged;"
echo "go test's own figures above are one binary's share of all kvh statements"
[ "$status" -eq 0 ] || echo "TESTS FAILED (go test exit $status): coverage below is partial"
# profile.txt: "path/file.go:l.c,l.c statements count", one line per block
# per binary that linked it; a block is covered if any binary ran it.
awk -v mod="$MOD/" '
  NR == 1 { next }
  {
    split($1, a, ":"); f = a[1]; sub(/\/[^\/]*$/, "", f); sub("^" mod, "", f)
    if (!($1 in pkg)) { pkg[$1] = f; n[$1] = $2 }
    if ($3 > 0) hit[$1] = 1
  }
  END {
    for (b in pkg) { st[pkg[b]] += n[b]; tot += n[b]; if (b in hit) { cv[pkg[b]] += n[b]; ctot += n[b] } }
    printf "%-28s %10s %8s\n", "package", "statements", "covered"
    for (p in st) printf "%-28s %10d %7.1f%%\n", p, st[p], 100 * cv[p] / st[p] | "sort"
    close("sort")
    printf "%-28s %10d %7.1f%%\n", "total", tot, tot ? 100 * ctot / tot : 0
  }' "$OUT/profile.txt" | tee "$OUT/table.txt"

# gcov resolves the sources relative to where they were compiled (the
# repository root) and writes its .gcov files into the current directory.
echo
echo "libkvh.so line coverage (gcov, build/gcov/libkvh.so under the same tests)"
gcov -o build/gcov interpose/*.c > "$OUT/gcov/summary.txt" 2>&1
mv ./*.gcov "$OUT/gcov/" 2>/dev/null
awk '
  /^File / { f = $2; gsub(/\047/, "", f); next }
  /^Lines executed:/ && f ~ /^interpose\// {
    split($2, a, ":"); pct = a[2]; sub(/%/, "", pct); lines = $NF
    if (!(f in seen)) { seen[f] = 1; l[f] = lines; e[f] = pct * lines / 100 }
    f = ""
  }
  END {
    printf "%-28s %10s %8s\n", "file", "lines", "executed"
    for (x in l) { printf "%-28s %10d %7.1f%%\n", x, l[x], 100 * e[x] / l[x] | "sort"; tl += l[x]; te += e[x] }
    close("sort")
    printf "%-28s %10d %7.1f%%\n", "total", tl, tl ? 100 * te / tl : 0
  }' "$OUT/gcov/summary.txt" | tee -a "$OUT/table.txt"

exit "$status"
