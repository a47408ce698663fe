#!/usr/bin/env bash
# Adding many small paths from the command line, side by side with Nix 2.8: N paths (a
# directory with two small files each) added in K invocations (`nix-store --add` /
# `arca store add-path`, each to a fresh store of its own kind), and one path per
# invocation for the first P of them. Runs interleaved; prints each run and the medians.
# Usage: bench/small_adds.sh [--runs R] [--paths N] [--invocations K] [--singles P]
# As root, stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 paths=2000 invocations=10 singles=100
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --paths) paths=$2; shift 2 ;;
    --invocations) invocations=$2; shift 2 ;;
    --singles) singles=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p arca
arca=$PWD/target/release/arca
. bench/bench-fs.sh
dir=$work/small-adds
rm -rf "$dir" && mkdir -p "$dir/inputs"
for i in $(seq 1 "$paths"); do
  mkdir "$dir/inputs/p$i"
  echo "first file of path $i" > "$dir/inputs/p$i/a"
  echo "second file of path $i" > "$dir/inputs/p$i/b"
done
per=$(( (paths + invocations - 1) / invocations ))

# add TOOL STORE FROM TO: one invocation adding inputs FROM..TO.
add() {
  local tool=$1 store=$2 from=$3 to=$4 args=()
  for i in $(seq "$from" "$to"); do args+=("$dir/inputs/p$i"); done
  case $tool in
    nix) nix-store --store "local?root=$store" --option substituters '' --add "${args[@]}" > /dev/null ;;
    arca) "$arca" --store "$store" store add-path "${args[@]}" > /dev/null ;;
  esac
}

# batches TOOL: seconds to add every path in `invocations` invocations.
batches() {
  local store=$dir/store-$1 start
  rm -rf "$store"; sync
  start=$(date +%s.%N)
  for ((from = 1; from <= paths; from += per)); do
    add "$1" "$store" "$from" $(( from + per - 1 < paths ? from + per - 1 : paths ))
  done
  echo "$(date +%s.%N) - $start" | bc
}

# singles TOOL: seconds to add the first `singles` paths one invocation each.
singles() {
  local store=$dir/store-$1 start
  rm -rf "$store"; sync
  start=$(date +%s.%N)
  for i in $(seq 1 "$singles"); do add "$1" "$store" "$i" "$i"; done
  echo "$(date +%s.%N) - $start" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
declare -A times=()
for run in $(seq 1 "$runs"); do
  for row in batches singles; do
    for tool in nix arca; do
      t=$($row $tool)
      times[$row-$tool]+="$t "
      echo "run $run: $row $tool ${t}s"
    done
  done
done
for row in batches singles; do
  n=$(echo ${times[$row-nix]} | tr ' ' '\n' | median)
  a=$(echo ${times[$row-arca]} | tr ' ' '\n' | median)
  case $row in
    batches) label="$paths paths in $invocations invocations" ;;
    singles) label="$singles paths, one per invocation" ;;
  esac
  printf '%-40s nix %7.3f s  arca %7.3f s  nix/arca %.2fx\n' "$label" "$n" "$a" "$(echo "$n / $a" | bc -l)"
done
rm -rf "$dir"
