#!/usr/bin/env python3
"""Binary cache figures of issue #16 that have no Nix row to compare with:

1. narinfo lookups over HTTP: `arca copy --from http://… --dry-run` of 1,000 paths that
   `arca cache serve` has (hits), and of 1,000 it has not (misses); wall time.
2. `arca cache serve` under 64 concurrent clients (wrk, 2 threads, 10 s, 30 s timeout): narinfo
   requests per second, and NAR throughput (a 10 MiB NAR, uncompressed); wrk counts
   non-2xx answers and socket errors, which must be none. Then the spread of NAR answer
   times under the same load from 64 independent clients (`curl`, five requests per
   kept-alive connection, 10 s): on 2 cores wrk's two threads are starved by the
   server's 128 and its latencies say more about wrk than about the server.
3. One 1 GiB path pushed to and pulled from a `file://` cache (zstd): peak RSS of each
   (`/usr/bin/time -v`), and pull throughput beside `zstd -d < NAR.zst > /dev/null` on the
   same compressed NAR (the floor: decompression alone).
"""
import argparse
import os
import random
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from gen_export import base32  # noqa: E402


def check(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    return proc


def timed(cmd, **kw):
    start = time.perf_counter()
    proc = check(cmd, **kw)
    return time.perf_counter() - start, proc


def serve(arca, store):
    server = subprocess.Popen([arca, "--store", store, "cache", "serve", "--listen",
                               "127.0.0.1:0"], stderr=subprocess.PIPE)
    url = server.stderr.readline().decode().strip().rsplit(" ", 1)[-1]
    return server, url


def peak_rss(cmd):
    start = time.perf_counter()
    proc = check(["/usr/bin/time", "-v"] + cmd)
    elapsed = time.perf_counter() - start
    kib = int(re.search(rb"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kib / 1024, elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    work = os.path.join(args.work, "cache-load")
    check(["rm", "-rf", work])
    os.makedirs(work)

    # 1. Lookups.
    source = os.path.join(work, "source")
    archive = check(["python3", os.path.join(os.path.dirname(__file__), "gen_export.py"),
                     "1000"]).stdout
    paths = check([arca, "--store", source, "store", "import"], input=archive).stdout.decode().split()
    rng = random.Random(7)
    misses = [f"/nix/store/{base32(bytes(rng.randrange(256) for _ in range(20)))}-missing-{i}"
              for i in range(1000)]
    server, url = serve(arca, source)
    try:
        empty = os.path.join(work, "empty")
        for label, wanted in (("1,000 narinfo hits", paths), ("1,000 narinfo misses", misses)):
            seconds, proc = timed([arca, "--store", empty, "--option", "require-sigs", "false",
                                   "copy", "--from", url, "--dry-run"] + wanted)
            print(f"{label:<40} {seconds * 1000:8.0f} ms   ({proc.stderr.decode().strip()})",
                  flush=True)

        # 2. Serve under load.
        narinfo = f"{url}/{paths[-1][len('/nix/store/'):][:32]}.narinfo"
        out = check(["wrk", "-t", "2", "-c", "64", "-d", "10s", "--timeout", "30s",
                     "--latency", narinfo]).stdout.decode()
        print(f"{'serve: narinfo, 64 clients':<40} {wrk_summary(out)}", flush=True)
    finally:
        server.kill()
    blob = os.path.join(work, "blob")
    with open(blob, "wb") as f:
        f.write(os.urandom(1 << 20) * 10)
    big_store = os.path.join(work, "big")
    big = check([arca, "--store", big_store, "store", "add-path", blob]).stdout.decode().strip()
    server, url = serve(arca, big_store)
    try:
        text = check(["curl", "-sf", f"{url}/{big[len('/nix/store/'):][:32]}.narinfo"]).stdout
        nar_url = url + "/" + re.search(rb"URL: (\S+)", text).group(1).decode()
        out = check(["wrk", "-t", "2", "-c", "64", "-d", "10s", "--timeout", "30s",
                     "--latency", nar_url]).stdout.decode()
        print(f"{'serve: 10 MiB NAR, 64 clients':<40} {wrk_summary(out)}", flush=True)
        print(f"{'serve: 10 MiB NAR, 64 curl clients':<40} {curl_spread(nar_url)}", flush=True)
    finally:
        server.kill()

    # 3. One big path.
    huge = os.path.join(work, "huge")
    # Hex text of random bytes, each 1 MiB block its own: zstd halves it, as it does
    # typical binaries, rather than squeezing one repeated block to nothing.
    with open(huge, "wb") as f:
        for _ in range(args.big_mib):
            f.write(os.urandom(1 << 19).hex().encode())
    os.unlink(blob)
    huge_store = os.path.join(work, "huge-store")
    huge_path = check([arca, "--store", huge_store, "store", "add-path", huge]).stdout.decode().strip()
    os.unlink(huge)
    cache = os.path.join(work, "huge-cache")
    rss, seconds = peak_rss([arca, "--store", huge_store, "copy", "--to",
                             f"file://{cache}?compression=zstd", huge_path])
    print(f"{f'push {args.big_mib} MiB (zstd)':<40} {seconds:8.1f} s   peak RSS {rss:6.1f} MiB",
          flush=True)
    check(["rm", "-rf", huge_store])
    pulled = os.path.join(work, "huge-pulled")
    rss, seconds = peak_rss([arca, "--store", pulled, "--option", "require-sigs", "false",
                             "copy", "--from", f"file://{cache}", huge_path])
    nar = [os.path.join(cache, "nar", n) for n in os.listdir(os.path.join(cache, "nar"))][0]
    check(["cat", nar])  # warm the page cache like the pull had it
    floor, _ = timed(["sh", "-c", f"zstd -d -c < {nar} > /dev/null"])
    print(f"{f'pull {args.big_mib} MiB (zstd)':<40} {seconds:8.1f} s   peak RSS {rss:6.1f} MiB   "
          f"zstd -d alone {floor:.1f} s: {seconds / floor:.2f}x of it", flush=True)


def curl_spread(url, clients=64, seconds=10):
    """Answer times of `url` from `clients` curl loops for `seconds`, each curl fetching
    it five times over one kept-alive connection: percentiles, and failures."""
    import threading
    times, failures = [], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        args = ["curl", "-sf", "-w", "%{time_total}\\n"]
        for _ in range(5):
            args += ["-o", "/dev/null", url]
        while time.monotonic() < deadline:
            proc = subprocess.run(args, capture_output=True)
            with lock:
                times.extend(float(t) for t in proc.stdout.decode().split())
                if proc.returncode != 0:
                    failures.append(proc.returncode)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times.sort()
    at = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1000
    return (f"{len(times) / seconds:10.0f} req/s  p50 {at(0.5):.0f} ms  p90 {at(0.9):.0f} ms  "
            f"p99 {at(0.99):.0f} ms  max {times[-1] * 1000:.0f} ms  failed: {len(failures)}")


def wrk_summary(out):
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
    transfer = re.search(r"Transfer/sec:\s+(\S+)", out).group(1)
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: (.*)", out)
    return (f"{float(rate):10.0f} req/s  {transfer:>10}/s  p99 {p99}  non-2xx: "
            f"{errors.group(1) if errors else 0}  socket errors: {socket.group(1) if socket else 'none'}")


if __name__ == "__main__":
    main()
