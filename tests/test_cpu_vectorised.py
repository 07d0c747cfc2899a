"""The CPU kernels' hot loops must vectorise: a scalar loop computes the same numbers (every other test
passes) several times slower. The loops marked ``// [vec]`` in csrc/cpu/lif_cpu_kernels_impl.h and
csrc/cpu/bn_lif_cpu_kernels_impl.h are compiled here, float32, with setup.py's flags, for the default
timing with a built-in surrogate (sigmoid) and, for LIF, a given one (a user's g′), and GCC's
vectoriser report must say "loop vectorized" inside each marked loop and never "couldn't vectorize
loop" there. This caught a walk that GCC left scalar
(8× slower at W4) when its body was a lambda applied twice per pass."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = [os.path.join(ROOT, "csrc", "cpu", f) for f in ("lif_cpu_kernels_impl.h", "bn_lif_cpu_kernels_impl.h")]
MARK = "// [vec]"

# Calls that instantiate every marked loop (compiled only, never run): the forward, the re-run and
# walk without parameter gradients, and the walks with them (bwd_block: recharging from V_{t−1}, as the
# hard delayed reset runs it; bwd_block_params: from the kept H and ∂H/∂k, the default
# timing), each with the built-in sigmoid and with a given g′.
SOURCE = r"""
#include "bn_lif_cpu_kernels_impl.h"
using namespace snn_fast;
using namespace snn_fast::cpu_lif;

// Sizes are parameters, not literals, so that no constant propagation can remove a loop.
// bwd_block: the hard delayed reset's walk (it needs V_{t−1}); also the other timings' with parameter
// gradients and every walk under a noise mask.
template <int SG>
void instantiate(const float* f, float* o, bool* m, double* d, const Given<float, float>& gv, LIFParams<float> p,
                 int64_t n, int64_t B, int64_t T, int64_t N) {
  fwd_block<true, true, false, false, kResetAfterFire, float, float>(f, f, m, o, o, nullptr, o, o, n, T, N, p);
  bwd_block_fast<SG, true, true, false, false, float, float>(f, f, nullptr, f, f, m, gv, o, o, o, o, n, B, T, N, p);
  bwd_block<SG, true, true, false, false, kResetDelayed, float, float>(f, f, nullptr, f, f, m, gv, o, o, o, o, o, n, B,
                                                                        T, N, p, d);
  bwd_block_params<SG, true, true, false, float, float>(f, f, nullptr, f, f, gv, o, o, o, o, o, o, n, B, T, N, p, d);
}
template void instantiate<kSigmoid>(const float*, float*, bool*, double*, const Given<float, float>&,
                                    LIFParams<float>, int64_t, int64_t, int64_t, int64_t);
template void instantiate<kGivenSurrogate>(const float*, float*, bool*, double*, const Given<float, float>&,
                                           LIFParams<float>, int64_t, int64_t, int64_t, int64_t);

// bn_lif: statistics, forward, backward without and with parameter gradients, and the input gradient
// (per channel run, and per row for short runs).
void instantiate_bn(const float* f, float* o, bool* m, double* d, LIFParams<float> p, int64_t n, int64_t B,
                    int64_t T, int64_t N, int64_t C, int64_t inner) {
  cpu_bn_lif::run_moments<float>(f, n, d[0], d[1]);
  cpu_bn_lif::fwd_block<true, true, false, float, float>(f, f, m, o, o, nullptr, o, f, f, f, n, T, N, p);
  cpu_bn_lif::bwd_block<kSigmoid, true, true, false, false, false, float, float>(
      f, f, nullptr, f, f, m, o, o, o, o, o, o, f, f, f, n, B, T, N, p, d, d, 0, 0, C, inner);
  cpu_bn_lif::bwd_block<kSigmoid, true, true, false, false, true, float, float>(
      f, f, nullptr, f, f, m, o, o, o, o, o, o, f, f, f, n, B, T, N, p, d, d, 0, 0, C, inner);
  cpu_bn_lif::dx_run<float, float>(f, o, n, 1.f, 1.f, 1.f, 0.f);
  cpu_bn_lif::dx_row<float, float>(f, o, n, f, f, f, f);
}
"""


def _gcc():
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return None
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cxx if ("GCC" in ver or "Free Software Foundation" in ver) and "clang" not in ver else None


def _marked_loops(header):
    """(first, last) line of each marked loop in ``header``: the marked `for` line to its closing
    brace. GCC reports an `omp simd` loop at a line of its body, a plain loop at the `for`."""
    with open(header) as f:
        lines = f.read().split("\n")
    loops = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith(MARK):
            continue
        depth, j = 0, i
        while True:
            code = lines[j].split("//")[0]
            depth += code.count("{") - code.count("}")
            if depth <= 0:
                break
            j += 1
        loops.append((i + 1, j + 1))
    return loops


@pytest.mark.skipif(_gcc() is None, reason="needs GCC (its -fopt-info-vec report)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the build's flags are Linux GCC's")
def test_marked_loops_vectorise(tmp_path):
    pytest.importorskip("torch")
    from torch.utils.cpp_extension import include_paths

    marked = {h: _marked_loops(h) for h in HEADERS}
    assert len(marked[HEADERS[0]]) >= 10 and len(marked[HEADERS[1]]) >= 9, f"expected the [vec] marks, found {marked}"
    src = (tmp_path / "instantiate").with_suffix(".cpp")
    src.write_text(SOURCE)
    report = tmp_path / "vec.txt"
    # setup.py's CPU flags (the extension's cxx list) plus the report
    flags = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
             "-ffp-contract=off", "-std=c++20", "-fPIC", "-DNDEBUG"]
    incs = ["-I", os.path.join(ROOT, "csrc", "include"), "-I", os.path.join(ROOT, "csrc", "cpu")]
    for p in include_paths():
        incs += ["-I", p]
    cmd = [_gcc(), *flags, *incs, f"-fopt-info-vec-all={report}", "-c", str(src), "-o", str(tmp_path / "v.o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    text = report.read_text()
    problems = []
    for header, loops in marked.items():
        name = re.escape(os.path.basename(header))
        vectorised, missed = [], []
        pattern = rf"(?<![\w]){name}:(\d+):\d+: (optimized: loop vectorized|missed: couldn't vectorize loop)"
        for m in re.finditer(pattern, text):
            (vectorised if m.group(2).startswith("optimized") else missed).append(int(m.group(1)))

        def inside(lines, loop):
            return any(loop[0] <= ln <= loop[1] for ln in lines)

        never = [lo for lo in loops if not inside(vectorised, lo)]
        scalar = [lo for lo in loops if inside(missed, lo)]
        if never or scalar:
            problems.append(f"{header}: marked loops (first, last line) never vectorised: {never}; left scalar in "
                            f"some instantiation: {scalar}")
    assert not problems, "\n".join(problems) + f"\n(GCC -fopt-info-vec; report {report})"
