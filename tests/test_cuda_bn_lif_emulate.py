"""The fused batch-norm + LIF CUDA kernels (csrc/cuda/bn_lif.cu, docs/spec.md §12) emulated on the host
against the reference, on any machine with nvcc (no GPU and no CUDA build of torch needed).

``csrc/cuda/emulate/bn_lif_emulate.cu`` runs the kernels' own per-thread bodies (bn_lif_kernels.cuh:
forward, backward, dx) for every thread index of the launchers' grid; ``emulate`` below drives them
exactly as csrc/cuda/bn_lif_cuda_binding.cpp does, its host-side algebra rewritten in torch line for
line: a = weight·(rstd·gain), gain = tdbn_alpha·θ or 1; the saved H (save=state) or a scratch the
backward re-runs the forward into (recompute); ``scale_by_a = not batch_stats``; the per-channel sums
of ∂L/∂X' and ∂L/∂X'·(x − m) in float64, ∂weight, ∂bias, the θ term of tdBN; the dx pass's
coefficients [a, −a·rstd²·g1/n, −a·g0/n] with batch statistics. The statistics are taken as
snn_fast/ops/bn_lif/function.py takes them for a non-CPU backend. Every output, the sums and the
scratch H start as NaN, so an element no thread writes shows.

Compared with ``bn_lif_reference_k`` (batch norm, then the LIF reference; gradients by autograd):
float64 and float32 with ``assert_close``, float16/bfloat16 with ``assert_close_lowp`` and the spike
flip bound of tests/test_bn_lif.py. The grid: hard/soft reset, decay_input on/off, detach_reset, κ,
IF, the strict threshold (H = θ exactly included), batch and running statistics, plain BN and tdBN,
the noise mask, save state and recompute, with and without parameter gradients; the shapes: inner = 1
and > 1, C = 1, T = 1, B·S = 1, N below, equal to and past one block (kThreads). The last tests break
the host algebra on purpose and check that the comparison notices.

Skipped, with the reason, when nvcc is not found (``SNN_FAST_NVCC`` names a specific nvcc).
"""
from __future__ import annotations

import ctypes
import os
import tempfile

import pytest
import torch

from conftest import assert_close, assert_close_lowp
from test_cuda_compile import DTYPE_ID, NVCC, ROOT, _compile_emulator, _ptr

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set SNN_FAST_NVCC or CUDA_HOME)")

BN_EMULATOR = os.path.join(ROOT, "csrc", "cuda", "emulate", "bn_lif_emulate.cu")
SAVE_STATE, SAVE_RECOMPUTE = 0, 1  # snn_fast.ops.lif.contract's codes (checked below)
EPS, MOMENTUM = 1e-5, 0.1


@pytest.fixture(scope="module")
def bn_emulator():
    with tempfile.TemporaryDirectory() as d:
        cmd, rc, text, path = _compile_emulator(d, BN_EMULATOR)
        assert rc == 0, f"bn_lif host emulator failed to build ({' '.join(cmd)}):\n{text}"
        lib = ctypes.CDLL(path)
    P, I, L, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    flags = [I, I, D, I, I, D, I]
    lib.emu_bnlif_fwd.argtypes = [I, L, L, L, L] + [P] * 11 + flags
    lib.emu_bnlif_bwd.argtypes = [I, L, L, L, L] + [P] * 11 + [I, I, I] + [P] * 4 + flags
    lib.emu_bnlif_dx.argtypes = [I, L, L, L, L] + [P] * 4
    return lib


def test_save_codes_are_the_package_codes(bn_emulator):
    from snn_fast.ops.lif import contract

    assert (contract.SAVE_STATE, contract.SAVE_RECOMPUTE) == (SAVE_STATE, SAVE_RECOMPUTE)
    assert bn_emulator.emu_bnlif_threads() == 256


# --- the binding, in torch -------------------------------------------------------------------------


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def emulate(lib, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, mask, flags, gs, gvl, gvs,
            save, need_param_grad, return_v_seq=True, mutate=()):
    """bn_lif_fwd_cuda then bn_lif_bwd_cuda (csrc/cuda/bn_lif_cuda_binding.cpp) on the emulated kernels.
    x [T, N]; v0 [N]; params, weight, bias, mean, rstd in params' dtype; flags = (sg, hard, vr, di, det,
    κ, strict). ``mutate`` breaks one step on purpose (test_a_broken_algebra_is_caught)."""
    T, N = x.shape
    C = weight.numel()
    pt = params.dtype
    dt = DTYPE_ID[x.dtype]
    lif_flags = (flags[0], int(flags[1]), flags[2], int(flags[3]), int(flags[4]), flags[5], int(flags[6]))
    # bn_scale
    gain = params[1] * tdbn_alpha if tdbn_alpha > 0 else torch.ones((), dtype=pt)
    a = (weight * (rstd * gain)).contiguous()
    m, b = mean.contiguous(), bias.contiguous()
    k_inner = 1 if "inner" in mutate else inner
    # forward
    s, v_last = _nan((T, N), x.dtype), _nan((N,), x.dtype)
    v_seq = _nan((T, N), x.dtype) if return_v_seq else torch.empty(0, dtype=x.dtype)
    keep_h = save == SAVE_STATE
    saved = _nan((T, N), pt) if keep_h else torch.empty(0, dtype=x.dtype)
    assert lib.emu_bnlif_fwd(dt, T, N, C, k_inner, _ptr(x), _ptr(v0), _ptr(params), _ptr(a), _ptr(m), _ptr(b),
                             _ptr(mask), _ptr(s), _ptr(v_last), _ptr(v_seq) if return_v_seq else None,
                             _ptr(saved) if keep_h else None, *lif_flags) == 0
    # backward
    rerun = save != SAVE_STATE
    if "no_rerun" in mutate:
        rerun = False
    gvlast = None if gvl is None else gvl.to(x.dtype).contiguous()
    gvseq = None if gvs is None or gvs.numel() == 0 else gvs.to(x.dtype).contiguous()
    h = _nan((T, N), pt) if save != SAVE_STATE else saved.contiguous()
    gx, gv0 = _nan((T, N), x.dtype), _nan((N,), x.dtype)
    sums = _nan((2, N), pt)
    psum = _nan((3, N), pt) if need_param_grad else None
    scale_by_a = not batch_stats
    if "scale_by_a" in mutate:
        scale_by_a = not scale_by_a
    assert lib.emu_bnlif_bwd(dt, T, N, C, k_inner, _ptr(gs.contiguous()), _ptr(gvlast), _ptr(gvseq), _ptr(x),
                             _ptr(v0), _ptr(params), _ptr(a), _ptr(m), _ptr(b), _ptr(mask), _ptr(h), int(rerun),
                             int(scale_by_a), int(need_param_grad), _ptr(gx), _ptr(gv0), _ptr(sums), _ptr(psum),
                             *lif_flags) == 0
    # the per-channel algebra, in float64
    ch = sums.view(2, N // (C * inner), C, inner).double().sum((1, 3))
    g0, g1, r = ch[0], ch[1], rstd.double()
    gw = g1 * r * gain.double()
    gp = psum.double().sum(1) if need_param_grad else torch.zeros(3, dtype=torch.float64)
    if need_param_grad and tdbn_alpha > 0 and "theta" not in mutate:  # θ in the gain α·θ
        gp[1] += (g1 * weight.double() * r).sum() * tdbn_alpha
    if batch_stats and N > 0:
        n = float(T) * float(N // C)
        ad = a.double()
        d_term = torch.zeros_like(ad) if "dx_mean" in mutate else -ad * g0 / n
        coef = torch.cat([ad, -ad * r * r * g1 / n, d_term]).to(pt).contiguous()
        assert lib.emu_bnlif_dx(dt, T, N, C, inner, _ptr(x), _ptr(gx), _ptr(coef), _ptr(m)) == 0
    out = dict(s=s, v_last=v_last, grad_x=gx, grad_v0=gv0, grad_params=gp.to(pt), grad_weight=gw.to(pt),
               grad_bias=g0.to(pt))
    if return_v_seq:
        out["v_seq"] = v_seq
    return out, dict(saved=saved, sums=sums, psum=psum)


# --- cases and the reference -----------------------------------------------------------------------

# (hard_reset, v_reset, decay_input, detach_reset, κ, k, strict threshold): the reset, charge and gradient
# paths of docs/spec.md §2 the CUDA kernels run (the reset after the spike only).
VARIANTS = {
    "hard-di": (True, 0.0, True, False, 0.0, 0.5, False),
    "hard-neg-nodi": (True, -0.3, False, False, 0.0, 0.25, False),
    "soft-di-det-kappa": (False, 0.0, True, True, 0.2, 0.4, False),
    "if-hard-det-kappa": (True, 0.0, False, True, 0.2, 0.0, False),
    "soft-nodi-strict": (False, 0.0, False, False, 0.0, 0.3, True),
    "hard-di-kappa-strict": (True, 0.0, True, False, 0.2, 0.5, True),
}
# (batch statistics, tdbn_alpha; 0 = plain batch norm)
MODES = {"batch-bn": (True, 0.0), "batch-tdbn": (True, 0.7), "running-tdbn": (False, 0.7), "running-bn": (False, 0.0)}
SURROGATES = ["sigmoid", "atan", "rectangle", "q_pseudo_spike", "spike_gate", "triangle"]


def make_case(shape, dtype, variant, mode, sg_name="sigmoid", noisy=False, seed=0, theta=1.0):
    """Inputs of one bn_lif call: x [T, B, C, *] and the rest, the parameters in params' dtype."""
    from snn_fast import surrogate as _sg

    g = torch.Generator().manual_seed(seed)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    C = shape[2]
    hard, vr, di, det, kappa, k, strict = VARIANTS[variant]
    sg = _sg.get(sg_name)
    alpha = 2.5 if sg_name == "q_pseudo_spike" else (sg.alpha or 1.0)
    batch, tdbn = MODES[mode]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(dtype)
    return dict(
        x=x, v0=(torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.2).to(dtype),
        weight=(torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pd),
        bias=(torch.randn(C, generator=g, dtype=torch.float64) * 0.3 + 0.5).to(pd),
        rm=(torch.randn(C, generator=g, dtype=torch.float64) * 0.2).to(pd),
        rv=(torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pd),
        params=torch.tensor([k, theta, alpha], dtype=pd),
        mask=(torch.rand(shape, generator=g) >= 0.4) if noisy else None,
        gs=torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        gvl=torch.randn(shape[1:], generator=g, dtype=torch.float64).to(dtype),
        gvs=torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        flags=(sg.id, hard, vr, di, det, kappa, strict), sg_name=sg_name, batch=batch, tdbn=tdbn)


def reference(c, dtype=None, no_grad_outputs=False):
    """Outputs and gradients of ``bn_lif_reference_k`` in ``dtype`` (x's by default), flattened to [T, N]."""
    from snn_fast import surrogate as _sg
    from snn_fast.ops.bn_lif.reference import bn_lif_reference_k
    from snn_fast.ops.lif.args import LIFFlags

    dtype = dtype or c["x"].dtype
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    sg, hard, vr, di, det, kappa, strict = c["flags"]
    fl = LIFFlags(surrogate_id=sg, hard_reset=hard, v_reset=vr, decay_input=di, detach_reset=det,
                  reset_residual=kappa, fire_at_threshold=not strict, reset_timing="after_fire")
    x = c["x"].detach().to(dtype).requires_grad_(True)
    v0 = c["v0"].detach().to(dtype).requires_grad_(True)
    w = c["weight"].detach().to(pd).requires_grad_(True)
    b = c["bias"].detach().to(pd).requires_grad_(True)
    k, theta, alpha = (p.detach().to(pd).requires_grad_(True) for p in c["params"].unbind())
    rm, rv = c["rm"].to(pd).clone(), c["rv"].to(pd).clone()
    s, v_last, v_seq = bn_lif_reference_k(x, w, b, rm, rv, c["batch"], MOMENTUM, EPS, v0, k, theta, alpha, fl,
                                          _sg.get(c["sg_name"]), c["mask"], True, c["tdbn"] or None)
    gs, gvl, gvs = (c[n].to(dtype) for n in ("gs", "gvl", "gvs"))
    if no_grad_outputs:
        gvl, gvs = torch.zeros_like(gvl), torch.zeros_like(gvs)
    grads = torch.autograd.grad((s, v_last, v_seq), (x, v0, k, theta, alpha, w, b), (gs, gvl, gvs),
                                allow_unused=True)
    gx, gv0, gk, gth, gal, gw, gb = (torch.zeros((), dtype=pd) if g is None else g for g in grads)
    T = x.shape[0]
    return dict(s=s.detach().reshape(T, -1), v_last=v_last.detach().reshape(-1), v_seq=v_seq.detach().reshape(T, -1),
                grad_x=gx.reshape(T, -1), grad_v0=gv0.reshape(-1), grad_params=torch.stack([gk, gth, gal]).to(pd),
                grad_weight=gw, grad_bias=gb)


def run(lib, c, save, need_param_grad, no_grad_outputs=False, return_v_seq=True, mutate=()):
    """The case through the emulated binding: statistics as function.py takes them for the CUDA backend."""
    x = c["x"]
    T, C = x.shape[0], x.shape[2]
    inner = x[0, 0, 0].numel()
    x2 = x.reshape(T, -1).contiguous()
    pd = c["params"].dtype
    if c["batch"]:
        var, mean = torch.var_mean(x2.reshape(-1, C, inner).to(pd), dim=(0, 2), correction=0)
    else:
        mean, var = c["rm"].to(pd, copy=True), c["rv"].to(pd)
    rstd = torch.rsqrt(var + EPS)
    mask = None if c["mask"] is None else c["mask"].reshape(T, -1).contiguous()
    gvl = None if no_grad_outputs else c["gvl"].reshape(-1)
    gvs = None if no_grad_outputs else c["gvs"].reshape(T, -1)
    return emulate(lib, x2, c["v0"].reshape(-1).contiguous(), c["params"], c["weight"], c["bias"], mean, rstd,
                   c["tdbn"], inner, c["batch"], mask, c["flags"], c["gs"].reshape(T, -1), gvl, gvs, save,
                   need_param_grad, return_v_seq, mutate)


SAVES = {"state": SAVE_STATE, "recompute": SAVE_RECOMPUTE}


def check_all(lib, c, want, dtype, what, saves=SAVES, params=(True, False), **kw):
    """Every save mode and parameter-gradient setting against ``want``; the state and recompute paths
    also against each other (the same H, bit for bit)."""
    for need_param in params:
        first = None
        for save_name, save in saves.items():
            got, extra = run(lib, c, save, need_param, **kw)
            name = f"{what}/save={save_name}/param={need_param}"
            for key in got:
                if key == "grad_params" and not need_param:
                    assert torch.equal(got[key], torch.zeros_like(got[key])), f"{name}: grad_params not zero"
                    continue
                assert_close(got[key], want[key], dtype=dtype, name=f"{name} {key}")
            if save == SAVE_STATE:
                assert not extra["saved"].isnan().any(), f"{name}: H not written everywhere"
            assert not extra["sums"].isnan().any(), f"{name}: sums not written everywhere"
            if need_param:
                assert not extra["psum"].isnan().any(), f"{name}: psum not written everywhere"
            if first is None:
                first = got
            else:
                for key in got:
                    assert torch.equal(got[key], first[key]), f"{name} {key}: recompute differs from state"


# --- float64: the whole option grid ----------------------------------------------------------------


@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_emulated_bn_lif_float64(bn_emulator, variant, mode, noisy):
    """[T, B, C, S] = [5, 3, 4, 25]: N = 300, one full block and a ragged one."""
    sg_name = SURROGATES[(list(VARIANTS).index(variant) + list(MODES).index(mode)) % len(SURROGATES)]
    c = make_case((5, 3, 4, 5, 5), torch.float64, variant, mode, sg_name, noisy=noisy)
    check_all(bn_emulator, c, reference(c), torch.float64, f"{variant}/{mode}/{sg_name}/noisy={noisy}")


# --- shapes ------------------------------------------------------------------------------------------

SHAPES = {
    "inner1": (4, 3, 6),  # [T, B, C]: no spatial dims, inner = 1
    "c1": (4, 3, 1, 5, 5),  # one channel
    "t1": (1, 4, 3, 4, 4),  # one step
    "bs1": (6, 1, 5),  # B·S = 1: n = T
    "n5": (3, 1, 5),  # N = 5, most of the block idle
    "n256": (2, 4, 4, 4, 4),  # N = kThreads exactly
    "n294-inner49": (3, 2, 3, 7, 7),  # two blocks, ragged
    "n771": (2, 257, 3),  # inner = 1, four blocks, three threads past N in the last
}


@pytest.mark.parametrize("mode", ["batch-tdbn", "running-bn"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_emulated_bn_lif_shapes(bn_emulator, shape, mode):
    c = make_case(SHAPES[shape], torch.float64, "soft-di-det-kappa", mode, "atan", noisy=shape == "n294-inner49")
    check_all(bn_emulator, c, reference(c), torch.float64, f"{shape}/{mode}")


@pytest.mark.parametrize("mode", ["batch-bn", "running-tdbn"])
def test_emulated_bn_lif_without_optional_inputs(bn_emulator, mode):
    """No grad_v_last, no grad_v_seq (zeros assumed), no v_seq written."""
    c = make_case((4, 3, 4, 3, 3), torch.float64, "hard-di", mode)
    want = reference(c, no_grad_outputs=True)
    want.pop("v_seq")
    check_all(bn_emulator, c, want, torch.float64, mode, no_grad_outputs=True, return_v_seq=False)


@pytest.mark.parametrize("strict", [False, True], ids=["at-threshold", "strict"])
@pytest.mark.parametrize("variant", ["soft-nodi-strict", "if-hard-det-kappa"])
def test_emulated_bn_lif_exactly_at_threshold(bn_emulator, variant, strict):
    """Channel 0 lands exactly on θ at t = 0 (running mean 0, x = 0, v0 = 0, bias = θ, no decay of the
    input: H = X' = b): a spike there with fire_at_threshold, none with the strict threshold."""
    c = make_case((3, 4, 3, 2, 2), torch.float64, variant, "running-bn", "sigmoid")
    c["flags"] = c["flags"][:6] + (strict,)
    theta = float(c["params"][1])
    c["rm"][0] = 0.0
    c["bias"][0] = theta
    c["x"][0, :, 0] = 0.0
    c["v0"][:, 0] = 0.0
    want = reference(c)
    s0 = want["s"].view(3, 4, 3, 4)[0, :, 0]
    assert (s0 == (0.0 if strict else 1.0)).all(), "the case must put H exactly on θ"
    check_all(bn_emulator, c, want, torch.float64, f"{variant}/strict={strict}")


# --- float32 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch-bn", "batch-tdbn", "running-tdbn"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_emulated_bn_lif_float32(bn_emulator, variant, mode):
    c = make_case((6, 4, 8, 7, 7), torch.float32, variant, mode, "atan", seed=1)
    check_all(bn_emulator, c, reference(c), torch.float32, f"{variant}/{mode}")


# --- float16 / bfloat16 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("save", list(SAVES))
@pytest.mark.parametrize("mode", ["batch-tdbn", "running-bn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_bn_lif_low_precision(bn_emulator, dtype, mode, save):
    """fp16/bf16 storage, fp32 arithmetic (H saved in fp32): within the low-precision bound of conftest
    and tests/test_bn_lif.py's spike-flip bound."""
    c = make_case((6, 4, 8, 5, 5), dtype, "hard-di", mode, "sigmoid")
    ref64, ref_lp = reference(c, torch.float64), reference(c, dtype)
    got, _ = run(bn_emulator, c, SAVES[save], True)
    for key in ("v_last", "v_seq", "grad_x", "grad_v0", "grad_weight", "grad_bias", "grad_params"):
        assert not got[key].isnan().any(), f"{key}: NaN (an element not written)"
        assert_close_lowp(got[key], ref64[key], ref_lp[key].to(dtype), name=f"{dtype}/{mode}/{save} {key}")
    flips = (got["s"].double() != ref64["s"]).float().mean().item()
    flips_torch = (ref_lp["s"].double() != ref64["s"]).float().mean().item()
    assert flips <= 2 * flips_torch + 1e-3, (flips, flips_torch)


# --- the checks can fail -------------------------------------------------------------------------------

MUTATIONS = {
    "scale_by_a": "running-tdbn",  # ∂L/∂X' unscaled in eval (or scaled twice in training)
    "theta": "batch-tdbn",  # no θ term of the tdBN gain
    "dx_mean": "batch-bn",  # dx without the path through the batch mean
    "inner": "batch-bn",  # the kernels told inner = 1: the wrong channel's a, m, b
    "no_rerun": "batch-bn",  # recompute without re-running the forward: the NaN scratch H is read
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_broken_algebra_is_caught(bn_emulator, mutation):
    c = make_case((4, 3, 4, 3, 3), torch.float64, "hard-di", MUTATIONS[mutation], "sigmoid")
    want = reference(c)
    got, _ = run(bn_emulator, c, SAVE_RECOMPUTE, True, mutate=(mutation,))
    with pytest.raises(AssertionError):
        for key in got:
            assert_close(got[key], want[key], name=key)
