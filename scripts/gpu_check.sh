#!/usr/bin/env bash
# The GPU check: one call on a GPU machine (no internet), ≤ 8 minutes, ≤ 8 files back in $OUT.
#
#   OUT=/some/dir scripts/gpu_check.sh            # on the GPU machine, from anywhere
#   OUT=/tmp/dry scripts/gpu_check.sh --dry-run   # the same stages on a CPU machine, tiny sizes
#   scripts/gpu_check.sh --full                   # everything (no 8-minute budget), then the test suite
#
# Stages (scripts/gpu/check.py, each with its own timeout, results written after each one):
#   env → triton-lif → w1-triton → build (in the background from 'env' on) → cuda-lif → w1-cuda →
#   autotable → tempotron → memcheck → models → overhead (→ lab with --lab or --full; → ddp, w2 with --full).
#   Only some: --only overhead,lab (alias --stages).  See README "Running the GPU check".
#
# Environment: PYTHON (default python3), OUT (default ./gpu_check_out), WHL_DIR (default ./.whl: wheels
# that the GPU image lacks, made by scripts/gpu_prepare.sh; installed offline into a temporary folder),
# TMPDIR (default /tmp: where that folder and the check's work folder go; both are removed at the end,
# the work folder unless SNN_FAST_GPU_CHECK_KEEP_WORK is set).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
WHL_DIR="${WHL_DIR:-$ROOT/.whl}"
# In $TMPDIR (default /tmp), removed when the check ends, however it ends: it used to be left behind by
# every run (the check was exec'd, so nothing was left to remove it). A signal runs the traps once the
# check, in the foreground (so it got the signal too when it was sent to the group), has ended.
SITE="$(mktemp -d "${TMPDIR:-/tmp}/snn_fast_site.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
if ls "$WHL_DIR"/*.whl >/dev/null 2>&1; then
  # --target, not the interpreter's site-packages: the image is left as it was.
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHL_DIR"/*.whl \
    || echo "installing the wheels of $WHL_DIR failed: their benchmark rows will be missing"
else
  echo "no wheels in $WHL_DIR (scripts/gpu_prepare.sh makes them): SpikingJelly rows will be missing"
fi
# A PYTHONPATH already set comes first (the compat suite runs the dry run against its own build).
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT:$SITE"
export PYTHON
"$PYTHON" scripts/gpu/check.py "$@"
exit $?
