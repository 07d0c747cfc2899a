"""bn_lif (docs/spec.md §12): every backend against the reference (batch norm, then the LIF reference).

One harness, ``run``: forward + backward of a fixed random linear loss of every output, returning the
outputs, the gradients of x, v0, weight, bias and the learnable τ/θ/α, and the running statistics
after the step. The option grid is a subset of tests/test_lif.py's (CI time), crossed with train/eval
and plain BN/tdBN; the edge cases (one-element channels, a zero-variance channel, B·S = 1, T = 1,
non-contiguous input) run on every backend. Tolerances come from conftest.
"""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import snn_fast
from snn_fast import nn as snn
from snn_fast.ops.bn_lif import function as bl_function
from snn_fast.ops.bn_lif.contract import checkpoint_rows

from conftest import assert_close, assert_close_lowp, op_v0_shapes

# id -> (backend, device): Triton on CPU tensors runs interpreted (TRITON_INTERPRET=1, as in CI).
DEVICE_OF = {"cpu": ("cpu", "cpu"), "triton": ("triton", "cpu"), "cuda": ("cuda", "cuda"),
             "triton-cuda": ("triton", "cuda")}
BACKENDS = list(DEVICE_OF)


def _unavailable(be):
    """Why backend ``be`` cannot run here (its probe: no device, no kernel in this build), else None.
    Only the probe: an error of the op itself must fail its tests, not skip them."""
    from snn_fast.ops.bn_lif.function import BACKENDS as BN_BACKENDS

    name, dev = DEVICE_OF[be]
    if dev == "cuda" and not torch.cuda.is_available():
        return f"{be}: needs a CUDA device"
    why = BN_BACKENDS.unavailable(name, torch.ones(2, 1, 1, device=dev))
    return f"{be}: {why}" if why else None


SKIP = {b: _unavailable(b) for b in BACKENDS}


def name_dev(be):
    """(backend name, device) of a test id; 'reference' and 'auto' run on the CPU."""
    return DEVICE_OF.get(be, (be, "cpu"))


def _id(v):
    if isinstance(v, tuple):
        return "-".join(_id(e) for e in v)
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return str(v)


def fused(*axes):
    """pytest params: every fused backend × axes, skipped where the backend cannot run here."""
    import itertools

    out = []
    for b in BACKENDS:
        for combo in itertools.product(*axes) if axes else [()]:
            marks = [pytest.mark.skip(reason=SKIP[b])] if SKIP[b] else []
            out.append(pytest.param(b, *combo, marks=marks, id="-".join([b] + [_id(c) for c in combo])))
    return out


# A subset of tests/test_lif.py's OPTIONS: both resets, both charges, detach, κ, IF.
OPTIONS = {
    "hard-di": dict(tau=2.0, v_reset=0.0, decay_input=True),
    "soft-nodi-det": dict(tau=2.5, v_reset=None, decay_input=False, detach_reset=True),
    "hard-det-kappa": dict(tau=3.0, v_reset=-0.1, detach_reset=True, reset_residual=0.2),
    "if-soft": dict(tau=float("inf"), v_reset=None),
}
SURROGATES = ["sigmoid", "rectangle", "q_pseudo_spike", "spike_gate"]
# (training, tdbn_alpha): batch statistics with plain BN and with tdBN, running statistics with tdBN.
MODES = [(True, None), (True, 0.7), (False, 0.7)]
# Learnable τ/θ/α on alternate cases of the grid (the parameter-gradient walk and the plain one).
GRID = [(o, sg, (i + j) % 2 == 0, m) for i, o in enumerate(OPTIONS) for j, sg in enumerate(SURROGATES) for m in MODES]


def make_inputs(shape, dtype, seed=0, learn=False, affine=True, running=True):
    g = torch.Generator().manual_seed(seed)
    C = shape[2]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(dtype)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5) if affine else None
    b = (torch.randn(C, generator=g, dtype=torch.float64) * 0.3 + 0.5) if affine else None
    rm = torch.randn(C, generator=g, dtype=torch.float64) * 0.2 if running else None
    rv = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if running else None
    v0 = torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.2
    return dict(x=x, w=w, b=b, rm=rm, rv=rv, v0=v0, learn=learn)


def run(backend, inp, dtype, training=True, tdbn=None, opts=None, surrogate="sigmoid", return_v_seq=True,
        noncontig=False, noise_mask=None):
    """Outputs, gradients and running statistics of one forward+backward in ``dtype``, on the CPU."""
    opts = dict(opts or {})
    backend, dev = name_dev(backend)
    x = inp["x"].to(dtype=dtype, device=dev).detach()
    if noncontig:  # same values, transposed storage
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        assert not x.is_contiguous()
    x.requires_grad_(True)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    w = inp["w"].to(device=dev, dtype=pdt).clone().requires_grad_(True) if inp["w"] is not None else None
    b = inp["b"].to(device=dev, dtype=pdt).clone().requires_grad_(True) if inp["b"] is not None else None
    rm = inp["rm"].to(device=dev, dtype=pdt).clone() if inp["rm"] is not None else None
    rv = inp["rv"].to(device=dev, dtype=pdt).clone() if inp["rv"] is not None else None
    v0 = inp["v0"].to(dtype=dtype, device=dev).clone().requires_grad_(True) if inp["v0"] is not None else None
    learned = {}
    if inp["learn"]:
        if opts.get("tau", 2.0) != float("inf"):
            learned["tau"] = torch.tensor(opts.get("tau", 2.0), dtype=pdt, device=dev, requires_grad=True)
        learned["v_threshold"] = torch.tensor(opts.get("v_threshold", 1.0), dtype=pdt, device=dev,
                                              requires_grad=True)
        if surrogate not in ("spike_gate", "straight_through"):
            learned["alpha"] = torch.tensor(opts.get("alpha", 1.5), dtype=pdt, device=dev, requires_grad=True)
        opts.update(learned)
    fn = snn_fast.bn_lif_reference if backend == "reference" else snn_fast.bn_lif
    kw = {} if backend == "reference" else dict(backend=backend)
    out = fn(x, w, b, rm, rv, training, 0.1, 1e-5, v0=v0, surrogate=surrogate, tdbn_alpha=tdbn,
             return_v_seq=return_v_seq, noise_mask=None if noise_mask is None else noise_mask.to(dev), **opts, **kw)
    g = torch.Generator().manual_seed(123)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dev)).sum() for o in out)
    loss.backward()
    res = {"s": out[0], "v_last": out[1], "grad_x": x.grad}
    if v0 is not None:
        res["grad_v0"] = v0.grad
    if return_v_seq:
        res["v_seq"] = out[2]
    if w is not None:
        res["grad_w"], res["grad_b"] = w.grad, b.grad
    if rm is not None:
        res["running_mean"], res["running_var"] = rm, rv
    for k, p in learned.items():
        res["grad_" + k] = p.grad
    return {k: v.cpu() for k, v in res.items()}


def check(got, ref, dtype):
    assert got.keys() == ref.keys()
    for k in ref:
        assert_close(got[k], ref[k], dtype, name=k)


# --- the option grid -------------------------------------------------------------------------------
@pytest.mark.parametrize("be,case", fused(GRID))
def test_grid_float64(be, case):
    opt, sg, learn, (training, tdbn) = case
    inp = make_inputs((5, 3, 4, 3, 5), torch.float64, learn=learn)
    ref = run("reference", inp, torch.float64, training, tdbn, OPTIONS[opt], sg)
    got = run(be, inp, torch.float64, training, tdbn, OPTIONS[opt], sg)
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be,opt,learn,mode", fused(list(OPTIONS), [False, True], MODES[:2]))
def test_grid_float32(be, opt, learn, mode):
    training, tdbn = mode
    inp = make_inputs((6, 4, 8, 7, 7), torch.float32, learn=learn)
    ref = run("reference", inp, torch.float32, training, tdbn, OPTIONS[opt], "atan")
    got = run(be, inp, torch.float32, training, tdbn, OPTIONS[opt], "atan")
    check(got, ref, torch.float32)


@pytest.mark.parametrize("be,dtype,training", fused([torch.float16, torch.bfloat16], [True, False]))
def test_low_precision_within_torch_error(be, dtype, training):
    inp = make_inputs((6, 4, 8, 5, 5), dtype)
    ref64 = run("reference", inp, torch.float64, training, None, OPTIONS["hard-di"])
    ref_lp = run("reference", inp, dtype, training, None, OPTIONS["hard-di"])
    got = run(be, inp, dtype, training, None, OPTIONS["hard-di"])
    for k in ("v_last", "v_seq", "grad_x", "grad_v0", "grad_w", "grad_b"):
        # grad_w, grad_b are float32 (the parameters' dtype): the bound is still the x dtype's
        assert_close_lowp(got[k], ref64[k], ref_lp[k].to(dtype), name=k)
    flips = (got["s"].double() != ref64["s"]).float().mean().item()
    flips_torch = (ref_lp["s"].double() != ref64["s"]).float().mean().item()
    assert flips <= 2 * flips_torch + 1e-3, (flips, flips_torch)


@pytest.mark.parametrize("be", fused())
def test_noise_mask(be):
    inp = make_inputs((5, 3, 4, 3, 3), torch.float64, learn=True)
    mask = torch.rand(inp["x"].shape, generator=torch.Generator().manual_seed(1)) > 0.5
    ref = run("reference", inp, torch.float64, noise_mask=mask)
    got = run(be, inp, torch.float64, noise_mask=mask)
    check(got, ref, torch.float64)


# --- edge cases -------------------------------------------------------------------------------------
EDGES = {
    "one-element-channels": (4, 3, 6),  # [T, B, C]: no spatial dims, S = 1
    "one-channel": (4, 3, 1, 5, 5),
    "b-times-s-1": (6, 1, 5),  # B·S = 1: n = T
    "t-1": (1, 4, 3, 4, 4),
}


@pytest.mark.parametrize("be,edge,training", fused(list(EDGES), [True, False]))
def test_edge_shapes(be, edge, training):
    inp = make_inputs(EDGES[edge], torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, training, 0.7)
    got = run(be, inp, torch.float64, training, 0.7)
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be", fused())
def test_zero_variance_channel(be):
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64, learn=True)
    inp["x"][:, :, 2] = 0.8  # constant channel: var 0, rstd = 1/√ε
    ref = run("reference", inp, torch.float64)
    got = run(be, inp, torch.float64)
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be,affine,running", fused([True, False], [True, False]))
def test_noncontiguous_affine_and_running_optional(be, affine, running):
    inp = make_inputs((4, 3, 4, 3, 2), torch.float64, affine=affine, running=running)
    ref = run("reference", inp, torch.float64, noncontig=True)
    got = run(be, inp, torch.float64, noncontig=True)
    check(got, ref, torch.float64)


def test_one_value_per_channel_is_refused():
    x = torch.randn(1, 1, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        snn_fast.bn_lif(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        snn_fast.bn_lif_reference(x)
    snn_fast.bn_lif(x, running_mean=torch.zeros(3), running_var=torch.ones(3), training=False)  # eval: fine


def test_argument_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="weight must be"):
        snn_fast.bn_lif(x, torch.ones(5))
    with pytest.raises(ValueError, match="at least 3 dims"):
        snn_fast.bn_lif(torch.randn(2, 3))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        snn_fast.bn_lif(x, running_mean=torch.zeros(4))


def test_user_surrogate_runs_on_auto_and_cpu():
    """A user's surrogate: 'auto' and 'cpu' (custom_cpu.py; tests/test_bn_lif_user_surrogate.py has the
    rest) give the reference's values."""
    from snn_fast import surrogate as sgm

    name = "bn_lif_test_cubic"
    if name not in sgm.names():
        sgm.register_surrogate(name, g=lambda x, a: torch.sigmoid(a * x),
                               dg=lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)), alpha=4.0)
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64)
    ref = run("reference", inp, torch.float64, surrogate=name)
    for be in ("auto",) + (() if SKIP["cpu"] else ("cpu",)):
        check(run(be, inp, torch.float64, surrogate=name), ref, torch.float64)


# --- the ops: opcheck, compile -----------------------------------------------------------------------
@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("batch_stats,tdbn,need", [(True, 0.0, True), (False, 0.7, True), (True, 0.7, False)])
def test_cxx_opcheck(batch_stats, tdbn, need):
    T, B, C, S = 3, 2, 4, 5
    x = torch.randn(T, B * C * S, dtype=torch.float64, requires_grad=True)
    v0 = torch.zeros(B * C * S, dtype=torch.float64, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64, requires_grad=need)
    w = torch.rand(C, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, dtype=torch.float64, requires_grad=True)
    mean, rstd, _ = torch.ops.snn_fast.bn_lif_stats(x.detach(), C, S, 1e-5)
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    fwd = (x, v0, params, w, b, mean, rstd, tdbn, S, batch_stats, None, *flags, True, 0)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_fwd.default, fwd)
    s = torch.ops.snn_fast.bn_lif_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in fwd])[0]
    bwd = (torch.randn_like(x), torch.randn_like(v0), None, x.detach(), v0.detach(), params.detach(), w.detach(),
           b.detach(), mean, rstd, tdbn, S, batch_stats, None, x.new_empty(0), s, *flags, 0, need)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_bwd.default, bwd)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_stats.default, (x.detach(), C, S, 1e-5))


@pytest.mark.parametrize("op", ["cxx-cpu", "cxx-cuda", "torch", "triton", "triton-cuda"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(3, 4, 5, 7, 7), (2, 3, 2, 1000), (4, 8, 1, 2500), (5, 7, 3), (2, 1, 4)], ids=str)
def test_batch_stats_match_torch(monkeypatch, shape, dtype, op):
    """function.py's statistics, (mean, rstd = 1/√(biased var + eps), unbiased var) in params' dtype:
    the C++ bn_lif_stats (double inside; on CUDA chunked, [4, 8, 1, 2500] in 20 chunks), the Triton
    one (chunked too: 625 chunks interpreted, 20 on a GPU) and the torch fallback where a build lacks
    them, against torch in float64 on x as stored."""
    from snn_fast.ops.bn_lif import function as bf

    device = "cuda" if op.endswith("cuda") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if op.startswith("cxx") and device not in bf._STATS_OP:
        pytest.skip(f"no bn_lif_stats kernel for {device} in this build of _C")
    if op.startswith("triton"):
        if SKIP["triton" if device == "cpu" else "triton-cuda"]:
            pytest.skip(str(SKIP["triton" if device == "cpu" else "triton-cuda"]))
        bf.BACKENDS.load("triton")
    if op == "torch":
        monkeypatch.setattr(bf, "_STATS_OP", frozenset())
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.7).to(dtype).to(device)
    T, C = shape[0], shape[2]
    inner = x[0, 0, 0].numel()
    n = x.numel() // C
    name = "triton" if op.startswith("triton") else "cuda" if device == "cuda" else "cpu"
    mean, rstd, varu = (t.cpu() for t in bf._batch_stats(name, x.reshape(T, -1), C, inner, n, 1e-5))
    x = x.cpu()
    xd = x.double().transpose(1, 2).reshape(T, C, -1).transpose(0, 1).reshape(C, -1)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=3e-6, atol=1e-6)
    for got, want, what in ((mean, xd.mean(1), "mean"), (rstd, torch.rsqrt(xd.var(1, correction=0) + 1e-5), "rstd"),
                            (varu, xd.var(1), "var_unbiased")):
        assert got.dtype == pd and got.shape == (C,), what
        torch.testing.assert_close(got.double(), want, **tol, msg=what)


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
def test_stats_op_refuses_one_value_per_channel():
    """The unbiased variance needs n > 1 (nn.BatchNorm's training error); the op says so, not NaN."""
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        torch.ops.snn_fast.bn_lif_stats(torch.randn(1, 4), 4, 1, 1e-5)
    mean, rstd, varu = torch.ops.snn_fast.bn_lif_stats(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), 2, 1, 0.0)
    assert torch.equal(mean, torch.tensor([2.0, 3.5])) and torch.equal(varu, torch.tensor([2.0, 4.5]))
    torch.testing.assert_close(rstd, torch.tensor([1.0, 1 / 1.5]))


@pytest.mark.skipif(bool(SKIP["triton"]), reason=str(SKIP["triton"]))
def test_triton_stats_refuse_one_value_and_keep_precision():
    """The Triton statistics: n = 1 refused as the C++ op refuses it; exact at n = 2; the shift by the
    channel's first value keeps the variance when |mean| ≫ std (1e6 ± 1e-3 in float64: the unshifted
    Σx² − (Σx)²/n loses it to cancellation); an inf or NaN in one channel makes that channel's
    statistics non-finite (as torch's: mean inf, variance NaN for an inf) and leaves the others."""
    bl_function.BACKENDS.load("triton")
    stats = torch.ops.snn_fast.bn_lif_stats_triton
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        stats(torch.randn(1, 4), 4, 1, 1e-5)
    mean, rstd, varu = stats(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), 2, 1, 0.0)
    assert torch.equal(mean, torch.tensor([2.0, 3.5])) and torch.equal(varu, torch.tensor([2.0, 4.5]))
    torch.testing.assert_close(rstd, torch.tensor([1.0, 1 / 1.5]))
    g = torch.Generator().manual_seed(2)
    d = torch.randn(4, 3 * 2 * 300, generator=g, dtype=torch.float64) * 1e-3
    x = 1e6 + d
    mean, rstd, varu = stats(x, 2, 300, 1e-12)
    xd = (x - 1e6).view(4, 3, 2, 300).permute(2, 0, 1, 3).reshape(2, -1)  # [C, T·B·inner], exact
    torch.testing.assert_close(varu, xd.var(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, 1e6 + xd.mean(1), rtol=1e-15, atol=0)
    xc = x.view(4, 3, 2, 300).permute(2, 0, 1, 3).reshape(2, -1)
    naive = ((xc * xc).sum(1) - xc.sum(1) ** 2 / xc.shape[1]) / (xc.shape[1] - 1)
    assert ((naive - xd.var(1)).abs() / xd.var(1)).max() > 1e-3  # what the shift is for
    x = torch.randn(3, 4 * 3 * 5, generator=g)
    want = stats(x, 3, 5, 1e-5)
    for bad in (float("inf"), float("nan")):
        xb = x.clone()
        xb[1, 5 + 2] = bad  # channel 1
        got = stats(xb, 3, 5, 1e-5)
        for gt, wt in zip(got, want):
            assert not torch.isfinite(gt[1]), (bad, got)
            assert torch.equal(gt[[0, 2]], wt[[0, 2]]), (bad, got)
        assert torch.isnan(got[2][1]), got  # never clamped to a finite variance


def _triton_op_calls(bt, x, C, S, training, need, tdbn):
    """The Triton ops' outputs for one statistics + forward + backward on x [T, N]."""
    T, N = x.shape
    v0, params = torch.zeros(N, dtype=x.dtype), torch.tensor([0.5, 1.0, 4.0], dtype=x.dtype)
    g = torch.Generator().manual_seed(9)
    w, b = torch.rand(C, generator=g, dtype=x.dtype) + 0.5, torch.randn(C, generator=g, dtype=x.dtype)
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    stats = bt.bn_lif_stats_triton(x, C, S, 1e-5)
    mean, rstd = stats[0], stats[1]
    s, v_last, _, saved = bt.bn_lif_fwd_triton(x, v0, params, w, b, mean, rstd, tdbn, S, training, None, *flags,
                                               False, 0)
    gs = torch.randn(x.shape, generator=g, dtype=x.dtype)
    grads = bt.bn_lif_bwd_triton(gs, None, None, x, v0, params, w, b, mean, rstd, tdbn, S, training, None, saved, s,
                                 *flags, 0, need)
    return (*stats, s, v_last, *grads)


def _nan_filled_allocations(mp):
    """torch.empty and torch.empty_like (the Python-side allocations) fill floating tensors with NaN, so
    an output no kernel writes shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    mp.setattr(torch, "empty", lambda *a, **k: nan(empty(*a, **k)))
    mp.setattr(torch, "empty_like", lambda *a, **k: nan(empty_like(*a, **k)))


@pytest.mark.skipif(bool(SKIP["triton"]), reason=str(SKIP["triton"]))
@pytest.mark.parametrize("training,need,tdbn", [(True, True, 0.7), (True, False, 0.0), (False, True, 0.0),
                                                (False, False, 0.7)])
def test_triton_ops_write_every_output(monkeypatch, training, need, tdbn):
    """Every output of the Triton ops is written by a kernel: with every float allocation filled with
    NaN, they come out finite and bitwise the same (∂params zeroed by the channel pass without
    parameter gradients, the checkpoints and the block sums read only where written: T = 9, three
    segments); and the statistics' 64-bit index path (NARROW off, as beyond 2³¹ values) gives bitwise
    the 32-bit path's results."""
    bl_function.BACKENDS.load("triton")
    from snn_fast.ops.bn_lif import triton as bt

    T, B, C, S = 9, 2, 5, 7
    x = torch.randn(T, B * C * S, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = _triton_op_calls(bt, x, C, S, training, need, tdbn)
    assert all(torch.isfinite(t).all() for t in want)
    if not need:
        assert torch.equal(want[-3], torch.zeros(3, dtype=x.dtype))  # ∂params
    with monkeypatch.context() as mp:
        _nan_filled_allocations(mp)
        got = _triton_op_calls(bt, x, C, S, training, need, tdbn)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    with monkeypatch.context() as mp:
        mp.setattr(bt, "_I32", 0)  # every launch on its 64-bit index path
        got = _triton_op_calls(bt, x, C, S, training, need, tdbn)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op", ["cxx-cpu", "triton"])
def test_stats_eps_in_double(op, dtype):
    """A channel of constant values: rstd = 1/√ε with ε in double (as F.batch_norm's double eps), then
    rounded to params' dtype, bitwise (ε = 1e-5 rounded to fp32 first would change the last bits)."""
    if op == "triton":
        if SKIP["triton"]:
            pytest.skip(str(SKIP["triton"]))
        bl_function.BACKENDS.load("triton")
        stats = torch.ops.snn_fast.bn_lif_stats_triton
    else:
        if SKIP["cpu"]:
            pytest.skip(str(SKIP["cpu"]))
        stats = torch.ops.snn_fast.bn_lif_stats
    x = torch.full((3, 2 * 4), 0.75, dtype=dtype)
    for eps in (1e-5, 3e-7, 0.1):
        rstd = stats(x, 4, 1, eps)[1]
        want = torch.tensor(1.0 / math.sqrt(eps), dtype=torch.float64).to(rstd.dtype)
        assert torch.equal(rstd, want.expand(4)), (eps, rstd, want)
    assert torch.tensor(1.0 / math.sqrt(float(torch.tensor(3e-7, dtype=torch.float32))), dtype=torch.float64) != \
        torch.tensor(1.0 / math.sqrt(3e-7), dtype=torch.float64)  # what a float32 ε would have given


@pytest.mark.parametrize("be", fused())
def test_many_channels(be):
    """300 channels (several programs of the Triton statistics' finish; ∂params summed over more than one
    step of its loop) with learnable τ, θ, α and tdBN, against the reference."""
    inp = make_inputs((3, 2, 300, 2), torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, True, 0.7, OPTIONS["hard-di"])
    check(run(be, inp, torch.float64, True, 0.7, OPTIONS["hard-di"]), ref, torch.float64)


@pytest.mark.skipif(bool(SKIP["triton"]), reason=str(SKIP["triton"]))
def test_triton_ops_refuse_bad_channel_tensors():
    """The Triton ops index weight, bias, mean and rstd by channel: a wrong size, dtype or device is
    refused by name (it would be read out of bounds or in another precision), as by the C++ op."""
    bl_function.BACKENDS.load("triton")
    T, C, S = 2, 3, 4
    x = torch.randn(T, 2 * C * S)
    v0, params = torch.zeros(2 * C * S), torch.tensor([0.5, 1.0, 4.0])
    good = dict(weight=torch.ones(C), bias=torch.zeros(C), mean=torch.zeros(C), rstd=torch.ones(C))
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    for name in good:
        for bad in (torch.ones(C + 1) if name != "weight" else None, torch.ones(C, dtype=torch.float64),
                    torch.ones(1, C)):
            if bad is None:
                continue
            a = {**good, name: bad}
            with pytest.raises(RuntimeError, match=f"bn_lif_triton: {name} must be"):
                torch.ops.snn_fast.bn_lif_fwd_triton(x, v0, params, a["weight"], a["bias"], a["mean"], a["rstd"], 0.0,
                                                     S, True, None, *flags, False, 0)


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
def test_cxx_op_errors_name_the_op_and_argument():
    """The C++ op's checks (the LIF op's, shared) name bn_lif and the argument, not 'lif'."""
    T, C, S = 3, 4, 5
    x = torch.randn(T, 2 * C * S)
    v0, params = torch.zeros(2 * C * S), torch.tensor([0.5, 1.0, 4.0])
    bn = (torch.ones(C), torch.zeros(C), torch.zeros(C), torch.ones(C), 0.0, S, True, None)
    flags = [0, True, 0.0, True, False, 0.0, False, 0]  # contract.FLAG_ARGS
    fwd = torch.ops.snn_fast.bn_lif_fwd
    cases = [((x, v0.double(), params, *bn, *flags, False, 0), "bn_lif: v0 dtype"),
             ((x, v0, params.double(), *bn, *flags, False, 0), "bn_lif: params must be Float"),
             ((x, v0, params, *bn, 77, *flags[1:], False, 0), "bn_lif: unknown surrogate id 77"),
             ((x, v0, params, *bn, *flags[:-1], 7, False, 0), "bn_lif: reset_timing must be"),
             ((x, v0, params, *bn, *flags, False, 9), r"bn_lif \(CPU kernel\): unknown save mode 9")]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            fwd(*args)
    s = fwd(x, v0, params, *bn, *flags, False, 0)[0]
    with pytest.raises(RuntimeError, match="bn_lif_bwd: grad_s must match x"):
        torch.ops.snn_fast.bn_lif_bwd(x[:1], None, None, x, v0, params, *bn[:7], None, x.new_empty(0), s, *flags, 0,
                                      False)


@pytest.mark.skipif(bool(SKIP["triton"]), reason=str(SKIP["triton"]))
@pytest.mark.parametrize("T,save,need,dtype", [(3, 0, True, torch.float32), (17, 1, False, torch.float32),
                                               (9, 0, False, torch.float32), (9, 2, False, torch.bfloat16)],
                         ids=["T3-state", "T17-recompute", "T9-state", "T9-none-bf16"])
def test_triton_opcheck(T, save, need, dtype):
    # the pair with its autograd registered (loading the backend; alone, this test used to find the
    # forward without one, depending on which test had run the backend first)
    bl_function.BACKENDS.load("triton")

    B, C, S = 2, 2, 3
    x = torch.randn(T, B * C * S, dtype=dtype, requires_grad=True)
    v0 = torch.zeros(B * C * S, dtype=dtype, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], requires_grad=need)
    w, b = torch.rand(C, requires_grad=True), torch.randn(C, requires_grad=True)
    var, mean = torch.var_mean(x.detach().float().view(-1, C, S), dim=(0, 2), correction=0)
    rstd = torch.rsqrt(var + 1e-5)
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    fwd = (x, v0, params, w, b, mean, rstd, 0.7, S, True, None, *flags, False, save)
    if save == 2:  # no checkpoints (inference, no gradient): the C++ ops' empty tensor in x's dtype, as the fake
        det = [a.detach() if isinstance(a, torch.Tensor) else a for a in fwd]
        torch.library.opcheck(torch.ops.snn_fast.bn_lif_fwd_triton.default, det)
        saved = torch.ops.snn_fast.bn_lif_fwd_triton(*det)[3]
        assert saved.shape == (0,) and saved.dtype == dtype
        return
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_fwd_triton.default, fwd)
    det = [a.detach() if isinstance(a, torch.Tensor) else a for a in fwd]
    s, _, _, saved = torch.ops.snn_fast.bn_lif_fwd_triton(*det)
    from snn_fast.ops.bn_lif import triton as bt

    assert saved.shape == (checkpoint_rows(T, bt.SEG), B * C * S)  # the membrane every SEG steps, either mode
    bwd = (torch.randn_like(x), None, None, *det[:10], None, saved, s, *flags, save, need)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_bwd_triton.default, bwd)
    with pytest.raises(RuntimeError, match="`saved` must be the forward's membrane checkpoints"):
        torch.ops.snn_fast.bn_lif_bwd_triton(*bwd[:14], x.new_empty(T, B * C * S), *bwd[15:])
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_stats_triton.default, (x.detach(), C, S, 1e-5))


@pytest.mark.parametrize("be", fused())
def test_torch_compile_fullgraph(be):
    torch._dynamo.reset()
    inp = make_inputs((4, 2, 3, 2, 2), torch.float64, learn=False)
    name, dev = name_dev(be)

    def step(x, w, b, rm, rv, v0):
        s, v = snn_fast.bn_lif(x, w, b, rm, rv, True, 0.1, 1e-5, v0=v0, tdbn_alpha=0.7, backend=name)
        return s, v

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    args = [inp[k].clone().to(dev) for k in ("x", "w", "b", "rm", "rv", "v0")]
    ref_args = [a.clone() for a in args]
    for a in (args[0], args[1], args[2], ref_args[0], ref_args[1], ref_args[2]):
        a.requires_grad_(True)
    out = compiled(*args)
    ref = step(*ref_args)
    for o, r in zip(out, ref):
        assert_close(o, r, torch.float64)
    (out[0].sum() + out[1].sum()).backward()
    (ref[0].sum() + ref[1].sum()).backward()
    for a, r in zip(args[:3], ref_args[:3]):
        assert_close(a.grad, r.grad, torch.float64)
    assert_close(args[3], ref_args[3], torch.float64)  # running statistics updated in the graph too


# --- modules ------------------------------------------------------------------------------------------
def test_bnlif_equals_batchnorm_then_lif():
    torch.manual_seed(0)
    bn, lif = torch.nn.BatchNorm2d(4).double(), snn.LIF(tau=2.0, detach_reset=True)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.5, 0.2)
    fused_m = snn.BNLIF(4, neuron=snn.LIF(tau=2.0, detach_reset=True)).double()
    fused_m.load_state_dict(bn.state_dict())  # BatchNorm's state dict loads as is
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64) * 2
    ms = snn.MultiStep(bn)
    for train in (True, False):
        ms.train(train)
        fused_m.train(train)
        for _ in range(2):  # the membrane carries over between calls
            _close_t(fused_m(x), lif(ms(x)))
        lif.reset()
        fused_m.reset()
    for k, v in bn.state_dict().items():
        _close_t(fused_m.state_dict()[k], v)
    bn2 = torch.nn.BatchNorm2d(4).double()
    bn2.load_state_dict({k: v for k, v in fused_m.state_dict().items() if not k.startswith("neuron.")})


def test_tdbnlif_equals_tdbatchnorm_then_lif():
    torch.manual_seed(0)
    from snn_fast import presets

    td = snn.TDBatchNorm(4, alpha=0.7, v_threshold=0.5).double()
    lif = presets.lif("stbp_tdbn")
    f = snn.TDBNLIF(4, alpha=0.7, neuron=presets.lif("stbp_tdbn")).double()
    f.load_state_dict(td.state_dict())
    x = torch.randn(3, 2, 4, 3, 3, dtype=torch.float64)
    _close_t(f(x), lif(td(x)))
    assert set(f.state_dict()) == set(td.state_dict())


def test_bnlif_momentum_none_and_single_step():
    bn = torch.nn.BatchNorm2d(3, momentum=None).double()
    f = snn.BNLIF(3, momentum=None, neuron=snn.LIF(step_mode="s")).double()
    lif = snn.LIF(step_mode="s")
    for _ in range(3):
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
        _close_t(f(x), lif(bn(x)))
    _close_t(f.running_var, bn.running_var)
    assert int(f.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_module_pickles_and_copies():
    f = snn.BNLIF(3)
    x = torch.randn(2, 2, 3, 2, 2)
    f(x)
    buf = io.BytesIO()
    torch.save(f, buf)
    buf.seek(0)
    assert isinstance(torch.load(buf, weights_only=False), snn.BNLIF)
    copy.deepcopy(f)


def _close_t(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.skipif(bool(SKIP["triton"]), reason=str(SKIP["triton"]))
@pytest.mark.parametrize("name", ["user_shifted", "user_box"])
def test_user_surrogate_on_triton(name):
    """A user's surrogate with @triton.jit functions runs on Triton (learnable α where it has a width)."""
    import user_surrogates

    user_surrogates.register_all()
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64, learn=name != "user_box")
    opts = {} if name == "user_box" else dict(alpha=2.0)
    ref = run("reference", inp, torch.float64, opts=opts, surrogate=name)
    got = run("triton", inp, torch.float64, opts=opts, surrogate=name)
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be,T,training", fused([8, 9, 12, 19], [True, False]))
def test_long_sequences(be, T, training):
    """T past one segment (the GPU backwards re-run each from the forward's checkpoint: 8 steps in
    CUDA, 4 in Triton; T a multiple of either, and ragged), learnable τ/θ/α, tdBN: every output and
    gradient."""
    inp = make_inputs((T, 2, 3, 2, 3), torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, training, 0.7, surrogate="atan")
    got = run(be, inp, torch.float64, training, 0.7, surrogate="atan")
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be,start,T,mode", fused([None, 0.3], [4, 9], ["train-learn", "eval", "hard-soft"]))
def test_uniform_start(be, start, T, mode):
    """v0=None (the reset value) or a float: the kernels get v0 [1] (_initial_state_flat) and read no row
    of N for it, nor write ∂L/∂v0 (docs/spec.md §12.3). Every output, gradient and running statistic
    is bit for bit what the same start given per neuron ([N], no gradient) gives; T = 9 re-runs a
    segment from a checkpoint on the GPU backends."""
    name, dev = name_dev(be)
    opts = dict(OPTIONS["soft-nodi-det"] if mode == "hard-soft" else OPTIONS["hard-di"])
    inp = make_inputs((T, 2, 3, 4, 5), torch.float64, learn=mode == "train-learn")
    training = mode != "eval"

    def go(v0):
        x = inp["x"].to(dev).clone().requires_grad_(True)
        w, b = (inp[k].to(dev).clone().requires_grad_(True) for k in ("w", "b"))
        rm, rv = inp["rm"].to(dev).clone(), inp["rv"].to(dev).clone()
        th = torch.tensor(0.9, dtype=torch.float64, device=dev, requires_grad=True)
        out = snn_fast.bn_lif(x, w, b, rm, rv, training, 0.1, 1e-5, v0=v0, tdbn_alpha=0.7, return_v_seq=True,
                              backend=name, **opts, **(dict(v_threshold=th) if inp["learn"] else {}))
        g = torch.Generator().manual_seed(5)
        sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dev)).sum() for o in out).backward()
        return [*out, x.grad, w.grad, b.grad, rm, rv] + ([th.grad] if inp["learn"] else [])

    value = 0.3 if start is not None else (opts["v_reset"] if opts["v_reset"] is not None else 0.0)
    want = go(torch.full((2, 3, 4, 5), value, dtype=torch.float64, device=dev))
    got = go(start)
    assert len(got) == len(want)
    for i, (g_, w_) in enumerate(zip(got, want)):
        assert torch.equal(g_, w_), i


@pytest.mark.parametrize("be,dtype", fused([torch.bfloat16, torch.float16]))
def test_uniform_start_low_precision(be, dtype):
    """v0=None in bf16/fp16 (the NaN of the [1] ∂L/∂v0 made in the compute dtype: bf16 has no constant
    of its own in Triton): bit for bit the same start given per neuron, gradients included."""
    name, dev = name_dev(be)
    inp = make_inputs((4, 2, 3, 4, 5), torch.float64)

    def go(v0):
        x = inp["x"].to(dev, dtype).clone().requires_grad_(True)
        w = inp["w"].to(dev, torch.float32).clone().requires_grad_(True)
        out = snn_fast.bn_lif(x, w, None, None, None, True, v0=v0, backend=name)
        (out[0].float() * torch.linspace(-1, 1, out[0].numel(), device=dev).view(out[0].shape)).sum().backward()
        return [*out, x.grad, w.grad]

    for g_, w_ in zip(go(None), go(torch.zeros((2, 3, 4, 5), dtype=dtype, device=dev))):
        assert torch.equal(g_, w_)


@pytest.mark.parametrize("be", fused())
def test_uniform_start_under_anomaly_detection(be):
    """The [1] start's ∂L/∂v0 (NaN) never reaches autograd: a backward from v0=None passes under
    torch.autograd.detect_anomaly, which checks every gradient a backward returns for NaN."""
    name, dev = name_dev(be)
    x = torch.randn(3, 2, 4, 5, device=dev, requires_grad=True)
    w = torch.rand(4, device=dev, requires_grad=True)
    with torch.autograd.detect_anomaly():
        s, v = snn_fast.bn_lif(x, w, None, None, None, True, backend=name)
        (s.sum() + v.sum()).backward()
    assert x.grad.isfinite().all() and w.grad.isfinite().all()


@pytest.mark.parametrize("be", fused())
def test_uniform_start_reaches_the_kernels(be):
    """v0=None and a float reach the fused op as v0 [1] (_initial_state_flat), a tensor as [N]: the op
    calls' v0 argument, seen below autograd."""
    name, dev = name_dev(be)
    x = torch.randn(3, 2, 4, 5, device=dev, requires_grad=True)
    for v0, want in ((None, (1,)), (0.2, (1,)), (torch.zeros(2, 4, 5, device=dev), (40,))):
        shapes = op_v0_shapes("bn_lif_fwd", lambda: snn_fast.bn_lif(x, None, None, None, None, True, v0=v0,
                                                                    backend=name)[0].sum().backward())
        assert shapes == [want], (v0, shapes)


@pytest.mark.skipif(bool(SKIP["cpu"]) and bool(SKIP["triton"]), reason="needs the C++ or the Triton ops")
def test_uniform_start_ops():
    """The ops' v0 [1] (N > 1): accepted without a gradient (opcheck; ∂L/∂v0 [1] NaN, never a number),
    refused by name when it requires one (both autograds), and any other size refused by name."""
    T, B, C, S = 3, 2, 2, 3
    N = B * C * S
    x = torch.randn(T, N, dtype=torch.float64, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    w, b = torch.rand(C, dtype=torch.float64, requires_grad=True), torch.randn(C, dtype=torch.float64)
    var, mean = torch.var_mean(x.detach().view(-1, C, S), dim=(0, 2), correction=0)
    rstd = torch.rsqrt(var + 1e-5)
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    ops = []
    if not SKIP["cpu"]:
        ops.append((torch.ops.snn_fast.bn_lif_fwd, torch.ops.snn_fast.bn_lif_bwd))
    if not SKIP["triton"]:
        bl_function.BACKENDS.load("triton")
        ops.append((torch.ops.snn_fast.bn_lif_fwd_triton, torch.ops.snn_fast.bn_lif_bwd_triton))
    for fwd_op, bwd_op in ops:
        v0 = torch.full((1,), 0.2, dtype=torch.float64)
        fwd = (x, v0, params, w, b, mean, rstd, 0.0, S, True, None, *flags, False, 0)
        torch.library.opcheck(fwd_op.default, fwd)
        det = [a.detach() if isinstance(a, torch.Tensor) else a for a in fwd]
        s, v_last, _, saved = fwd_op(*det)
        assert v_last.shape == (N,)
        gx, gv0, *_ = bwd_op(torch.randn_like(s), None, None, *det[:10], None, saved, s, *flags, 0, False)
        assert gv0.shape == (1,) and gv0.isnan().all() and gx.isfinite().all()
        with pytest.raises(RuntimeError, match="v0 of one element starts all 12 neurons"):
            fwd_op(x, v0.clone().requires_grad_(True), *fwd[2:])
        with torch.no_grad():  # no gradient recorded: nothing to refuse (both autograds)
            fwd_op(x, v0.clone().requires_grad_(True), *fwd[2:])
        with pytest.raises(RuntimeError, match=r"v0 must be \[N\] = \[12\]"):
            fwd_op(*det[:1], torch.zeros(2, dtype=torch.float64), *det[2:])


# [T, B, C] shapes whose Triton backward (interpreted: 64 threads per program) has several channels per
# program, the last group ragged (lanes past C), and several ragged row chunks per channel: inner 1
# (lanes 8 for 6 channels, rows 8 of 20 neurons) and inner 3 (lanes 4 for 5 channels, rows 16 of 90).
TRITON_LAYOUTS = {"inner1-c6": (17, 20, 6), "inner3-c5": (17, 30, 5, 3)}


LAYOUT_MODES = {"train-learn": (True, True), "train": (True, False), "eval-learn": (False, True)}


@pytest.mark.parametrize("be,layout,mode", fused(list(TRITON_LAYOUTS), list(LAYOUT_MODES)))
def test_backward_layouts(be, layout, mode):
    """Channel groups and row chunks of the GPU backwards' blocks (per-block sums of batch norm's
    terms, then per channel), T = 17 (whole segments and a ragged one), the noise mask; batch
    statistics with and without learnable τ/θ/α, running statistics (∂L/∂x = a_c·∂L/∂X' written by
    the walk) with them: every output and gradient against the reference."""
    training, learn = LAYOUT_MODES[mode]
    shape = TRITON_LAYOUTS[layout]
    name, dev = name_dev(be)
    if name == "triton" and dev == "cpu":  # the layout the shape is for
        from snn_fast.ops.bn_lif import triton as bt

        C, inner = shape[2], math.prod(shape[3:])
        N = shape[1] * C * inner
        lanes, P = bt.bwd_lanes(N, C, inner), bt.bwd_chunks(N, C, inner)
        assert lanes > 1 and C % lanes != 0 and P > 1 and (N // C) % (bt.BWD_BLOCK // lanes) != 0, (lanes, P)
    inp = make_inputs(shape, torch.float64, learn=learn)
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.3
    ref = run("reference", inp, torch.float64, training, 0.7, OPTIONS["hard-di"], noise_mask=mask)
    got = run(be, inp, torch.float64, training, 0.7, OPTIONS["hard-di"], noise_mask=mask)
    check(got, ref, torch.float64)


@pytest.mark.parametrize("be", fused())
def test_empty_batch(be, monkeypatch):
    """B = 0 in eval (running statistics): no neuron and no backward program, yet ∂weight, ∂bias and
    ∂τ/θ/α are exactly 0, as the reference gives, not what an unwritten buffer held (Python-side
    allocations, the Triton backend's, filled with NaN)."""
    inp = make_inputs((9, 0, 3, 2), torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, False, 0.7, OPTIONS["hard-di"])
    _nan_filled_allocations(monkeypatch)
    got = run(be, inp, torch.float64, False, 0.7, OPTIONS["hard-di"])
    check(got, ref, torch.float64)
    for k in ("grad_w", "grad_b", "grad_tau", "grad_v_threshold", "grad_alpha"):
        assert torch.equal(got[k], torch.zeros_like(got[k])), k


@pytest.mark.parametrize("be,save", fused(["recompute", "state"]))
def test_save_modes_agree(be, save):
    """Results do not depend on the save mode (the GPU backends keep the same checkpoints for both)."""
    inp = make_inputs((5, 3, 4, 3, 3), torch.float64, learn=True)
    name, dev = name_dev(be)
    x = inp["x"].clone().to(dev).requires_grad_(True)
    w = inp["w"].clone().to(dev).requires_grad_(True)
    th = torch.tensor(0.8, dtype=torch.float64, device=dev, requires_grad=True)
    s, v = snn_fast.bn_lif(x, w, inp["b"].to(dev), inp["rm"].clone().to(dev), inp["rv"].clone().to(dev), True,
                           v_threshold=th, tdbn_alpha=0.7, backend=name, save=save)
    (s.sum() + v.sum()).backward()
    x2 = inp["x"].clone().requires_grad_(True)
    w2 = inp["w"].clone().requires_grad_(True)
    th2 = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    s2, v2 = snn_fast.bn_lif_reference(x2, w2, inp["b"], inp["rm"].clone(), inp["rv"].clone(), True, v_threshold=th2,
                                       tdbn_alpha=0.7)
    (s2.sum() + v2.sum()).backward()
    for a, b in ((s, s2), (v, v2), (x.grad, x2.grad), (w.grad, w2.grad), (th.grad, th2.grad)):
        assert_close(a.cpu(), b, torch.float64)


@pytest.mark.skipif(bool(SKIP["cuda"]), reason=str(SKIP["cuda"]))
@pytest.mark.parametrize("T,save,batch_stats,need", [(3, 0, True, True), (17, 1, True, False), (9, 0, False, True)])
def test_cuda_opcheck(T, save, batch_stats, need):
    B, C, S = 2, 4, 5
    x = torch.randn(T, B * C * S, device="cuda", requires_grad=True)
    v0 = torch.zeros(B * C * S, device="cuda", requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], device="cuda", requires_grad=need)
    w = torch.rand(C, device="cuda", requires_grad=True)
    b = torch.randn(C, device="cuda", requires_grad=True)
    var, mean = torch.var_mean(x.detach().view(-1, C, S), dim=(0, 2), correction=0)
    rstd = torch.rsqrt(var + 1e-5)
    flags = (0, True, 0.0, True, False, 0.0, True, 0)  # the strict threshold on
    fwd = (x, v0, params, w, b, mean, rstd, 0.7, S, batch_stats, None, *flags, False, save)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_fwd.default, fwd)
    det = [a.detach() if isinstance(a, torch.Tensor) else a for a in fwd]
    s, _, _, saved = torch.ops.snn_fast.bn_lif_fwd(*det)
    assert saved.shape == (checkpoint_rows(T), B * C * S)  # the membrane every 8 steps, either save mode
    bwd = (torch.randn_like(x), None, None, *det[:10], None, saved, s, *flags, save, need)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_bwd.default, bwd)


# --- the firing and reset options of the LIF op ------------------------------------------------------
def _on_threshold_inputs():
    """Channels 0 and 3 charge to exactly θ = 1 at the first step (weight 0: X' = bias = 1, v0 = 0,
    decay_input=False: H = 0 − 0·k + X'); the others are random."""
    inp = make_inputs((3, 2, 4, 3), torch.float64, learn=False)
    inp["w"] = torch.tensor([0.0, 0.8, 1.2, 0.0], dtype=torch.float64)
    inp["b"] = torch.tensor([1.0, 0.5, 0.3, 1.0], dtype=torch.float64)
    inp["v0"] = torch.zeros_like(inp["v0"])
    return inp


@pytest.mark.parametrize("be,fire_at_threshold,learn", fused([True, False], [False, True]))
def test_strict_threshold_on_theta(be, fire_at_threshold, learn):
    inp = _on_threshold_inputs()
    inp["learn"] = learn
    opts = dict(tau=2.0, decay_input=False, v_reset=0.0, fire_at_threshold=fire_at_threshold)
    ref = run("reference", inp, torch.float64, opts=opts)
    got = run(be, inp, torch.float64, opts=opts)
    check(got, ref, torch.float64)
    # the membranes on θ fire at the first step exactly when Θ(0) = 1
    assert bool((got["s"][0, :, 0] == 1).all()) == fire_at_threshold
    assert bool((got["s"][0, :, 3] == 1).all()) == fire_at_threshold


@pytest.mark.parametrize("timing", ["delayed", "none"])
def test_reset_timing_runs_on_the_reference(timing):
    """The kernels reset after the spike only: 'auto' gives the reference's result, a kernel named
    explicitly refuses with the argument's name."""
    inp = make_inputs((4, 3, 4, 3), torch.float64, learn=True)
    opts = dict(tau=2.0, v_reset=None, reset_timing=timing, fire_at_threshold=False, detach_reset=True)
    check(run("auto", inp, torch.float64, opts=opts), run("reference", inp, torch.float64, opts=opts), torch.float64)
    assert run("auto", inp, torch.float64, opts=opts)["s"].ne(
        run("auto", inp, torch.float64, opts=dict(opts, reset_timing="after_fire"))["s"]).any()
    for be in [b for b in BACKENDS if not SKIP[b]]:
        with pytest.raises(ValueError, match="reset_timing"):
            run(be, inp, torch.float64, opts=opts)


@pytest.mark.skipif(not snn_fast.HAS_C, reason="needs the built C++ extension")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
def test_cpu_results_do_not_depend_on_the_thread_count(learn, training):
    """The CPU op adds its channel and parameter sums in a fixed order (per block, or per channel, then
    blocks or channels in order), so one thread and two give the same bits. Every shape takes the
    parallel path (T·N >= 2^19). In training the first goes channel by channel (memory.py
    cpu_backward_by_channel: runs of 4096), the others by blocks of the row: in the second the
    backward's blocks (4096 elements at T = 4) end inside channels' runs (53 elements: the statistics
    per column), the third is a Linear layer's [T, B, C] (runs of one: every short-run path, dx per
    row). In eval all three go by blocks of the row (no batch-statistics pass)."""
    shapes = ((4, 8, 16, 64, 64), (4, 128, 24, 53), (4, 256, 512))
    assert [_by_channel(sh, torch.float32) for sh in shapes] == [True, False, False]
    before = torch.get_num_threads()
    try:
        for shape in shapes:
            inp = make_inputs(shape, torch.float32, learn=learn)
            got = {}
            for n in (1, 2):
                torch.set_num_threads(n)
                got[n] = run("cpu", inp, torch.float32, training, return_v_seq=False)
            for k in got[1]:
                assert torch.equal(got[1][k], got[2][k]), f"{shape} {k}: 1 and 2 threads differ"
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("shape", [(4, 16, 1501, 3), (4, 16, 5003)], ids=["runs-3", "runs-1"])
def test_cpu_short_runs_wider_than_a_task(shape):
    """Short runs (under 16 elements) in rows of C·inner wider than the CPU dx pass's most columns per
    task (kShortRunDxCols = 4096): each row in two equal chunks, 2252 and 2251 columns (the first
    ending inside a channel's run of 3) or 2502 and 2501. One thread, and three (T·N >= 2^18: the
    parallel path), whose middle thread's rows cross from the first chunk into the second (its
    coefficients refilled): the same bits, and the reference's values."""
    inp = make_inputs(shape, torch.float64, learn=True)
    before = torch.get_num_threads()
    got = {}
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            got[n] = run("cpu", inp, torch.float64)
    finally:
        torch.set_num_threads(before)
    for k in got[1]:
        assert torch.equal(got[1][k], got[3][k]), f"{k}: 1 and 3 threads differ"
    check(got[3], run("reference", inp, torch.float64), torch.float64)


# --- the CPU kernel's training backward channel by channel -------------------------------------------
# Shapes whose training backward goes channel by channel (memory.cpu_backward_by_channel,
# csrc/cpu/bn_lif_cpu_kernels.h backward_by_channel): each channel's walk, then its batch-statistics
# pass from the cache. The option grid's own shapes (runs under 2048) go by blocks of the row.
BY_CHANNEL = {
    "runs-2100": (3, 2, 3, 2100),  # three channels, one walk block per run
    "runs-2250-ragged": (2, 3, 2, 45, 50),  # runs of 2250 (not a multiple of the vector width)
    "blocks-in-run": (16, 1, 2, 2500),  # two walk blocks per run (2048 + 452 lanes at T = 16)
}


def _by_channel(shape, dtype=torch.float64, **kw):
    from snn_fast.ops.bn_lif import memory

    return memory.cpu_backward_by_channel(shape[0], math.prod(shape[1:]), shape[2], math.prod(shape[3:]), dtype,
                                          **kw)


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
def test_by_channel_rule_is_the_kernels():
    """memory.py's rule is the C++ kernel's (the op ``bn_lif_cpu_backward_by_channel`` asks the same
    function the backward asks) over runs, channels, steps, dtypes, ∂L/∂v_seq and the mask, on both sides
    of each limit."""
    from snn_fast.ops.bn_lif import memory

    n_true = 0
    for T in (1, 4, 16):
        for B in (1, 8, 32):
            for C in (1, 2, 64):
                for S in (1, 49, 2047, 2048, 3136, 12544):
                    for dtype in (torch.float64, torch.float32, torch.bfloat16):
                        for gvs, mask in ((False, False), (True, False), (False, True), (True, True)):
                            N = B * C * S
                            want = torch.ops.snn_fast.bn_lif_cpu_backward_by_channel(
                                T, N, C, S, torch.empty(0, dtype=dtype).element_size(), gvs, mask)
                            got = memory.cpu_backward_by_channel(T, N, C, S, dtype, grad_v_seq=gvs, mask=mask)
                            assert got == want, (T, B, C, S, dtype, gvs, mask)
                            n_true += want
    assert 0 < n_true
    with pytest.raises(RuntimeError, match="multiple of C·inner"):
        torch.ops.snn_fast.bn_lif_cpu_backward_by_channel(4, 10, 3, 2, 4, False, False)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_cpu_backward_by_channel.default,
                          (4, 3 * 2 * 2100, 3, 2100, 4, True, False), test_utils=("test_schema",))


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
def test_cpu_by_channel_threaded(learn):
    """Channel by channel on the parallel path (T·N = 2^19, both threads taking channels), float64, with a
    noise mask, v_seq's gradient and v0=None, against the reference (the other by-channel tests run on
    one thread: their T·N is under the parallel threshold)."""
    shape = (4, 8, 4, 64, 64)
    assert _by_channel(shape, grad_v_seq=True, mask=True) and math.prod(shape) == 1 << 19
    inp = make_inputs(shape, torch.float64, learn=learn)
    inp["v0"] = None
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(7)) > 0.2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = run("cpu", inp, torch.float64, True, 0.7, noise_mask=mask)
    finally:
        torch.set_num_threads(before)
    check(got, run("reference", inp, torch.float64, True, 0.7, noise_mask=mask), torch.float64)


def test_by_channel_shapes():
    """The shapes below go channel by channel (v_seq's gradient given, as ``run`` gives it); the grid's,
    runs under 2048, one channel, or a channel over 8 MiB of x, ∂L/∂S and ∂L/∂x go by blocks of the row."""
    assert all(_by_channel(sh, grad_v_seq=True) for sh in BY_CHANNEL.values())
    assert not _by_channel((5, 3, 4, 3, 5), grad_v_seq=True) and not _by_channel((6, 4, 8, 7, 7), torch.float32)
    assert not _by_channel((4, 32, 128, 28, 28), torch.float32)  # runs of 784
    assert not _by_channel((4, 3, 1, 50, 50))  # one channel
    assert _by_channel((4, 32, 64, 56, 56), torch.float32)  # 4.6 MiB a channel
    assert not _by_channel((4, 32, 64, 112, 112), torch.float32)  # 18.4 MiB a channel
    assert not _by_channel((16, 32, 64, 56, 56), torch.float32)  # 18.4 MiB a channel


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("case", GRID, ids=lambda c: f"{c[0]}-{c[1]}-{'learn' if c[2] else 'fixed'}-{c[3]}")
def test_cpu_by_channel_grid_float64(case):
    """The option grid at a shape whose training backward goes channel by channel, against the reference."""
    opt, sg, learn, (training, tdbn) = case
    inp = make_inputs(BY_CHANNEL["runs-2100"], torch.float64, learn=learn)
    ref = run("reference", inp, torch.float64, training, tdbn, OPTIONS[opt], sg)
    check(run("cpu", inp, torch.float64, training, tdbn, OPTIONS[opt], sg), ref, torch.float64)


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("shape", list(BY_CHANNEL))
@pytest.mark.parametrize("variant", ["learn-tdbn", "mask", "uniform-start", "eval", "float32"])
def test_cpu_by_channel_shapes(shape, variant):
    """Each shape with learnable τ/θ/α and tdBN, a noise mask, a start every neuron shares (v0 [1]), in
    eval (by blocks of the row: no batch-statistics pass) and in float32, against the reference."""
    dtype = torch.float32 if variant == "float32" else torch.float64
    inp = make_inputs(BY_CHANNEL[shape], dtype, learn=variant == "learn-tdbn")
    kw = dict(training=variant != "eval", tdbn=0.7 if variant in ("learn-tdbn", "eval") else None)
    if variant == "mask":
        kw["noise_mask"] = torch.rand(BY_CHANNEL[shape], generator=torch.Generator().manual_seed(5)) > 0.3
    if variant == "uniform-start":
        inp["v0"] = None
    ref = run("reference", inp, dtype, **kw)
    check(run("cpu", inp, dtype, **kw), ref, dtype)
    assert ref["s"].any() and not ref["s"].all()


@pytest.mark.skipif(bool(SKIP["cpu"]), reason=str(SKIP["cpu"]))
@pytest.mark.parametrize("shape", list(BY_CHANNEL))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_by_channel_low_precision(shape, dtype):
    """As test_low_precision_within_torch_error, channel by channel: a·∂L/∂X' is stored in x's dtype by
    the walk and read back by the channel's batch-statistics pass, as by the pass of its own."""
    inp = make_inputs(BY_CHANNEL[shape], dtype)
    ref64 = run("reference", inp, torch.float64, True, None, OPTIONS["hard-di"])
    ref_lp = run("reference", inp, dtype, True, None, OPTIONS["hard-di"])
    got = run("cpu", inp, dtype, True, None, OPTIONS["hard-di"])
    for k in ("v_last", "v_seq", "grad_x", "grad_v0", "grad_w", "grad_b"):
        assert_close_lowp(got[k], ref64[k], ref_lp[k].to(dtype), name=k)
    flips = (got["s"].double() != ref64["s"]).float().mean().item()
    flips_torch = (ref_lp["s"].double() != ref64["s"]).float().mean().item()
    assert flips <= 2 * flips_torch + 1e-3, (flips, flips_torch)

