# Depends on the `dev` and `lib` outputs (not `out`) of multiple-outputs.nix.
let
  inherit (import ./common.nix) mk;
  multi = import ./multiple-outputs.nix;
in mk "non-default-output" {
  devPath = multi.dev;
  libDir = "${multi.lib}/lib";
}
