# A derivation depending on a fixed-output derivation. fod-dependent-b.nix uses a FOD
# with the same name and hash but a different builder/args/env and an extra input
# derivation: both FODs have the same output path, and so do both dependents (their
# .drv paths differ). This is what hashDerivationModulo is for.
let
  fod = derivation {
    name = "fetched";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "printf hello > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  };
in derivation {
  name = "fod-dependent";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "cp $src $out" ];
  src = fod;
}
