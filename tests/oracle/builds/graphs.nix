# Derivation graphs for `tests/tests/build_interop.rs`: built by real Nix 2.8
# (`nix-store --realise --option sandbox true`) and by `arca build` from the same .drv
# files, which must agree on output paths, NAR hashes, references and derivers.
#
# `bb` is a directory holding a static busybox named `busybox` (the only tool a builder
# has). Every builder is deterministic. With `trace = true` each builder also writes its
# output path to `/arca-trace` when that is a FIFO (the concurrency test binds one there
# with `--sandbox-path`, to count how many times each builder ran); Nix never sees that.
{ bb, trace ? false }:
let
  bbPath = builtins.path { path = bb; name = "bb"; };
  traceLine = if trace then ''if [ -p /arca-trace ]; then echo "$out" > /arca-trace; fi; sleep 0.05; '' else "";
  mk = name: script: extra: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    args = [ "sh" "-c" (traceLine + script) ];
    PATH = "${bbPath}";
  } // extra);

  # A chain five deep: each link refers to the one below.
  chain1 = mk "chain-1" "echo link 1 > $out" { };
  chain2 = mk "chain-2" "{ echo link 2; cat ${chain1}; echo ${chain1}; } > $out" { };
  chain3 = mk "chain-3" "{ echo link 3; cat ${chain2}; echo ${chain2}; } > $out" { };
  chain4 = mk "chain-4" "{ echo link 4; cat ${chain3}; echo ${chain3}; } > $out" { };
  chain5 = mk "chain-5" "{ echo link 5; cat ${chain4}; echo ${chain4}; } > $out" { };

  # Talks on its standard output (the build log) and depends on the chain: for the
  # remote builders' tests, whose logs travel back to the client.
  chatty = mk "chatty" "echo chatty builds on ${chain2}; echo done > $out; cat ${chain2} >> $out" { };

  # A diamond: two sides share a base; the top refers to both sides (and so, through
  # them, to the base).
  base = mk "diamond-base" "mkdir $out; echo base > $out/data" { };
  left = mk "diamond-left" "mkdir $out; echo ${base} > $out/ref; echo left > $out/data" { };
  right = mk "diamond-right" "mkdir $out; cat ${base}/data > $out/copy; echo ${base} > $out/ref" { };
  top = mk "diamond-top" "mkdir $out; ln -s ${left} $out/left; echo ${right} > $out/right" { };

  # A fan-out: one root over 20 leaves.
  leaf = i: mk "leaf-${toString i}" "echo leaf ${toString i} > $out" { };
  leaves = builtins.genList leaf 20;
  fanout = mk "fanout-root" ("mkdir $out; " + builtins.concatStringsSep "; "
    (map (l: "echo ${l} >> $out/leaves") leaves)) { };

  # Two outputs, both written; `dev` refers to `out` and to an input.
  multi = mk "multi" ''
    mkdir $out $dev
    echo library > $out/lib
    echo "$out ${chain1}" > $dev/include
  '' { outputs = [ "out" "dev" ]; };

  # An output that refers to itself (a file naming its own path, a symlink into itself)
  # and to an input; an executable file and an empty directory.
  selfref = mk "self-ref" ''
    mkdir -p $out/bin $out/empty
    echo "$out ${base}" > $out/paths
    printf '#!/bin/sh\necho hi\n' > $out/bin/tool
    chmod +x $out/bin/tool
    ln -s $out/paths $out/link
  '' { };

  # Fixed outputs. Flat: the file's hash. Recursive: the NAR hash of this tree:
  #   file ("hi", no newline), link -> file, sub/run (executable "#!/bin/sh\necho run\n"),
  # computed with `nix-hash --type sha256 --base32` (and `--type sha512`) of the same
  # tree made on the host.
  fodFlat = mk "fod-flat" "echo -n hi > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "hi";
  };
  fodFlatSha1 = mk "fod-flat-sha1" "echo -n hello sha1 > $out" {
    outputHashAlgo = "sha1";
    outputHash = builtins.hashString "sha1" "hello sha1";
  };
  recursiveTree = ''
    mkdir -p $out/sub
    echo -n hi > $out/file
    printf '#!/bin/sh\necho run\n' > $out/sub/run
    chmod +x $out/sub/run
    ln -s file $out/link
  '';
  fodRecursive = mk "fod-recursive" recursiveTree {
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    outputHash = "14ggvl8mfl307ja5qyyh6zq5y3i1anvnbsyv8wf9b8ajrjda9lck";
  };
  fodRecursiveSha512 = mk "fod-recursive-sha512" recursiveTree {
    outputHashMode = "recursive";
    outputHashAlgo = "sha512";
    outputHash = "3xj8vafpz41m3a92fgx5faifxwf778lmbxz73l07541miv3j8ki1p6ry4d4m4xng8m3jznakyf55ws9dkhhvvjl5dyjlc4a2vkhmxm1";
  };
  # A derivation that uses a fixed output as an input.
  fodUser = mk "fod-user" "{ cat ${fodFlat}; echo; ls ${fodRecursive}; } > $out" { };

  # A fixed output whose declared hash is wrong: it writes "hi", declares sha256("wrong").
  fodWrong = mk "fod-wrong" "echo -n hi > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "wrong";
  };
in
{
  inherit chain5 top fanout multi selfref fodFlat fodFlatSha1 fodRecursive
    fodRecursiveSha512 fodUser fodWrong chatty;
}
