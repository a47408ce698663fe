#!/usr/bin/env python3
"""Regenerate Arca's golden fixtures (tests/fixtures/) with real Nix.

Run through generate.sh, which checks for Nix, makes a temp dir and a clean Nix
environment, then calls:

    python3 generate.py --tmp TMPDIR --out tests/fixtures --oracle tests/oracle

Everything is built under TMPDIR (trees, a chroot store `local?root=TMPDIR/root` whose
logical store dir is /nix/store), written to TMPDIR/stage, checked, and only then moved
over the managed names in --out (see MANAGED). Output is deterministic: no times, sorted
JSON keys, fixed file contents and modes. Standard library only.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

NIXOPTS = ["--option", "substituters", ""]
NEWCMD = ["--extra-experimental-features", "nix-command"]
# Floating content-addressed and impure derivations can only be written and read with
# these (the other cases come out the same with or without them).
CAOPTS = ["--extra-experimental-features", "ca-derivations impure-derivations"]
ALGOS = ["md5", "sha1", "sha256", "sha512"]
STORE_DIR = "/nix/store"

# Files and directories of --out that this script owns (replaced wholesale).
MANAGED = ["trees", "drvs", "trees.json", "hashes.json", "drvs.json", ".gitattributes"]

# The big file: size and byte rule (documented in README.md; tests regenerate it).
BIG_SIZE = 2 * 1024 * 1024 + 3
BIG_RULE = "byte[i] = (i*7 + i//4096) % 251 for 0 <= i < 2097155"


def big_bytes():
    return bytes((i * 7 + (i >> 12)) % 251 for i in range(BIG_SIZE))


def det_bytes(seed, n):
    """Fixed pseudo-random bytes: sha256("arca-<seed>-<i>") for i = 0, 1, ... concatenated, cut to n."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"arca-{seed}-{i}".encode()).digest()
        i += 1
    return out[:n]


ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


class NixError(Exception):
    pass


class Nix:
    def __init__(self, tmp):
        self.tmp = tmp
        self.root = os.path.join(tmp, "root")
        self.store = f"local?root={self.root}"
        self.calls = 0

    def run(self, args, check=True, cwd=None):
        self.calls += 1
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
        if check and p.returncode != 0:
            raise NixError(f"command failed ({p.returncode}): {args!r}\n"
                           + p.stderr.decode(errors="backslashreplace"))
        return p

    def out(self, args, **kw):
        return self.run(args, **kw).stdout.decode().strip()

    # --- wrappers -------------------------------------------------------------------
    def nix_hash(self, *args):
        return self.out(["nix-hash", *NIXOPTS, *args])

    def nix_new(self, *args):
        return self.out(["nix", *NEWCMD, *NIXOPTS, *args])

    def nix_store(self, *args, **kw):
        return self.out(["nix-store", "--store", self.store, *NIXOPTS, *args], **kw)

    def dump(self, fs_path):
        """NAR of a file system path (nix-store --dump reads the path directly)."""
        return self.run(["nix-store", *NIXOPTS, "--dump", fs_path]).stdout

    def path_info(self, paths, derivation=False):
        args = ["path-info", "--store", self.store, "--json"]
        if derivation:
            args = [*CAOPTS, *args, "--derivation"]
        info = json.loads(self.nix_new(*args, *paths))
        res = {}
        for i in info:
            i.pop("registrationTime", None)
            res[i["path"]] = i
        return res

    def real(self, store_path):
        assert store_path.startswith(STORE_DIR + "/"), store_path
        return self.root + store_path


def err_text(stderr):
    return ANSI.sub(b"", stderr).decode(errors="backslashreplace").strip()


def check(cond, msg):
    if not cond:
        raise SystemExit(f"generate.py: check failed: {msg}")


def sri_of(algo, digest):
    return f"{algo}-{base64.b64encode(digest).decode()}"


def dumps(obj):
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ======================================================================================
# A. Trees
# ======================================================================================

class F:
    def __init__(self, data, exe=False):
        self.data, self.exe = data, exe


class D:
    def __init__(self, entries):
        self.entries = {(k.encode() if isinstance(k, str) else k): v for k, v in entries.items()}


class L:
    def __init__(self, target):
        self.target = target.encode() if isinstance(target, str) else target


def kind(node):
    return {F: "regular", D: "directory", L: "symlink"}[type(node)]


def build(path, node):
    """Create node at path (bytes) with explicit permissions."""
    if isinstance(node, F):
        with open(path, "wb") as f:
            f.write(node.data)
        os.chmod(path, 0o755 if node.exe else 0o644)
    elif isinstance(node, D):
        os.mkdir(path)
        for name in sorted(node.entries):
            build(path + b"/" + name, node.entries[name])
        os.chmod(path, 0o755)
    else:
        os.symlink(node.target, path)


def listing(node, prefix=b""):
    """Flat description of a tree, entries in NAR (byte) order; paths relative, '' = root."""
    d = {"path": prefix.decode(errors="backslashreplace"), "type": kind(node)}
    if isinstance(node, F):
        d["executable"] = node.exe
        d["size"] = len(node.data)
        out = [d]
    elif isinstance(node, L):
        d["target"] = node.target.decode(errors="backslashreplace")
        out = [d]
    else:
        out = [d]
        for name in sorted(node.entries):
            out += listing(node.entries[name], (prefix + b"/" if prefix else b"") + name)
    return out


def parse_nar(nar):
    """Independent check: parse a NAR into the same shape as listing() (strict: zero
    padding, sorted unique names, nothing after the root node)."""
    pos = 0
    out = []

    def rd():
        nonlocal pos
        n = int.from_bytes(nar[pos:pos + 8], "little")
        pos += 8
        s = nar[pos:pos + n]
        pos += n
        pad = (8 - n % 8) % 8
        check(nar[pos:pos + pad] == b"\0" * pad, "NAR padding")
        pos += pad
        return s

    def expect(tok):
        got = rd()
        check(got == tok, f"NAR: expected {tok!r}, got {got[:40]!r}")

    def node(prefix):
        expect(b"(")
        expect(b"type")
        t = rd()
        d = {"path": prefix.decode(errors="backslashreplace")}
        out.append(d)
        if t == b"regular":
            tok = rd()
            exe = tok == b"executable"
            if exe:
                expect(b"")
                tok = rd()
            check(tok == b"contents", "NAR contents")
            d.update(type="regular", executable=exe, size=len(rd()))
            expect(b")")
        elif t == b"symlink":
            expect(b"target")
            d.update(type="symlink", target=rd().decode(errors="backslashreplace"))
            expect(b")")
        else:
            check(t == b"directory", f"NAR type {t!r}")
            d["type"] = "directory"
            prev = None
            while True:
                tok = rd()
                if tok == b")":
                    break
                check(tok == b"entry", "NAR entry")
                expect(b"(")
                expect(b"name")
                name = rd()
                check(prev is None or name > prev, "NAR entries sorted")
                prev = name
                expect(b"node")
                node(prefix + b"/" + name if prefix else name)
                expect(b")")

    expect(b"nix-archive-1")
    node(b"")
    check(pos == len(nar), "NAR trailing bytes")
    return out


SORT_NAMES = ["B", "a", "_", "Z", "é", "e", "E", "10", "9", "a.b", "a-b", "A", "aa", "a0",
              "~", "-", "Ä", "z", "e\u0301", ".a", "a_b", "ab", "a b", "1", "01"]


def tree_defs():
    """(key, add_name, node, description, commit_nar, generator)."""
    t = []

    def add(key, node, desc, add_name=None, nar=True, gen=None):
        t.append((key, add_name or key, node, desc, nar, gen))

    add("empty-file", F(b""), "regular file of 0 bytes")
    add("empty-dir", D({}), "directory with no entries")
    add("file-1-byte", F(b"x"), "regular file of 1 byte")
    add("file-7-bytes", F(b"1234567"), "regular file of 7 bytes (1 pad byte)")
    add("file-8-bytes", F(b"12345678"), "regular file of exactly 8 bytes (no padding)")
    add("file-9-bytes", F(b"123456789"), "regular file of 9 bytes (7 pad bytes)")
    add("file-text", F(b"hello world\n"), "small text file")
    add("exec-file", F(b"#!/bin/sh\necho hi\n", exe=True), "executable regular file (0755)")
    add("exec-empty-file", F(b"", exe=True), "executable empty file")
    add("exec-in-dir", D({"run.sh": F(b"#!/bin/sh\nexit 0\n", exe=True),
                          "data.txt": F(b"data\n"),
                          "bin": D({"tool": F(b"\x7fELF fake\n", exe=True)})}),
        "directory holding executable and plain files")
    deep = F(b"bottom\n")
    for name in ["f", "e", "d", "c", "b", "a"]:
        deep = D({name: deep, "level-" + name: F(name.encode() + b"\n")})
    add("nested-deep", D({"top": deep, "empty": D({"inner-empty": D({})})}),
        "nested directories 7 levels deep, with empty directories")
    add("symlink-to-file", D({"target.txt": F(b"target\n"), "link": L("target.txt")}),
        "relative symlink to a sibling file")
    add("symlink-to-dir", D({"sub": D({"x": F(b"x\n")}), "link-to-sub": L("sub"),
                             "link-dot": L("."), "link-up": L("../outside"),
                             "sub-link": D({"back": L("../sub/x")})}),
        "symlinks to a directory, to '.', and upwards")
    add("dangling-symlink", D({"dangling": L("does/not/exist")}), "symlink to nothing")
    add("absolute-symlink", D({"passwd": L("/etc/passwd")}), "symlink with an absolute target")
    add("symlink-top-level", L("some/relative/target"), "the tree itself is a (dangling) symlink")
    add("symlink-top-level-absolute", L("/etc/passwd"), "the tree itself is an absolute symlink")
    add("names-with-spaces", D({"a file with spaces": F(b"1\n"), " leading": F(b"2\n"),
                                "trailing ": F(b"3\n"),
                                "dir with space": D({"x y z": F(b"4\n")})}),
        "entry names containing spaces")
    add("unicode-names", D({"é": F(b"precomposed\n"), "e\u0301": F(b"decomposed\n"),
                            "日本": D({"語.txt": F(b"japanese\n")}), "🎉": F(b"emoji\n"),
                            "Ω≈ç√": L("é")}),
        "UTF-8 entry names (NFC and NFD forms are different names)")
    add("sort-order", D({n: F(n.encode() + b"\n") for n in SORT_NAMES}),
        "names whose byte order differs from locale/case order: " + " ".join(repr(n) for n in SORT_NAMES))
    many = {}
    for i in range(300):
        name = f"e{i}"
        if i % 50 == 7:
            many[name] = D({"inner": F(b"%d\n" % i)})
        elif i % 50 == 13:
            many[name] = L(f"e{i - 1}")
        else:
            many[name] = F(b"%d\n" % i, exe=(i % 50 == 21))
    add("many-entries", D(many), "directory with 300 entries e0..e299 (byte order: e0 e1 e10 e100 ...), "
        "some dirs/symlinks/executables")
    add("all-bytes", F(bytes(range(256)) + b"\x00" * 5 + bytes(range(255, -1, -1))),
        "regular file: bytes 0..255, five NULs, bytes 255..0 (517 bytes)")
    add("odd-names", D({"\n": F(b"newline\n"), "\\": F(b"backslash\n"), "\t": F(b"tab\n"),
                        "a\x01b": F(b"control\n"), "...": F(b"dots\n"), "..a": F(b"dotdot-a\n"),
                        ".hidden": F(b"hidden\n"), "-": F(b"dash\n"), "--": F(b"dashdash\n"),
                        "$HOME": F(b"dollar\n"), '"q"': F(b"quotes\n"), "it's": F(b"apos\n"),
                        "*": F(b"star\n"), "?": F(b"question\n"), "n" * 255: F(b"255\n"),
                        "\x7f": F(b"del\n")}),
        "legal but odd entry names: newline, backslash, tab, control chars, dots, 255 bytes long")
    add("case-collision", D({"a": F(b"lower\n"), "A": F(b"upper\n"), "README": F(b"1\n"),
                             "readme": F(b"2\n"), "ReadMe": D({})}),
        "names equal up to case (no case hack on Linux: names kept as is)")
    add("big-file", F(None), "regular file of 2 MiB + 3 bytes, pattern " + BIG_RULE,
        nar=False, gen={"rule": BIG_RULE, "size": BIG_SIZE,
                        "python": "bytes((i * 7 + (i >> 12)) % 251 for i in range(2097155))"})
    add("mixed", D({
        "bin": D({"tool": F(b"#!/bin/sh\n", exe=True), "link-to-tool": L("tool")}),
        "empty-dir": D({}),
        "empty-file": F(b""),
        "exec-empty": F(b"", exe=True),
        "lib": D({"a": D({"b": D({"c": F(b"deep\n")})})}),
        "abs-link": L("/etc/passwd"),
        "dangling": L("nowhere"),
        "dir link": L("lib/a"),
        "é日本🎉": F("unicode\n".encode()),
        "B": F(b"B"), "a": F(b"a"), "_": F(b"_"), "10": F(b"10"), "9": F(b"9"),
        "nul.bin": F(b"\x00" * 9 + bytes(range(256))),
        "share": D({f"f{i}": F(b"%d" % i) for i in range(20)}),
        "pad": D({f"len{n}": F(b"p" * n) for n in range(0, 17)}),
    }), "a bit of everything")
    # Store path name rules: the --add name is the tree's base name.
    add("name-special-chars", F(b"special\n"), "base name with + = ? _ . - (all legal)",
        add_name="a+b=c?d_e.f-g")
    add("name-leading-dot", D({"x": F(b"x\n")}), "base name starting with a dot (legal in 2.8)",
        add_name=".hidden")
    add("name-211-chars", F(b"long\n"), "base name of 211 characters (the maximum)",
        add_name="n" * 200 + "-0123456789")
    add("name-three-dots", F(b"dots\n"), "base name '...'", add_name="...")
    add("name-leading-dash", F(b"dash\n"), "base name starting with '-'", add_name="-dash")
    return t


NAME_RULES = ["ok", ".hidden", "...", "-dash", "a+b=c?d_e.f-g", "n" * 211, "n" * 212,
              "a b", "é", "a@b", "a:b", "a~b", "a,b", "A-Z_0-9", "x" * 1]


def gen_trees(nix, stage):
    tdir = os.path.join(nix.tmp, "trees")
    os.makedirs(tdir)
    os.makedirs(os.path.join(stage, "trees"))
    trees = {}
    for key, add_name, node, desc, commit_nar, gen in tree_defs():
        if gen is not None:
            node = F(big_bytes())
        parent = os.path.join(tdir, key)
        os.mkdir(parent)
        path = os.path.join(parent, add_name)
        build(path.encode(), node)
        nar = nix.dump(path)
        k = kind(node)
        check(parse_nar(nar) == listing(node), f"{key}: NAR does not match the tree")
        rec = {
            "name": key,
            "add_name": add_name,
            "type": k,
            "description": desc,
            "nar_size": len(nar),
            "nar": f"trees/{key}.nar" if commit_nar else None,
            "listing": listing(node),
        }
        if gen is not None:
            rec["generator"] = gen
        if commit_nar:
            write(os.path.join(stage, "trees", key + ".nar"), nar)
        # NAR hashes (nix-hash on the tree = hash of its NAR).
        hashes = {}
        for a in ALGOS:
            b16 = nix.nix_hash("--type", a, path)
            b32 = nix.nix_hash("--type", a, "--base32", path)
            b64 = nix.nix_new("hash", "path", "--type", a, "--base64", path)
            sri = nix.nix_new("hash", "path", "--type", a, "--sri", path)
            digest = hashlib.new(a, nar).digest()
            check(b16 == digest.hex(), f"{key}: nix-hash {a} != hash of dumped NAR")
            check(b64 == base64.b64encode(digest).decode(), f"{key}: base64 {a}")
            check(sri == sri_of(a, digest), f"{key}: sri {a}")
            hashes[a] = {"base16": b16, "base32": b32, "base64": b64, "sri": sri}
        rec["nar_hash"] = hashes
        rec["nar_sha256_truncated_base32"] = nix.nix_hash("--type", "sha256", "--truncate", "--base32", path)
        # Flat (file) hashes.
        if k == "regular":
            flat = {}
            for a in ALGOS:
                b16 = nix.nix_hash("--flat", "--type", a, path)
                b32 = nix.nix_hash("--flat", "--type", a, "--base32", path)
                check(b16 == hashlib.new(a, node.data).hexdigest(), f"{key}: flat {a}")
                flat[a] = {"base16": b16, "base32": b32}
            rec["flat_hash"] = flat
        else:
            rec["flat_hash"] = None
        # Store paths in the chroot store (logical /nix/store).
        sp = nix.nix_store("--add", path)
        check(sp.startswith(STORE_DIR + "/") and sp.endswith("-" + add_name), f"{key}: --add gave {sp}")
        fixed = {}
        for a in ALGOS:
            fixed[f"recursive:{a}"] = nix.nix_store("--add-fixed", "--recursive", a, path)
            if k == "regular":
                fixed[f"flat:{a}"] = nix.nix_store("--add-fixed", a, path)
        check(fixed["recursive:sha256"] == sp, f"{key}: --add-fixed --recursive sha256 != --add")
        info = nix.path_info([sp] + sorted(set(fixed.values())))
        for p in [sp] + list(fixed.values()):
            check(info[p]["narSize"] == len(nar), f"{key}: narSize of {p}")
            check(info[p]["narHash"] == hashes["sha256"]["sri"], f"{key}: narHash of {p}")
            check(info[p]["references"] == [], f"{key}: references of {p}")
        rec["store_path"] = sp
        rec["store_path_ca"] = info[sp].get("ca")
        rec["fixed"] = {m: {"path": p, "ca": info[p].get("ca")} for m, p in fixed.items()}
        trees[key] = rec
        print(f"  tree {key}: {k}, NAR {len(nar)} bytes", file=sys.stderr)

    # Name rules for store paths (nix-store --add FILE, FILE's base name is the name).
    rules = []
    ndir = os.path.join(nix.tmp, "names")
    os.mkdir(ndir)
    for i, name in enumerate(NAME_RULES):
        d = os.path.join(ndir, str(i))
        os.mkdir(d)
        f = os.path.join(d, name)
        with open(f, "wb") as fh:
            fh.write(b"name rules\n")
        os.chmod(f, 0o644)
        p = nix.run(["nix-store", "--store", nix.store, *NIXOPTS, "--add", f], check=False)
        r = {"name": name, "contents": "name rules\n", "valid": p.returncode == 0}
        if p.returncode == 0:
            r["store_path"] = p.stdout.decode().strip()
        else:
            r["error"] = err_text(p.stderr)
        rules.append(r)
    return {
        "nix_version": nix.version,
        "store_dir": STORE_DIR,
        "trees": trees,
        "name_rules": rules,
    }


# ======================================================================================
# Hash vectors
# ======================================================================================

def hash_inputs():
    return [
        ("empty", b""),
        ("abc", b"abc"),
        ("hello", b"hello"),
        ("fox", b"The quick brown fox jumps over the lazy dog"),
        ("nul", b"\x00"),
        ("all-bytes", bytes(range(256))),
        ("det-55", det_bytes(55, 55)),
        ("det-56", det_bytes(56, 56)),
        ("det-63", det_bytes(63, 63)),
        ("det-64", det_bytes(64, 64)),
        ("det-65", det_bytes(65, 65)),
        ("det-127", det_bytes(127, 127)),
        ("det-128", det_bytes(128, 128)),
        ("det-1000", det_bytes(1000, 1000)),
    ]


def gen_hashes(nix):
    hdir = os.path.join(nix.tmp, "hashes")
    os.mkdir(hdir)
    vectors = []
    for name, data in hash_inputs():
        f = os.path.join(hdir, name)
        with open(f, "wb") as fh:
            fh.write(data)
        v = {"name": name, "input_hex": data.hex(), "length": len(data)}
        v["input_text"] = data.decode("ascii") if all(32 <= c < 127 for c in data) else None
        hs = {}
        for a in ALGOS:
            digest = hashlib.new(a, data).digest()
            b16 = nix.nix_hash("--flat", "--type", a, f)
            b32 = nix.nix_hash("--flat", "--base32", "--type", a, f)
            b64 = nix.nix_new("hash", "file", "--type", a, "--base64", f)
            sri = nix.nix_new("hash", "file", "--type", a, "--sri", f)
            trunc = nix.nix_hash("--flat", "--truncate", "--base32", "--type", a, f)
            check(b16 == digest.hex(), f"hash {name} {a} base16")
            check(b64 == base64.b64encode(digest).decode(), f"hash {name} {a} base64")
            check(sri == sri_of(a, digest), f"hash {name} {a} sri")
            # Conversions must agree with the direct forms.
            check(nix.nix_hash("--to-base32", "--type", a, b16) == b32, f"{name} {a} --to-base32")
            check(nix.nix_hash("--to-base16", "--type", a, b32) == b16, f"{name} {a} --to-base16")
            check(nix.nix_new("hash", "to-sri", "--type", a, b16) == sri, f"{name} {a} to-sri")
            check(nix.nix_new("hash", "to-base64", "--type", a, b32) == b64, f"{name} {a} to-base64")
            check(nix.nix_new("hash", "to-base16", sri) == b16, f"{name} {a} to-base16 sri")
            check(nix.nix_new("hash", "to-base32", sri) == b32, f"{name} {a} to-base32 sri")
            hs[a] = {"base16": b16, "base32": b32, "base64": b64, "sri": sri,
                     "truncated_base32": trunc}
        v["hashes"] = hs
        vectors.append(v)

    # Explicit conversion commands (inputs in every accepted form), as run.
    abc = next(v for v in vectors if v["name"] == "abc")["hashes"]
    fox = next(v for v in vectors if v["name"] == "fox")["hashes"]
    cmds = []
    for a, h in (("sha256", abc["sha256"]), ("sha1", fox["sha1"]), ("md5", abc["md5"]),
                 ("sha512", fox["sha512"])):
        cmds += [
            ["nix-hash", "--to-base32", "--type", a, h["base16"]],
            ["nix-hash", "--to-base16", "--type", a, h["base32"]],
            ["nix-hash", "--to-base16", "--type", a, h["base64"]],
            ["nix-hash", "--to-base32", "--type", a, h["sri"]],
            ["nix-hash", "--to-base32", f"{a}:{h['base16']}"],
            ["nix", "hash", "to-sri", "--type", a, h["base16"]],
            ["nix", "hash", "to-sri", "--type", a, h["base32"]],
            ["nix", "hash", "to-sri", f"{a}:{h['base32']}"],
            ["nix", "hash", "to-base64", "--type", a, h["base16"]],
            ["nix", "hash", "to-base16", h["sri"]],
            ["nix", "hash", "to-base32", h["sri"]],
            ["nix", "hash", "to-base32", "--type", a, h["base64"]],
            ["nix", "hash", "to-base16", f"{a}:{h['base64']}"],
        ]
    # Expected failures: wrong type / wrong length.
    cmds += [
        ["nix-hash", "--to-base32", f"sha256:{abc['sha256']['base16']}"],  # default --type is md5
        ["nix-hash", "--to-base32", "--type", "sha1", abc["sha256"]["base16"]],
        ["nix", "hash", "to-base16", "--type", "sha256", abc["sha256"]["base16"][:-2]],
        ["nix", "hash", "to-sri", "--type", "sha256", "e" * 52],  # 'e' is not nix-base32
    ]
    conversions = []
    for c in cmds:
        full = ([c[0], *NIXOPTS] + c[1:]) if c[0] == "nix-hash" else (["nix", *NEWCMD, *NIXOPTS] + c[1:])
        p = nix.run(full, check=False)
        r = {"cmd": c, "ok": p.returncode == 0}
        if p.returncode == 0:
            r["output"] = p.stdout.decode().strip()
        else:
            r["error"] = err_text(p.stderr)
        conversions.append(r)
    return {"nix_version": nix.version, "vectors": vectors, "conversions": conversions}


# ======================================================================================
# B. Derivations
# ======================================================================================

EXEC_SOURCES = {"src-dir/run.sh"}


def copy_sources(src, dst):
    """Copy tests/oracle/drvs to dst with explicit modes (git does not keep them)."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        out = os.path.join(dst, rel) if rel != "." else dst
        os.makedirs(out, exist_ok=True)
        os.chmod(out, 0o755)
        for fn in sorted(filenames):
            r = os.path.normpath(os.path.join(rel, fn))
            s = os.path.join(dirpath, fn)
            check(not os.path.islink(s), f"symlink in drv sources: {r}")
            with open(s, "rb") as fh:
                data = fh.read()
            o = os.path.join(out, fn)
            with open(o, "wb") as fh:
                fh.write(data)
            os.chmod(o, 0o755 if r in EXEC_SOURCES else 0o644)


def gen_drvs(nix, stage, oracle_dir):
    src = os.path.join(oracle_dir, "drvs")
    work = os.path.join(nix.tmp, "drvsrc")
    copy_sources(src, work)
    ddir = os.path.join(stage, "drvs")
    os.makedirs(os.path.join(ddir, "srcs"))
    cases = {}
    drvs = {}
    sources = {}
    case_files = sorted(f for f in os.listdir(work) if f.endswith(".nix") and f != "common.nix")
    for fn in case_files:
        case = fn[:-4]
        p = nix.run(["nix-instantiate", "--store", nix.store, *NIXOPTS, *CAOPTS, fn], cwd=work)
        line = p.stdout.decode().strip()
        drv = line.split("!")[0]
        check(drv.startswith(STORE_DIR + "/") and drv.endswith(".drv"), f"{case}: {line}")
        raw = nix.run(["nix", *NEWCMD, *CAOPTS, *NIXOPTS, "show-derivation", "--store", nix.store, drv]).stdout
        show = json.loads(raw)
        body = show[drv]
        closure = sorted(nix.nix_store("-qR", drv).split())
        refs = sorted(nix.nix_store("-q", "--references", drv).split())
        base = os.path.basename(drv)
        cases[case] = {
            "nix_file": f"tests/oracle/drvs/{fn}",
            "instantiate_output": line,
            "drv_path": drv,
            "drv_file": f"drvs/{base}",
            "show_derivation_file": f"drvs/{base}.json",
            "show_derivation": show,
            "outputs": {o: v.get("path") for o, v in body["outputs"].items()},
            "references": refs,
            "input_srcs": body["inputSrcs"],
            "input_drvs": body["inputDrvs"],
            "closure": closure,
        }
        for q in closure:
            qb = os.path.basename(q)
            if q.endswith(".drv"):
                if qb in drvs:
                    continue
                with open(nix.real(q), "rb") as fh:
                    text = fh.read()
                check(text.startswith(b"Derive("), f"{q} is not an ATerm derivation")
                write(os.path.join(ddir, qb), text)
                qraw = nix.run(["nix", *NEWCMD, *CAOPTS, *NIXOPTS, "show-derivation", "--store", nix.store, q]).stdout
                write(os.path.join(ddir, qb + ".json"), qraw)
                qbody = json.loads(qraw)[q]
                info = nix.path_info([q], derivation=True)[q]
                check(info["narHash"] == sri_of("sha256", hashlib.sha256(nix.dump(nix.real(q))).digest()),
                      f"{q}: narHash")
                drvs[qb] = {
                    "path": q,
                    "file": f"drvs/{qb}",
                    "show_derivation_file": f"drvs/{qb}.json",
                    "size": len(text),
                    "sha256": hashlib.sha256(text).hexdigest(),
                    "outputs": {o: v.get("path") for o, v in qbody["outputs"].items()},
                    "references": sorted(nix.nix_store("-q", "--references", q).split()),
                    "nar_hash": info["narHash"],
                    "nar_size": info["narSize"],
                    "ca": info.get("ca"),
                }
            else:
                if qb in sources:
                    continue
                nar = nix.dump(nix.real(q))
                write(os.path.join(ddir, "srcs", qb + ".nar"), nar)
                info = nix.path_info([q])[q]
                check(info["narHash"] == sri_of("sha256", hashlib.sha256(nar).digest()), f"{q}: narHash")
                sources[qb] = {
                    "path": q,
                    "nar": f"drvs/srcs/{qb}.nar",
                    "nar_hash": info["narHash"],
                    "nar_size": info["narSize"],
                    "references": sorted(info["references"]),
                    "ca": info.get("ca"),
                }
        print(f"  drv {case}: {drv}", file=sys.stderr)

    # The point of hashDerivationModulo: same FOD output => same dependent output.
    a, b = cases["fod-dependent-a"], cases["fod-dependent-b"]
    check(a["drv_path"] != b["drv_path"], "fod-dependent a/b .drv paths should differ")
    check(a["outputs"] == b["outputs"], "fod-dependent a/b output paths should be equal")
    fa = [d for d in a["input_drvs"]]
    fb = [d for d in b["input_drvs"]]
    check(len(fa) == 1 and len(fb) == 1 and fa != fb, "fod-dependent: one distinct FOD each")
    check(drvs[os.path.basename(fa[0])]["outputs"] == drvs[os.path.basename(fb[0])]["outputs"],
          "the two FODs should have equal output paths")
    facts = [
        {"fact": "equal output paths although the .drv paths differ (fixed-output inputs "
                 "with the same hash; hashDerivationModulo)",
         "cases": ["fod-dependent-a", "fod-dependent-b"],
         "drvs": [fa[0], fb[0]],
         "outputs": a["outputs"]},
    ]
    return {
        "nix_version": nix.version,
        "store_dir": STORE_DIR,
        "system_note": "instantiated with nix-instantiate --store 'local?root=TMP' (logical /nix/store)",
        "cases": cases,
        "drvs": drvs,
        "sources": sources,
        "facts": facts,
    }


# ======================================================================================

GITATTRIBUTES = """\
# Generated by tests/oracle/generate.sh: exact bytes, never convert line endings.
* -text
*.nar binary
*.drv -text -diff
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--oracle", required=True)
    args = ap.parse_args()
    os.umask(0o022)
    nix = Nix(os.path.abspath(args.tmp))
    nix.version = nix.out(["nix-store", "--version"])
    stage = os.path.join(nix.tmp, "stage")
    os.makedirs(stage)

    print("generate.py: trees", file=sys.stderr)
    trees = gen_trees(nix, stage)
    print("generate.py: hashes", file=sys.stderr)
    hashes = gen_hashes(nix)
    print("generate.py: derivations", file=sys.stderr)
    drvs = gen_drvs(nix, stage, os.path.abspath(args.oracle))

    write(os.path.join(stage, "trees.json"), dumps(trees).encode())
    write(os.path.join(stage, "hashes.json"), dumps(hashes).encode())
    write(os.path.join(stage, "drvs.json"), dumps(drvs).encode())
    write(os.path.join(stage, ".gitattributes"), GITATTRIBUTES.encode())

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for name in MANAGED:
        dst = os.path.join(out, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        elif os.path.lexists(dst):
            os.remove(dst)
        shutil.move(os.path.join(stage, name), dst)
    total = 0
    for dp, _, fns in os.walk(out):
        for fn in fns:
            total += os.path.getsize(os.path.join(dp, fn))
    print(f"generate.py: {len(trees['trees'])} trees, {len(hashes['vectors'])} hash vectors, "
          f"{len(drvs['cases'])} derivation cases ({len(drvs['drvs'])} .drv files, "
          f"{len(drvs['sources'])} sources); {nix.calls} Nix calls; fixtures total {total} bytes",
          file=sys.stderr)


if __name__ == "__main__":
    main()
