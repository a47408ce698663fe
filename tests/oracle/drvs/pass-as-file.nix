derivation {
  name = "pass-as-file";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "cp $bigPath $out" ];
  passAsFile = [ "big" "other" ];
  big = "lots of text\nover several lines\n";
  other = "x";
}
