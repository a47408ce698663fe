#!/usr/bin/env bash
# Side-by-side substitution of a closure by arca and real Nix (issue #16); see
# bench/substitute.py. Usage: bench/substitute.sh [--runs N] [--paths 500] [--compression zstd|xz|none]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/substitute.py --arca target/release/arca --work "$work" "$@"
