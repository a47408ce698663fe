# How non-string attributes become env strings.
let plain = import ./plain.nix; in
derivation {
  name = "coercions";
  system = "x86_64-linux";
  builder = "/bin/sh";
  int = 3;
  negative = -12;
  float = 1.5;
  yes = true;
  no = false;
  nothing = null;
  list = [ 1 "a" null true false [ "nested" 2 ] ];
  emptyList = [ ];
  path = ./src-file.txt;
  drv = plain;
  drvList = [ plain "x" ];
}
