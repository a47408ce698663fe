#!/usr/bin/env python3
"""Writes a synthetic Nix export archive of N small paths to stdout: path i holds one
regular file and refers to up to 3 earlier paths (a DAG with long chains), so importing it
exercises registration with references. Paths are text-hashed like builtins.toFile, so
they are valid store paths (their names/hashes are made with Nix's algorithm).

Usage: gen_export.py N > archive
"""
import hashlib
import struct
import sys

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


def base32(data):
    out = []
    for k in range((len(data) * 8 + 4) // 5 - 1, -1, -1):
        b = k * 5
        i, j = b // 8, b % 8
        c = (data[i] >> j) | ((data[i + 1] << (8 - j)) if i + 1 < len(data) else 0)
        out.append(ALPHABET[c & 31])
    return "".join(out)


def store_path(name, contents, refs):
    inner = hashlib.sha256(contents).hexdigest()
    typ = "text" + "".join(":" + r for r in sorted(refs))
    fingerprint = f"{typ}:sha256:{inner}:/nix/store:{name}".encode()
    digest = hashlib.sha256(fingerprint).digest()
    folded = bytearray(20)
    for i, b in enumerate(digest):
        folded[i % 20] ^= b
    return f"/nix/store/{base32(bytes(folded))}-{name}"


def string(data):
    if isinstance(data, str):
        data = data.encode()
    pad = (8 - len(data) % 8) % 8
    return struct.pack("<Q", len(data)) + data + b"\0" * pad


def nar_of_file(contents):
    return b"".join(string(t) for t in (b"nix-archive-1", b"(", b"type", b"regular", b"contents")) \
        + string(contents) + string(b")")


def main():
    n = int(sys.argv[1])
    out = sys.stdout.buffer
    paths = []
    for i in range(n):
        refs = sorted({paths[i - d] for d in (1, 7, 100) if i - d >= 0})
        contents = (f"path {i}\n" + "".join(r + "\n" for r in refs)).encode()
        path = store_path(f"bench-{i}", contents, refs)
        paths.append(path)
        out.write(struct.pack("<Q", 1))
        out.write(nar_of_file(contents))
        out.write(struct.pack("<Q", 0x4558494E))
        out.write(string(path))
        out.write(struct.pack("<Q", len(refs)))
        for r in refs:
            out.write(string(r))
        out.write(string(b""))
        out.write(struct.pack("<Q", 0))
    out.write(struct.pack("<Q", 0))


if __name__ == "__main__":
    main()
