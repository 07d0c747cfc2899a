#!/usr/bin/env bash
# One-shot check on a GPU machine (no internet needed): build the CUDA extension, run the whole test
# suite on CUDA, run compute-sanitizer on a small subset, run the GPU benchmarks and measure the
# backend autotable. Logs and CSVs go to $OUT (default ./gpu_check_out).
#
#   OUT=/some/dir scripts/gpu_check.sh            # from anywhere; runs in the repository root
#
# Environment:
#   PYTHON      interpreter with torch (CUDA build), triton, ninja, pytest   (default: python3)
#   OUT         output folder                                               (default: ./gpu_check_out)
#   WHL_DIR     folder of wheels (e.g. spikingjelly) installed offline if present
#               (default: the first of ./.whl ./whl ./wheels ./shared/.whl ./shared/whl that exists)
#   MAX_JOBS    parallel compile jobs                                       (default: nproc)
#   TORCH_CUDA_ARCH_LIST   default: this GPU's compute capability (faster build than 8.0;9.0)
#   SKIP_BENCH=1           skip the benchmarks and the autotable
#
# Every stage runs even if an earlier one failed (except: no build, no tests); the summary at the
# end lists each stage's exit status and the script exits non-zero if any stage failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

declare -a SUMMARY=()
FAILED=0
stage() {  # stage NAME LOGFILE CMD...: run CMD, tee its output into $OUT/LOGFILE, record the status
  local name="$1" log="$OUT/$2"
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S)) -> $log"
  "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-28s rc=%s  %s' "$name" "$rc" "$log")")
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

# --- environment -------------------------------------------------------------------------------
{
  date -u
  git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
  git -C "$ROOT" status --short 2>/dev/null | head -20 || true
  nvidia-smi || true
  command -v nvcc && nvcc --version || echo "nvcc not on PATH"
  command -v compute-sanitizer || echo "compute-sanitizer not on PATH"
  "$PYTHON" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except ImportError as e:
    print("triton not importable:", e)
EOF
} 2>&1 | tee "$OUT/env.txt"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch: nothing to check here" | tee -a "$OUT/env.txt"
  exit 2
fi

# --- offline wheels (peers for the benchmarks) -------------------------------------------------
if [ -z "${WHL_DIR:-}" ]; then
  for d in "$ROOT/.whl" "$ROOT/whl" "$ROOT/wheels" "$ROOT/shared/.whl" "$ROOT/shared/whl"; do
    if [ -d "$d" ]; then WHL_DIR="$d"; break; fi
  done
fi
if [ -n "${WHL_DIR:-}" ] && ls "$WHL_DIR"/*.whl >/dev/null 2>&1; then
  stage "install offline wheels" pip_wheels.log \
    "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHL_DIR" "$WHL_DIR"/*.whl
else
  echo "no wheel folder: peers (e.g. SpikingJelly) not installed, their benchmark rows are skipped"
fi

# --- build -------------------------------------------------------------------------------------
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
fi
export TORCH_CUDA_ARCH_LIST
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
rm -f "$ROOT"/snn_fast/_C*.so
if ! stage "build extension (CUDA $TORCH_CUDA_ARCH_LIST)" build.log "$PYTHON" setup.py build_ext --inplace; then
  echo "build failed; see $OUT/build.log"
  printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
  exit 1
fi
stage "CUDA kernels registered" registered.log "$PYTHON" - <<'EOF'
import sys
from snn_fast import _ext
print("HAS_C", _ext.HAS_C, "CPU", _ext.has_kernel("lif_fwd", "CPU"), "CUDA", _ext.has_kernel("lif_fwd", "CUDA"))
sys.exit(0 if _ext.has_kernel("lif_fwd", "CUDA") and _ext.has_kernel("lif_bwd", "CUDA") else 1)
EOF

# --- tests -------------------------------------------------------------------------------------
# -rs lists every skip with its reason: on this machine the CUDA tests must not be among them.
stage "pytest (full suite)" pytest.log \
  "$PYTHON" -m pytest tests -q -rs --junitxml="$OUT/pytest.xml"
stage "pytest (CUDA tests, verbose)" pytest_cuda.log \
  "$PYTHON" -m pytest tests/test_lif_cuda.py tests/test_cuda_compile.py -v -rs -s

# --- compute-sanitizer -------------------------------------------------------------------------
if command -v compute-sanitizer >/dev/null 2>&1; then
  # The caching allocator hides out-of-bounds accesses inside its blocks: turn it off.
  SUBSET="shapes or misaligned or no_param_grad or multidim or noisy_spike and sigmoid"
  stage "compute-sanitizer memcheck" memcheck.log \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 50 \
    "$PYTHON" -m pytest tests/test_lif_cuda.py -q -x -k "$SUBSET"
  # Shared-memory races in the parameter-gradient block reduction.
  stage "compute-sanitizer racecheck" racecheck.log \
    compute-sanitizer --tool racecheck --error-exitcode 1 --print-limit 50 \
    "$PYTHON" -m pytest tests/test_lif_cuda.py -q -x -k "param_grads_deterministic or no_param_grad"
  # Every output element written (reads of uninitialised device memory).
  stage "compute-sanitizer initcheck" initcheck.log \
    env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool initcheck --error-exitcode 1 --print-limit 50 \
    "$PYTHON" -m pytest tests/test_lif_cuda.py -q -x -k "shapes"
else
  echo "compute-sanitizer not found: sanitizer stages skipped" | tee "$OUT/memcheck.log"
  SUMMARY+=("compute-sanitizer            skipped (not found)")
fi

# --- benchmarks --------------------------------------------------------------------------------
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  if [ -f "$ROOT/benchmarks/run.py" ]; then
    # The runner writes <device>-<date>.{csv,md,png}; straight into $OUT/bench (commit them under
    # benchmarks/results/ afterwards).
    export SNN_FAST_BENCH_OUT="$OUT/bench"
    stage "benchmarks/run.py" bench.log "$PYTHON" benchmarks/run.py
  else
    echo "benchmarks/run.py not present: skipped"
  fi
  stage "benchmarks/gpu_autotable.py" autotable.log \
    "$PYTHON" benchmarks/gpu_autotable.py --out "$OUT/autotable.json" --csv "$OUT/autotable.csv"
  echo "to use the measured table: cp $OUT/autotable.json snn_fast/ops/lif/autotable.json"
fi

# --- ptxas registers / spills per kernel (printed by tests/test_cuda_compile.py under -s) -------
grep -E "^sm_[0-9]+ " "$OUT/pytest_cuda.log" > "$OUT/ptxas.txt" 2>/dev/null || true

echo
echo "=== summary ($OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
# The device tool returns at most 8 files from $OUT: keep the summary, the benchmark CSV/markdown
# and the autotable loose, and pack every log into one archive.
(cd "$OUT" && tar czf logs.tar.gz --exclude=logs.tar.gz --exclude=summary.txt --exclude=bench \
   --exclude=autotable.json ./* && find . -maxdepth 1 -type f ! -name logs.tar.gz ! -name summary.txt \
   ! -name autotable.json -delete) || true
exit "$FAILED"
