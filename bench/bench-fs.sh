# Sourced by the side-by-side benchmark scripts: sets `work` to the directory their
# inputs and stores live in. As root that is a journaled ext4 loop file system
# (/mnt/arca-bench): on this kind of machine `/` is ext4 without a journal, where creating
# many files soon after deleting many is 15-30x slower and would swamp the figures.
work=/tmp/arca-bench
if [ "$(id -u)" = 0 ]; then
  work=/mnt/arca-bench
  if ! mountpoint -q "$work"; then
    img=/tmp/arca-bench.img
    [ -f "$img" ] || { truncate -s 8G "$img" && mkfs.ext4 -q -F "$img"; }
    mkdir -p "$work" && mount -o loop "$img" "$work"
  fi
fi
