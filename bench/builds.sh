#!/usr/bin/env bash
# Side-by-side build latency of arca and real Nix (issue #5); see bench/builds.py.
# Usage: bench/builds.sh [--runs N] [--n 50]
# As root, the stores live on the journaled ext4 loop file system bench/compare.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
work=/tmp/arca-bench
if [ "$(id -u)" = 0 ]; then
  work=/mnt/arca-bench
  if ! mountpoint -q "$work"; then
    img=/tmp/arca-bench.img
    [ -f "$img" ] || { truncate -s 8G "$img" && mkfs.ext4 -q -F "$img"; }
    mkdir -p "$work" && mount -o loop "$img" "$work"
  fi
fi
exec python3 bench/builds.py --arca target/release/arca --work "$work" "$@"
