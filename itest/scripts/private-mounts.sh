#!/bin/sh
# Run a command with temp directories mounted over fixed paths, in a private
# mount namespace, without changing the machine's own directories:
#
#   unshare -m --propagation unchanged private-mounts.sh [--share DIR] STASH TARGET=SOURCE... -- CMD ARGS...
#
# For each TARGET, SOURCE (a directory) is bind-mounted over it. A TARGET
# that does not exist is made on a tmpfs mounted over its deepest existing
# ancestor, whose entries are bind-mounted back (so the rest of, say, /etc
# stays visible); STASH is an empty scratch directory for the ancestors'
# original views. Everything lives in this mount namespace only: the script
# refuses to run in the machine's initial one, and first makes every mount
# here private, except DIR given with --share (e.g. /run/netns, so that the
# network namespaces containerd's CRI mounts there are seen by ferryd in the
# node's mount namespace), which stays in the machine's peer group.
set -eu

if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
  echo "private-mounts: refusing to run in the initial mount namespace (use unshare -m)" >&2
  exit 2
fi
share=""
if [ "${1:-}" = "--share" ]; then
  share=$2
  shift 2
fi
# Mount points in mountinfo escape spaces as \040; such a path simply fails
# to resolve here and is left as it is (none of ours has one).
awk '{print $5}' /proc/self/mountinfo | while read -r mp; do
  if [ -n "$share" ]; then
    case "$mp" in "$share" | "$share"/*) continue ;; esac
  fi
  mount --make-private "$mp" 2>/dev/null || true
done
stash=$1
shift
mkdir -p "$stash"

# Make directory $1 exist, creating it only on a tmpfs private to us.
ensure_dir() {
  target=$1
  [ -d "$target" ] && return 0
  anc=$(dirname "$target")
  while [ ! -d "$anc" ]; do anc=$(dirname "$anc"); done
  case "$stash/" in
    "$anc"/*) echo "private-mounts: stash $stash lies under $anc" >&2; exit 2 ;;
  esac
  saved="$stash/$(echo "$anc" | tr / _)"
  mkdir -p "$saved"
  mount --rbind "$anc" "$saved"
  mount -t tmpfs -o mode=0755 ferry-itest "$anc"
  for e in "$saved"/* "$saved"/.[!.]*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    n=${e##*/}
    if [ -L "$e" ]; then
      cp -P "$e" "$anc/$n"
    elif [ -d "$e" ]; then
      # mount(8) itself may already have made /run/mount (for utab) here.
      mkdir -p "$anc/$n"
      mount --rbind "$e" "$anc/$n"
    else
      [ -e "$anc/$n" ] || : >"$anc/$n"
      mount --bind "$e" "$anc/$n"
    fi
  done
  mkdir -p "$target"
}

while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  target=${1%%=*}
  source=${1#*=}
  shift
  ensure_dir "$target"
  mount --bind "$source" "$target"
done
[ "${1:-}" = "--" ] || { echo "private-mounts: missing -- CMD" >&2; exit 2; }
shift
exec "$@"
