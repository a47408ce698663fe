# Fixed-output, recursive, sha256 given in base16 (NAR hash of a dir holding f = "hello").
derivation {
  name = "fod-recursive-sha256";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "mkdir $out && printf hello > $out/f" ];
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
  outputHash = "a17ad11d9c87ccd9c864c7c46978d8fd7724d2a2fada4b47fa313bd62c9abcd7";
}
