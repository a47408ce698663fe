# Shared helper (not a case): a minimal derivation with builtins only.
# `mk name attrs` builds a derivation for x86_64-linux with /bin/sh as builder.
{
  mk = name: attrs: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ];
  } // attrs);
}
