#!/usr/bin/env bash
# Side-by-side daemon benchmark: Nix 2.8 clients against `arca daemon` and a private
# `nix-daemon` on the same content; see bench/daemon.py for the rows.
# Usage: bench/daemon.sh [--runs N] [--requests 2000] [--adds 1000] [--closure 5000]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/daemon.py --arca target/release/arca --work "$work" "$@"
