# outputs in a non-sorted order (the first, `bin`, is the default); an attribute `out`
# whose value Nix replaces by the output path; an attribute `dev` that is not an output
# and stays as given.
derivation {
  name = "env-like-outputs";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "mkdir $bin $out $doc" ];
  outputs = [ "bin" "out" "doc" ];
  out = "user value for out";
  dev = "not an output";
}
