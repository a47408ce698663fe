#!/usr/bin/env bash
# Regenerates the .drv files and their `nix show-derivation` JSON in this directory with
# real Nix 2.8 (no nixpkgs needed). These cases complement tests/fixtures/drvs: inputs
# with equal hash modulo that Nix merges, a fixed-output derivation with inputs, every
# fixed-output hash algorithm and mode, and control characters in strings.
set -euo pipefail
cd "$(dirname "$0")"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
export NIX_STATE_DIR=$root/state NIX_CONF_DIR=$root/conf HOME=$root/home
rm -f ./*.drv ./*.drv.json
nix-instantiate --store "local?root=$root" cases.nix 2>/dev/null | sed 's/!.*//' | sort -u |
while read -r drv; do
  base=$(basename "$drv")
  cp "$root$drv" "$base"
  nix show-derivation --extra-experimental-features nix-command --store "local?root=$root" "$drv" > "$base.json"
done
