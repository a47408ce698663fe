#!/usr/bin/env bash
# Sandbox start-up (issue #4): arca's run() of `busybox true` with 50 read-only store-path
# binds, side by side with bubblewrap given the same layout; see sandbox/benches/sandbox.rs.
# Usage: bench/sandbox.sh [ROUNDS]   (interleaved first-output rounds after divan; default 100)
#
# Run as root for the figures in BENCHMARKS.md (as root arca makes no user namespace and
# can make a cgroup per run). Prints divan's table, the interleaved first-output medians,
# then a summary of the divan medians in ms with the bwrap/arca ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ARCA_BENCH_FIRST_OUTPUT=$rounds cargo bench -q -p arca-sandbox --bench sandbox -- --color never | tee "$out"

# divan rows look like "├─ NAME   FASTEST │ SLOWEST │ MEDIAN │ MEAN │ SAMPLES │ ITERS".
awk -F'│' '
  function to_ms(field,   parts) {
    split(field, parts, " ")
    if (parts[2] == "ns") return parts[1] / 1e6
    if (parts[2] == "µs" || parts[2] == "us") return parts[1] / 1e3
    if (parts[2] == "ms") return parts[1]
    if (parts[2] == "s") return parts[1] * 1e3
    return -1
  }
  /^(├|╰)─ / {
    split($1, head, " ")
    median[head[2]] = to_ms($3)
    order[++n] = head[2]
  }
  /^first-output  arca run\(\) +to first byte/ { split($0, words, " "); first_arca = words[7] }
  END {
    if (n == 0) { print "no divan rows found" > "/dev/stderr"; exit 1 }
    print "\nsummary (divan medians, back-to-back runs):"
    for (i = 1; i <= n; i++) printf "  %-34s %8.3f ms\n", order[i], median[order[i]]
    arca = median["arca_run_true_50_binds"]; bwrap = median["bwrap_true_50_binds"]
    if (arca > 0 && bwrap > 0) printf "  ratio bwrap/arca, 50 binds:       %8.2f\n", bwrap / arca
    if (arca > 0) printf "  target < 10 ms, back-to-back runs:  %s\n", (arca < 10 ? "met" : "missed")
    if (first_arca > 0) printf "  target < 10 ms, interleaved runs (start to first output byte, %.3f ms): %s\n", first_arca, (first_arca < 10 ? "met" : "missed")
  }
' "$out"
