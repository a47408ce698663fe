# __structuredAttrs: every attribute goes into the JSON in env.__json; env keeps only
# the outputs.
derivation {
  name = "structured-attrs";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "true" ];
  __structuredAttrs = true;
  outputs = [ "out" "dev" ];
  int = 42;
  negative = -7;
  float = 1.5;
  yes = true;
  no = false;
  nothing = null;
  list = [ 1 "two" [ 3 ] { four = 4; } null ];
  attrs = { b = 1; a = "x"; nested.deep = [ ]; };
  str = "quote \" backslash \\ newline \n tab \t unicode é 🎉";
  dep = import ./plain.nix;
  src = ./src-file.txt;
  passAsFile = [ "str" ];
}
