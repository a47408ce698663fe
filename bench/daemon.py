#!/usr/bin/env python3
"""Side-by-side daemon benchmark: the same Nix 2.8 client (and a raw protocol client)
against `arca daemon` and a private `nix-daemon`, each on its own store root holding the
same content (a generated 5,000-path export, see gen_export.py, imported into both).

Rows:
- round-trip latency of IsValidPath and QueryPathInfo: a raw client doing N requests on
  one connection (median per request), and `nix-store -q --hash` of one path (a whole
  client process: connect, handshake, SetOptions, QueryPathInfo);
- throughput of adding many small paths: one `nix-store --add` of 1,000 files (fresh
  contents every run, so each run really adds);
- a closure query: `nix-store -qR` of the top of the 5,000-path closure through each
  daemon, and directly (`nix-store --store local?root=`, `arca store query --requisites`).

Runs interleave the tools (Nix, Arca, Nix, Arca, ...). Prints medians and Nix/Arca ratios.

Usage: bench/daemon.py --arca PATH [--work DIR] [--runs N] [--requests N] [--adds N]
(bench/daemon.sh builds arca in release mode and sets up the journaled scratch fs.)
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

NIX_CONFIG = "substituters =\nexperimental-features = nix-command"
NIX_ENV = dict(os.environ, NIX_CONFIG=NIX_CONFIG)
HERE = os.path.dirname(os.path.abspath(__file__))

WORKER_MAGIC_1 = 0x6E697863
WORKER_MAGIC_2 = 0x6478696F
STDERR_LAST = 0x616C7473
STDERR_ERROR = 0x63787470
STDERR_NEXT = 0x6F6C6D67
OP_IS_VALID_PATH = 1
OP_QUERY_PATH_INFO = 26


class RawClient:
    """A minimal client of Nix's worker protocol (1.34, what Nix 2.8 speaks)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.version = 0

    def send(self, *words):
        self.sock.sendall(b"".join(w if isinstance(w, bytes) else struct.pack("<Q", w) for w in words))

    @staticmethod
    def string(data):
        if isinstance(data, str):
            data = data.encode()
        return struct.pack("<Q", len(data)) + data + b"\0" * ((8 - len(data) % 8) % 8)

    def read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def u64(self):
        return struct.unpack("<Q", self.read_exact(8))[0]

    def bytes(self):
        n = self.u64()
        data = self.read_exact(n)
        self.read_exact((8 - n % 8) % 8)
        return data

    def strings(self):
        return [self.bytes() for _ in range(self.u64())]

    def result(self):
        while True:
            code = self.u64()
            if code == STDERR_LAST:
                return
            if code == STDERR_NEXT:
                self.bytes()
                continue
            if code == STDERR_ERROR and self.version & 0xFF < 26:
                message = self.bytes()
                self.u64()  # exit status
                raise RuntimeError(message.decode(errors="replace"))
            if code == STDERR_ERROR:
                self.bytes(), self.u64(), self.bytes()
                message = self.bytes()
                self.u64()
                for _ in range(self.u64()):
                    self.u64(), self.bytes()
                raise RuntimeError(message.decode(errors="replace"))
            raise RuntimeError(f"unexpected log message {code:#x}")

    def handshake(self, version=(1 << 8) | 34):
        self.send(WORKER_MAGIC_1, version, 0, 0)
        assert self.u64() == WORKER_MAGIC_2
        self.version = min(version, self.u64())
        if self.version & 0xFF >= 33:
            self.bytes()
        if self.version & 0xFF >= 35:
            self.u64()
        self.result()

    def is_valid_path(self, path):
        self.send(OP_IS_VALID_PATH, self.string(path))
        self.result()
        return self.u64() == 1

    def query_path_info(self, path):
        self.send(OP_QUERY_PATH_INFO, self.string(path))
        self.result()
        if not self.u64():
            return None
        info = dict(deriver=self.bytes(), nar_hash=self.bytes(), references=self.strings(),
                    registration_time=self.u64(), nar_size=self.u64())
        info.update(ultimate=self.u64(), sigs=self.strings(), ca=self.bytes())
        return info


def check(cmd, **kw):
    proc = subprocess.run(cmd, env=NIX_ENV, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()}")
    return proc.stdout


def timed(cmd, **kw):
    start = time.perf_counter()
    check(cmd, **kw)
    return time.perf_counter() - start


def wait_for_socket(path, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening")
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.01)
    sys.exit(f"{what} does not listen on {path}")


def raw_latency(sock, op, path, requests):
    """Median seconds per request of `requests` requests on one connection."""
    client = RawClient(sock)
    client.handshake()
    call = client.is_valid_path if op == "valid" else client.query_path_info
    assert call(path), f"{path} is not valid through {sock}"
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call(path)
        times.append(time.perf_counter() - start)
    client.sock.close()
    return statistics.median(times)


def write_small_files(directory, count, salt):
    os.makedirs(directory)
    names = []
    for i in range(count):
        name = os.path.join(directory, f"small-{i}")
        with open(name, "w") as f:
            f.write(f"{salt} small file {i}\n" * (1 + i % 7))
        names.append(name)
    return names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arca", required=True)
    parser.add_argument("--work", default="/tmp/arca-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--adds", type=int, default=1000)
    parser.add_argument("--closure", type=int, default=5000)
    args = parser.parse_args()
    arca = os.path.abspath(args.arca)
    if not shutil.which("nix-store") or not shutil.which("nix-daemon"):
        sys.exit("nix-bin is required")
    work = os.path.join(args.work, "daemon")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    roots = {"nix": os.path.join(work, "nix-root"), "arca": os.path.join(work, "arca-root")}
    socks = {"nix": os.path.join(work, "nix.sock"), "arca": os.path.join(work, "arca.sock")}
    uris = {tool: f"unix://{socks[tool]}?root={roots[tool]}" for tool in roots}

    # The same content in both stores, imported directly (not through the daemons).
    export = os.path.join(work, "closure.export")
    with open(export, "wb") as f:
        subprocess.run([sys.executable, os.path.join(HERE, "gen_export.py"), str(args.closure)],
                       stdout=f, check=True)
    with open(export, "rb") as f:
        nix_paths = check(["nix-store", "--store", f"local?root={roots['nix']}", "--import"],
                          stdin=f).decode().split()
    with open(export, "rb") as f:
        arca_paths = check([arca, "--store", roots["arca"], "store", "import"], stdin=f).decode().split()
    assert nix_paths == arca_paths, "both stores import the same paths"
    top, probe = nix_paths[-1], nix_paths[len(nix_paths) // 2]

    daemons = {
        "nix": subprocess.Popen(["nix-daemon", "--store", f"local?root={roots['nix']}"],
                                env=dict(NIX_ENV, NIX_DAEMON_SOCKET_PATH=socks["nix"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "arca": subprocess.Popen([arca, "--store", roots["arca"], "daemon", "--socket", socks["arca"]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    try:
        for tool, proc in daemons.items():
            wait_for_socket(socks[tool], proc, f"{tool} daemon")
        rows = []  # (label, unit, {tool: [samples]})

        def row(label, unit):
            samples = {"nix": [], "arca": []}
            rows.append((label, unit, samples))
            return samples

        valid = row(f"IsValidPath ({args.requests} on one connection)", "us")
        info = row(f"QueryPathInfo ({args.requests} on one connection)", "us")
        hash_ = row("nix-store -q --hash (one process)", "ms")
        adds = row(f"nix-store --add of {args.adds} small files", "ms")
        closure = row(f"nix-store -qR, {args.closure}-path closure", "ms")
        direct = {"nix": [], "arca": []}
        for run in range(args.runs):
            for tool in ("nix", "arca"):
                valid[tool].append(raw_latency(socks[tool], "valid", probe, args.requests) * 1e6)
                info[tool].append(raw_latency(socks[tool], "info", probe, args.requests) * 1e6)
                hash_[tool].append(timed(["nix-store", "--store", uris[tool], "-q", "--hash", probe]) * 1e3)
                files = write_small_files(os.path.join(work, f"adds-{tool}-{run}"), args.adds, f"{tool} {run}")
                adds[tool].append(timed(["nix-store", "--store", uris[tool], "--add"] + files) * 1e3)
                closure[tool].append(timed(["nix-store", "--store", uris[tool], "-qR", top]) * 1e3)
            direct["nix"].append(timed(["nix-store", "--store", f"local?root={roots['nix']}", "-qR", top]) * 1e3)
            direct["arca"].append(timed([arca, "--store", roots["arca"], "store", "query", "--requisites", top]) * 1e3)

        print(f"{'row':<48} {'nix-daemon':>13} {'arca daemon':>13} {'nix/arca':>9}")
        for label, unit, samples in rows:
            nix, ours = statistics.median(samples["nix"]), statistics.median(samples["arca"])
            print(f"{label:<48} {nix:10.1f} {unit:<2} {ours:10.1f} {unit:<2} {nix / ours:8.2f}x")
        nix, ours = statistics.median(direct["nix"]), statistics.median(direct["arca"])
        print(f"{'nix-store -qR / arca store query -R, no daemon':<48} {nix:10.1f} ms {ours:10.1f} ms {nix / ours:8.2f}x")
        print(f"({args.runs} interleaved runs, medians; adds per second: nix-daemon "
              f"{args.adds / statistics.median(adds['nix']) * 1e3:.0f}, arca daemon "
              f"{args.adds / statistics.median(adds['arca']) * 1e3:.0f})")
    finally:
        for proc in daemons.values():
            proc.send_signal(signal.SIGTERM)
        for proc in daemons.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
