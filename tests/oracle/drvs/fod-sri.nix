# Fixed-output with an SRI hash and no outputHashAlgo (flat, sha256 of "hello").
derivation {
  name = "fod-sri";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "printf hello > $out" ];
  outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
}
