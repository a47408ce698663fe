#!/usr/bin/env bash
# The README's first command: builds the sample derivation `hello.json` into the default
# embedded store (or the store given by --store / $ARCA_STORE) and prints its output path.
#
# The builder is a static busybox, the one input the machine provides: it is added to the
# store first (Debian's busybox-static is installed when missing and we are root).
# Usage: bash examples/build-hello.sh [--store DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

busybox=
for candidate in "${ARCA_BUSYBOX:-}" /usr/bin/busybox /bin/busybox; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q 'statically linked'; then
    busybox=$candidate
    break
  fi
done
if [ -z "$busybox" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
    busybox=/bin/busybox
  else
    echo "error: a static busybox is needed (apt-get install busybox-static, or set ARCA_BUSYBOX)" >&2
    exit 1
  fi
fi

if [ -n "${ARCA_BIN:-}" ]; then
  arca=$ARCA_BIN
else
  # Cargo's own progress on stderr: the first release build takes minutes.
  echo "building arca (release)..." >&2
  cargo build --release -p arca
  # Wherever CARGO_TARGET_DIR or a cargo config puts it.
  target_dir=$(cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  arca=$target_dir/release/arca
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/busybox"
cp "$busybox" "$work/busybox/busybox"
bb=$("$arca" "$@" store add-path --name busybox "$work/busybox")
sed "s|@busybox@|$bb|g" examples/hello.json > "$work/hello.json"
drv=$("$arca" "$@" derivation add < "$work/hello.json")
"$arca" "$@" build -L "$drv"
