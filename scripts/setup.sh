#!/usr/bin/env bash
# One-time machine setup for Debian 12/13 and Ubuntu 22.04/24.04: a Python 3.11-3.13 with venv,
# the Debian packages the project and its tests need, nox, and the hash-pinned aarch64 ExecuTorch
# wheel the cross-build test uses. The Python stack itself is installed by nox into .nox/stack on
# first use (pinned in pyproject.toml). Everything is checked first; what is missing is said, with
# the command that fixes it.
set -euo pipefail
say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 && SUDO="sudo" || SUDO="__none__"
fi
apt_install() {
  [ "$SUDO" = "__none__" ] && die "missing Debian packages: $*; install them as root: apt-get install -y $*"
  command -v apt-get >/dev/null 2>&1 || die "missing packages ($*) and no apt-get: this script supports Debian and Ubuntu; install their equivalents by hand"
  say "installing Debian packages: $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# ---- Python 3.11-3.13 (the versions the pinned stack ships wheels for) ----
PY=""
for candidate in "${MBV3_PYTHON:-}" python3 python3.13 python3.12 python3.11; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  if "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null; then
    PY="$(command -v "$candidate")"; break
  fi
done
if [ -z "$PY" ]; then
  found="$(python3 --version 2>&1 || echo 'no python3')"
  die "needs Python 3.11, 3.12 or 3.13 (found: $found). Debian 12: apt-get install python3 (3.11); Debian 13: python3 (3.13); Ubuntu 24.04: python3 (3.12); Ubuntu 22.04: apt-get install python3.11 python3.11-venv; or set MBV3_PYTHON=/path/to/python3.1x"
fi
PYV="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
say "Python $PYV at $PY"

# ---- Debian packages ----
DEBIAN_PACKAGES=(
  dataset-fashion-mnist   # real training/calibration/parity images (MIT)
  adb                     # Android device harness (tests drive the real client)
  qemu-user-static        # runs the aarch64 native runner in tests (correctness only)
  g++-aarch64-linux-gnu   # cross-compiles the native runner for aarch64
)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # venv with pip (ensurepip): Debian and Ubuntu split it out of the interpreter
  if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    case "$PY" in /usr/bin/*) missing+=("python${PYV}-venv") ;; *) die "$PY has no venv/ensurepip module; install its venv package" ;; esac
  fi
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
else
  say "not a Debian/Ubuntu system: make sure ${DEBIAN_PACKAGES[*]} (or equivalents) are installed"
fi

# ---- nox (>= 2024.3), in a venv of its own: a Debian/Ubuntu system Python refuses pip installs (PEP 668) ----
TOOLS="${XDG_DATA_HOME:-$HOME/.local/share}/mbv3-mobile/nox-venv"
nox_ok() { "$1" --version 2>&1 | "$PY" -c 'import sys; v = sys.stdin.read().strip().split(".")[0]; sys.exit(0 if v.isdigit() and int(v) >= 2024 else 1)'; }
if command -v nox >/dev/null 2>&1 && nox_ok nox; then
  say "nox $(nox --version 2>&1) already on PATH"
else
  if [ ! -x "$TOOLS/bin/nox" ] || ! nox_ok "$TOOLS/bin/nox"; then
    say "installing nox into $TOOLS"
    "$PY" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "nox>=2024.3"
  fi
  # A folder on PATH for the `nox` command: /usr/local/bin when we may write there, else ~/.local/bin.
  if [ -w /usr/local/bin ] || [ "$SUDO" = "sudo" ]; then
    ${SUDO#__none__} ln -sf "$TOOLS/bin/nox" /usr/local/bin/nox
    say "nox linked as /usr/local/bin/nox"
  else
    mkdir -p "$HOME/.local/bin" && ln -sf "$TOOLS/bin/nox" "$HOME/.local/bin/nox"
    case ":$PATH:" in *":$HOME/.local/bin:"*) say "nox linked as ~/.local/bin/nox" ;;
      *) die "nox is installed as ~/.local/bin/nox, which is not on PATH: run export PATH=\"\$HOME/.local/bin:\$PATH\" (add it to ~/.profile) and run the command again" ;; esac
  fi
fi

# ---- the aarch64 ExecuTorch wheel for the cross-build test, pinned by sha256 (tests never download) ----
WHEELS="${MBV3_WHEELS:-$HOME/.cache/mbv3-mobile/wheels}"
WHEEL="executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl"
SHA="8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a"
if ! (cd "$WHEELS" 2>/dev/null && echo "$SHA  $WHEEL" | sha256sum -c --status 2>/dev/null); then
  say "fetching $WHEEL (hash-pinned) into $WHEELS"
  mkdir -p "$WHEELS"
  tmp="$(mktemp -d)"
  PIP_PY="$PY"
  [ -x "$TOOLS/bin/python" ] && PIP_PY="$TOOLS/bin/python"
  if "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
       --python-version 3.11 executorch==1.5.1 -d "$tmp" 2>/dev/null \
     && (cd "$tmp" && echo "$SHA  $WHEEL" | sha256sum -c --status); then
    mv "$tmp/$WHEEL" "$WHEELS/$WHEEL"
  else
    say "warning: could not fetch $WHEEL with its pinned sha256 (no PyPI access?); the aarch64 runner test will be skipped"
  fi
  rm -rf "$tmp"
fi
say "done: run 'nox -s export_android' (or 'nox -s tests')"
