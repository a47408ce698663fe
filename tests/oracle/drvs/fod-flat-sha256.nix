# Fixed-output, flat, sha256 given in nix-base32 (sha256 of "hello").
derivation {
  name = "fod-flat-sha256";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "printf hello > $out" ];
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic";
}
