#!/usr/bin/env bash
# Wall time of Nix 2.8's store-level functional tests (../shared/nix-conformance) through
# nix-daemon and through `arca daemon`, interleaved, on the tests that pass through both
# (a test that fails early would flatter the faster side). Prints each round's times and
# the median ratio.
# Usage: bench/conformance.sh [ROUNDS] (default 3). Needs root and the kit (as
# scripts/conformance.sh finds it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=${1:-3}
# shellcheck source=../scripts/lib/kit.sh
. scripts/lib/kit.sh
kit=$(find_kit "$root")
[ -n "$kit" ] || { echo "no conformance kit" >&2; exit 1; }
cargo build --release -q -p arca
work=$(mktemp -d /var/tmp/arca-bench-conformance.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work" 2>/dev/null || true' EXIT
copy_kit "$kit" "$work/kit"
export NIXFT_TMP=$work/tmp ARCA=$root/target/release/arca

# The tests both daemons pass.
for mode in nix-daemon arca; do
  bash "$work/kit/run.sh" "$mode" -j 2 store > /dev/null
done
tests=$(join <(awk -F'\t' '$2=="PASS"{print $1}' "$work/tmp/logs/nix-daemon/summary.tsv" | sort) \
              <(awk -F'\t' '$2=="PASS"{print $1}' "$work/tmp/logs/arca/summary.tsv" | sort))
echo "tests passing through both: $(echo $tests | wc -w)"

ratios=()
for round in $(seq 1 "$rounds"); do
  declare -A took=()
  for mode in nix-daemon arca; do
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    bash "$work/kit/run.sh" "$mode" -j 2 $tests > /dev/null
    took[$mode]=$(echo "$(date +%s.%N) - $start" | bc)
  done
  ratio=$(echo "scale=2; ${took[nix-daemon]} / ${took[arca]}" | bc)
  ratios+=("$ratio")
  printf 'round %d: nix-daemon %.1f s, arca daemon %.1f s, nix-daemon/arca %sx\n' \
    "$round" "${took[nix-daemon]}" "${took[arca]}" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo "median nix-daemon/arca: ${median}x"
