#!/usr/bin/env bash
# Side-by-side store optimisation of arca and real Nix (issue #6); see bench/optimise.py.
# Usage: bench/optimise.sh [--runs N] [--paths 2000] [--shape default|small]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/optimise.py --arca target/release/arca --work "$work" "$@"
