#!/usr/bin/env bash
# Side-by-side garbage collection of arca and real Nix; see bench/gc.py for the rows.
# Usage: bench/gc.sh [--runs N] [--live 10000 --dead 10000] [--file-roots 100000]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/gc.py --arca target/release/arca --work "$work" "$@"
