#!/usr/bin/env bash
# Run on a machine with internet, in the repository root, before the GPU check: downloads the wheels
# the GPU image lacks (SpikingJelly 2.0.0 and loguru, for the W1 peer rows; snnTorch 1.0.0 for the
# opt-in swap-in stage) for its Python 3.12 into
# .whl/ (git-ignored). Carry .whl with the tree: the device tool's `carry: [".whl"]`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.whl}"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d "$DEST" spikingjelly==2.0.0 loguru==0.7.3 snntorch==1.0.0
ls -la "$DEST"
