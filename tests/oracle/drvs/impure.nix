# An impure derivation (impure-derivations) with two outputs.
let inherit (import ./common.nix) mk;
in mk "impure" {
  __impure = true;
  outputs = [ "out" "stuff" ];
}
