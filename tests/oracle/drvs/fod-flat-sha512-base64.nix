# Fixed-output, flat, sha512 given in (padded) base64 (sha512 of "hello").
derivation {
  name = "fod-flat-sha512-base64";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "printf hello > $out" ];
  outputHashMode = "flat";
  outputHashAlgo = "sha512";
  outputHash = "m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw==";
}
