#!/usr/bin/env bash
# Sets up everything emergence needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST package and the
# chromium browser that the viewer's tests drive (when apt is available), and a virtual environment in .venv
# with the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

MISSING=()
[ -d /usr/share/datasets/fashion-mnist ] || MISSING+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || MISSING+=(chromium)  # tests/test_viewer_browser.py; never downloaded by Playwright
command -v h5dump >/dev/null 2>&1 || MISSING+=(hdf5-tools)  # tests/test_reliability.py: HDF5 1.10 readers
if [ ${#MISSING[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${MISSING[*]}" >&2
  $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null \
    || echo "warning: could not install ${MISSING[*]}; Fashion-MNIST will be downloaded on first use, and the browser tests need /usr/bin/chromium" >&2
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The editable install's build backend is chatty; show its log only if it fails.
.venv/bin/python -m pip install -q -e '.[test,video,cluster]' >.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
