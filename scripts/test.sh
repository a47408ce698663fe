#!/usr/bin/env bash
# The one test command (README.md): formatting, lints, and every test, including the
# interop tests that run real Nix beside arca.
#
# Real Nix (Debian's nix-bin, 2.8) is the oracle for the interop tests. When it is missing
# and we can install it (root with apt-get), we do; otherwise the interop tests are
# skipped and this script says so loudly at the end. Set ARCA_REQUIRE_NIX=1 to make a
# missing Nix an error instead (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# The sandbox and build tests use a static busybox as their builder; the remote builder
# tests log in through a real OpenSSH server (sshd) on a loopback port.
if ! command -v nix-store >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1 \
   || ! command -v slirp4netns >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1 \
   || [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    packages="nix-bin busybox-static slirp4netns jq openssh-server openssh-client"
    say "installing the Nix oracle and test tools with apt-get: $packages"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null \
      || echo "apt-get could not install $packages"
  fi
fi
# The binary cache tests run a real S3-compatible server, s3s-fs (an S3 API on a
# directory), on 127.0.0.1. Pinned: later versions need a newer rustc than ours.
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  say "installing the S3 test server (cargo install s3s-fs --version 0.14.1)"
  cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary \
    || echo "cargo could not install s3s-fs: the S3 tests will be skipped"
fi
nix_skipped=0
if command -v nix-store >/dev/null 2>&1; then
  say "oracle: $(nix-store --version)"
else
  nix_skipped=1
  if [ "${ARCA_REQUIRE_NIX:-0}" = 1 ]; then
    echo "error: real Nix is required (ARCA_REQUIRE_NIX=1) but nix-store is not installed" >&2
    exit 1
  fi
fi

# A full run needs ~10 GB for target/ and ~2 GB under /var/tmp (conformance stores): say
# up front when the disk is short, since "No space left on device" later is a confusing way
# to learn it.
for dir in . /var/tmp; do
  free_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "${free_kb:-0}" -lt $((12 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kb / 1024)) MiB free under $dir; a full run needs ~12 GiB" >&2
  fi
done

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
# The CLI and interop tests in tests/ run the debug `arca` (or $ARCA_BIN when set) and the
# farm example; cargo does not build another package's binaries for them, so build them
# first.
cargo build --locked -p arca
cargo build --locked -p arca-build --example farm
cargo test --workspace --locked

say "Nix 2.8's functional tests through arca daemon (scripts/conformance.sh)"
bash scripts/conformance.sh

if [ "$nix_skipped" = 1 ]; then
  cat >&2 <<'MSG'

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! Real Nix (nix-store) is not installed and could not be installed:             !!
!! the INTEROP TESTS AGAINST NIX WERE SKIPPED. Golden-vector tests still ran.     !!
!! Install it with: apt-get install nix-bin busybox-static   (Debian, as root)    !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
MSG
fi
if [ "$(id -u)" != 0 ]; then
  cat >&2 <<'MSG'

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! Not run as root: the SANDBOX TESTS THAT NEED ROOT WERE SKIPPED (each printed   !!
!! "SKIPPED"). CI runs them as root with ARCA_REQUIRE_SANDBOX=1.                  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
MSG
fi
say "all tests passed"
