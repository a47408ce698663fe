# Floating content-addressed derivations (ca-derivations): `ca` has two outputs and an
# input-addressed input; `deferred` is input-addressed but depends on `ca`, so its output
# paths are left empty (deferred) and its builder sees `ca`'s downstream placeholders.
let
  inherit (import ./common.nix) mk;
  plain = mk "ca-input" { };
  ca = mk "ca-floating" {
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputs = [ "out" "dev" ];
    dep = plain;
  };
  deferred = mk "ca-dependent" { dep = ca; devDep = ca.dev; };
in deferred
