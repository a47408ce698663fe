#!/usr/bin/env bash
# Side-by-side build latency of arca and real Nix (issue #5); see bench/builds.py.
# Usage: bench/builds.sh [--runs N] [--n 50] [--baseline OLDER_ARCA_BINARY]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/builds.py --arca target/release/arca --work "$work" "$@"
