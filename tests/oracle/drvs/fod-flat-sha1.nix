# Fixed-output, flat (the default mode), sha1 in base16 (sha1 of "hello").
derivation {
  name = "fod-flat-sha1";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "printf hello > $out" ];
  outputHashAlgo = "sha1";
  outputHash = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
}
