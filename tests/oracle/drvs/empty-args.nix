# No args at all, empty env values, a system this machine cannot build for.
derivation {
  name = "empty-args";
  system = "aarch64-darwin";
  builder = "/bin/sh";
  args = [ ];
  empty = "";
  "" = "empty attribute name";
}
