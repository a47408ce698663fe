#!/usr/bin/env python3
"""Side-by-side store optimisation: `nix-store --optimise` vs `arca store optimise` on
identical copies of one store (made once by `nix-store --add`, copied with `cp -a` before
every run).

The store: N paths (default 2000), each a directory of 8 files of 1-16 KiB in two
subdirectories, some executable; 4 files of each path come from a pool of 500 contents
shared across paths (so about half the files are duplicates), 4 are unique.

With `--shape small` (issue #15's store): each path is a directory of two small files,
one unique to it and one with one of 7 contents (so half the files are duplicates of 7).

Rows: a first optimise of a fresh copy; a second optimise of the same, already optimised
copy (nothing left to link). Runs interleave the tools (Nix, Arca, Nix, Arca, ...) on
fresh copies. Prints medians and Nix/Arca ratios, and checks that both print the same
summary line (`X MiB freed by hard-linking N files`).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

NIX_ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command")
POOL = 500


def check(cmd, **kw):
    proc = subprocess.run(cmd, env=NIX_ENV, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return proc


def contents(seed, size):
    line = f"{seed:08d} {'abcdefghijklmnopqrstuvwxyz' * 2}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def make_trees(src, paths):
    trees = []
    for i in range(paths):
        tree = os.path.join(src, f"p{i:05d}")
        os.makedirs(os.path.join(tree, "lib"))
        os.makedirs(os.path.join(tree, "share"))
        for f in range(4):
            shared = (i * 7 + f) % POOL
            path = os.path.join(tree, "lib", f"shared-{f}")
            with open(path, "wb") as out:
                out.write(contents(shared, 1024 + (shared * 37) % 15360))
            os.chmod(path, 0o755 if shared % 5 == 0 else 0o644)
        for f in range(4):
            seed = POOL + i * 4 + f
            with open(os.path.join(tree, "share", f"own-{f}"), "wb") as out:
                out.write(contents(seed, 1024 + (seed * 53) % 15360))
        trees.append(tree)
    return trees


def make_small_trees(src, paths):
    trees = []
    for i in range(paths):
        tree = os.path.join(src, f"p{i:05d}")
        os.makedirs(tree)
        with open(os.path.join(tree, "own"), "wb") as out:
            out.write(contents(POOL + i, 64))
        with open(os.path.join(tree, "shared"), "wb") as out:
            out.write(contents(i % 7, 64))
        trees.append(tree)
    return trees


def fresh_copy(base, target):
    if os.path.exists(target):
        check(["rm", "-rf", target])
    check(["cp", "-a", base, target])
    check(["sync"])


def timed(cmd):
    start = time.perf_counter()
    proc = check(cmd)
    elapsed = time.perf_counter() - start
    summary = [l for l in proc.stderr.decode().splitlines() if "freed by hard-linking" in l]
    if len(summary) != 1:
        sys.exit(f"no summary line from {' '.join(cmd)}:\n{proc.stderr.decode()}")
    return elapsed, summary[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--shape", choices=("default", "small"), default="default")
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    if not shutil.which("nix-store"):
        sys.exit("nix-store is required")
    work = os.path.join(args.work, "optimise")
    shutil.rmtree(work, ignore_errors=True)
    make = make_small_trees if args.shape == "small" else make_trees
    trees = make(os.path.join(work, "src"), args.paths)
    files = args.paths * (2 if args.shape == "small" else 8)
    base = os.path.join(work, "base")
    for start in range(0, len(trees), 500):
        check(["nix-store", "--store", f"local?root={base}", "--add"] + trees[start:start + 500])
    nix_root, arca_root = os.path.join(work, "nix"), os.path.join(work, "arca")
    nix = ["nix-store", "--store", f"local?root={nix_root}", "--optimise"]
    ours = [arca, "--store", arca_root, "store", "optimise"]

    times = {key: [] for key in ("nix", "arca", "nix again", "arca again")}
    summaries = set()
    for _ in range(args.runs):
        fresh_copy(base, nix_root)
        elapsed, nix_summary = timed(nix)
        times["nix"].append(elapsed)
        fresh_copy(base, arca_root)
        elapsed, arca_summary = timed(ours)
        times["arca"].append(elapsed)
        if nix_summary != arca_summary:
            sys.exit(f"the tools disagree:\n  nix:  {nix_summary}\n  arca: {arca_summary}")
        summaries.add(nix_summary)
        times["nix again"].append(timed(nix)[0])
        times["arca again"].append(timed(ours)[0])

    print(f"store: {args.paths} paths, {files} files; both print: {' / '.join(sorted(summaries))}")
    print(f"{'row':<34} {'nix-store --optimise':>21} {'arca store optimise':>20} {'nix/arca':>9}")
    for label, key in (("first optimise", ""), ("again (nothing left to link)", " again")):
        n, a = statistics.median(times["nix" + key]), statistics.median(times["arca" + key])
        print(f"{label:<34} {n * 1000:18.1f} ms {a * 1000:17.1f} ms {n / a:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
