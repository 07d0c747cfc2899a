#!/usr/bin/env bash
# A hash of what snn_fast._C is built from (setup.py and csrc/), printed: scripts/gpu_build_ext.sh
# records it beside the carried library, and the GPU check's build stage compares it with the tree's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
{ echo setup.py; find csrc -type f | LC_ALL=C sort; } | while read -r f; do printf '%s\n' "$f"; cat "$f"; done \
  | sha256sum | cut -c1-16
