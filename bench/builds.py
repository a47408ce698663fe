#!/usr/bin/env python3
"""Side-by-side build latency: `nix-store --realise` (sandboxed) vs `arca build` on the same
fresh .drv files (made by nix-instantiate, imported into the Arca store beforehand).

Rows: one trivial derivation; a chain of 50; a fan-out of 50 (one root, 50 leaves), both
with --max-jobs 2. Each run salts the derivations so that both tools build from scratch;
runs interleave the tools (Nix, Arca, Nix, Arca, ...). Prints medians and Nix/Arca ratios.
With --baseline BIN, a second arca (an older build) is timed in the same runs on a store of
its own, and the ratio baseline/arca says whether a change made builds slower (< 1).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

NIX_ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command")

EXPR = r'''
{ salt, n }:
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
  leaf = i: mk "leaf-${toString i}" "echo ${toString i} > $out" [];
  chain = i: if i == 0 then leaf 0 else mk "chain-${toString i}" "cat $deps > $out" [ (chain (i - 1)) ];
in {
  trivial = leaf 0;
  chain = chain (n - 1);
  fanout = mk "fanout" "cat $deps > $out" (builtins.genList leaf n);
}
'''


def check(cmd, **kw):
    proc = subprocess.run(cmd, env=NIX_ENV, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return proc.stdout


def timed(cmd):
    start = time.perf_counter()
    check(cmd)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--baseline", help="an older arca binary to time beside --arca")
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    busybox = shutil.which("busybox")
    if not busybox or not shutil.which("nix-store"):
        sys.exit("busybox-static and nix-bin are required")
    work = os.path.join(args.work, "builds")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "bb"))
    shutil.copy(busybox, os.path.join(work, "bb", "busybox"))
    expr = os.path.join(work, "builds.nix")
    with open(expr, "w") as f:
        f.write(EXPR)
    nix_root = os.path.join(work, "nix")
    arca_root = os.path.join(work, "arca")
    baseline_root = os.path.join(work, "baseline")
    nix_store = ["nix-store", "--store", f"local?root={nix_root}"]

    rows = [("one trivial derivation", "trivial", 1), (f"chain of {args.n}", "chain", 2),
            (f"fan-out of {args.n}", "fanout", 2)]
    header = f"{'row':<26} {'nix-store --realise':>20} {'arca build':>12} {'nix/arca':>9}"
    if baseline:
        header += f" {'baseline':>12} {'baseline/arca':>14}"
    print(header)
    for label, attr, jobs in rows:
        times = {"nix": [], "arca": [], "baseline": []}
        for run in range(args.runs):
            salt = f"{time.time_ns()}-{run}"
            drv = check(["nix-instantiate", "--store", f"local?root={nix_root}", expr, "-A", attr,
                         "--argstr", "salt", salt, "--arg", "n", str(args.n)]).decode().split()[0]
            closure = check(nix_store + ["-qR", drv]).decode().split()
            export = check(nix_store + ["--export"] + closure)
            check([arca, "--store", arca_root, "store", "import"], input=export)
            if baseline:
                check([baseline, "--store", baseline_root, "store", "import"], input=export)
            times["nix"].append(timed(nix_store + ["--realise", drv, "--option", "sandbox", "true",
                                                    "--max-jobs", str(jobs)]))
            ours = ("arca", [arca, "--store", arca_root, "build", "--max-jobs", str(jobs), drv])
            older = ("baseline", [baseline, "--store", baseline_root, "build", "--max-jobs",
                                  str(jobs), drv])
            # The two arcas take turns at going first: whichever runs second on the same
            # derivation was measured 2-3% faster (an A/A run of one binary showed it).
            for name, cmd in ([ours, older] if run % 2 == 0 else [older, ours]) if baseline else [ours]:
                times[name].append(timed(cmd))
        nix, ours = statistics.median(times["nix"]), statistics.median(times["arca"])
        line = f"{label:<26} {nix * 1000:17.1f} ms {ours * 1000:9.1f} ms {nix / ours:8.2f}x"
        if baseline:
            base = statistics.median(times["baseline"])
            line += f" {base * 1000:9.1f} ms {base / ours:13.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
