# `drvPath` in a string depends on all outputs of that derivation;
# unsafeDiscardOutputDependency turns it into a plain input source (the .drv);
# unsafeDiscardStringContext drops the dependency altogether.
let
  multi = import ./multiple-outputs.nix;
  plain = import ./plain.nix;
  chain = import ./chain.nix;
in derivation {
  name = "drvpath-context";
  system = "x86_64-linux";
  builder = "/bin/sh";
  allOutputs = multi.drvPath;
  drvOnly = builtins.unsafeDiscardOutputDependency plain.drvPath;
  noContext = builtins.unsafeDiscardStringContext chain.outPath;
}
