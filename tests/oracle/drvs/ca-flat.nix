# A floating content-addressed derivation hashed flat with sha1.
let inherit (import ./common.nix) mk;
in mk "ca-flat" {
  __contentAddressed = true;
  outputHashMode = "flat";
  outputHashAlgo = "sha1";
}
