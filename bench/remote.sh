#!/usr/bin/env bash
# Remote builds side by side: Nix 2.8 and arca as the client of the same kind of
# builder over a real sshd on loopback (issue #17); see bench/remote.py.
# Usage: bench/remote.sh [--runs N]
# As root, the stores live on the journaled ext4 loop file system of bench/bench-fs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p arca
. bench/bench-fs.sh
exec python3 bench/remote.py --arca target/release/arca --work "$work" "$@"
