#!/usr/bin/env python3
"""Side-by-side benchmark: Arca against real Nix (and the physical limits) on the same
deterministically generated inputs. Prints one table row per (input, operation) with
median wall time per tool, the ratio to the reference, and peak RSS.

Usage: bench/compare.py --arca PATH [--work DIR] [--runs N] [--big-mib N] [--files N]
(bench/compare.sh builds arca in release mode and sets up a journaled scratch fs.)

Runs are interleaved (A B C A B C ...) so that drift on a shared machine hits every tool
alike; compare ratios within one run, not absolute times across runs.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def generate_big_file(path, mib):
    """A file of `mib` MiB whose content is a fixed pseudo-random stream (not all zeros,
    so no file system or hash shortcut applies)."""
    if os.path.exists(path) and os.path.getsize(path) == mib << 20:
        return
    block = bytearray(1 << 20)
    state = 0x2545F4914F6CDD1D
    for i in range(0, len(block), 8):
        state ^= (state << 13) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 7
        state ^= (state << 17) & 0xFFFFFFFFFFFFFFFF
        block[i:i + 8] = state.to_bytes(8, "little")
    with open(path + ".tmp", "wb") as out:
        for i in range(mib):
            block[0:8] = i.to_bytes(8, "little")  # every MiB differs
            out.write(block)
    os.rename(path + ".tmp", path)


def generate_tree(root, files):
    """`files` small files (0..4 KiB, some executable, some symlinks) in a tree of
    directories 3 levels deep, 20 entries per directory at the leaves."""
    stamp = os.path.join(root, f".complete-{files}")
    if os.path.exists(stamp):
        return os.path.join(root, "tree")
    if os.path.exists(root):
        shutil.rmtree(root)
    top = os.path.join(root, "tree")
    for i in range(files):
        d = os.path.join(top, f"d{i // 4000}", f"e{(i // 200) % 20}", f"f{(i // 20) % 10}")
        os.makedirs(d, exist_ok=True)
        name = os.path.join(d, f"file-{i}")
        if i % 50 == 7:
            os.symlink(f"file-{i - 1}", name)
            continue
        size = (i * 2654435761) % 4096
        with open(name, "wb") as out:
            out.write(((b"%d " % i) * (size // 2 + 1))[:size])
        if i % 10 == 3:
            os.chmod(name, 0o755)
    open(stamp, "w").close()
    return top


RSS_FILE = "/tmp/arca-bench-rss"


def run(cmd, stdin=None, stdout=subprocess.DEVNULL):
    """Runs cmd; returns (seconds, peak RSS in KiB of the command).

    The RSS comes from GNU time (a tiny process), because a child forked straight from
    Python reports Python's own pages in ru_maxrss."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", RSS_FILE] + cmd,
                          stdin=stdin, stdout=stdout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {cmd}")
    with open(RSS_FILE) as f:
        return elapsed, int(f.read().split()[-1])


def measure(rows, label, tools, runs, prepare=None):
    """tools: list of (name, fn returning (secs, rss)). The first tool is the reference."""
    times = {name: [] for name, _ in tools}
    rss = {name: 0 for name, _ in tools}
    for _ in range(runs):
        for name, fn in tools:
            if prepare:
                prepare()
            secs, kib = fn()
            times[name].append(secs)
            rss[name] = max(rss[name], kib)
    ref = statistics.median(times[tools[0][0]])
    for name, _ in tools:
        med = statistics.median(times[name])
        rows.append((label, name, med, med / ref if ref else float("nan"), rss[name] / 1024))
        print(f"  {label:<28} {name:<28} {med:8.3f}s  x{med / ref:5.2f}  {rss[name] / 1024:7.1f} MiB",
              flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=50000)
    parser.add_argument("--import-paths", type=int, default=20000)
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    os.makedirs(args.work, exist_ok=True)
    for tool in ("nix-store", "nix-hash", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required for the side-by-side benchmark")

    big = os.path.join(args.work, "big.bin")
    print(f"generating {args.big_mib} MiB file and {args.files}-file tree in {args.work}", flush=True)
    generate_big_file(big, args.big_mib)
    tree = generate_tree(os.path.join(args.work, "small"), args.files)
    big_nar = os.path.join(args.work, "big.nar")
    tree_nar = os.path.join(args.work, "tree.nar")
    with open(big_nar, "wb") as out:
        run([arca, "nar", "dump-path", big], stdout=out)
    with open(tree_nar, "wb") as out:
        run([arca, "nar", "dump-path", tree], stdout=out)
    # Warm the page cache for every input.
    for _ in range(2):
        run(["cat", big, big_nar, tree_nar])
        run([arca, "nar", "dump-path", tree])

    rows = []
    out = os.path.join(args.work, "restored")

    def clean():
        if os.path.lexists(out):
            subprocess.run(["rm", "-rf", out], check=True)

    def restore_with(cmd, nar):
        def fn():
            with open(nar, "rb") as f:
                return run(cmd + [out], stdin=f)
        return fn

    print("(times are medians; xN is the ratio to the first row of the group)")
    big_label = f"{args.big_mib} MiB file" if args.big_mib < 1024 else f"{args.big_mib // 1024} GiB file"
    for label, path, nar in ((big_label, big, big_nar), (f"{args.files}-file tree", tree, tree_nar)):
        ref = []
        if path == big:
            ref = [("cat FILE (limit)", lambda: run(["cat", big]))]
        measure(rows, f"dump {label}", ref + [
            ("nix-store --dump", lambda p=path: run(["nix-store", "--dump", p])),
            ("arca nar dump-path", lambda p=path: run([arca, "nar", "dump-path", p])),
        ], args.runs)
        ref = []
        if path == big:
            ref = [("openssl dgst -sha256", lambda: run(["openssl", "dgst", "-sha256", big]))]
        measure(rows, f"hash {label}", ref + [
            ("nix-hash --type sha256", lambda p=path: run(["nix-hash", "--type", "sha256", p])),
            ("arca hash path", lambda p=path: run([arca, "hash", "path", p])),
        ], args.runs)
        measure(rows, f"restore {label}", [
            ("nix-store --restore", restore_with(["nix-store", "--restore"], nar)),
            ("arca nar restore", restore_with([arca, "nar", "restore"], nar)),
        ], args.runs, prepare=clean)
    clean()

    # The local store: adding the tree to an empty store, then adding it again when it is
    # already valid (Nix copies it again; Arca only hashes it).
    nix_root = os.path.join(args.work, "nix-root")
    arca_root = os.path.join(args.work, "arca-root")
    nix_env = dict(os.environ, NIX_CONFIG="substituters =")

    def fresh_stores():
        for root in (nix_root, arca_root):
            if os.path.lexists(root):
                subprocess.run(["chmod", "-R", "u+w", root], check=True)
                subprocess.run(["rm", "-rf", root], check=True)

    def nix_add():
        start = time.perf_counter()
        subprocess.run(["nix-store", "--store", f"local?root={nix_root}", "--add", tree],
                       stdout=subprocess.DEVNULL, env=nix_env, check=True)
        return time.perf_counter() - start, 0

    measure(rows, f"add-path {args.files}-file tree", [
        ("nix-store --add", nix_add),
        ("arca store add-path", lambda: run([arca, "--store", arca_root, "store", "add-path", tree])),
    ], args.runs, prepare=fresh_stores)
    fresh_stores()
    nix_add()
    run([arca, "--store", arca_root, "store", "add-path", tree])
    measure(rows, f"re-add valid {args.files}-file tree", [
        ("nix-store --add", nix_add),
        ("arca store add-path", lambda: run([arca, "--store", arca_root, "store", "add-path", tree])),
    ], args.runs)
    fresh_stores()

    # Importing an export of many small paths with references (bench/gen_export.py).
    export = os.path.join(args.work, f"export-{args.import_paths}")
    if not os.path.exists(export):
        with open(export + ".tmp", "wb") as out:
            subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "gen_export.py"),
                            str(args.import_paths)], stdout=out, check=True)
        os.rename(export + ".tmp", export)

    def import_with(cmd):
        def fn():
            with open(export, "rb") as f:
                return run(cmd, stdin=f)
        return fn

    measure(rows, f"import {args.import_paths}-path export", [
        ("nix-store --import", import_with(["env", "NIX_CONFIG=substituters =", "nix-store",
                                            "--store", f"local?root={nix_root}", "--import"])),
        ("arca store import", import_with([arca, "--store", arca_root, "store", "import"])),
    ], args.runs, prepare=fresh_stores)

    # Queries and verification on the imported stores (both hold the same paths now).
    run(["env", "NIX_CONFIG=substituters =", "nix-store", "--store", f"local?root={nix_root}",
         "--import"], stdin=open(export, "rb"))
    run([arca, "--store", arca_root, "store", "import"], stdin=open(export, "rb"))
    closure_root = subprocess.run(
        [arca, "--store", arca_root, "store", "import"], stdin=open(export, "rb"),
        capture_output=True, check=True).stdout.decode().splitlines()[min(4999, args.import_paths - 1)]
    nix_q = ["env", "NIX_CONFIG=substituters =", "nix-store", "--store", f"local?root={nix_root}"]
    measure(rows, "requisites (5,000-path closure)", [
        ("nix-store -q --requisites", lambda: run(nix_q + ["-q", "--requisites", closure_root])),
        ("arca store query --requisites",
         lambda: run([arca, "--store", arca_root, "store", "query", "--requisites", closure_root])),
    ], args.runs)
    measure(rows, f"verify {args.import_paths}-path store", [
        ("nix-store --verify", lambda: run(nix_q + ["--verify"], stdout=subprocess.DEVNULL)),
        ("arca store verify", lambda: run([arca, "--store", arca_root, "store", "verify"])),
    ], args.runs)
    measure(rows, f"verify --check-contents {args.import_paths}-path store", [
        ("nix-store --verify --check-contents",
         lambda: run(nix_q + ["--verify", "--check-contents"])),
        ("arca store verify --check-contents",
         lambda: run([arca, "--store", arca_root, "store", "verify", "--check-contents"])),
    ], args.runs)
    fresh_stores()

    print()
    print("| operation | tool | median | ratio | peak RSS |")
    print("|---|---|---|---|---|")
    for label, name, med, ratio, mib in rows:
        print(f"| {label} | {name} | {med:.3f} s | {ratio:.2f} | {mib:.1f} MiB |")


if __name__ == "__main__":
    main()
