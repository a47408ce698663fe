derivation {
  name = "ignore-nulls";
  system = "x86_64-linux";
  builder = "/bin/sh";
  __ignoreNulls = true;
  nothing = null;
  keep = "kept";
  no = false;
}
