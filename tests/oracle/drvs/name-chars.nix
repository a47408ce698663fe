# All the special characters a store path name may contain.
derivation {
  name = "a+b=c?d._-1";
  system = "x86_64-linux";
  builder = "/bin/sh";
}
