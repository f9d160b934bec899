#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh installs on a GPU machine that has no registry (run this where
# pip can reach one; then carry bench/wheels with the checkout). Only downloads: nothing is installed.
#   bench/fetch_wheels.sh [--with-onnxruntime-gpu]
# --with-onnxruntime-gpu also fetches pyproject's pinned onnxruntime-gpu (~256 MB: over a 64 MiB carry
# limit; for machines that take bigger checkouts). GPU_CHECK_WHEELS: another folder; GPU_CHECK_PYVER: another
# Python (default 3.12).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest="${GPU_CHECK_WHEELS:-$here/wheels}"
pyver="${GPU_CHECK_PYVER:-3.12}"  # the GPU machine's python3 (KINDS.md: 3.12.3)
mkdir -p "$dest"
reqs=$(grep -v '^#' "$here/gpu_check_requirements.txt" | awk 'NF==2 {print $2}')
if [[ "${1:-}" == "--with-onnxruntime-gpu" ]]; then
  pin=$(grep -o '"onnxruntime-gpu==[^"]*"' "$here/../pyproject.toml" | head -1 | tr -d '"')
  reqs="$reqs $pin"
fi
# shellcheck disable=SC2086
python3 -m pip download --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" $reqs
du -sh "$dest"
