#!/usr/bin/env bash
# Build the GPU image's snn_fast._C here, on the CPU machine, so that the GPU check spends no device
# time compiling: torch 2.11's CUDA build (the image's, from `make compat`'s .venv-compat), nvcc,
# sm_80 + sm_90, and the stable CPython ABI (setup.py: py_limited_api), so the library built under
# this machine's Python loads under the image's. Output, git-ignored, to carry with the tree
# (the device tool's carry: [".gpu_ext", ".whl"]; the limit is 64 MiB in all):
#   .gpu_ext/_C.so.gz    the library, stripped and gzipped (2026-12-06: 111 MB stripped, 36 MB gzipped;
#                        scripts/gpu/use_prebuilt_ext.py unpacks it into snn_fast/ on the GPU machine)
#   .gpu_ext/SOURCES     a hash of setup.py and csrc/: the check's build stage uses the library only
#                        when it matches the tree and loads; otherwise it builds on the GPU machine.
# The build's objects stay in .gpu_ext_build/ (git-ignored, not carried: hundreds of MB).
#
#   scripts/gpu_build_ext.sh            # ~15 min on 2 cores the first time; nothing when up to date
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="$ROOT/.gpu_ext"
BUILD="$ROOT/.gpu_ext_build"
HASH="$(scripts/gpu_ext_hash.sh)"
if [ -f "$OUTDIR/_C.so.gz" ] && [ "$(cat "$OUTDIR/SOURCES" 2>/dev/null)" = "$HASH" ]; then
  echo "gpu_build_ext: .gpu_ext/_C.so.gz is up to date ($HASH)"
  exit 0
fi
make -s .venv-compat/.deps
rm -rf "$BUILD/lib" "$OUTDIR/lib" "$OUTDIR/build"  # the last two: where an older version built
TORCH_CUDA_ARCH_LIST="${GPU_EXT_ARCH:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-2}" .venv-compat/bin/python setup.py -q build_ext \
  --build-lib "$BUILD/lib" --build-temp "$BUILD/temp"
.venv-compat/bin/python - "$BUILD/lib/snn_fast/_C.so" <<'PY'
import subprocess, sys
syms = subprocess.run(["nm", "-D", sys.argv[1]], capture_output=True, text=True).stdout
assert "cudaLaunchKernel" in syms, "the library has no CUDA kernels: was nvcc found?"
PY
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/_C.so" "$OUTDIR/SOURCES"
strip --strip-all -o "$BUILD/_C.so" "$BUILD/lib/snn_fast/_C.so"
gzip -9 -c "$BUILD/_C.so" > "$OUTDIR/_C.so.gz"
echo "$HASH" > "$OUTDIR/SOURCES"
ls -la "$OUTDIR"
SIZE=$(du -sb "$OUTDIR" | cut -f1)
if [ "$SIZE" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu_build_ext: .gpu_ext is $SIZE bytes, over what the device tool carries with the tree (64 MiB in all)" >&2
  exit 1
fi
