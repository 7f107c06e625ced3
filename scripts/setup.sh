#!/usr/bin/env bash
# One-time machine setup: Debian packages the project and its tests need, and nox.
# The Python stack itself is installed by nox into .nox/stack on first use (pinned in pyproject.toml).
set -euo pipefail

DEBIAN_PACKAGES=(
  dataset-fashion-mnist   # real training/calibration/parity images (MIT)
  adb                     # Android device harness (tests drive the real client)
  qemu-user-static        # runs the aarch64 native runner in tests (correctness only)
  g++-aarch64-linux-gnu   # cross-compiles the native runner for aarch64
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip --version >/dev/null
if ! python3 -m nox --version >/dev/null 2>&1; then
  echo "[setup] installing nox"
  python3 -m pip install -q "nox>=2024.3"
fi
echo "[setup] done: run 'nox -s export_android' (or 'nox -s tests')"
