#!/usr/bin/env bash
# Binary cache figures with no Nix row (issue #16): narinfo lookups, `arca cache serve`
# under 64 clients, peak RSS of a 1 GiB push and pull; see bench/cache_load.py.
# Usage: bench/cache_load.sh [--big-mib 1024]   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/cache_load.py --arca target/release/arca --work "$work" "$@"
