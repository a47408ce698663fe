# Probes of the build sandbox for `tests/tests/build_interop.rs`, built by real Nix 2.8
# (`--option sandbox true`) and by `arca build` from the same .drv files: their outputs
# must be byte-identical, which they are only when the sandboxes look the same from
# inside.
#
# `bb` is a directory holding a static busybox named `busybox`.
{ bb
  # For `purity`: a host file the builder must not read,
, hostFile ? "/nonexistent"
  # a TCP port the test listens on (on every host address) that the builder must not
  # reach, on 127.0.0.1 and on the host's address `hostIp` ("" to skip that one),
, port ? "9"
, hostIp ? ""
  # and a directory that becomes a valid store path which is not an input.
, undeclaredDir ? null
}:
let
  bbPath = builtins.path { path = bb; name = "bb"; };
  mk = name: script: extra: derivation ({
    inherit name;
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    args = [ "sh" "-c" script ];
    PATH = "${bbPath}";
  } // extra);
in
{
  # What a builder sees, deterministic parts only (no times, sizes, owners, modes or
  # device numbers: `ls -1a` names only).
  environment = mk "sandbox-environment" ''
    {
      echo "== env"; env | sort
      echo "== root"; ls -1a /
      echo "== dev"; ls -1a /dev
      echo "== tmp"; ls -1a /tmp
      echo "== build"; ls -1a /build
      echo "== store"; ls -1a /nix/store
      echo "== passwd"; cat /etc/passwd
      echo "== group"; cat /etc/group
      echo "== hosts"; cat /etc/hosts
      echo "== etc"; ls -1a /etc
      echo "== id"; id
      echo "== hostname"; hostname
      echo "== kernel hostname"; cat /proc/sys/kernel/hostname
      echo "== domainname"; cat /proc/sys/kernel/domainname
      echo "== pwd"; pwd
      echo "== umask"; umask
      echo "== limits"; ulimit -a
      echo "== status"; grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status
      echo "== end"
    } > $TMPDIR/dump
    cp $TMPDIR/dump $out
  '' { extraVariable = "with spaces and $dollar 'quotes'"; };

  # Ways out of the sandbox: each must fail ("denied"); the controls must work.
  purity =
    let
      undeclared = builtins.unsafeDiscardStringContext
        "${builtins.path { path = undeclaredDir; name = "undeclared"; }}";
    in
    mk "sandbox-purity" ''
      check() {
        if sh -c "$2" > /dev/null 2>&1; then echo "$1: ALLOWED"; else echo "$1: denied"; fi
      }
      store=$(ls -1a /nix/store)
      {
        check control-read-input "cat ${bbPath}/busybox"
        check control-read-etc "cat /etc/passwd"
        check control-write-build "echo x > /build/x"
        check host-shadow "cat /etc/shadow"
        check host-file "cat ${hostFile}"
        check host-root "ls /root"
        check undeclared-file "cat ${undeclared}/secret"
        check undeclared-dir "ls ${undeclared}"
        check loopback-listener "nc -w 2 127.0.0.1 ${port} < /dev/null"
        check host-listener "test -n '${hostIp}' && nc -w 2 '${hostIp}' ${port} < /dev/null"
        check internet "wget -q -T 2 -O /dev/null http://1.1.1.1/"
        check write-etc "echo x > /etc/passwd"
        check write-input "echo x > ${bbPath}/new"
        echo "== store"; echo "$store"
        echo "== passwd"; cat /etc/passwd
      } > $out
    '' { };
}
