"""The CUDA kernels compile for sm_80 and sm_90 without register spills, and their thread bodies
compute the right thing, checked on any machine with nvcc (no GPU and no CUDA build of torch
needed: the kernel units include only CUDA headers and our own).

- Each unit is compiled once, for both architectures in one nvcc call, with ``-Xptxas -v``; the
  ptxas report is parsed per (architecture, kernel).
- ``csrc/cuda/emulate/lif_emulate.cu`` runs the kernels' own per-thread bodies on the host, thread
  by thread; its results are compared with the reference (float64/float32 with ``assert_close``,
  float16/bfloat16 with ``assert_close_lowp``), for every surrogate and reset variant, both vector
  widths, with and without the noise mask and parameter gradients. It checks the kernels' logic, not
  the device math library (tests/test_lif.py's 'cuda' backend does that on a GPU).
- The emulated kernels on ±inf, NaN and ±0.9·max inputs (the cases of tests/test_cpp_special_values.py):
  the reference's NaN and infinity positions, and an all-True noise mask bitwise equal to none; the
  fp16/bf16 saved state's sign bit is the forward's spike (NaN and H − θ = −0 included).
- mul_rn on the device: the charge and the reset compiled to PTX hold no fma (a plain-operator
  control does, so the probe can see one).
- The fused batch-norm + LIF kernels (bn_lif.cu): compiled here for both architectures (spills
  checked); their thread bodies (bn_lif_kernels.cuh) are emulated the same way by
  ``csrc/cuda/emulate/bn_lif_emulate.cu``, driven as their torch binding drives them, in
  tests/test_cuda_bn_lif_emulate.py (which reuses this file's nvcc lookup and ``_compile_emulator``).

Skipped, with the reason, when nvcc is not found. ``SNN_FAST_NVCC`` names a specific nvcc.

``SNN_FAST_NVCC_CACHE`` (the Makefile sets it to build/nvcc-test-cache): a folder where each
successful compile's report (and the emulator's library) is kept under a hash of everything it read:
the command, nvcc's and the host compiler's versions, and every file under csrc/include and
csrc/cuda. None of these compiles reads torch, so ``make compat``, the same suite right after
``make test``, gets the same ptxas reports from it instead of ~10 minutes of nvcc on CI's 2 cores.
Unset: every run compiles.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import ctypes
import itertools

import pytest
import torch

from conftest import assert_close, assert_close_lowp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
EMULATOR = os.path.join(ROOT, "csrc", "cuda", "emulate", "lif_emulate.cu")
ARCHS = ("80", "90")
# Kernels whose spills would cost bandwidth on every element: the T loops.
HOT = ("lif_fwd_kernel", "lif_bwd_kernel", "lif_bwd_rc_kernel")
# Every hot instantiation must be present: fwd = 4 dtypes × 2 widths, bwd = × 2 (PARAM); the
# save="recompute" backward = 4 dtypes × PARAM at one width (kRcVec).
EXPECTED_HOT = {"lif_fwd_kernel": 8, "lif_bwd_kernel": 16, "lif_bwd_rc_kernel": 8}


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


CACHE = os.environ.get("SNN_FAST_NVCC_CACHE") or None


@functools.lru_cache(maxsize=None)
def _tool_versions() -> str:
    """nvcc's version and its host compiler's (nvcc runs the first c++ on PATH)."""
    out = []
    for cmd in ([NVCC, "--version"], ["c++", "--version"]):
        try:
            out.append(subprocess.run(cmd, capture_output=True, text=True).stdout)
        except OSError as e:
            out.append(repr(e))
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def _sources_digest() -> str:
    """A hash of every file the compiles may include: csrc/include and csrc/cuda, names and bytes."""
    h = hashlib.sha256()
    for top in ("include", "cuda"):
        for path in sorted(glob.glob(os.path.join(ROOT, "csrc", top, "**", "*"), recursive=True)):
            if os.path.isfile(path):
                h.update(os.path.relpath(path, ROOT).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read() + b"\0")
    return h.hexdigest()


def _cached(cmd: list, outdir: str, outfile: str | None, run):
    """``run()`` -> (rc, text), or its earlier result from CACHE. The key is the command with ``outdir``
    made neutral, the tools' versions and the sources; only a success is kept (a failure, or a
    transient one such as running out of memory, always compiles again). ``outfile`` (in ``outdir``):
    a product the tests use, kept and restored beside the report."""
    if CACHE is None:
        return run()
    key = hashlib.sha256(json.dumps([[a.replace(outdir, "<out>") for a in cmd], _tool_versions(),
                                     _sources_digest()]).encode()).hexdigest()[:32]
    entry = os.path.join(CACHE, key)
    if os.path.isfile(os.path.join(entry, "report.json")):
        with open(os.path.join(entry, "report.json")) as f:
            rep = json.load(f)
        if outfile is not None:
            shutil.copyfile(os.path.join(entry, os.path.basename(outfile)), outfile)
        return rep["rc"], rep["text"]
    rc, text = run()
    if rc == 0:
        tmp = entry + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        if outfile is not None:
            shutil.copyfile(outfile, os.path.join(tmp, os.path.basename(outfile)))
        with open(os.path.join(tmp, "report.json"), "w") as f:
            json.dump({"rc": rc, "text": text}, f)
        try:
            os.rename(tmp, entry)  # whole or absent: another worker may have stored it meanwhile
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc, text


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def _compile(unit: str, outdir: str):
    cmd = [NVCC, "-std=c++17", "-O3", "-I", os.path.join(ROOT, "csrc", "include"),
           "-I", os.path.join(ROOT, "csrc", "cuda"),
           "-Xptxas", "-v", "-Werror", "all-warnings", "-c", unit,
           "-o", os.path.join(outdir, os.path.basename(unit) + ".o")]
    for a in ARCHS:
        cmd[1:1] = ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    rc, text = _cached(cmd, outdir, None, lambda: _run(cmd))
    return cmd, rc, text


def _compile_emulator(outdir: str, source: str = EMULATOR):
    """A host emulator (csrc/cuda/emulate/*.cu) as a shared library in ``outdir``: (cmd, rc, output, path)."""
    out = os.path.join(outdir, "lib" + os.path.splitext(os.path.basename(source))[0] + ".so")
    # -ffp-contract=off as the extension (setup.py): nvcc's host compiler contracts a·b + c by default
    # where the target has FMA, and the emulated charge would then round unlike the device's mul_rn.
    cmd = [NVCC, "-std=c++17", "-O2", "-shared", "-Xcompiler", "-fPIC,-ffp-contract=off", "-I",
           os.path.join(ROOT, "csrc", "include"),
           "-I", os.path.join(ROOT, "csrc", "cuda"), source, "-o", out]
    rc, text = _cached(cmd, outdir, out, lambda: _run(cmd))
    return cmd, rc, text, out


@pytest.fixture(scope="module")
def build_dir():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.fixture(scope="module")
def compiled(build_dir):
    """Compile every unit and the host emulator once (two at a time: CI has 2 cores)."""
    assert UNITS, "no csrc/cuda/*.cu units found"
    with ThreadPoolExecutor(max_workers=2) as pool:
        emu = pool.submit(_compile_emulator, build_dir)
        results = dict(zip(UNITS, pool.map(lambda u: _compile(u, build_dir), UNITS)))
        results["emulator"] = emu.result()
    return results


@pytest.mark.parametrize("unit", [os.path.basename(u) for u in UNITS])
def test_unit_compiles(compiled, unit):
    cmd, rc, text = compiled[os.path.join(ROOT, "csrc", "cuda", unit)]
    assert rc == 0, f"nvcc failed ({' '.join(cmd)}):\n{text}"
    assert not re.search(r"\berror\b", text, re.I), text


def test_hot_kernels_do_not_spill(compiled):
    stats = {}
    for key, (_, rc, text, *_) in compiled.items():
        if key == "emulator":
            continue
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


def test_nvcc_cache_reuses_only_an_identical_successful_compile(tmp_path, monkeypatch):
    """_cached: the same command (in another output folder) and sources give the stored report and
    product without running; a failure is not stored; another command, other tool versions or an
    edited source compile again."""
    import test_cuda_compile as m
    monkeypatch.setattr(m, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(m, "_tool_versions", lambda: "nvcc 1")
    monkeypatch.setattr(m, "_sources_digest", lambda: "sources 1")
    runs = []

    def build(outdir, rc=0, cmd_tail="-O3"):
        out = os.path.join(outdir, "lib.so")
        cmd = ["nvcc", cmd_tail, "-o", out]

        def run():
            runs.append(cmd)
            with open(out, "w") as f:
                f.write(f"product {len(runs)}")
            return rc, f"report {len(runs)}"
        return m._cached(cmd, outdir, out, run), out

    for d in ("a", "b", "c", "d", "e", "f", "g"):
        (tmp_path / d).mkdir()
    (rc, text), _ = build(str(tmp_path / "a"))
    assert (rc, text, len(runs)) == (0, "report 1", 1)
    (rc, text), out = build(str(tmp_path / "b"))  # another temporary folder: the same compile
    assert (rc, text, len(runs)) == (0, "report 1", 1)
    assert open(out).read() == "product 1"  # the product restored where the caller looks
    assert build(str(tmp_path / "c"), cmd_tail="-O2")[0] == (0, "report 2")
    assert build(str(tmp_path / "d"), rc=1, cmd_tail="-G")[0] == (1, "report 3")
    assert build(str(tmp_path / "e"), cmd_tail="-G")[0] == (0, "report 4")  # the failure was not kept
    monkeypatch.setattr(m, "_tool_versions", lambda: "nvcc 2")
    assert build(str(tmp_path / "f"))[0] == (0, "report 5")
    monkeypatch.setattr(m, "_sources_digest", lambda: "sources 2")
    assert build(str(tmp_path / "g"))[0] == (0, "report 6")


def test_sources_digest_sees_every_header(tmp_path, monkeypatch):
    """The cache key's source hash changes with any file's bytes or name under csrc/include and
    csrc/cuda (headers in subfolders too), and with nothing else."""
    import test_cuda_compile as m
    # a tree of its own (built from parts: these files are not the repository's)
    inc, emu, cpu = (tmp_path.joinpath("csrc", *parts) for parts in (("include", "snn_fast"), ("cuda", "emulate"),
                                                                    ("cpu",)))
    for d in (inc, emu, cpu):
        d.mkdir(parents=True)
    (inc / "first").write_text("a")
    (emu / "second").write_text("b")
    (cpu / "third").write_text("c")
    monkeypatch.setattr(m, "ROOT", str(tmp_path))
    digest = m._sources_digest.__wrapped__
    d0 = digest()
    (cpu / "third").write_text("c2")  # not read by the nvcc compiles
    assert digest() == d0
    (emu / "second").write_text("b2")
    d1 = digest()
    assert d1 != d0
    (inc / "first").rename(inc / "renamed")
    assert digest() not in (d0, d1)


# ---------------------------------------------------------------------------------------------
# Host emulation of the kernels' thread bodies against the reference.

DTYPE_ID = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
VEC = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8, torch.float64: 2}


@pytest.fixture(scope="module")
def emulator(compiled):
    cmd, rc, text, path = compiled["emulator"]
    assert rc == 0, f"host emulator failed to build ({' '.join(cmd)}):\n{text}"
    lib = ctypes.CDLL(path)
    P, I, L, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    # the last int: v0_uniform (v0 [1], every neuron's start)
    lib.emu_lif_fwd.argtypes = [I, I, L, L] + [P] * 8 + [I, I, D, I, I, D, I, I]
    lib.emu_lif_bwd.argtypes = [I, I, L, L] + [P] * 10 + [I, P, I, I, D, I, I, D, I, I]
    lib.emu_lif_fwd_rc.argtypes = [I, I, L, L] + [P] * 8 + [I, I, D, I, I, D, I, I]
    lib.emu_lif_bwd_rc.argtypes = [I, L, L] + [P] * 10 + [I, P, I, I, D, I, I, D, I, I]
    return lib


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _unpack(flags):
    """(sg, hard, vr, di, det, κ, strict): the strict threshold is off when left out (the CUDA kernels run the
    reset after the spike only)."""
    sg, hard, vr, di, det, kappa, *rest = flags
    return sg, hard, vr, di, det, kappa, int(bool(rest and rest[0]))


def emulate(lib, x, v0, params, mask, flags, gs, gvl, gvs, need_param, wide):
    """fwd + bwd through the emulated kernels; outputs start as NaN so unwritten elements show. v0 [1]
    for N > 1 is every neuron's start (the binding's uniform_v0)."""
    T, N = x.shape
    nan = float("nan")
    uni = int(v0.numel() == 1 and N > 1)
    s, v_seq = torch.full_like(x, nan), torch.full_like(x, nan)
    v_last, saved = x.new_full((N,), nan), torch.full_like(x, nan)
    sg, hard, vr, di, det, kappa, strict = _unpack(flags)
    dt = DTYPE_ID[x.dtype]
    assert lib.emu_lif_fwd(dt, int(wide), T, N, _ptr(x), _ptr(v0), _ptr(params), _ptr(mask), _ptr(s), _ptr(v_last),
                           _ptr(v_seq), _ptr(saved), sg, int(hard), vr, int(di), int(det), kappa, strict, uni) == 0
    gx, gv0 = torch.full_like(x, nan), torch.full_like(v0, 7.0)  # 7: a uniform start's NaN must be written
    gp = torch.zeros_like(params)
    assert lib.emu_lif_bwd(dt, int(wide), T, N, _ptr(gs), _ptr(gvl), _ptr(gvs), _ptr(x), _ptr(v0), _ptr(params),
                           _ptr(mask), _ptr(saved), _ptr(gx), _ptr(gv0), int(need_param), _ptr(gp), sg, int(hard), vr,
                           int(di), int(det), kappa, strict, uni) == 0
    return dict(s=s, v_last=v_last, v_seq=v_seq, grad_x=gx, grad_v0=gv0, grad_params=gp)


def emulate_rc(lib, x, v0, params, mask, flags, gs, gvl, gvs, need_param, wide):
    """The same through the save="recompute" pair: forward with V checkpoints, backward re-running it."""
    from snn_fast.ops.lif.contract import checkpoint_rows

    T, N = x.shape
    nan = float("nan")
    uni = int(v0.numel() == 1 and N > 1)
    s, v_seq = torch.full_like(x, nan), torch.full_like(x, nan)
    v_last = x.new_full((N,), nan)
    ckpt = torch.full((max(checkpoint_rows(T), 1), N), nan, dtype=params.dtype)
    sg, hard, vr, di, det, kappa, strict = _unpack(flags)
    dt = DTYPE_ID[x.dtype]
    assert lib.emu_lif_fwd_rc(dt, int(wide), T, N, _ptr(x), _ptr(v0), _ptr(params), _ptr(mask), _ptr(s),
                              _ptr(v_last), _ptr(v_seq), _ptr(ckpt), sg, int(hard), vr, int(di), int(det), kappa,
                              strict, uni) == 0
    gx, gv0 = torch.full_like(x, nan), torch.full_like(v0, 7.0)  # 7: a uniform start's NaN must be written
    gp = torch.zeros_like(params)
    assert lib.emu_lif_bwd_rc(dt, T, N, _ptr(gs), _ptr(gvl), _ptr(gvs), _ptr(x), _ptr(v0), _ptr(params), _ptr(mask),
                              _ptr(ckpt), _ptr(gx), _ptr(gv0), int(need_param), _ptr(gp), sg, int(hard), vr, int(di),
                              int(det), kappa, strict, uni) == 0
    return dict(s=s, v_last=v_last, v_seq=v_seq, grad_x=gx, grad_v0=gv0, grad_params=gp), ckpt


def reference(x, v0, params, mask, flags, gs, gvl, gvs, sg_name):
    from snn_fast import surrogate as _sg
    from snn_fast.ops.lif.args import RESET_TIMINGS, LIFFlags
    from snn_fast.ops.lif.reference import lif_reference_k

    sg, hard, vr, di, det, kappa, strict = _unpack(flags)
    x = x.detach().clone().requires_grad_(True)
    v0 = v0.detach().clone().requires_grad_(True)
    k, theta, alpha = (p.detach().clone().requires_grad_(True) for p in params.unbind())
    fl = LIFFlags(surrogate_id=sg, hard_reset=hard, v_reset=vr, decay_input=di, detach_reset=det,
                  reset_residual=kappa, fire_at_threshold=not strict, reset_timing=RESET_TIMINGS[0])
    s, v_last, v_seq = lif_reference_k(x, v0, k, theta, alpha, fl, _sg.get(sg_name), mask, return_v_seq=True)
    gx, gv0, gk, gth, gal = torch.autograd.grad((s, v_last, v_seq), (x, v0, k, theta, alpha), (gs, gvl, gvs),
                                                allow_unused=True)
    zero = torch.zeros((), dtype=params.dtype)
    gp = torch.stack([(g if g is not None else zero).to(params.dtype) for g in (gk, gth, gal)])
    return dict(s=s.detach(), v_last=v_last.detach(), v_seq=v_seq.detach(), grad_x=gx, grad_v0=gv0, grad_params=gp)


# (hard_reset, v_reset, decay_input, detach_reset, κ, k[, strict threshold]): every reset/charge/gradient
# path of docs/spec.md §2 the CUDA kernels run (the reset after the spike only; the op's reset_timing 0).
EMU_VARIANTS = {
    "hard0": (True, 0.0, True, False, 0.0, 0.5),
    "hard-neg_decayx": (True, -0.3, False, False, 0.0, 0.25),
    "soft": (False, 0.0, True, False, 0.0, 0.4),
    "soft_detach_kappa": (False, 0.0, True, True, 0.2, 0.5),
    "hard_detach_kappa_if": (True, 0.0, False, True, 0.2, 0.0),
    "soft_strict": (False, 0.0, False, False, 0.0, 0.25, True),
    "hard_strict_decayx_kappa": (True, 0.0, True, False, 0.2, 0.5, True),
}


def _case(dtype, variant, sg_name, T=7, N=96, noisy=False, seed=0):
    from snn_fast import surrogate as _sg

    g = torch.Generator().manual_seed(seed)
    hard, vr, di, det, kappa, k, *strict = EMU_VARIANTS[variant]
    sg = _sg.get(sg_name)
    alpha = 2.5 if sg_name == "q_pseudo_spike" else (sg.alpha or 1.0)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = torch.tensor([k, 0.9, alpha], dtype=pdtype)
    x = (torch.randn(T, N, generator=g, dtype=torch.float64) * 1.2 + 0.5).to(dtype)
    v0 = (torch.rand(N, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    mask = (torch.rand(T, N, generator=g) >= 0.4) if noisy else None
    gs, gvs = (torch.randn(T, N, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    gvl = torch.randn(N, generator=g, dtype=torch.float64).to(dtype)
    flags = (sg.id, hard, vr, di, det, kappa) + tuple(strict)
    if strict and not di:  # 8 neurons land exactly on θ at the first step: H = 0 − 0·k + θ
        v0[:8] = 0.0
        x[0, :8] = params[1].to(dtype)
    return x, v0, params, mask, flags, gs, gvl, gvs


@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("variant", list(EMU_VARIANTS))
@pytest.mark.parametrize("sg_name", ["sigmoid", "atan", "rectangle", "triangle", "piecewise_exp", "soft_sign",
                                     "super_spike", "erf", "q_pseudo_spike", "straight_through", "spike_gate"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_kernels_match_reference(emulator, dtype, sg_name, variant, noisy):
    args = _case(dtype, variant, sg_name, noisy=noisy)
    want = reference(*args, sg_name)
    for wide in (True, False):
        got = emulate(emulator, *args, need_param=True, wide=wide)
        for key in want:
            assert_close(got[key], want[key], dtype=dtype, name=f"{sg_name}/{variant}/wide={wide} {key}")


@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("variant", ["hard0", "soft_detach_kappa", "hard-neg_decayx"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_kernels_low_precision(emulator, dtype, variant, noisy):
    """fp16/bf16 storage, fp32 arithmetic: within the low-precision bound of conftest, and the
    spikes exactly those of float32 arithmetic on the same inputs (the saved spike bit)."""
    args = _case(dtype, variant, "sigmoid", T=12, N=256, noisy=noisy)
    x, v0, params, mask, flags, gs, gvl, gvs = args
    want_lowp = reference(*args, "sigmoid")
    up = [t.double() if t is not None and t.is_floating_point() else t for t in args[:4]]
    want64 = reference(up[0], up[1], up[2].double(), mask, flags, gs.double(), gvl.double(), gvs.double(), "sigmoid")
    want32 = reference(x.float(), v0.float(), params, mask, flags, gs.float(), gvl.float(), gvs.float(), "sigmoid")
    for wide in (True, False):
        got = emulate(emulator, *args, need_param=True, wide=wide)
        if not noisy:
            assert torch.equal(got["s"].float(), want32["s"]), "spikes differ from float32 arithmetic"
        for key in want64:
            assert_close_lowp(got[key], want64[key], want_lowp[key].to(dtype), name=f"{dtype}/{variant} {key}")


def test_emulated_kernels_without_optional_inputs(emulator):
    """No grad_v_last / grad_v_seq, no parameter gradient: zeros assumed, grad_params untouched."""
    x, v0, params, mask, flags, gs, gvl, gvs = _case(torch.float64, "hard0", "sigmoid")
    want = reference(x, v0, params, mask, flags, gs, torch.zeros_like(gvl), torch.zeros_like(gvs), "sigmoid")
    got = emulate(emulator, x, v0, params, mask, flags, gs, None, None, need_param=False, wide=True)
    for key in ("s", "v_last", "grad_x", "grad_v0"):
        assert_close(got[key], want[key], name=key)
    assert torch.equal(got["grad_params"], torch.zeros_like(params))


@pytest.mark.parametrize("N", [1, 5, 8 * 256 + 3])
def test_emulated_kernels_ragged_n(emulator, N):
    """N not a multiple of the vector width or of the block: the scalar path covers every neuron."""
    args = _case(torch.float32, "soft", "atan", T=3, N=N)
    want = reference(*args, "atan")
    got = emulate(emulator, *args, need_param=True, wide=False)
    for key in want:
        assert_close(got[key], want[key], dtype=torch.float32, name=f"N={N} {key}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["hard0", "hard-neg_decayx", "soft_detach_kappa"])
def test_emulated_uniform_start(emulator, dtype, variant):
    """v0 [1] (the op's start for v0=None or a float: lif_checks.h uniform_v0): every output bit for bit
    what the same start given per neuron gives, on both paths (state and recompute, 16-byte and scalar,
    with and without parameter gradients), except ∂L/∂v0: [1] and NaN, written (it starts at 7)."""
    for need_param, wide in itertools.product((False, True), (True, False)):
        # several blocks of 256 threads; the scalar path with a ragged tail
        x, v0, params, mask, flags, gs, gvl, gvs = _case(dtype, variant, "sigmoid", T=19,
                                                         N=2 * 256 * 8 + (0 if wide else 3))
        one = v0[:1].clone()
        per_neuron = one.expand(v0.numel()).contiguous()
        runs = [("state", lambda v: emulate(emulator, x, v, params, mask, flags, gs, gvl, gvs, need_param, wide)),
                ("recompute", lambda v: emulate_rc(emulator, x, v, params, mask, flags, gs, gvl, gvs, need_param,
                                                   wide)[0])]
        for path, run in runs:
            want, got = run(per_neuron), run(one)
            where = f"{path}/param={need_param}/wide={wide}"
            for key in ("s", "v_last", "v_seq", "grad_x", "grad_params"):
                assert torch.equal(got[key], want[key]), f"{where} {key}"
            assert got["grad_v0"].shape == (1,) and got["grad_v0"].isnan().all(), f"{where} grad_v0"
            assert not want["grad_v0"].isnan().any(), f"{where}: the per-neuron start's gradient"


# ---------------------------------------------------------------------------------------------
# save="recompute": lif_bwd_rc_thread and the forward's checkpoints, emulated.


def test_emulated_recompute_chunk_is_the_package_chunk(emulator):
    from snn_fast.ops.lif.contract import RECOMPUTE_CHUNK

    assert emulator.emu_rc_chunk() == RECOMPUTE_CHUNK


@pytest.mark.parametrize("T", [5, 8, 19], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("variant", list(EMU_VARIANTS))
@pytest.mark.parametrize("sg_name", ["sigmoid", "q_pseudo_spike", "spike_gate"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_recompute_matches_reference_and_state(emulator, dtype, sg_name, variant, noisy, T):
    """One segment (T < K, T = K) and three (T = 2K + 3: checkpoints written and read, steps past T
    skipped): the reference's results, the state path's bit for bit (the host runs the same
    lif_step.h functions on the same H, without FMA contraction), and checkpoint c = V after step
    (c + 1)·K, i.e. v_seq's row."""
    args = _case(dtype, variant, sg_name, T=T, noisy=noisy)
    want = reference(*args, sg_name)
    # the state path at one neuron per thread, as the recompute backward: the same per-block sums
    state = emulate(emulator, *args, need_param=True, wide=False)
    for wide in (True, False):  # the forward's width
        got, ckpt = emulate_rc(emulator, *args, need_param=True, wide=wide)
        for key in want:
            assert_close(got[key], want[key], dtype=dtype, name=f"{sg_name}/{variant}/T={T}/wide={wide} {key}")
            assert torch.equal(got[key], state[key]), f"{key}: recompute differs from the state path"
        K = emulator.emu_rc_chunk()
        rows = (T + K - 1) // K - 1
        for c in range(rows):
            assert torch.equal(ckpt[c].to(dtype), got["v_seq"][(c + 1) * K - 1]), f"checkpoint {c}"


@pytest.mark.parametrize("need_param", [False, True], ids=["noparam", "param"])
@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_recompute_low_precision(emulator, dtype, noisy, need_param):
    """fp16/bf16 storage: the state path's forward bit for bit (spikes included), gradients within
    the low-precision bound (the re-run H is float32, the state path's H − θ was rounded to b)."""
    args = _case(dtype, "soft_detach_kappa", "sigmoid", T=19, N=256, noisy=noisy)
    x, v0, params, mask, flags, gs, gvl, gvs = args
    want_lowp = reference(*args, "sigmoid")
    up = [t.double() if t is not None and t.is_floating_point() else t for t in args[:4]]
    want64 = reference(up[0], up[1], up[2].double(), mask, flags, gs.double(), gvl.double(), gvs.double(), "sigmoid")
    state = emulate(emulator, *args, need_param=need_param, wide=False)
    got, _ = emulate_rc(emulator, *args, need_param=need_param, wide=True)
    for key in ("s", "v_last", "v_seq"):
        assert torch.equal(got[key], state[key]), key
    for key in ("grad_x", "grad_v0") + (("grad_params",) if need_param else ()):
        assert_close_lowp(got[key], want64[key], want_lowp[key].to(dtype), name=f"{dtype} {key}")


@pytest.mark.parametrize("N", [1, 5, 8 * 256 + 3])
def test_emulated_recompute_ragged_n_and_optional_inputs(emulator, N):
    x, v0, params, mask, flags, gs, gvl, gvs = _case(torch.float32, "soft", "atan", T=11, N=N)
    want = reference(x, v0, params, mask, flags, gs, torch.zeros_like(gvl), torch.zeros_like(gvs), "atan")
    got, _ = emulate_rc(emulator, x, v0, params, mask, flags, gs, None, None, need_param=False, wide=False)
    for key in ("s", "v_last", "grad_x", "grad_v0"):
        assert_close(got[key], want[key], dtype=torch.float32, name=f"N={N} {key}")
    assert torch.equal(got["grad_params"], torch.zeros_like(params))


# ---------------------------------------------------------------------------------------------
# mul_rn on the device: the charge and the reset keep every product rounded on its own.

PTX_PROBE = r"""
#include "snn_fast/lif_step.h"
using namespace snn_fast;
template <typename T> __global__ void charge_di(const T* v, const T* x, T* h, LIFParams<T> p) {
  h[threadIdx.x] = lif_charge<true>(v[threadIdx.x], x[threadIdx.x], p);
}
template <typename T> __global__ void charge_plain(const T* v, const T* x, T* h, LIFParams<T> p) {
  h[threadIdx.x] = lif_charge<false>(v[threadIdx.x], x[threadIdx.x], p);
}
template <typename T> __global__ void reset_hard(const T* v, const T* x, T* h, LIFParams<T> p) {
  h[threadIdx.x] = lif_reset<true>(v[threadIdx.x], x[threadIdx.x], p);
}
template <typename T> __global__ void reset_soft(const T* v, const T* x, T* h, LIFParams<T> p) {
  h[threadIdx.x] = lif_reset<false>(v[threadIdx.x], x[threadIdx.x], p);
}
// The control: the charge with plain operators, which nvcc contracts (so the probe can see an fma).
template <typename T> __global__ void control(const T* v, const T* x, T* h, LIFParams<T> p) {
  h[threadIdx.x] = v[threadIdx.x] + (x[threadIdx.x] - (v[threadIdx.x] - p.vr)) * p.k;
}
#define INST(K) template __global__ void K<float>(const float*, const float*, float*, LIFParams<float>); \
                template __global__ void K<double>(const double*, const double*, double*, LIFParams<double>);
INST(charge_di) INST(charge_plain) INST(reset_hard) INST(reset_soft) INST(control)
"""


def test_device_charge_and_reset_are_not_contracted(tmp_path):
    src, ptx = tmp_path / "probe.cu", tmp_path / "probe.ptx"
    src.write_text(PTX_PROBE)
    cmd = [NVCC, "-std=c++17", "-O3", "-ptx", "-arch=sm_80", "-I", os.path.join(ROOT, "csrc", "include"), str(src),
           "-o", str(ptx)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bodies = re.findall(r"\.entry\s+(\S+?)\((.*?)^\}", ptx.read_text(), re.S | re.M)
    assert len(bodies) == 10, [n for n, _ in bodies]
    for name, body in bodies:
        fused = re.findall(r"\bfma\.rn\.f(32|64)", body)
        if "control" in name:
            assert fused, f"{name}: nvcc did not contract the plain charge: the probe cannot see an fma"
        else:
            assert not fused, f"{name}: contracted into an fma (mul_rn is not holding):\n{body}"
            assert re.search(r"\bmul\.rn\.f(32|64)", body), f"{name}: no explicitly rounded product:\n{body}"


# ---------------------------------------------------------------------------------------------
# Special values through the emulated thread bodies (the CPU kernel gets the same checks in
# tests/test_cpp_special_values.py, which defines the cases).


@pytest.mark.parametrize("need_param", [False, True], ids=["noparam", "param"])
@pytest.mark.parametrize("variant", ["hard0", "hard-neg_decayx", "soft_decayx_kappa", "soft_detach",
                                     "hard_detach_kappa_if"])
@pytest.mark.parametrize("sg_name", ["sigmoid", "straight_through", "spike_gate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_emulated_kernels_special_values_match_reference(emulator, dtype, sg_name, variant, need_param):
    from test_cpp_special_values import assert_matches_reference, drop_known_deviation, special_case

    x, v0, params, flags, gs, gvl, gvs = special_case(dtype, variant, sg_name, N=72)
    want = drop_known_deviation(reference(x, v0, params, None, flags, gs, gvl, gvs, sg_name), flags, sg_name)
    if not need_param:
        want.pop("grad_params", None)
    for wide in (True, False):
        got = emulate(emulator, x, v0, params, None, flags, gs, gvl, gvs, need_param=need_param, wide=wide)
        assert_matches_reference(got, want, dtype, f"{sg_name}/{variant}/wide={wide}")


@pytest.mark.parametrize("variant", ["hard0", "hard-neg_decayx", "soft_decayx_kappa", "hard_detach"])
@pytest.mark.parametrize("sg_name", ["sigmoid", "straight_through"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_emulated_all_true_mask_is_bitwise_unmasked(emulator, dtype, sg_name, variant):
    from test_cpp_special_values import assert_bitwise_equal, special_case

    x, v0, params, flags, gs, gvl, gvs = special_case(dtype, variant, sg_name, N=72)
    ones = torch.ones(x.shape, dtype=torch.bool)
    for wide in (True, False):
        plain = emulate(emulator, x, v0, params, None, flags, gs, gvl, gvs, need_param=True, wide=wide)
        masked = emulate(emulator, x, v0, params, ones, flags, gs, gvl, gvs, need_param=True, wide=wide)
        for key in plain:
            assert_bitwise_equal(masked[key], plain[key], f"{dtype}/{sg_name}/{variant}/wide={wide} {key}")


@pytest.mark.parametrize("wide", [True, False], ids=["wide", "scalar"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_lowp_saved_state_sign_is_the_spike(emulator, dtype, wide):
    """fp16/bf16 save H − θ with the sign bit set exactly where the forward did not spike: NaN (no
    spike, whatever its sign) and H − θ = −0 (a spike: −0 ≥ 0) included. IF with θ = 0 and soft reset,
    so H − θ = H = V_t, which v_seq returns."""
    from snn_fast import surrogate as _sg

    inf, nan = float("inf"), float("nan")
    # H per neuron (k = 0: H = V + (X − V)·0): −0, +0, NaN, +0, +0, 2, −2, NaN ((inf − 1)·0).
    xs = torch.tensor([-1.0, 1.0, nan, 0.0, -0.0, 3.0, -3.0, inf] * 2, dtype=torch.float64)
    v0 = torch.tensor([-0.0, -0.0, -0.0, -0.0, -0.0, 2.0, -2.0, 1.0] * 2, dtype=torch.float64).to(dtype)
    T, N = 3, xs.numel()
    x = xs.expand(T, N).contiguous().to(dtype)
    params = torch.tensor([0.0, 0.0, 4.0])
    s, v_seq = torch.full_like(x, nan), torch.full_like(x, nan)
    v_last, saved = torch.full_like(v0, nan), torch.full_like(x, nan)
    assert emulator.emu_lif_fwd(DTYPE_ID[dtype], int(wide), T, N, _ptr(x), _ptr(v0), _ptr(params), None, _ptr(s),
                                _ptr(v_last), _ptr(v_seq), _ptr(saved), _sg.get("sigmoid").id, 0, 0.0, 1, 0,
                                0.0, 0, 0) == 0
    h = v_seq.float()
    assert torch.signbit(h[:, 0]).all() and (h[:, 0] == 0).all(), "the case must produce H = −0"
    assert h[:, 2].isnan().all() and h[:, 7].isnan().all()
    spike = h >= 0
    assert torch.equal(s.float() == 1, spike)
    sign_clear = ~torch.signbit(saved.float())
    assert torch.equal(sign_clear, spike), f"saved {saved} vs spikes {spike}"
    fin = ~h.isnan()
    assert torch.equal(saved.float().abs()[fin], h.abs()[fin])
    assert saved.float()[~fin].isnan().all()


# The bn_lif kernels (csrc/cuda/bn_lif.cu, docs/spec.md §12): compiled for both architectures, every
# storage dtype; no spills and no stack frame (the backward's 8-step segments stay in registers: its
# float64 instantiation may take up to 255 of them, the others 64, by its launch bounds). Their torch
# binding (bn_lif_cuda_binding.cpp, backend='cuda') has run on a GPU once, before this layout; their thread bodies
# (bn_lif_kernels.cuh) are checked on the host against the reference by tests/test_cuda_bn_lif_emulate.py,
# driven by a torch transcription of the binding's host algebra (the binding itself runs only on a GPU).
BN_LIF_KNOWN_SPILLS: set = set()


def test_bn_lif_kernels_compile_without_spills(compiled):
    _, rc, text = compiled[os.path.join(ROOT, "csrc", "cuda", "bn_lif.cu")]
    assert rc == 0, text
    stats = parse_ptxas(text)
    for arch in ARCHS:
        for kernel in ("bnlif_forward", "bnlif_backward", "bnlif_dx"):
            found = {n: st for (a, n), st in stats.items() if a == arch and kernel in n}
            assert len(found) == 4, f"sm_{arch}: expected 4 {kernel} instantiations, found {len(found)}"
            for n, st in found.items():
                known = any(a == arch and k in n for a, k in BN_LIF_KNOWN_SPILLS)
                spills = st["spill_stores"] + st["spill_loads"]
                assert bool(spills) == known, f"sm_{arch} {n}: {st} (known spill: {known})"
                assert known or st["stack"] == 0, f"sm_{arch} {n} uses a stack frame: {st}"
        # the reductions: channel totals (acc float/double), ∂params (per acc), the
        # statistics' chunk pass (4 storage dtypes × index) and their finish (4)
        for kernel, count in (("bnlif_channels", 2), ("bnlif_params", 2), ("bnlif_stats_part", 8),
                              ("bnlif_stats_finish_kernel", 4)):
            found = {n: st for (a, n), st in stats.items() if a == arch and kernel in n}
            assert len(found) == count, f"sm_{arch}: expected {count} {kernel} instantiations, found {sorted(found)}"
            for n, st in found.items():
                assert st["spill_stores"] + st["spill_loads"] == 0 and st["stack"] == 0, f"sm_{arch} {n}: {st}"
