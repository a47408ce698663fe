derivation {
  name = "many-args";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo \"$@\" > $out" "sh" ] ++ builtins.genList (i: "arg-${toString i}") 200;
  long = builtins.concatStringsSep "" (builtins.genList (i: "0123456789abcdef") 256);
}
