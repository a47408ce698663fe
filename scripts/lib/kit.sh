# Sourced by scripts/conformance.sh and bench/conformance.sh: finding and copying the Nix
# conformance kit (../shared/nix-conformance; Nix's tests, LGPL-2.1, not part of this
# repository).

# find_kit ROOT: prints the kit's directory ($NIX_CONFORMANCE_KIT, then ROOT/../shared/
# nix-conformance, then /work/shared/nix-conformance), or nothing.
find_kit() {
  local candidate
  for candidate in "${NIX_CONFORMANCE_KIT:-}" "$1/../shared/nix-conformance" /work/shared/nix-conformance; do
    if [ -n "$candidate" ] && [ -f "$candidate/run.sh" ]; then echo "$candidate"; return; fi
  done
}

# copy_kit KIT DEST: a writable copy of the kit at DEST (the kit's directory may be
# read-only). The kit ships tests/ca/config.nix.in (in Nix's tree a symlink to
# ../config.nix.in) as a regular file holding the link's target, `../config.nix.in`: every
# ca/ test then fails to evaluate ("value is a path while a set was expected"), through
# nix-daemon too, and the busybox modes refuse to start ("bb substitution failed"). The
# copy gets its symlink back; nothing else of the kit changes.
copy_kit() {
  cp -r "$1" "$2"
  chmod -R u+w "$2"
  local ca_config="$2/nix-2.8.0-tests/ca/config.nix.in"
  if [ ! -L "$ca_config" ] && [ "$(cat "$ca_config")" = "../config.nix.in" ]; then
    ln -sfn ../config.nix.in "$ca_config"
  fi
}
