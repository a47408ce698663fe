# Fixed-output, flat, md5 in base16 (md5 of "hello").
derivation {
  name = "fod-flat-md5";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "printf hello > $out" ];
  outputHashMode = "flat";
  outputHashAlgo = "md5";
  outputHash = "5d41402abc4b2a76b9719d911017c592";
}
