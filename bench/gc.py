#!/usr/bin/env python3
"""Side-by-side garbage collection: `nix-store --gc` vs `arca store gc`.

Rows:
- collecting DEAD dead paths among LIVE + DEAD (the live ones kept by roots: regular-file
  roots and symlinks in gcroots), on identical fresh copies of one store each run (the
  copies are not timed, and are synced to disk before the clock starts), beside the
  physical limit: `rm -rf` of exactly the dead paths;
- finding roots: `--print-roots` with FILE_ROOTS regular-file roots and SYMLINK_ROOTS
  symlink roots (Nix always looks in /proc too; Arca is timed with and without).

The store is made once by real Nix (`nix-store --import` of a generated export): each path
is a small directory (a data file naming its references, an executable in bin/), or with
`--shape file` a single file, in chains of ten, some chains linked to the one a hundred
paths below. Arca gets a copy it has opened once (what its first open of a Nix store does
is not timed). Runs interleave the tools (limit, Nix, Arca, limit, ...). Prints a
markdown table of medians and Nix/tool ratios, and checks that all delete the same paths
and list the same roots.
"""
import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_export import base32, string  # noqa: E402

NIX_ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command")
STORE = "/nix/store"
MAGIC = 0x4558494E


def u64(n):
    return n.to_bytes(8, "little")


def nar_regular(contents, executable=False):
    out = string(b"(") + string(b"type") + string(b"regular")
    if executable:
        out += string(b"executable") + string(b"")
    return out + string(b"contents") + string(contents) + string(b")")


def nar_directory(entries):
    """entries: sorted (name, node NAR bytes) pairs."""
    out = string(b"(") + string(b"type") + string(b"directory")
    for name, node in entries:
        out += string(b"entry") + string(b"(") + string(b"name") + string(name) \
            + string(b"node") + node + string(b")")
    return out + string(b")")


def source_path(name, nar, refs):
    """The store path `nix-store --add` gives a tree with this NAR and references."""
    kind = "source" + "".join(":" + r for r in sorted(refs))
    fingerprint = f"{kind}:sha256:{hashlib.sha256(nar).hexdigest()}:{STORE}:{name}".encode()
    digest = hashlib.sha256(fingerprint).digest()
    folded = bytearray(20)
    for i, b in enumerate(digest):
        folded[i % 20] ^= b
    return f"{STORE}/{base32(bytes(folded))}-{name}"


def references(i, half):
    """Chains of ten within each half; every tenth chain linked a hundred paths below."""
    refs = []
    if i % 10 != 0:
        refs.append(i - 1)
    if i % 10 == 5 and i - 100 >= half * (i // half):
        refs.append(i - 100)
    return refs


def write_export(path, count, half, shape):
    """Writes the export archive; returns the store paths, by index. `shape` "dir": each
    path a directory (data file, bin/tool); "file": each path one regular file."""
    paths = []
    with open(path, "wb") as out:
        for i in range(count):
            refs = [paths[r] for r in references(i, half)]
            data = (f"gc-bench {i}\n" + "".join(r + "\n" for r in refs)).encode()
            tool = (b"#!/bin/sh\necho tool %d\n" % i) * 8
            if shape == "file":
                nar = string(b"nix-archive-1") + nar_regular(data + tool)
            else:
                nar = string(b"nix-archive-1") + nar_directory([
                    (b"bin", nar_directory([(b"tool", nar_regular(tool, True))])),
                    (b"data", nar_regular(data)),
                ])
            store_path = source_path(f"gc-bench-{i}", nar, refs)
            paths.append(store_path)
            out.write(u64(1) + nar + u64(MAGIC) + string(store_path) + u64(len(refs)))
            for r in sorted(refs):
                out.write(string(r))
            out.write(string(b"") + u64(0))
        out.write(u64(0))
    return paths


def check(cmd, **kw):
    proc = subprocess.run(cmd, env=NIX_ENV, capture_output=True, **kw)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-2000:]
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr}")
    return proc.stdout


def timed(cmd):
    start = time.perf_counter()
    out = check(cmd)
    return time.perf_counter() - start, out.decode()


def copy(src, dst):
    check(["cp", "-a", src, dst])


def remove(path):
    if os.path.exists(path):
        subprocess.run(["chmod", "-R", "u+w", path], check=True)
        shutil.rmtree(path)


def store_entries(root):
    return sorted(e for e in os.listdir(os.path.join(root, "nix/store"))
                  if e != ".links" and not e.startswith(".arca-"))


def deleted_count(summary):
    match = re.search(r"^(\d+) store paths deleted", summary, re.M)
    if not match:
        sys.exit(f"no summary in: {summary!r}")
    return int(match.group(1))


def persistent_roots(output):
    return sorted(line for line in output.splitlines() if not line.startswith("/proc/"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--live", type=int, default=10000)
    parser.add_argument("--dead", type=int, default=10000)
    parser.add_argument("--file-roots", type=int, default=100000)
    parser.add_argument("--symlink-roots", type=int, default=1000)
    parser.add_argument("--shape", choices=["dir", "file"], default="dir",
                        help="each path a small directory (default) or a single file")
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    if not shutil.which("nix-store"):
        sys.exit("nix-bin is required")
    if args.live % 10 or args.dead % 10 or args.live != args.dead:
        sys.exit("--live and --dead must be equal multiples of 10")
    work = os.path.join(args.work, "gc")
    remove(work)
    os.makedirs(work)

    # The store, made once by Nix.
    count = args.live + args.dead
    archive = os.path.join(work, "archive")
    paths = write_export(archive, count, args.live, args.shape)
    base = os.path.join(work, "base")
    with open(archive, "rb") as f:
        check(["nix-store", "--store", f"local?root={base}", "--import"], stdin=f)
    # Roots on the top of every live chain: regular files, one in ten a symlink instead.
    gcroots = os.path.join(base, "nix/var/nix/gcroots/bench")
    os.makedirs(gcroots)
    for top in range(9, args.live, 10):
        name = os.path.basename(paths[top])
        if top % 100 == 9:
            os.symlink(paths[top], os.path.join(gcroots, f"link-{top}"))
        else:
            open(os.path.join(gcroots, name), "w").close()
    base_arca = os.path.join(work, "base-arca")
    copy(base, base_arca)
    check([arca, "--store", base_arca, "store", "verify"])

    print("| operation | tool | median | Nix/tool |")
    print("|---|---|---|---|")
    gc_label = f"gc: {args.dead} dead of {count} paths ({args.shape}s)"
    dead = paths[args.live:]
    # One copy at a time (the benchmark file system has few inodes to spare). The first row
    # is the physical limit: removing the dead paths' files and nothing else.
    commands = {
        "rm -rf the dead paths (limit)":
            (base, lambda root: ["sh", "-c", 'cd "$0/nix/store" && exec rm -rf "$@"', root]
             + [os.path.basename(p) for p in dead]),
        "nix-store --gc": (base, lambda root: ["nix-store", "--store", f"local?root={root}", "--gc"]),
        "arca store gc": (base_arca, lambda root: [arca, "--store", root, "store", "gc"]),
    }
    times = {name: [] for name in commands}
    for run in range(args.runs):
        left = {}
        for name, (source, command) in commands.items():
            root = os.path.join(work, "run")
            copy(source, root)
            if os.getuid() != 0:
                subprocess.run(["chmod", "-R", "u+w", os.path.join(root, "nix/store")], check=True)
            subprocess.run(["sync"], check=True)
            seconds, out = timed(command(root))
            times[name].append(seconds)
            if "limit" not in name and deleted_count(out) != args.dead:
                sys.exit(f"{name} deleted {deleted_count(out)} paths, expected {args.dead}")
            left[name] = store_entries(root)
            remove(root)
        if len(set(map(tuple, left.values()))) != 1:
            sys.exit("the tools left different paths")
    report(gc_label, times, "nix-store --gc")

    # Roots: FILE_ROOTS regular files named after valid paths (spread over directories,
    # a name once per directory) and SYMLINK_ROOTS symlinks.
    roots_root = os.path.join(work, "roots")
    remove(base)
    os.rename(base_arca, roots_root)
    farm = os.path.join(roots_root, "nix/var/nix/gcroots/farm")
    for k in range(args.file_roots):
        directory = os.path.join(farm, f"d{k // count}")
        if k % count == 0:
            os.makedirs(directory)
        open(os.path.join(directory, os.path.basename(paths[k % count])), "w").close()
    links = os.path.join(roots_root, "nix/var/nix/gcroots/links")
    os.makedirs(links)
    for k in range(args.symlink_roots):
        os.symlink(paths[(k * 7) % count], os.path.join(links, f"l{k}"))
    roots_label = f"print-roots: {args.file_roots} file + {args.symlink_roots} symlink roots"
    commands = {
        "nix": ["nix-store", "--store", f"local?root={roots_root}", "--gc", "--print-roots"],
        "arca": [arca, "--store", roots_root, "store", "gc", "--print-roots", "--no-runtime-roots"],
        "arca+proc": [arca, "--store", roots_root, "store", "gc", "--print-roots"],
    }
    times = {name: [] for name in commands}
    outputs = {}
    for run in range(args.runs):
        for name, cmd in commands.items():
            seconds, out = timed(cmd)
            times[name].append(seconds)
            outputs[name] = out
    expected = args.file_roots + args.symlink_roots + args.live // 10
    listed = {name: persistent_roots(out) for name, out in outputs.items()}
    if len(listed["nix"]) != expected or any(v != listed["nix"] for v in listed.values()):
        sys.exit(f"--print-roots differ: {({k: len(v) for k, v in listed.items()})} lines, "
                 f"expected {expected}")
    names = {"nix": "nix-store --gc --print-roots (reads /proc)",
             "arca": "arca store gc --print-roots --no-runtime-roots",
             "arca+proc": "arca store gc --print-roots (reads /proc)"}
    report(roots_label, {names[k]: v for k, v in times.items()}, names["nix"])
    remove(work)


def report(label, times, reference):
    ref = statistics.median(times[reference])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {label} | {name} | {median:.3f} s | {ref / median:.2f} |", flush=True)


if __name__ == "__main__":
    main()
