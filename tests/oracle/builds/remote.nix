# Derivations for the distributed build tests (`tests/tests/distributed_builds.rs`):
# a fan-out whose leaves take a moment (so they spread over machines), derivations
# asking for system features, one preferring a local build, one for another system.
#
# `bb` is a directory holding a static busybox named `busybox`; `salt` changes every
# output path (so a test gets derivations no store has built before).
{ bb, salt ? "", leaves ? 40, pause ? "0.5" }:
let
  bbPath = builtins.path { path = bb; name = "bb"; };
  mk = name: script: extra: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    args = [ "sh" "-c" script ];
    PATH = "${bbPath}";
    SALT = salt;
  } // extra);

  leaf = i: mk "fan-leaf-${toString i}"
    "echo leaf ${toString i} starts; sleep ${pause}; echo leaf ${toString i} > $out" { };
  fan = mk "fan-root" ("mkdir $out; " + builtins.concatStringsSep "; "
    (map (l: "echo ${l} >> $out/leaves") (builtins.genList leaf leaves))) { };

  kvm = mk "needs-kvm" "echo kvm > $out" { requiredSystemFeatures = [ "kvm" ]; };
  big = mk "needs-big" "echo big > $out" { requiredSystemFeatures = [ "big" ]; };
  plain = mk "plain" "echo plain > $out" { };
  gpu = mk "needs-gpu" "echo gpu > $out" { requiredSystemFeatures = [ "gpu" ]; };
  local = mk "prefers-local" "echo local > $out" { preferLocalBuild = true; };
  arm = derivation {
    name = "for-arm";
    system = "aarch64-linux";
    builder = "${bbPath}/busybox";
    args = [ "sh" "-c" "echo arm > $out" ];
    SALT = salt;
  };
in
{
  inherit fan kvm big plain gpu local arm;
}
