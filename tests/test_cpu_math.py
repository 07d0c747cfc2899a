"""The CPU kernels compute exp, exp2 and log as polynomials (csrc/include/snn_fast/surrogate.h) so
their loops vectorise. Their accuracy is part of every float32 gradient, so it is checked here
directly: tests/cpu_math_check.cpp is compiled with the host C++ compiler (as the extension is) and
scans every 61st float of each domain against double libm. Plain and, where the CPU has it, the
x86-64-v3 build with FMA contraction (the backward walk's clone) are both checked.

Bounds: the header promises relative errors of 2.0e-7 (exp), 2.2e-7 (exp2 for z <= 0) and 2e-7
(log) — a little under 2 float32 ulps, each a measured maximum rounded up.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "cpu_math_check.cpp")
BOUND = {"exp_poly": 2.0e-7, "exp2_poly_nonpos": 2.2e-7, "log_poly": 2.0e-7}


def _compiler():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _has_x86_64_v3():
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx2", "fma", "bmi2", "f16c", "movbe"))


FLAVOURS = [pytest.param(["-ffp-contract=off"], id="plain"),
            pytest.param(["-march=x86-64-v3", "-ffp-contract=fast"], id="x86-64-v3-fma",
                         marks=pytest.mark.skipif(not _has_x86_64_v3(), reason="CPU lacks x86-64-v3"))]


@pytest.mark.skipif(_compiler() is None, reason="no C++ compiler found")
@pytest.mark.parametrize("flags", FLAVOURS)
def test_poly_math_accuracy(flags, tmp_path):
    exe = tmp_path / "cpu_math_check"
    cmd = [_compiler(), "-O2", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", *flags,
           "-I", os.path.join(ROOT, "csrc", "include"), SRC, "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe), "61"], check=True, capture_output=True, text=True, timeout=600).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    for name, bound in BOUND.items():
        err, worst_x = float(rows[name][0]), rows[name][1]
        assert err <= bound, f"{name}: max relative error {err:.3g} at x = {worst_x} exceeds {bound:.2g}"
    assert rows["nan_propagates"] == ["1", "1", "1"], "a NaN input must give NaN"
    # At the clamp: 2^-126 exactly for exp2, exp(-87.3) for exp (both normal, no garbage exponent).
    assert float(rows["clamped"][0]) == 2.0 ** -126
    assert abs(float(rows["clamped"][1]) / 1.2192e-38 - 1) < 1e-3
    # Below it: exactly 0, as libm's exp(-inf), so g'(±inf) is the reference's 0 (surrogate.h).
    assert [float(v) for v in rows["flushed"]] == [0.0] * 5
    # exp(0) = 2^0 = 1 exactly, so the sigmoid surrogate's peak is exactly alpha/4.
    assert rows["exact"] == ["1", "1"]
