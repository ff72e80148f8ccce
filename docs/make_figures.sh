#!/usr/bin/env bash
# Regenerates the README's pictures (docs/img/) from a recorded learn_to_see run:
#   .venv/bin/emergence record learn_to_see && docs/make_figures.sh [runs/learn_to_see.h5]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/learn_to_see.h5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/emergence replay "$run" --out "$tmp" --layers conv1 --every 2
cp "$tmp/conv1.gif" docs/img/learn_to_see_conv1.gif
cp "$tmp/curves.png" docs/img/learn_to_see_curves.png
ls -l docs/img
