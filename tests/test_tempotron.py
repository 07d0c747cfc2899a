"""Tempotron (SPEC §5): the fused CPU kernel against the seed's dense reference, the modules, errors.

Spike-time sets cover integer and fractional times, silent inputs (negative), spikes at 0 and at
T − 1 and beyond the window, and B = 1. Tolerances come from conftest only.
"""
from __future__ import annotations

import math

import pytest
import torch

from snn_fast import _ext
from snn_fast.nn.tempotron import GaussianTuning, Tempotron
from snn_fast.ops.tempotron import mse_loss, tempotron, tempotron_membrane, tempotron_reference, v0_of
from snn_fast.ops.tempotron.reference import membrane_reference

from conftest import assert_close, assert_close_lowp, nan_filled_allocations

HAS_CPU_KERNEL = _ext.has_kernel("tempotron_fwd", "CPU")
requires_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="snn_fast._C not built")

TAU, TAU_S = 15.0, 15.0 / 4


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


def weights(O, I, dtype=torch.float64):
    return (torch.randn(O, I, dtype=torch.float64) / math.sqrt(I) * 3).to(dtype)


SHAPES = [(4, 37, 5, 20), (1, 64, 3, 16), (3, 300, 10, 100), (2, 5, 1, 2)]
IDS = ["B{}-I{}-O{}-T{}".format(*s) for s in SHAPES]


@requires_cpu_kernel
@pytest.mark.parametrize("kind", ["int", "frac"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_membrane_matches_reference(shape, kind, dtype):
    B, I, O, T = shape
    t, w = spike_times(B, I, T, kind, dtype), weights(O, I, dtype)
    with nan_filled_allocations():
        v = tempotron_membrane(t, w, T, TAU, TAU_S, backend="cpu")
    ref = tempotron_reference(t, w, T, TAU, TAU_S, ret_type="v")
    assert v.shape == (B, O, T) and v.dtype == dtype
    assert ref.abs().max() > 0.1  # the inputs drive the neurons: a zero output would not pass
    assert_close(v, ref, name="V")


@requires_cpu_kernel
@pytest.mark.parametrize("ret_type", ["v", "v_max", "spikes"])
@pytest.mark.parametrize("kind", ["int", "frac"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=IDS[:3])
def test_outputs_and_grads_match_reference_fp64(shape, kind, ret_type):
    B, I, O, T = shape
    t0, w0 = spike_times(B, I, T, kind), weights(O, I)
    outs, grads = [], []
    for backend in ("cpu", "reference"):
        t = t0.clone().requires_grad_(kind == "frac")
        w = w0.clone().requires_grad_(True)
        out = tempotron(t, w, T, TAU, TAU_S, 1.0, ret_type, backend=backend)
        g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * g).sum().backward()
        outs.append(out.detach())
        grads.append((w.grad, t.grad))
    expected_shape = (B, O, T) if ret_type == "v" else (B, O)
    assert outs[0].shape == expected_shape
    assert_close(outs[0], outs[1], name=ret_type)
    assert grads[1][0].abs().max() > 0
    assert_close(grads[0][0], grads[1][0], name="grad_w")
    if kind == "frac":
        assert grads[1][1].abs().max() > 0
        assert_close(grads[0][1], grads[1][1], name="grad_t")


@requires_cpu_kernel
@pytest.mark.parametrize("ret_type", ["v", "v_max"])
def test_grads_match_reference_fp32(ret_type):
    B, I, O, T = 4, 200, 10, 100
    t0, w0 = spike_times(B, I, T, "frac", torch.float32), weights(O, I, torch.float32)
    res = []
    for backend in ("cpu", "reference"):
        t, w = t0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = tempotron(t, w, T, ret_type=ret_type, backend=backend)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * g).sum().backward()
        res.append((out.detach(), w.grad, t.grad))
    for name, a, b in zip(("out", "grad_w", "grad_t"), *res):
        assert_close(a, b, name=name)


@requires_cpu_kernel
def test_gradcheck_fp64():
    B, I, O, T = 2, 7, 3, 12
    t = spike_times(B, I, T, "frac")
    t[:, 0], t[:, 1] = 0.3, T - 1.5  # away from 0, where a spike switches off (a jump, not a slope)
    t.requires_grad_()
    w = weights(O, I).requires_grad_()
    fn = lambda t_, w_: tempotron_membrane(t_, w_, T, TAU, TAU_S, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (t, w))


@requires_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_as_close_as_torch(dtype):
    B, I, O, T = 3, 200, 6, 50
    t64, w64 = spike_times(B, I, T, "int"), weights(O, I)
    t, w = t64.to(dtype), w64.to(dtype).requires_grad_()
    v = tempotron_membrane(t, w, T, backend="cpu")
    assert v.dtype == dtype
    ref64 = membrane_reference(t.double(), w.detach().double(), T, TAU, TAU_S, v0_of(TAU, TAU_S, 1.0))
    ref_lp = tempotron_reference(t, w.detach(), T, ret_type="v")
    assert_close_lowp(v.detach(), ref64, ref_lp, name=f"V {dtype}")
    g = torch.randn(v.shape, dtype=torch.float64)
    (v * g.to(dtype)).sum().backward()
    w64g = w.detach().double().requires_grad_()
    (membrane_reference(t.double(), w64g, T, TAU, TAU_S, v0_of(TAU, TAU_S, 1.0)) * g.to(dtype).double()).sum().backward()
    wlp = w.detach().clone().requires_grad_()
    (tempotron_reference(t, wlp, T, ret_type="v") * g.to(dtype)).sum().backward()
    assert_close_lowp(w.grad, w64g.grad, wlp.grad, name=f"grad_w {dtype}")


@requires_cpu_kernel
def test_silent_inputs_give_zero_membrane_and_grads():
    B, I, O, T = 3, 20, 4, 30
    t = torch.full((B, I), -1.0, dtype=torch.float64)
    t[0, :5] = torch.tensor([-0.5, -3.0, T, T + 0.5, 1e9])  # silent or beyond the window
    t.requires_grad_()
    w = weights(O, I).requires_grad_()
    v = tempotron_membrane(t, w, T, backend="cpu")
    assert torch.equal(v, torch.zeros_like(v))
    (v * torch.randn_like(v)).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(t.grad, torch.zeros_like(t))


@requires_cpu_kernel
@pytest.mark.parametrize("when", [0.0, 0.5, 18.0, 19.0, 19.5])
def test_single_spike_is_the_psp(when):
    """One input of weight 1: V is exactly v0·K(t − t_i), peaking at θ = 1 when t_max is on the grid."""
    T = 20
    t = torch.tensor([[when]], dtype=torch.float64)
    w = torch.ones(1, 1, dtype=torch.float64)
    v = tempotron_membrane(t, w, T, backend="cpu")[0, 0]
    u = torch.arange(T, dtype=torch.float64) - when
    psp = v0_of(TAU, TAU_S, 1.0) * (torch.exp(-u / TAU) - torch.exp(-u / TAU_S)) * (u >= 0)
    assert_close(v, psp, name="psp")
    if when == 0.0:
        assert 0.99 < v.max().item() <= 1.0  # peak at t_max ≈ 6.93 → close to θ


@requires_cpu_kernel
@pytest.mark.parametrize("ret_type", ["v_max", "spikes"])
def test_batch_of_one_keeps_batch_dim(ret_type):
    T = 30
    t, w = spike_times(1, 40, T, "int"), weights(1, 40)
    for backend in ("cpu", "reference"):
        out = tempotron(t, w, T, ret_type=ret_type, backend=backend)
        assert out.shape == (1, 1), (backend, out.shape)


@requires_cpu_kernel
def test_spikes_sign_and_time():
    """'spikes' is argmax t* where v_max ≥ θ and −t* elsewhere."""
    T = 40
    t, w = spike_times(6, 50, T, "int"), weights(8, 50) * 3
    v = tempotron_membrane(t, w, T, backend="cpu")
    s = tempotron(t, w, T, ret_type="spikes", backend="cpu")
    vmax, arg = v.max(dim=2)
    fired = vmax >= 1.0
    assert fired.any() and (~fired).any()
    assert_close(s, torch.where(fired, arg.double(), -arg.double()), name="spikes")


@requires_cpu_kernel
def test_integer_dtype_spike_times():
    T = 25
    t = spike_times(3, 30, T, "int")
    w = weights(4, 30)
    ref = tempotron_reference(t, w, T, ret_type="v")
    for backend in ("cpu", "reference"):
        assert_close(tempotron(t.long(), w, T, ret_type="v", backend=backend), ref, name=backend)


@requires_cpu_kernel
def test_opcheck():
    t, w = spike_times(3, 17, 9, "frac").requires_grad_(), weights(4, 17).requires_grad_()
    torch.library.opcheck(torch.ops.snn_fast.tempotron_fwd, (t, w, 9, TAU, TAU_S, 2.0))


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
    with pytest.raises(ValueError, match="differ"):
        tempotron(t, w, 10, tau=4.0, tau_s=4.0)
    with pytest.raises(ValueError, match="tau_s"):
        tempotron(t, w, 10, tau_s=-1.0)
    with pytest.raises(ValueError, match="v_threshold"):
        tempotron(t, w, 10, v_threshold=0.0)
    with pytest.raises(ValueError, match="T"):
        tempotron(t, w, 0)
    with pytest.raises(ValueError, match="in_features"):
        tempotron(torch.zeros(2, 4), w, 10)
    with pytest.raises(ValueError, match=r"\[batch, in_features\]"):
        tempotron(torch.zeros(5), w, 10)
    with pytest.raises(RuntimeError, match="cuda"):
        tempotron(t, w, 10, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        tempotron(t, w, 10, backend="gpu")
    with pytest.raises(ValueError, match="m"):
        GaussianTuning(1, 2, torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="x_max"):
        GaussianTuning(1, 5, torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"\[batch, n"):
        GaussianTuning(2, 5, torch.zeros(2), torch.ones(2)).encode(torch.zeros(3, 1, 4), 10)
    with pytest.raises(ValueError, match="differ"):
        Tempotron(5, 3, 10, tau=2.0, tau_s=2.0)
    with pytest.raises(ValueError, match="tau"):
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
def test_torch_compile_traces_the_op():
    """The fake and the autograd registration let torch.compile trace forward and backward in one graph."""
    T = 20
    t, w0 = spike_times(3, 30, T, "frac", torch.float32), weights(5, 30, torch.float32)
    label = torch.tensor([0, 3, 4])

    def step(w):
        return mse_loss(tempotron(t, w, T, ret_type="v_max", backend="cpu"), 1.0, label, 5)

    w1, w2 = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    step(w1).backward()
    torch.compile(step, backend="aot_eager", fullgraph=True)(w2).backward()
    assert_close(w2.grad, w1.grad, name="compiled grad_w")


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


@pytest.mark.skipif(not _ext.has_kernel("tempotron_fwd", "CPU"), reason="snn_fast._C not built")
def test_input_whose_fast_exponential_underflows_still_counts():
    """τ tiny, τ_s not: e^{−u/τ} underflows to 0 while e^{−u/τ_s} does not. The input is not silent."""
    t = torch.tensor([[0.05, 3.0, -1.0]], dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    ref = tempotron_reference(t, w, 6, tau=0.005, tau_s=15.0, ret_type="v")
    got = tempotron(t, w, 6, tau=0.005, tau_s=15.0, ret_type="v", backend="cpu")
    assert ref.abs().max() > 0.1
    assert_close(got, ref, name="v")
