#!/usr/bin/env bash
# Side-by-side benchmark of arca against real Nix; see bench/compare.py for the rows.
# Usage: bench/compare.sh [compare.py options]   (e.g. --runs 5 --big-mib 1024 --files 50000)
#
# As root, the inputs live on a journaled ext4 loop file system (/mnt/arca-bench): on this
# kind of machine `/` is ext4 without a journal, where creating many files soon after
# deleting many is 15-30x slower and would swamp the restore rows.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/compare.py --arca target/release/arca --work "$work" "$@"
