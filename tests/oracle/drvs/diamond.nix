# top -> {left, right} -> base
let
  inherit (import ./common.nix) mk;
  base = mk "diamond-base" { };
  left = mk "diamond-left" { inherit base; };
  right = mk "diamond-right" { inherit base; };
in mk "diamond-top" { inherit left right; }
