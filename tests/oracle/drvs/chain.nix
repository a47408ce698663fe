# c -> b -> a (each depends on the default output of the previous one).
let
  inherit (import ./common.nix) mk;
  a = mk "chain-a" { };
  b = mk "chain-b" { dep = a; };
  c = mk "chain-c" { dep = b; };
in c
