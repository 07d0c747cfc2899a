"""The CUDA kernels compile for sm_80 and sm_90 without register spills, checked on any machine with
nvcc (no GPU and no CUDA build of torch needed: the kernel units include only CUDA headers and our
own). Each unit is compiled once, for both architectures in one nvcc call, with ``-Xptxas -v``; the
ptxas report is parsed per (architecture, kernel).

Skipped, with the reason, when nvcc is not found. ``SNN_FAST_NVCC`` names a specific nvcc.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
ARCHS = ("80", "90")
# Kernels whose spills would cost bandwidth on every element: the T loops.
HOT = ("lif_fwd_kernel", "lif_bwd_kernel")
# Every hot instantiation must be present: fwd = 4 dtypes × 2 widths, bwd = × 2 (PARAM).
EXPECTED_HOT = {"lif_fwd_kernel": 8, "lif_bwd_kernel": 16}


def _find_nvcc():
    cand = [os.environ.get("SNN_FAST_NVCC"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cand.append(os.path.join(home, "bin", "nvcc"))
    for c in cand:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set SNN_FAST_NVCC or CUDA_HOME)")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str):
    """{(arch, mangled name): dict(regs, stack, spill_stores, spill_loads)} from ``-Xptxas -v`` output."""
    out, cur = {}, None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = (m.group(2), m.group(1))
            out[cur] = {}
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _REGS.search(line)
        if m:
            out[cur]["regs"] = int(m.group(1))
    return out


def _demangle(names):
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    r = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) != len(names):
        return {n: n for n in names}
    # "void snn_fast::cuda::(anonymous namespace)::lif_fwd_kernel<float, 4>(…)" -> "lif_fwd_kernel<float, 4>"
    short = [re.sub(r"\(.*$", "", re.sub(r"^void |snn_fast::cuda::|\(anonymous namespace\)::", "", ln)) for ln in lines]
    return dict(zip(names, short))


def _compile(unit: str, outdir: str):
    cmd = [NVCC, "-std=c++17", "-O3", "-I", os.path.join(ROOT, "csrc", "include"), "-I", os.path.join(ROOT, "csrc", "cuda"),
           "-Xptxas", "-v", "-Werror", "all-warnings", "-c", unit,
           "-o", os.path.join(outdir, os.path.basename(unit) + ".o")]
    for a in ARCHS:
        cmd[1:1] = ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def compiled():
    """Compile every unit once (two at a time: CI has 2 cores), keep the ptxas reports."""
    assert UNITS, "no csrc/cuda/*.cu units found"
    with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(UNITS, pool.map(lambda u: _compile(u, d), UNITS)))
    return results


@pytest.mark.parametrize("unit", [os.path.basename(u) for u in UNITS])
def test_unit_compiles(compiled, unit):
    cmd, rc, text = compiled[os.path.join(ROOT, "csrc", "cuda", unit)]
    assert rc == 0, f"nvcc failed ({' '.join(cmd)}):\n{text}"
    assert not re.search(r"\berror\b", text, re.I), text


def test_hot_kernels_do_not_spill(compiled):
    stats = {}
    for _, rc, text in compiled.values():
        assert rc == 0, text
        stats.update(parse_ptxas(text))
    names = _demangle(sorted({n for _, n in stats}))
    print(f"\n{'arch':<6}{'regs':>5}{'stack':>7}{'spill st/ld':>13}  kernel")
    for (arch, n), st in sorted(stats.items(), key=lambda kv: (kv[0][0], names[kv[0][1]])):
        print(f"sm_{arch:<3}{st.get('regs', -1):>5}{st.get('stack', -1):>7}"
              f"{st.get('spill_stores', -1):>7}/{st.get('spill_loads', -1):<5}  {names[n]}")
    for arch in ARCHS:
        for kernel, want in EXPECTED_HOT.items():
            hot = {n: st for (a, n), st in stats.items() if a == arch and kernel in n}
            assert len(hot) == want, f"sm_{arch}: expected {want} {kernel} instantiations, found {len(hot)}"
            for n, st in hot.items():
                assert "spill_stores" in st and "regs" in st, f"sm_{arch} {names[n]}: no ptxas report parsed"
                assert st["spill_stores"] == 0 and st["spill_loads"] == 0, (
                    f"sm_{arch} {names[n]} spills: {st}")
                assert st["stack"] == 0, f"sm_{arch} {names[n]} uses a stack frame: {st}"


def test_parse_ptxas_reads_spills():
    text = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 0 barriers, 360 bytes cmem[0]\n"
    )
    assert parse_ptxas(text) == {("90", "_Z3fooPf"): dict(stack=8, spill_stores=4, spill_loads=12, regs=255)}
