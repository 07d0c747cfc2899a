#!/usr/bin/env bash
# Build the GPU image's snn_fast._C here, on the CPU machine, so that the GPU check spends no device
# time compiling: torch 2.11's CUDA build (the image's, from `make compat`'s .venv-compat), nvcc,
# sm_80 + sm_90, and the stable CPython ABI (setup.py: py_limited_api), so the library built under
# this machine's Python loads under the image's. Output, git-ignored, to carry with the tree
# (the device tool's carry: [".gpu_ext", ".whl"]):
#   .gpu_ext/_C.so       the library, debug info stripped (the carry limit is 64 MiB in all)
#   .gpu_ext/SOURCES     a hash of setup.py and csrc/: the check's build stage uses the library only
#                        when it matches the tree and loads; otherwise it builds on the GPU machine.
#
#   scripts/gpu_build_ext.sh            # ~15 min on 2 cores the first time; nothing when up to date
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTDIR="$ROOT/.gpu_ext"
HASH="$(scripts/gpu_ext_hash.sh)"
if [ -f "$OUTDIR/_C.so" ] && [ "$(cat "$OUTDIR/SOURCES" 2>/dev/null)" = "$HASH" ]; then
  echo "gpu_build_ext: .gpu_ext/_C.so is up to date ($HASH)"
  exit 0
fi
make -s .venv-compat/.deps
rm -rf "$OUTDIR/lib"
TORCH_CUDA_ARCH_LIST="${GPU_EXT_ARCH:-8.0;9.0}" MAX_JOBS="${MAX_JOBS:-2}" .venv-compat/bin/python setup.py -q build_ext \
  --build-lib "$OUTDIR/lib" --build-temp "$OUTDIR/build"
.venv-compat/bin/python - "$OUTDIR/lib/snn_fast/_C.so" <<'PY'
import subprocess, sys
syms = subprocess.run(["nm", "-D", sys.argv[1]], capture_output=True, text=True).stdout
assert "cudaLaunchKernel" in syms, "the library has no CUDA kernels: was nvcc found?"
PY
strip --strip-debug -o "$OUTDIR/_C.so" "$OUTDIR/lib/snn_fast/_C.so"
echo "$HASH" > "$OUTDIR/SOURCES"
ls -la "$OUTDIR/_C.so"
