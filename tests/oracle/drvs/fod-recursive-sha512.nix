# Fixed-output, recursive, sha512 given in nix-base32.
derivation {
  name = "fod-recursive-sha512";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "mkdir $out && printf hello > $out/f" ];
  outputHashMode = "recursive";
  outputHashAlgo = "sha512";
  outputHash = "0bvd638nzwjpnpq61mn9c63q2s8m0iv7ailggkq3zpb4vm2aaim1y2xqh0gvw1gkfw80rp22n6846q3nz1wnd3n4mr78x953rwmqfyq";
}
