#!/usr/bin/env bash
# Nix 2.8's own functional tests through `arca daemon` (the kit in ../shared/nix-conformance,
# see its README): every store-level test that passes through nix-daemon must pass
# through arca, except those listed, each with its reason, in
# tests/conformance/expected-failures.txt (and README.md); in the busybox mode (arca-bb)
# also those of expected-failures-bb.txt, which fail through nix-daemon-bb as well. A
# listed test that passes fails the run too, so that the lists (and the README) stay
# true.
#
# The kit is Nix's (LGPL-2.1) and is not part of this repository: it is looked for in
# $NIX_CONFORMANCE_KIT, then ../shared/nix-conformance beside the checkout, then
# /work/shared/nix-conformance. Without it this script says so loudly and exits 0
# (exit 1 with ARCA_REQUIRE_CONFORMANCE=1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# shellcheck source=lib/kit.sh
. scripts/lib/kit.sh
kit=$(find_kit "$root")
if [ -z "$kit" ]; then
  cat >&2 <<'MSG'

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! The Nix conformance kit (../shared/nix-conformance) was not found:            !!
!! NIX'S FUNCTIONAL TESTS DID NOT RUN THROUGH ARCA DAEMON.                        !!
!! Set NIX_CONFORMANCE_KIT=/path/to/nix-conformance to run them.                  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
MSG
  [ "${ARCA_REQUIRE_CONFORMANCE:-0}" = 1 ] && exit 1
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "conformance: the kit needs root (mount namespaces, tests run as nobody); skipped" >&2
  [ "${ARCA_REQUIRE_CONFORMANCE:-0}" = 1 ] && exit 1
  exit 0
fi

# A copy of the kit (see copy_kit); its work directory must be reachable by `nobody`,
# who runs the tests.
work=$(mktemp -d /var/tmp/arca-conformance.XXXXXX)
chmod 0755 "$work"
trap 'rm -rf "$work" 2>/dev/null || true' EXIT
copy_kit "$kit" "$work/kit"
cargo build --locked -q -p arca
mkdir -p "$work/tmp"
# The tests excused in a mode: expected-failures.txt, plus expected-failures-bb.txt in
# the busybox mode (tests that fail through nix-daemon-bb too).
declare -A excused=()
load_excused() {
  excused=()
  local file line
  for file in "$@"; do
    while IFS= read -r line; do
      case $line in ''|'#'*) continue;; esac
      excused[${line%% *}]=1
    done < "$root/tests/conformance/$file"
  done
}

status=0
for mode in arca arca-bb; do
if [ "$mode" = arca ]; then load_excused expected-failures.txt
else load_excused expected-failures.txt expected-failures-bb.txt; fi
echo "conformance: $kit, mode $mode, through $root/target/debug/arca"
ARCA="$root/target/debug/arca" NIXFT_TMP="$work/tmp" bash "$work/kit/run.sh" "$mode" -j 2 store \
  | grep -v '^[^ ]*  *\(PASS\|FAIL\|SKIP\|TIMEOUT\)$' || true
summary=$work/tmp/logs/$mode/summary.tsv
[ -f "$summary" ] || { echo "conformance: the kit wrote no summary for $mode" >&2; exit 1; }
while IFS=$'\t' read -r test result _rc _reason; do
  case $test in ''|'#'*) continue;; esac
  case $result in
    PASS)
      if [ -n "${excused[$test]:-}" ]; then
        echo "conformance: $test passes now ($mode): remove it from tests/conformance/expected-failures*.txt and README.md" >&2
        status=1
      fi;;
    FAIL|TIMEOUT)
      if [ -z "${excused[$test]:-}" ]; then
        echo "conformance: $test $result through arca daemon ($mode):" >&2
        sed -n '/^+ killDaemon$/q;p' "$work/tmp/logs/$mode/${test%.sh}.log" | tail -15 >&2 || true
        status=1
      fi;;
  esac
done < "$summary"
# The mode's stores and copies of the kit are not needed past its summary and logs.
rm -rf "$work/tmp/work/$mode" 2>/dev/null || true
done
if [ "$status" = 0 ]; then
  echo "conformance: in both modes, every test that passes through nix-daemon passes through arca daemon, but those excused in tests/conformance/expected-failures*.txt"
fi
exit "$status"
