"""Tempotron (docs/spec.md §6): every backend against the seed's dense reference, the modules, errors.

The backends are enumerated as in test_lif.py (``BACKENDS``: cpu, Triton interpreted on CPU tensors,
cuda, Triton on CUDA tensors), each probed once with a tiny ``tempotron`` call; one that cannot run
here skips with the library's reason. Every cross-backend test compares against the reference on the
same device with the conftest tolerances. Spike-time sets cover integer and fractional times,
silent inputs (negative), spikes at 0 and at T − 1 and beyond the window, and B = 1. The Triton
interpreter is slow, so it gets the small shapes only.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from snn_fast import _ext
from snn_fast.nn.tempotron import GaussianTuning, Tempotron
from snn_fast.ops.tempotron import mse_loss, tempotron, tempotron_membrane, tempotron_reference, v0_of
from snn_fast.ops.tempotron.reference import membrane_reference

from conftest import HAS_CUDA, LOWP_ULP, assert_close, assert_close_lowp, nan_filled_allocations
from test_lif import BACKENDS, cases

ROOT = Path(__file__).resolve().parents[1]
HAS_CPU_KERNEL = _ext.has_kernel("tempotron_fwd", "CPU")
requires_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="snn_fast._C not built")

TAU, TAU_S = 15.0, 15.0 / 4


def _unavailable(be):
    if be.device == "cuda" and not HAS_CUDA:
        return f"{be.id}: needs a CUDA device"
    try:
        tempotron(torch.zeros(1, 2, device=be.device), torch.ones(1, 2, device=be.device), 3, backend=be.name)
    except Exception as e:  # noqa: BLE001 - the library's own message is the skip reason
        return f"{be.id}: {type(e).__name__}: {e}"
    return None


SKIP = {b.id: _unavailable(b) for b in BACKENDS}
FUSED = [b for b in BACKENDS if b.name != "reference"]
BY_ID = {b.id: b for b in BACKENDS}


def each(*ids, axes=()):
    return cases([BY_ID[i] for i in ids] if ids else FUSED, *axes, skip=SKIP)


def spike_times(B, I, T, kind, dtype=torch.float64, device="cpu"):
    """Random spike times in [0, T + 3) with ~20 % silent (−1); forced spikes at 0 and T − 1."""
    t = torch.rand(B, I, dtype=torch.float64) * (T + 3)
    if kind == "int":
        t = t.floor()
    elif kind == "frac":  # keep clear of integers so the kink of K at u = 0 is never sampled
        t = t.floor() + 0.05 + 0.9 * torch.rand(B, I, dtype=torch.float64)
    t[torch.rand(B, I) < 0.2] = -1.0
    t[:, 0] = 0.0
    t[:, min(1, I - 1)] = T - 1
    return t.to(dtype=dtype, device=device)


def weights(O, I, dtype=torch.float64, device="cpu"):
    return (torch.randn(O, I, dtype=torch.float64) / math.sqrt(I) * 3).to(dtype=dtype, device=device)


# (B, I, O, T). The interpreter gets the small ones (≤ 70 inputs, ≤ 20 steps).
SHAPES = [(4, 37, 5, 20), (1, 64, 3, 16), (3, 37, 5, 20), (1, 70, 17, 16), (2, 5, 1, 2), (3, 300, 10, 100),
          (4, 200, 10, 100)]
SMALL = [s for s in SHAPES if s[1] <= 70 and s[3] <= 20]


def shape_cases(*axes):
    out = []
    for be in FUSED:
        out += cases([be], ["B{}-I{}-O{}-T{}".format(*s) for s in (SMALL if be.interpreted else SHAPES)], *axes,
                     skip=SKIP)
    return out


def _shape(sid):
    return tuple(int(p[1:]) for p in sid.split("-"))


@pytest.mark.parametrize("be,shape,dtype,kind", shape_cases([torch.float64, torch.float32], ["int", "frac"]))
def test_membrane_matches_reference(be, shape, dtype, kind):
    B, I, O, T = _shape(shape)
    t, w = spike_times(B, I, T, kind, dtype, be.device), weights(O, I, dtype, be.device)
    with nan_filled_allocations():
        v = tempotron_membrane(t, w, T, TAU, TAU_S, backend=be.name)
    ref = tempotron_reference(t, w, T, TAU, TAU_S, ret_type="v")
    assert v.shape == (B, O, T) and v.dtype == dtype
    assert ref.abs().max() > 0.1  # the inputs drive the neurons: a zero output would not pass
    assert_close(v, ref, name="V")


# float32 'spikes' are not compared: an fp32 near-tie may move the argmax (they are, in float64).
@pytest.mark.parametrize("be,shape,dtype,kind,ret_type", [
    p for p in shape_cases([torch.float64, torch.float32], ["int", "frac"], ["v", "v_max", "spikes"])
    if not (p.values[2] == torch.float32 and p.values[4] == "spikes")])
def test_outputs_and_grads_match_reference(be, shape, dtype, kind, ret_type):
    B, I, O, T = _shape(shape)
    t0, w0 = spike_times(B, I, T, kind, dtype, be.device), weights(O, I, dtype, be.device)
    outs, grads = [], []
    for backend in (be.name, "reference"):
        t = t0.clone().requires_grad_(kind == "frac")
        w = w0.clone().requires_grad_(True)
        with nan_filled_allocations():
            out = tempotron(t, w, T, TAU, TAU_S, 1.0, ret_type, backend=backend)
        g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1)).to(be.device)
        (out * g).sum().backward()
        outs.append(out.detach())
        grads.append((w.grad, t.grad))
    expected_shape = (B, O, T) if ret_type == "v" else (B, O)
    assert outs[0].shape == expected_shape
    assert_close(outs[0], outs[1], name=ret_type)
    nontrivial = T > 2  # in 2 steps v_max may sit where no input has arrived yet: a zero gradient is right
    assert not nontrivial or grads[1][0].abs().max() > 0
    assert_close(grads[0][0], grads[1][0], name="grad_w")
    if kind == "frac":
        assert not nontrivial or grads[1][1].abs().max() > 0
        assert_close(grads[0][1], grads[1][1], name="grad_t")


@pytest.mark.parametrize("be,tau_s", each("reference", *[b.id for b in FUSED],
                                           axes=([("tau_s", TAU_S), ("equal", TAU), ("gap1e-9", TAU * (1 - 1e-9))],)))
def test_gradcheck_fp64(be, tau_s):
    """Also at τ_s = τ and 1e-9 from it: the stable form's backward."""
    # gradcheck runs two forwards per input element: the interpreter (~0.3 s each here) gets 12, not 35
    B, I, O, T = (1, 4, 2, 12) if be.interpreted else (2, 7, 3, 12)
    t = spike_times(B, I, T, "frac", device=be.device)
    t[:, 0], t[:, 1] = 0.3, T - 1.5  # away from 0, where a spike switches off (a jump, not a slope)
    t.requires_grad_()
    w = weights(O, I, device=be.device).requires_grad_()
    fn = lambda t_, w_: tempotron_membrane(t_, w_, T, TAU, tau_s, backend=be.name)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (t, w))


@pytest.mark.parametrize("be,dtype", each(axes=([torch.float16, torch.bfloat16],)))
def test_low_precision_as_close_as_torch(be, dtype):
    B, I, O, T = (2, 64, 5, 30) if be.interpreted else (3, 200, 6, 50)
    t64, w64 = spike_times(B, I, T, "int"), weights(O, I)
    t, w = t64.to(dtype).to(be.device), w64.to(dtype).to(be.device).requires_grad_()
    v = tempotron_membrane(t, w, T, backend=be.name)
    assert v.dtype == dtype
    ref64 = membrane_reference(t.double(), w.detach().double(), T, TAU, TAU_S, v0_of(TAU, TAU_S, 1.0))
    ref_lp = tempotron_reference(t, w.detach(), T, ret_type="v")
    assert_close_lowp(v.detach(), ref64, ref_lp, name=f"V {dtype}")
    g = torch.randn(v.shape, dtype=torch.float64).to(be.device)
    (v * g.to(dtype)).sum().backward()
    w64g = w.detach().double().requires_grad_()
    v_ref = membrane_reference(t.double(), w64g, T, TAU, TAU_S, v0_of(TAU, TAU_S, 1.0))
    (v_ref * g.to(dtype).double()).sum().backward()
    wlp = w.detach().clone().requires_grad_()
    (tempotron_reference(t, wlp, T, ret_type="v") * g.to(dtype)).sum().backward()
    assert_close_lowp(w.grad, w64g.grad, wlp.grad, name=f"grad_w {dtype}")


@pytest.mark.parametrize("be", each())
def test_silent_inputs_give_zero_membrane_and_grads(be):
    B, I, O, T = 3, 20, 4, 30
    t = torch.full((B, I), -1.0, dtype=torch.float64)
    t[0, :5] = torch.tensor([-0.5, -3.0, T, T + 0.5, 1e9])  # silent or beyond the window
    t = t.to(be.device).requires_grad_()
    w = weights(O, I, device=be.device).requires_grad_()
    v = tempotron_membrane(t, w, T, backend=be.name)
    assert torch.equal(v, torch.zeros_like(v))
    (v * torch.randn_like(v)).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("be", each())
def test_silent_inputs_float32(be):
    """float32, the weights only (no grad_t): the same zeros."""
    t = torch.full((2, 9), -1.0, device=be.device)
    t[0, :3] = torch.tensor([20.0, 25.5, -0.5])  # beyond T = 20, or negative
    w = torch.randn(3, 9, device=be.device, requires_grad=True)
    v = tempotron_membrane(t, w, 20, backend=be.name)
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("be,when", each(axes=([0.0, 0.5, 18.0, 19.0, 19.5],)))
def test_single_spike_is_the_psp(be, when):
    """One input of weight 1: V is exactly v0·K(t − t_i), peaking at θ = 1 when t_max is on the grid."""
    T = 20
    t = torch.tensor([[when]], dtype=torch.float64, device=be.device)
    w = torch.ones(1, 1, dtype=torch.float64, device=be.device)
    v = tempotron_membrane(t, w, T, backend=be.name)[0, 0]
    u = torch.arange(T, dtype=torch.float64, device=be.device) - when
    psp = v0_of(TAU, TAU_S, 1.0) * (torch.exp(-u / TAU) - torch.exp(-u / TAU_S)) * (u >= 0)
    assert_close(v, psp, name="psp")
    if when == 0.0:
        assert 0.99 < v.max().item() <= 1.0  # peak at t_max ≈ 6.93 → close to θ


@pytest.mark.parametrize("be,ret_type", each(axes=(["v_max", "spikes"],)))
def test_batch_of_one_keeps_batch_dim(be, ret_type):
    T = 30
    t, w = spike_times(1, 40, T, "int", device=be.device), weights(1, 40, device=be.device)
    for backend in (be.name, "reference"):
        out = tempotron(t, w, T, ret_type=ret_type, backend=backend)
        assert out.shape == (1, 1), (backend, out.shape)


@pytest.mark.parametrize("be", each())
def test_spikes_sign_and_time(be):
    """'spikes' is argmax t* where v_max ≥ θ and −t* elsewhere."""
    T = 40
    t, w = spike_times(6, 50, T, "int", device=be.device), weights(8, 50, device=be.device) * 3
    v = tempotron_membrane(t, w, T, backend=be.name)
    s = tempotron(t, w, T, ret_type="spikes", backend=be.name)
    vmax, arg = v.max(dim=2)
    fired = vmax >= 1.0
    assert fired.any() and (~fired).any()
    assert_close(s, torch.where(fired, arg.double(), -arg.double()), name="spikes")


@pytest.mark.parametrize("be", each())
def test_integer_dtype_spike_times(be):
    T = 25
    t = spike_times(3, 30, T, "int", device=be.device)
    w = weights(4, 30, device=be.device)
    ref = tempotron_reference(t, w, T, ret_type="v")
    for backend in (be.name, "reference"):
        assert_close(tempotron(t.long(), w, T, ret_type="v", backend=backend), ref, name=backend)


@pytest.mark.parametrize("be", each())
def test_torch_compile_traces_the_op(be):
    """The fake and the autograd registration let torch.compile trace forward and backward in one graph."""
    T = 20
    t, w0 = spike_times(3, 30, T, "frac", torch.float32, be.device), weights(5, 30, torch.float32, be.device)
    label = torch.tensor([0, 3, 4], device=be.device)

    def step(w):
        return mse_loss(tempotron(t, w, T, ret_type="v_max", backend=be.name), 1.0, label, 5)

    w1, w2 = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    step(w1).backward()
    torch.compile(step, backend="aot_eager", fullgraph=True)(w2).backward()
    assert_close(w2.grad, w1.grad, name="compiled grad_w")


@pytest.mark.parametrize("be", each())
def test_input_whose_fast_exponential_underflows_still_counts(be):
    """τ tiny, τ_s not: e^{−u/τ} underflows to 0 while e^{−u/τ_s} does not. The input is not silent."""
    t = torch.tensor([[0.05, 3.0, -1.0]], dtype=torch.float64, device=be.device)
    w = torch.randn(2, 3, dtype=torch.float64).to(be.device)
    ref = tempotron_reference(t, w, 6, tau=0.005, tau_s=15.0, ret_type="v")
    got = tempotron(t, w, 6, tau=0.005, tau_s=15.0, ret_type="v", backend=be.name)
    assert ref.abs().max() > 0.1
    assert_close(got, ref, name="v")


# --- near τ = τ_s (docs/spec.md §6.2) ----------------------------------------------------------------
# The plain difference of exponentials gives V ≡ 0 or up to 14 % off with τ_s within ~1e-9 (fp32) or
# ~1e-15 (fp64) of τ. Every backend evaluates the normalised PSP K̃ (args /
# csrc/include/snn_fast/tempotron.h), and τ = τ_s is the alpha kernel.
GAPS = [0.0, 1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 1e-1]
NEAR = dict(B=2, I=6, O=3, T=14)


def _near_inputs(dtype, device):
    g = torch.Generator().manual_seed(14)
    t = torch.rand(NEAR["B"], NEAR["I"], generator=g, dtype=torch.float64) * 11
    t[0, 1], t[1, 2], t[1, 3] = -1.0, 3.0, 0.0  # silent, integer, at 0
    w = torch.rand(NEAR["O"], NEAR["I"], generator=g, dtype=torch.float64) - 0.3  # mixed signs
    return t.to(dtype).to(device), w.to(dtype).to(device)


@functools.lru_cache(maxsize=None)
def _high_precision_v(gap: float, sign: int):
    """V in 50-digit arithmetic (mpmath) from the seed's own formulas: v0·(e^{−u/τ} − e^{−u/τ_s}) with
    t_max = τ·τ_s·ln(τ/τ_s)/(τ − τ_s); at τ = τ_s their limit, the alpha kernel normalised to peak at θ.
    The inputs are the float64 values the backends get (float32 inputs are exact in float64)."""
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 50
    tau = mp.mpf(TAU)
    tau_s = mp.mpf(TAU * (1 - sign * gap))  # the float64 the backends are given, exactly
    if tau == tau_s:
        k = lambda u: u * mp.exp(-u / tau)  # noqa: E731
        v0 = 1 / k(tau)
    else:
        k = lambda u: mp.exp(-u / tau) - mp.exp(-u / tau_s)  # noqa: E731
        v0 = 1 / k(tau * tau_s * mp.log(tau / tau_s) / (tau - tau_s))
    out = {}
    for dtype in (torch.float64, torch.float32):
        t, w = _near_inputs(dtype, "cpu")
        v = torch.zeros(NEAR["B"], NEAR["O"], NEAR["T"], dtype=torch.float64)
        for b in range(NEAR["B"]):
            for o in range(NEAR["O"]):
                for step in range(NEAR["T"]):
                    acc = mp.mpf(0)
                    for i in range(NEAR["I"]):
                        ti = mp.mpf(float(t[b, i]))
                        if ti >= 0 and step >= ti:
                            acc += mp.mpf(float(w[o, i])) * k(step - ti)
                    v[b, o, step] = float(v0 * acc)
        out[dtype] = v
    return out


@pytest.mark.parametrize("be,dtype,gap,sign", each("reference", *[b.id for b in FUSED], axes=(
    [torch.float64, torch.float32], GAPS, [("below", 1), ("above", -1)])))
def test_near_equal_time_constants_match_high_precision(be, dtype, gap, sign):
    """τ_s = τ·(1 ∓ gap), gap 0 … 1e-1, both sides: V equals the 50-digit value within the dtype's
    tolerance (fp32 too: the kernels get τ and τ_s as float64, and K̃ has no cancellation)."""
    if gap == 0 and sign == -1:
        pytest.skip("the same case as 'below'")
    t, w = _near_inputs(dtype, be.device)
    v = tempotron_membrane(t, w, NEAR["T"], TAU, TAU * (1 - sign * gap), backend=be.name)
    want = _high_precision_v(gap, sign)[dtype].to(be.device)
    assert want.abs().max() > 0.3
    assert_close(v, want.to(dtype), name=f"V at gap {gap:g}")


@pytest.mark.parametrize("be", each("reference", *[b.id for b in FUSED]))
def test_equal_time_constants_give_the_alpha_kernel(be):
    """τ = τ_s: one input of weight 1 at time 0.5 gives θ·(u/τ)·e^{1 − u/τ} (peak θ at u = τ), and
    'v_max' of an input at 0 is θ exactly where the peak falls on the grid (τ = 4)."""
    T, tau = 12, 4.0
    t = torch.tensor([[0.5], [0.0]], dtype=torch.float64, device=be.device)
    w = torch.ones(1, 1, dtype=torch.float64, device=be.device)
    v = tempotron_membrane(t, w, T, tau, tau, v_threshold=2.0, backend=be.name)
    u = torch.arange(T, dtype=torch.float64, device=be.device) - 0.5
    want = 2.0 * (u / tau) * torch.exp(1 - u / tau) * (u >= 0)
    assert_close(v[0, 0], want, name="alpha kernel")
    vmax = tempotron(t, w, T, tau, tau, v_threshold=2.0, backend=be.name)
    assert_close(vmax[1], torch.tensor([2.0], dtype=torch.float64, device=be.device), name="peak")


@pytest.mark.parametrize("be,case", each("reference", *[b.id for b in FUSED], axes=(
    [("bf16-257", (torch.bfloat16, 257.0)), ("fp16-2049", (torch.float16, 2049.0))],)))
def test_spike_times_keep_their_precision_with_half_weights(be, case):
    """Spike times stay float32 whatever the weight dtype: before, bf16 weights rounded time 257 to
    256 (8 significant bits; fp16: 2049 → 2048), so the PSP started one step early."""
    dtype, when = case
    T = int(when) + 3
    t = torch.tensor([[when, -1.0]], device=be.device)
    w = torch.ones(2, 2, dtype=dtype, device=be.device)
    v = tempotron_membrane(t, w, T, backend=be.name)
    assert v.dtype == dtype
    k = int(when)
    assert v[0, 0, k].item() == 0.0, "the PSP must start at the spike (step %d), not a step early" % k
    # the whole trace is the exact one rounded once to the storage dtype (before: the times and the
    # grid itself rounded in bf16, so the trace was shifted: 0.61 at step 258 instead of 0.36)
    want = tempotron_membrane(t.double(), w.double(), T, backend="reference")
    assert want[0, 0, k + 1].item() > 0.1
    err = (v.double() - want).abs().max().item()
    assert err <= LOWP_ULP[dtype] * want.abs().max().item(), f"{err:.3e}"
    t.requires_grad_(True)
    tempotron_membrane(t, w, T, backend=be.name).sum().backward()
    assert t.grad.dtype == torch.float32 and t.grad[0, 0].item() != 0.0


# --- backend-specific: the C++ op (CPU and CUDA) ----------------------------------------------------
@pytest.mark.parametrize("be", each("cpu", "cuda"))
def test_opcheck(be):
    t = spike_times(3, 17, 9, "frac", device=be.device).requires_grad_()
    w = weights(4, 17, device=be.device).requires_grad_()
    torch.library.opcheck(torch.ops.snn_fast.tempotron_fwd, (t, w, 9, TAU, TAU_S, 2.0))
    g = torch.randn(3, 4, 9, device=be.device)
    for need_t, need_w in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.snn_fast.tempotron_bwd,
                              (g, t.detach(), w.detach(), TAU, TAU_S, 2.0, need_t, need_w))


@requires_cpu_kernel
def test_result_independent_of_thread_count():
    B, I, O, T = 8, 3000, 10, 50
    t = spike_times(B, I, T, "frac", torch.float32).requires_grad_()
    w = weights(O, I, torch.float32).requires_grad_()
    res = []
    n0 = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            t.grad = w.grad = None
            v = tempotron_membrane(t, w, T, backend="cpu")
            v.max(dim=2).values.sum().backward()
            res.append((v.detach().clone(), w.grad.clone(), t.grad.clone()))
    finally:
        torch.set_num_threads(n0)
    for a, b in zip(*res):
        assert torch.equal(a, b)


# --- modules ---------------------------------------------------------------------------------------
@requires_cpu_kernel
def test_module_matches_seed_reference_and_trains():
    net = Tempotron(60, 4, T=30).double()
    t = spike_times(5, 60, 30, "int")
    label = torch.tensor([0, 1, 2, 3, 0])
    vmax = net(t, "v_max")
    assert_close(vmax, tempotron_reference(t, net.fc.weight, 30, ret_type="v_max"), name="module v_max")
    loss = Tempotron.mse_loss(vmax, net.v_threshold, label, 4)
    loss.backward()
    assert net.fc.weight.grad is not None and net.fc.weight.grad.abs().max() > 0


def test_mse_loss_value():
    vmax = torch.tensor([[1.5, 0.2, 0.9], [0.1, 1.2, 2.0]])
    label = torch.tensor([0, 2])
    # sample 0: neuron 0 fired and is the label (right), 1, 2 silent (right) → 0
    # sample 1: neuron 1 fired wrongly (0.2²), neuron 2 fired and is the label → 0.04 / 2
    assert abs(mse_loss(vmax, 1.0, label, 3).item() - 0.02) < 1e-7
    vmax[0, 0] = 0.5  # label neuron silent: (0.5 − 1)² = 0.25
    assert abs(mse_loss(vmax, 1.0, label, 3).item() - (0.25 + 0.04) / 2) < 1e-7


def test_gaussian_tuning_matches_formula_and_shape():
    n, m, T = 2, 6, 50
    x_min, x_max = torch.tensor([0.0, -1.0]), torch.tensor([1.0, 3.0])
    enc = GaussianTuning(n, m, x_min, x_max)
    x = torch.rand(3, n, 7) * (x_max - x_min).view(1, n, 1) + x_min.view(1, n, 1)
    out = enc.encode(x, T)
    assert out.shape == (3, n, 7, m)
    j = torch.arange(1, m + 1, dtype=torch.float32)
    for f in range(n):
        span = (x_max[f] - x_min[f]).item()
        mu = x_min[f] + (2 * j - 3) / 2 * span / (m - 2)
        sigma = span / (1.5 * (m - 2))
        y = torch.exp(-(x[:, f, :, None] - mu) ** 2 / (2 * sigma ** 2))
        want = (T * (1 - y)).round()
        want[want >= T] = -1
        torch.testing.assert_close(out[:, f], want, atol=1.0, rtol=0)  # rounding at .5 may differ by 1
        assert (out[:, f] == want).float().mean() > 0.99
    assert (out == -1).any() and (out >= 0).any() and out.max() < T


def test_gaussian_tuning_late_spikes_are_minus_one():
    enc = GaussianTuning(1, 4, torch.zeros(1), torch.ones(1))
    out = enc.encode(torch.tensor([[[0.0]]]), 10)[0, 0, 0]
    # μ = (−0.25, 0.25, 0.75, 1.25): far centres give y ≈ 0 → t = T → −1
    assert out[3].item() == -1 and out[0].item() >= 0


# --- errors ---------------------------------------------------------------------------------------
def test_errors():
    t, w = torch.zeros(2, 5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="ret_type"):
        tempotron(t, w, 10, ret_type="volts")
    # τ = τ_s is allowed: the alpha kernel (see
    # test_equal_time_constants_give_the_alpha_kernel): the call runs and peaks at θ
    assert tempotron(t, w, 10, tau=4.0, tau_s=4.0).shape == (2, 3)
    with pytest.raises(ValueError, match="tau_s must be a positive finite number, got -1.0"):
        tempotron(t, w, 10, tau_s=-1.0)
    with pytest.raises(ValueError, match="v_threshold must be a positive finite number, got 0.0"):
        tempotron(t, w, 10, v_threshold=0.0)
    with pytest.raises(ValueError, match="tau must be a positive finite number, got inf"):
        tempotron(t, w, 10, tau=math.inf)
    with pytest.raises(ValueError, match="v0 must be a finite number or None, got inf"):
        tempotron_membrane(t, w, 10, v0=math.inf)
    with pytest.raises(ValueError, match=r"T \(number of time steps\) must be a positive int"):
        tempotron(t, w, 0)
    with pytest.raises(ValueError, match="in_features"):
        tempotron(torch.zeros(2, 4), w, 10)
    with pytest.raises(ValueError, match=r"\[batch, in_features\]"):
        tempotron(torch.zeros(5), w, 10)
    with pytest.raises(RuntimeError, match="'cuda' backend runs on CUDA tensors"):
        tempotron(t, w, 10, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        tempotron(t, w, 10, backend="gpu")
    with pytest.raises(ValueError, match=r"m \(neurons per feature\) must be an int > 2"):
        GaussianTuning(1, 2, torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="x_max"):
        GaussianTuning(1, 5, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"\[batch, n"):
        GaussianTuning(2, 5, torch.zeros(2), torch.ones(2)).encode(torch.zeros(3, 1, 4), 10)
    assert Tempotron(5, 3, 10, tau=2.0, tau_s=2.0)(t).shape == (2, 3)  # the alpha kernel
    with pytest.raises(ValueError, match="tau must be a positive finite number, got 0.0"):
        Tempotron(5, 3, 10, tau=0.0)
    with pytest.raises(ValueError, match="ret_type"):
        Tempotron(5, 3, 10)(t, "spike")
    with pytest.raises(ValueError, match="in_features"):
        Tempotron(5, 3, 10)(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="num_classes"):
        mse_loss(torch.zeros(2, 3), 1.0, torch.zeros(2, dtype=torch.long), 4)


@requires_cpu_kernel
def test_kernel_checks():
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.snn_fast.tempotron_fwd(torch.zeros(2, 5), torch.zeros(3, 5, dtype=torch.float64), 10, 15.0, 3.75, 2.0)
    with pytest.raises(RuntimeError, match="inputs"):
        torch.ops.snn_fast.tempotron_fwd(torch.zeros(2, 4), torch.zeros(3, 5), 10, 15.0, 3.75, 2.0)


@requires_cpu_kernel
def test_digits_example_learns_in_one_epoch(capsys):
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "tempotron_digits.py"
    spec = importlib.util.spec_from_file_location("tempotron_digits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    hist = mod.main(["--epochs", "1", "--plot", ""])
    assert len(hist) == 1 and hist[0][1] > 0.3  # chance is 0.1; the full run reaches ~0.86


# --- backend-specific: Triton -----------------------------------------------------------------------
def test_triton_backend_refuses_cpu_without_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from snn_fast import _triton

    monkeypatch.setattr(_triton, "interpreted", lambda: False)
    assert "TRITON_INTERPRET" in _triton.unavailable_reason(torch.zeros(1), "t_in")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        tempotron(torch.zeros(2, 3), torch.zeros(4, 3), 10, backend="triton")


@pytest.mark.parametrize("be", each("triton-interp", "triton-cuda"))
def test_triton_opcheck(be):
    from snn_fast.ops.tempotron.function import BACKENDS

    BACKENDS.load("triton")  # imports ops/tempotron/triton.py and registers its ops for torch.compile
    from snn_fast.ops.tempotron import triton as tt

    t = spike_times(2, 11, 7, "frac", torch.float32, be.device).requires_grad_()
    w = weights(3, 11, torch.float32, be.device).requires_grad_()
    # test_aot_dispatch_dynamic is left out: it re-traces with symbolic shapes, minutes in the interpreter.
    torch.library.opcheck(tt.tempotron_fwd_triton, (t, w, 7, TAU, TAU_S, 2.0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    g = torch.randn(2, 3, 7, device=be.device)
    torch.library.opcheck(tt.tempotron_bwd_triton, (g, t.detach(), w.detach(), TAU, TAU_S, 2.0, True, True),
                          test_utils=("test_schema", "test_faketensor"))


# Ahead-of-time compilation of the Triton kernels for sm_80/sm_90, without a GPU (a subprocess
# without TRITON_INTERPRET, which the real triton.jit needs).
_AOT = textwrap.dedent(r"""
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from snn_fast.ops.tempotron import triton as tt
    store, acc = sys.argv[1], getattr(tl, sys.argv[2])
    a = "fp64" if sys.argv[2] == "float64" else "fp32"
    p = lambda d: "*" + d
    kernels = [  # spike times (t_ptr) are fp32 (fp64 with an fp64 weight) whatever the weight dtype
        (tt._tempotron_entry_kernel, dict(t_ptr=p(a), k_ptr="*i32", ea_ptr=p(a), es_ptr=p(a), kt_ptr=p(a),
                                          c_ptr=p(a), n="i64", T="i32"), dict(BLOCK=256)),
        (tt._tempotron_scatter_kernel, dict(w_ptr=p(store), k_ptr="*i32", ea_ptr=p(a), kt_ptr=p(a), ha_ptr=p(a),
                                            hd_ptr=p(a), I="i32", O="i32", T="i32"), dict(BLOCK_I=64, BLOCK_O=16)),
        (tt._tempotron_filter_kernel, dict(ha_ptr=p(a), hd_ptr=p(a), v_ptr=p(store), c_ptr=p(a), R="i32", T="i32"),
         dict(BLOCK_R=64)),
        (tt._tempotron_reverse_kernel, dict(gv_ptr=p(store), gs_ptr=p(a), gl_ptr=p(a), c_ptr=p(a), R="i32",
                                            T="i32"), dict(BLOCK_R=64)),
        (tt._tempotron_gather_kernel, dict(w_ptr=p(store), k_ptr="*i32", ea_ptr=p(a), es_ptr=p(a), kt_ptr=p(a),
                                           gs_ptr=p(a), gl_ptr=p(a), gw_ptr=p(store), gtp_ptr=p(a), c_ptr=p(a),
                                           B="i32", I="i32", O="i32", T="i32"),
         dict(NEED_T=True, NEED_W=True, BLOCK_I=64, BLOCK_O=16)),
    ]
    for cc in (80, 90):
        for fn, sig, cx in kernels:
            cx = dict(cx, ACC=acc)
            sig = dict(sig, **{k: "constexpr" for k in cx})
            k = triton.compile(triton.compiler.ASTSource(fn, sig, cx), target=GPUTarget("cuda", cc, 32))
            assert len(k.asm["cubin"]) > 1000 and ".entry" in k.asm["ptx"], fn.__name__
            print("ok", cc, fn.__name__, k.n_regs if hasattr(k, "n_regs") else "")
""")


@pytest.mark.parametrize("store,acc", [("fp32", "float32"), ("bf16", "float32")])
def test_triton_compiles_for_sm80_sm90(store, acc):
    pytest.importorskip("triton")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", _AOT, store, acc], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ok") == 10, r.stdout
