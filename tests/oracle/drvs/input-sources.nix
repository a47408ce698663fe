# inputSrcs: a local file, a local directory (run.sh is made executable by the
# generator), builtins.toFile texts, one of which refers to other store paths.
let
  note = builtins.toFile "note.txt" "a note\n";
  refers = builtins.toFile "refers.txt" "see ${note} and ${./src-file.txt}\n";
in derivation {
  name = "input-sources";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "cat ${./src-file.txt} > $out" ];
  file = ./src-file.txt;
  dir = ./src-dir;
  runner = "${./src-dir}/run.sh";
  inherit note refers;
}
