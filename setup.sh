#!/usr/bin/env bash
# Sets up everything emergence needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST package
# (when apt is available) and a virtual environment in .venv with the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian package dataset-fashion-mnist" >&2
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded on first use" >&2
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The editable install's build backend is chatty; show its log only if it fails.
.venv/bin/python -m pip install -q -e '.[test,video]' >.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
