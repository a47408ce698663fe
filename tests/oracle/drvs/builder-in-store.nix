derivation {
  name = "builder-in-store";
  system = "x86_64-linux";
  builder = "${./src-dir}/run.sh";
  args = [ "${builtins.toFile "builder-arg.txt" "x"}" ];
}
