#!/usr/bin/env python3
"""Remote builds side by side (issue #17): Nix 2.8's `nix-store --realise --builders`
and `arca build --builders` as the client, on the same builder machine reached through a
real sshd on a loopback port (this script starts it with throw-away keys).

Rows (each run salts the derivations, so every build is new; runs interleave the tools):
- trivial: one trivial derivation built remotely, its inputs already on the builder
  (the overhead of a remote build), on an Arca builder and on a Nix builder;
- chain: a chain of 20 derivations, each writing 4 MiB, built on one remote machine;
- fan-out: 40 leaves that sleep 0.5 s each and a root, Arca only: on this machine alone
  (--max-jobs 2) and on it plus two remote machines of 2 slots each.
Prints medians and the ratios Nix/Arca (and local/spread for the fan-out).
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

NIX_CONFIG = "substituters =\nexperimental-features = nix-command\nsandbox = true"
NIX_ENV = dict(os.environ, NIX_CONFIG=NIX_CONFIG)

EXPR = r'''
{ salt, n ? 20, leaves ? 40 }:
let
  bb = builtins.path { path = ./bb; name = "bb"; };
  mk = name: script: deps: derivation {
    inherit name salt;
    system = "x86_64-linux";
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
    PATH = "${bb}";
    deps = deps;
  };
  link = i: if i == 0
    then mk "link-0" "mkdir $out; dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\\0' a > $out/blob" []
    else mk "link-${toString i}" "mkdir $out; echo $deps > $out/prev; dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\\0' b > $out/blob" [ (link (i - 1)) ];
  leaf = i: mk "leaf-${toString i}" "sleep 0.5; echo ${toString i} > $out" [];
in {
  trivial = mk "trivial" "echo trivial > $out" [];
  chain = link (n - 1);
  fanout = mk "fanout" "cat $deps > $out" (builtins.genList leaf leaves);
}
'''


def check(cmd, env=NIX_ENV, **kw):
    proc = subprocess.run(cmd, env=env, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return proc.stdout


def timed(cmd, env=NIX_ENV):
    start = time.perf_counter()
    check(cmd, env=env)
    return time.perf_counter() - start


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(dir):
    os.makedirs(dir, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)
    for key in ["host_key", "client_key"]:
        if not os.path.exists(os.path.join(dir, key)):
            check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(dir, key)])
    shutil.copy(os.path.join(dir, "client_key.pub"), os.path.join(dir, "authorized_keys"))
    port = free_port()
    config = os.path.join(dir, "sshd_config")
    with open(config, "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n"
                f"PidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                "MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n")
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config])
    with open(os.path.join(dir, "host_key.pub")) as f:
        key = " ".join(f.read().split()[:2])
    with open(os.path.join(dir, "known_hosts"), "w") as f:
        f.write(f"[localhost]:{port} {key}\n")
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.02)
    opts = (f"-p {port} -i {dir}/client_key -o UserKnownHostsFile={dir}/known_hosts "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes")
    return sshd, opts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    busybox = shutil.which("busybox")
    if not busybox or not shutil.which("nix-store") or not os.path.exists("/usr/sbin/sshd"):
        sys.exit("busybox-static, nix-bin and openssh-server are required")
    work = os.path.join(args.work, "remote")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "bb"))
    shutil.copy(busybox, os.path.join(work, "bb", "busybox"))
    expr = os.path.join(work, "remote.nix")
    with open(expr, "w") as f:
        f.write(EXPR)
    sshd, ssh_opts = start_sshd(os.path.join(work, "ssh"))
    env = dict(NIX_ENV, NIX_SSHOPTS=ssh_opts)
    # A wrapper gives the Nix builder its configuration (ssh passes no environment).
    wrapper = os.path.join(work, "nix-store-wrapper")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexport NIX_CONFIG='{NIX_CONFIG}'\nexec nix-store \"$@\"\n")
    os.chmod(wrapper, 0o755)

    def machine(kind, root, slots=2):
        if kind == "arca":
            return (f"ssh://root@localhost?remote-program={arca}&remote-store={root} "
                    f"x86_64-linux - {slots}")
        return (f"ssh://root@localhost?remote-program={wrapper}&remote-store=local?root={root} "
                f"x86_64-linux - {slots}")

    times = {}
    try:
        for run in range(args.runs):
            nix_root = os.path.join(work, f"nix-{run}")
            arca_root = os.path.join(work, f"arca-{run}")

            def instantiate(attr, salt):
                drv = check(["nix-instantiate", "--store", f"local?root={nix_root}", expr,
                             "--argstr", "salt", salt, "-A", attr]).decode().split()[0]
                closure = check(["nix-store", "--store", f"local?root={nix_root}", "-qR",
                                 drv]).decode().split()
                export = check(["nix-store", "--store", f"local?root={nix_root}", "--export"]
                               + closure)
                check([arca, "--store", arca_root, "store", "import"], input=export)
                return drv, export

            # Each tool gets a builder of its own of each kind, with the inputs (busybox)
            # there already: a warm-up build first.
            builders = {}
            for kind in ["arca", "nix"]:
                for tool in ["nix", "arca"]:
                    root = os.path.join(work, f"builder-{kind}-{tool}-{run}")
                    builders[(kind, tool)] = root
                    warm, _ = instantiate("trivial", f"warm-{kind}-{tool}-{run}-{time.time_ns()}")
                    check(["nix-store", "--store", f"local?root={nix_root}", "--realise", warm,
                           "--max-jobs", "0", "--builders", machine(kind, root)], env=env)
            rows = [
                ("trivial, arca builder", "arca", "trivial"),
                ("trivial, nix builder", "nix", "trivial"),
                ("chain of 20 x 4 MiB, arca builder", "arca", "chain"),
            ]
            for name, kind, attr in rows:
                drv, _ = instantiate(attr, f"{name}-{run}-{time.time_ns()}")
                for tool in ["nix", "arca"]:
                    root = builders[(kind, tool)]
                    if tool == "nix":
                        cmd = ["nix-store", "--store", f"local?root={nix_root}", "--realise", drv,
                               "--max-jobs", "0", "--builders", machine(kind, root)]
                    else:
                        cmd = [arca, "--store", arca_root, "build", drv, "--max-jobs", "0",
                               "--builders", machine(kind, root)]
                    times.setdefault(name, {}).setdefault(tool, []).append(timed(cmd, env=env))
            # The fan-out, Arca only: here alone, then here plus two machines.
            fanout, export = instantiate("fanout", f"fanout-{run}-{time.time_ns()}")
            spread_roots = [os.path.join(work, f"spread-{i}-{run}") for i in range(2)]
            local_root = os.path.join(work, f"arca-local-{run}")
            check([arca, "--store", local_root, "store", "import"], input=export)
            t_local = timed([arca, "--store", local_root, "build", fanout, "--max-jobs", "2",
                             "--builders", ""], env=env)
            t_spread = timed([arca, "--store", arca_root, "build", fanout, "--max-jobs", "2",
                              "--builders", ";".join(machine("arca", r) for r in spread_roots)],
                             env=env)
            times.setdefault("fan-out 40 x 0.5 s", {}).setdefault("local", []).append(t_local)
            times["fan-out 40 x 0.5 s"].setdefault("spread", []).append(t_spread)
    finally:
        sshd.terminate()

    print(f"{'row':40} {'first':>10} {'second':>10} {'ratio':>8}")
    for name, by_tool in times.items():
        (a, xs), (b, ys) = list(by_tool.items())
        ma, mb = statistics.median(xs), statistics.median(ys)
        print(f"{name:40} {a}={ma:7.3f}s {b}={mb:7.3f}s {ma / mb:7.2f}x")


if __name__ == "__main__":
    main()
