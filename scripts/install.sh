#!/usr/bin/env bash
# Install ferry the standard way: the `ferry` CNI plugin in the CNI bin dir,
# its conflist in the CNI conf dir, ferryd / ferry-dataplane / ferryctl, a
# default ferryd.toml and systemd units. Every path can be moved, and
# --root installs into a staging directory (tests, packaging, images).
#
# Idempotent: a file already as shipped is left alone (not even rewritten);
# binaries, units and docs that differ are replaced atomically; a config
# file (ferryd.toml, the dataplane env file, the conflist) that differs from
# the shipped one was edited by an operator and is KEPT and reported, unless
# --force (then the old one is saved as <config-dir>/<name>.bak).
# It never runs systemctl: it prints what to run.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [OPTIONS]

Options (directories are as seen on the target system; --root is prefixed to all):
  --root DIR          install into DIR instead of /                 [default: /]
  --from DIR          directory holding the built binaries ferry, ferryd,
                      ferry-dataplane, ferryctl   [default: <repo>/target/release]
  --prefix DIR        prefix of bin/ and share/doc/ferry/           [default: /usr/local]
  --bin-dir DIR       where ferryd, ferry-dataplane, ferryctl go    [default: <prefix>/bin]
  --cni-bin-dir DIR   where the `ferry` CNI plugin goes             [default: /opt/cni/bin]
  --cni-conf-dir DIR  where 10-ferry.conflist goes                  [default: /etc/cni/net.d]
  --config-dir DIR    where ferryd.toml and ferry-dataplane.env go  [default: /etc/ferry]
  --systemd-dir DIR   where the systemd units go                    [default: /etc/systemd/system]
  --cni-only          only the CNI plugin and the conflist (e.g. a Kubernetes init container)
  --no-systemd        do not install systemd units
  --force             replace config files edited locally (saving <config-dir>/<name>.bak)
  --uninstall         remove what an install with the same options put there; config files
                      edited locally are kept (and reported) unless --force; never touches
                      ferryd's state (/var/lib/ferry)
  -h, --help          this text
EOF
}

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=/
FROM="$SRC/target/release"
PREFIX=/usr/local
BIN_DIR=""
CNI_BIN_DIR=/opt/cni/bin
CNI_CONF_DIR=/etc/cni/net.d
CONFIG_DIR=/etc/ferry
SYSTEMD_DIR=/etc/systemd/system
CNI_ONLY=0
SYSTEMD=1
FORCE=0
UNINSTALL=0

die() { echo "install.sh: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
abs_dir() { case "$2" in /*) ;; *) die "$1 must be an absolute path, got '$2'";; esac; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --from) need_arg "$@"; FROM=$2; shift 2 ;;
    --prefix) need_arg "$@"; abs_dir "$1" "$2"; PREFIX=$2; shift 2 ;;
    --bin-dir) need_arg "$@"; abs_dir "$1" "$2"; BIN_DIR=$2; shift 2 ;;
    --cni-bin-dir) need_arg "$@"; abs_dir "$1" "$2"; CNI_BIN_DIR=$2; shift 2 ;;
    --cni-conf-dir) need_arg "$@"; abs_dir "$1" "$2"; CNI_CONF_DIR=$2; shift 2 ;;
    --config-dir) need_arg "$@"; abs_dir "$1" "$2"; CONFIG_DIR=$2; shift 2 ;;
    --systemd-dir) need_arg "$@"; abs_dir "$1" "$2"; SYSTEMD_DIR=$2; shift 2 ;;
    --cni-only) CNI_ONLY=1; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --force) FORCE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
BIN_DIR=${BIN_DIR:-$PREFIX/bin}
DOC_DIR=$PREFIX/share/doc/ferry
ROOT=${ROOT%/}   # "/" -> "", "/tmp/r/" -> "/tmp/r"
[ -z "$ROOT" ] || [ -d "$ROOT" ] || mkdir -p "$ROOT"

if [ "$UNINSTALL" = 1 ]; then
  n_removed=0 n_kept=0 n_absent=0
  # drop DEST KIND [SHIPPED]: remove $ROOT$DEST; a config differing from
  # SHIPPED is the operator's and stays unless --force.
  drop() {
    local dest=$ROOT$1 kind=$2 shipped=${3:-}
    if [ ! -e "$dest" ]; then n_absent=$((n_absent + 1)); return; fi
    if [ "$kind" = config ] && [ "$FORCE" = 0 ] && ! cmp -s "$shipped" "$dest"; then
      echo "kept       $dest (edited locally; --force removes it)"; n_kept=$((n_kept + 1)); return
    fi
    rm -f "$dest"; echo "removed    $dest"; n_removed=$((n_removed + 1))
  }
  drop "$CNI_BIN_DIR/ferry" owned
  drop "$CNI_CONF_DIR/10-ferry.conflist" config "$SRC/cni/10-ferry.conflist"
  if [ "$CNI_ONLY" = 0 ]; then
    for b in ferryd ferry-dataplane ferryctl; do drop "$BIN_DIR/$b" owned; done
    drop "$CONFIG_DIR/ferryd.toml" config "$SRC/deploy/ferryd.toml"
    drop "$CONFIG_DIR/ferry-dataplane.env" config "$SRC/deploy/ferry-dataplane.env"
    drop "$DOC_DIR/config.md" owned
    if [ "$SYSTEMD" = 1 ]; then
      for u in ferry-dataplane.service ferryd.service; do drop "$SYSTEMD_DIR/$u" owned; done
    fi
  fi
  echo "install.sh: $n_removed removed, $n_kept kept, $n_absent not present"
  if [ "$CNI_ONLY" = 0 ] && [ "$SYSTEMD" = 1 ] && [ -z "$ROOT" ]; then
    echo "install.sh: stop the services first if they run: systemctl disable --now ferryd ferry-dataplane"
  fi
  exit 0
fi

BINS=(ferry)
[ "$CNI_ONLY" = 1 ] || BINS+=(ferryd ferry-dataplane ferryctl)
for b in "${BINS[@]}"; do
  [ -x "$FROM/$b" ] || die "$FROM/$b not found: build first (cargo build --release --workspace --bins) or pass --from DIR"
done

n_installed=0 n_updated=0 n_unchanged=0 n_kept=0
KEPT=()

# put SRC DEST MODE KIND: install SRC's content at $ROOT$DEST.
# KIND "owned" (replaced when it differs) or "config" (kept when it differs).
put() {
  local src=$1 dest=$ROOT$2 mode=$3 kind=$4
  if [ -e "$dest" ] && cmp -s "$src" "$dest"; then
    [ "$(stat -c %a "$dest")" = "$mode" ] || chmod "$mode" "$dest"
    echo "unchanged  $dest"; n_unchanged=$((n_unchanged + 1)); return
  fi
  if [ -e "$dest" ] && [ "$kind" = config ] && [ "$FORCE" = 0 ]; then
    echo "kept       $dest (edited locally, differs from the shipped version; --force replaces it)"
    n_kept=$((n_kept + 1)); KEPT+=("$dest"); return
  fi
  mkdir -p "$(dirname "$dest")"
  local verb=installed
  if [ -e "$dest" ]; then
    verb=updated
    if [ "$kind" = config ]; then
      mkdir -p "$ROOT$CONFIG_DIR"
      cp -p "$dest" "$ROOT$CONFIG_DIR/$(basename "$dest").bak"
      verb="replaced"
    fi
  fi
  # Same-directory temp file + rename: a running binary or a reader of the
  # conflist never sees a half-written file.
  local tmp
  tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
  cat "$src" > "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  if [ "$verb" = replaced ]; then
    echo "replaced   $dest (old one saved as $ROOT$CONFIG_DIR/$(basename "$dest").bak)"
  else
    echo "$(printf '%-10s' "$verb") $dest"
  fi
  if [ "$verb" = installed ]; then n_installed=$((n_installed + 1)); else n_updated=$((n_updated + 1)); fi
}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# The CNI plugin and its network configuration.
put "$FROM/ferry" "$CNI_BIN_DIR/ferry" 755 owned
if command -v python3 >/dev/null; then
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); assert any(p.get("type")=="ferry" for p in c["plugins"])' \
    "$SRC/cni/10-ferry.conflist" || die "$SRC/cni/10-ferry.conflist is not a ferry conflist"
fi
put "$SRC/cni/10-ferry.conflist" "$CNI_CONF_DIR/10-ferry.conflist" 644 config

if [ "$CNI_ONLY" = 0 ]; then
  for b in ferryd ferry-dataplane ferryctl; do
    put "$FROM/$b" "$BIN_DIR/$b" 755 owned
  done
  put "$SRC/deploy/ferryd.toml" "$CONFIG_DIR/ferryd.toml" 644 config
  put "$SRC/deploy/ferry-dataplane.env" "$CONFIG_DIR/ferry-dataplane.env" 644 config
  put "$SRC/docs/config.md" "$DOC_DIR/config.md" 644 owned
  if [ "$SYSTEMD" = 1 ]; then
    # The shipped units name the default paths; point them at this install's.
    for u in ferry-dataplane.service ferryd.service; do
      sed -e "s|/usr/local/bin/|$BIN_DIR/|g" \
          -e "s|/etc/ferry/|$CONFIG_DIR/|g" \
          -e "s|/usr/local/share/doc/ferry/|$DOC_DIR/|g" \
          "$SRC/deploy/systemd/$u" > "$STAGE/$u"
      put "$STAGE/$u" "$SYSTEMD_DIR/$u" 644 owned
    done
  fi
  # A kept config must still be one ferryd accepts.
  if ! err=$("$FROM/ferryd" --config "$ROOT$CONFIG_DIR/ferryd.toml" --print-default-config 2>&1 >/dev/null); then
    echo "install.sh: WARNING: $ROOT$CONFIG_DIR/ferryd.toml is not valid: $err" >&2
  fi
fi

echo "install.sh: $n_installed installed, $n_updated updated, $n_unchanged unchanged, $n_kept kept"
if ((${#KEPT[@]})); then
  echo "install.sh: kept locally edited: ${KEPT[*]} (compare with $SRC; --force to replace)"
fi
if [ "$CNI_ONLY" = 0 ] && [ "$SYSTEMD" = 1 ] && [ -z "$ROOT" ]; then
  echo "install.sh: next: systemctl daemon-reload && systemctl enable --now ferry-dataplane ferryd"
fi
