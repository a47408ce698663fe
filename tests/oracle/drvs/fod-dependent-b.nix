# See fod-dependent-a.nix: same FOD name and hash, different way to make it.
let
  helper = import ./plain.nix;
  fod = derivation {
    name = "fetched";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo -n hello > $out # another way" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    impureEnvVars = [ "http_proxy" ];
    inherit helper;
  };
in derivation {
  name = "fod-dependent";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "cp $src $out" ];
  src = fod;
}
