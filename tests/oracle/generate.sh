#!/usr/bin/env bash
# Regenerate every golden fixture under tests/fixtures/ with real Nix (2.8).
# Usage (from anywhere):  bash tests/oracle/generate.sh
# See tests/oracle/README.md. Deterministic: two runs give identical files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/tests/fixtures"

die() { echo "generate.sh: $*" >&2; exit 1; }

for tool in nix nix-store nix-hash nix-instantiate; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "real Nix is required but '$tool' is not on PATH (e.g. apt-get install nix-bin); refusing to run"
done
command -v python3 >/dev/null 2>&1 || die "python3 is required"

version="$(nix-store --version)"
case "$version" in
    *" 2.8."*) ;;
    *)
        if [ "${ARCA_ORACLE_ANY_NIX:-}" != 1 ]; then
            die "fixtures are made with Nix 2.8, found '$version'; set ARCA_ORACLE_ANY_NIX=1 to use it anyway"
        fi
        echo "generate.sh: warning: using '$version' instead of Nix 2.8" >&2
        ;;
esac

tmp="$(mktemp -d "${TMPDIR:-/tmp}/arca-oracle.XXXXXXXX")"
cleanup() { chmod -R u+w "$tmp" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# A clean, private Nix environment: no user/system config, no daemon, default store dir.
mkdir -p "$tmp/home" "$tmp/etc" "$tmp/state" "$tmp/log"
printf 'substituters =\nexperimental-features = nix-command\n' > "$tmp/etc/nix.conf"
unset NIX_CONFIG NIX_REMOTE NIX_STORE_DIR NIX_STORE NIX_DAEMON_SOCKET_PATH NIX_SSL_CERT_FILE \
      NIX_BUILD_HOOK NIX_USER_CONF_FILES XDG_CONFIG_DIRS || true
export HOME="$tmp/home"
export XDG_CACHE_HOME="$tmp/home/.cache" XDG_CONFIG_HOME="$tmp/home/.config"
export XDG_DATA_HOME="$tmp/home/.local/share" XDG_STATE_HOME="$tmp/home/.local/state"
export NIX_CONF_DIR="$tmp/etc" NIX_USER_CONF_FILES="$tmp/etc/nix.conf"
export NIX_STATE_DIR="$tmp/state" NIX_LOG_DIR="$tmp/log"
export NIX_PATH=""
export LC_ALL=C.UTF-8 TZ=UTC PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
umask 022

echo "generate.sh: $version, work dir $tmp" >&2
python3 "$here/generate.py" --tmp "$tmp/work" --out "$out" --oracle "$here"
echo "generate.sh: done; fixtures in $out" >&2
