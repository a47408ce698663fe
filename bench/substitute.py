#!/usr/bin/env python3
"""Side-by-side substitution (issue #16): real Nix 2.8 (`nix-store -r PATH --option
substituters URL`) and Arca (`arca copy --from URL PATH`) pull the same closure from the
same binary cache into an empty store.

The closure: N paths (default 500) with sizes spread log-uniformly from 1 KiB to 10 MiB
(seeded; compressible text), content-addressed as `builtins.toFile` makes them and
signed. `--shape chain` (default): each refers to up to 3 earlier ones (i-1, i-7,
i-100), one chain through all of them, so no path can be added before the previous one
(the worst case for any substituter); `--shape dag`: each refers to up to 3 random
earlier ones and the last to all (a wide graph, as real closures are). It is imported into an Arca
store, pushed once with `arca copy --to file://CACHE?compression=C&secret-key=…`, and
served over HTTP by `arca cache serve --sign-key …` on the same store.

Rows: the file:// cache, and HTTP from `arca cache serve` (uncompressed NARs). Runs
interleave the tools (Nix, Arca, Nix, Arca, ...), each into a new empty store; prints
medians and Nix/Arca ratios, and checks both stores end up with the whole closure.
With --baseline BIN, an older arca is timed in the same runs too, and the ratio
baseline/arca says whether a change made substitution slower (< 1).
"""
import argparse
import hashlib
import os
import random
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from gen_export import nar_of_file, store_path, string  # noqa: E402

NIX_ENV = dict(os.environ, NIX_CONFIG="substituters =\nexperimental-features = nix-command")


def check(cmd, **kw):
    proc = subprocess.run(cmd, env=NIX_ENV, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    return proc


def export(n, seed, shape):
    """An export archive of the closure, and its top path (which refers to every path
    of the closure, directly or not)."""
    rng = random.Random(seed)
    out = []
    paths = []
    total = 0
    for i in range(n):
        size = int(1024 * (10240 ** rng.random()))
        if shape == "chain" or i == n - 1:
            refs = sorted({paths[i - d] for d in (1, 7, 100) if i - d >= 0})
        else:
            refs = sorted({rng.choice(paths) for _ in range(3)} if paths else set())
        if i == n - 1 and shape == "dag":
            refs = sorted(set(paths))
        head = (f"path {i}\n" + "".join(r + "\n" for r in refs)).encode()
        line = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest().encode() + b" lorem ipsum\n"
        contents = head + (line * (size // len(line) + 1))[: max(0, size - len(head))]
        total += len(contents)
        path = store_path(f"sub-{i}", contents, refs)
        paths.append(path)
        out.append(struct.pack("<Q", 1))
        out.append(nar_of_file(contents))
        out.append(struct.pack("<Q", 0x4558494E))
        out.append(string(path))
        out.append(struct.pack("<Q", len(refs)))
        for r in refs:
            out.append(string(r))
        out.append(string(b""))
        out.append(struct.pack("<Q", 0))
    out.append(struct.pack("<Q", 0))
    return b"".join(out), paths[-1], total


def timed(cmd):
    start = time.perf_counter()
    check(cmd)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--paths", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--shape", choices=["chain", "dag"], default="chain")
    parser.add_argument("--baseline", help="an older arca binary to time beside --arca")
    args = parser.parse_args()
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    tools = ("nix", "arca", "baseline") if baseline else ("nix", "arca")
    arca = os.path.abspath(args.arca)
    work = os.path.join(args.work, "substitute")
    check(["rm", "-rf", work])
    os.makedirs(work)

    archive, top, total = export(args.paths, 16, args.shape)
    source = os.path.join(work, "source")
    check([arca, "--store", source, "store", "import"], input=archive)
    secret = check([arca, "key", "generate-secret", "--key-name", "bench-1"]).stdout
    sk = os.path.join(work, "sk")
    with open(sk, "wb") as f:
        f.write(secret)
    pk = check([arca, "key", "convert-secret-to-public"], input=secret).stdout.decode()
    cache = os.path.join(work, "cache")
    check([arca, "--store", source, "copy", "--to",
           f"file://{cache}?compression={args.compression}&secret-key={sk}", top])
    server = subprocess.Popen([arca, "--store", source, "cache", "serve", "--listen",
                               "127.0.0.1:0", "--sign-key", sk], stderr=subprocess.PIPE)
    http = server.stderr.readline().decode().strip().rsplit(" ", 1)[-1]

    rows = [(f"file:// ({args.compression})", f"file://{cache}"), ("http:// (arca cache serve)", http)]
    times = {}
    try:
        for run in range(args.runs):
            for label, url in rows:
                for tool in tools:
                    root = os.path.join(work, f"{tool}-store")
                    check(["rm", "-rf", root])
                    check(["sync"])
                    if tool == "nix":
                        cmd = ["nix-store", "--store", f"local?root={root}", "-r", top,
                               "--option", "substituters", url,
                               "--option", "trusted-public-keys", pk]
                    else:
                        binary = baseline if tool == "baseline" else arca
                        cmd = [binary, "--store", root, "--option", "trusted-public-keys", pk,
                               "copy", "--from", url, top]
                    times.setdefault((label, tool), []).append(timed(cmd))
                    count = check(["find", os.path.join(root, "nix/store"), "-maxdepth", "1",
                                   "-name", "*-sub-*"]).stdout.count(b"\n")
                    if count != args.paths:
                        sys.exit(f"{tool} from {label}: {count} paths, not {args.paths}")
    finally:
        server.kill()
    print(f"closure: {args.paths} paths ({args.shape}), {total / 2**20:.0f} MiB of NAR contents")
    print(f"{'row':<30} {'nix-store -r':>14} {'arca copy --from':>17} {'nix/arca':>9}"
          + (f" {'baseline':>10} {'base/arca':>10}" if baseline else ""))
    for label, _ in rows:
        n = statistics.median(times[(label, "nix")])
        a = statistics.median(times[(label, "arca")])
        line = f"{label:<30} {n:12.2f} s {a:15.2f} s {n / a:8.2f}x"
        if baseline:
            b = statistics.median(times[(label, "baseline")])
            line += f" {b:8.2f} s {b / a:9.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
