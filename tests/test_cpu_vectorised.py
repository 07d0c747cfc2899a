"""The CPU kernels' hot loops must vectorise: a scalar loop computes the same numbers (every other test
passes) several times slower. The loops marked ``// [vec]`` in csrc/cpu/lif_cpu_kernels_impl.h are
compiled here, float32, with setup.py's flags, for the default timing with a built-in surrogate
(sigmoid) and a given one (a user's g′), and GCC's vectoriser report must say "loop vectorized" at
each marked line and never "couldn't vectorize loop" there. This caught a walk that GCC left scalar
(8× slower at W4) when its body was a lambda applied twice per pass."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "cpu", "lif_cpu_kernels_impl.h")
MARK = "// [vec]"

# Calls that instantiate every marked loop (compiled only, never run): the forward, the re-run and
# walk without parameter gradients, and the walks with them (bwd_block: recharging from V_{t−1};
# bwd_block_params: from the kept H and ∂H/∂k), each with the built-in sigmoid and with a given g′.
SOURCE = r"""
#include "lif_cpu_kernels_impl.h"
using namespace snn_fast;
using namespace snn_fast::cpu_lif;

template <int SG>
void instantiate(const float* f, float* o, bool* m, double* d, const Given<float, float>& gv, LIFParams<float> p) {
  fwd_block<true, true, false, false, kResetAfterFire, float, float>(f, f, m, o, o, nullptr, o, o, 64, 4, 64, p);
  bwd_block_fast<SG, true, true, false, false, float, float>(f, f, nullptr, f, f, m, gv, o, o, o, o, 64, 64, 4, 64,
                                                             p);
  bwd_block<SG, true, true, false, false, kResetAfterFire, float, float>(f, f, nullptr, f, f, m, gv, o, o, o, o, o,
                                                                          64, 64, 4, 64, p, d);
  bwd_block_params<SG, true, true, false, float, float>(f, f, nullptr, f, f, gv, o, o, o, o, o, o, 64, 64, 4, 64, p,
                                                        d);
}
template void instantiate<kSigmoid>(const float*, float*, bool*, double*, const Given<float, float>&,
                                    LIFParams<float>);
template void instantiate<kGivenSurrogate>(const float*, float*, bool*, double*, const Given<float, float>&,
                                           LIFParams<float>);
"""


def _gcc():
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return None
    ver = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return cxx if ("GCC" in ver or "Free Software Foundation" in ver) and "clang" not in ver else None


def _marked_loops():
    """(first, last) line of each marked loop: the marked `for` line to its closing brace. GCC reports
    an `omp simd` loop at a line of its body, a plain loop at the `for`."""
    with open(HEADER) as f:
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

    marked = _marked_loops()
    assert len(marked) >= 9, f"expected the [vec] marks in {HEADER}, found {marked}"
    src = tmp_path / "vec_check.cpp"
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
    name = re.escape(os.path.basename(HEADER))
    vectorised, missed = [], []
    for m in re.finditer(rf"{name}:(\d+):\d+: (optimized: loop vectorized|missed: couldn't vectorize loop)", text):
        (vectorised if m.group(2).startswith("optimized") else missed).append(int(m.group(1)))

    def inside(lines, loop):
        return any(loop[0] <= ln <= loop[1] for ln in lines)

    not_vectorised = [lo for lo in marked if not inside(vectorised, lo)]
    scalar_somewhere = [lo for lo in marked if inside(missed, lo)]
    assert not not_vectorised and not scalar_somewhere, (
        f"{HEADER}: marked loops (first, last line) never vectorised: {not_vectorised}; left scalar in some "
        f"instantiation: {scalar_somewhere} (GCC -fopt-info-vec; report {report})")
