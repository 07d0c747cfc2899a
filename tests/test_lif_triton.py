"""Triton LIF backend against the reference (SPEC §2–§4).

Without a GPU the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set in
conftest and again here before triton is imported); with a GPU they run on CUDA tensors as well.
The interpreter is slow, so the full option cross-product runs on tiny shapes and the larger shapes
on a few options.
"""
from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # must precede the first `import triton` (conftest does it too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from conftest import assert_close, assert_close_lowp, devices  # noqa: E402

from snn_fast import lif_multistep  # noqa: E402
from snn_fast import _triton  # noqa: E402
from snn_fast import surrogate as _sg  # noqa: E402
from snn_fast.ops.lif.function import BACKENDS, fused_forward  # noqa: E402

TRITON = BACKENDS.load("triton")  # imports ops/lif/triton.py and registers its ops for torch.compile
from snn_fast.ops.lif import triton as lt  # noqa: E402

DEVICES = [d for d in devices() if _triton.unavailable_reason(torch.empty(0, device=d)) is None]
if not DEVICES:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set and there is no GPU",
                allow_module_level=True)

SURROGATES = _sg.names()[: _sg.NUM_KERNEL_SURROGATES]
assert len(SURROGATES) == 11


def _run(backend, x, v0, *, learn=True, mask=None, v_seq=True, tau=2.5, theta=0.8, alpha=None, seed=1,
         **kw):
    """Forward + backward of a random linear loss of every output; returns outputs and gradients."""
    dt, dev = x.dtype, x.device
    pdt = torch.float64 if dt == torch.float64 else torch.float32
    x = x.detach().clone().requires_grad_()
    v0 = v0.detach().clone().requires_grad_() if isinstance(v0, torch.Tensor) else v0
    params = {}
    if learn:
        if not (isinstance(tau, float) and math.isinf(tau)):
            tau = params["tau"] = torch.tensor(tau, dtype=pdt, device=dev, requires_grad=True)
        theta = params["theta"] = torch.tensor(theta, dtype=pdt, device=dev, requires_grad=True)
        if alpha is not None:
            alpha = params["alpha"] = torch.tensor(alpha, dtype=pdt, device=dev, requires_grad=True)
    out = lif_multistep(x, v0, tau=tau, v_threshold=theta, alpha=alpha, noise_mask=mask, return_v_seq=v_seq,
                        backend=backend, **kw)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dev)).sum() for o in out)
    wrt = [x] + ([v0] if isinstance(v0, torch.Tensor) else []) + list(params.values())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    names = ["s", "v_T", "v_seq"][: len(out)] + ["grad_x"] + (["grad_v0"] if isinstance(v0, torch.Tensor) else []) \
        + ["grad_" + k for k in params]
    return dict(zip(names, [o.detach() for o in out] + list(grads)))


def _compare(x, v0, **kw):
    ref = _run("reference", x, v0, **kw)
    got = _run("triton", x, v0, **kw)
    assert ref.keys() == got.keys()
    # Same operation order as the reference: no spike may flip (a flip would be counted here).
    flips = int((got["s"] != ref["s"]).sum()) if kw.get("mask") is None else int(
        ((got["s"] != ref["s"]) & kw["mask"]).sum())
    assert flips == 0, f"{flips} spikes differ from the reference"
    for name in ref:
        assert got[name] is not None, name
        assert torch.isfinite(got[name]).all(), name
        assert_close(got[name], ref[name], name=name)
    return ref


def _inputs(T, N, dtype=torch.float32, device="cpu", scale=1.5):
    x = torch.randn(T, N, dtype=dtype, device=device) * scale + 0.4
    v0 = torch.rand(N, dtype=dtype, device=device) * 0.5
    return x, v0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kappa", [0.0, 0.2], ids=lambda k: f"kappa{k}")
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "no_decay_input"])
@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("v_reset", [0.0, -0.3, None], ids=["hard0", "hard-0.3", "soft"])
@pytest.mark.parametrize("sg", SURROGATES)
def test_options_grid(sg, v_reset, detach, decay_input, kappa, device):
    """Every surrogate × reset × detach × decay_input × κ, with learnable τ, θ, α and a v0 tensor."""
    x, v0 = _inputs(4, 37, device=device)
    alpha = None if _sg.get(sg).alpha is None else 1.5 * _sg.get(sg).alpha
    ref = _compare(x, v0, surrogate=sg, alpha=alpha, v_reset=v_reset, detach_reset=detach, decay_input=decay_input,
                   reset_residual=kappa)
    assert ref["s"].any() and not ref["s"].all(), "inputs must make some neurons fire and some not"
    if _sg.get(sg).alpha is not None:
        assert ref["grad_alpha"].abs() > 0  # the α path is exercised, not trivially zero


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("sg", SURROGATES)
def test_noisy_spike(sg, v_reset, device):
    """ASGL noisy spike (SPEC §4): the analog value g(H − θ) where the torch-drawn mask is False."""
    x, v0 = _inputs(5, 37, device=device)
    mask = torch.rand(x.shape, device=device) >= 0.3
    alpha = None if _sg.get(sg).alpha is None else 1.5 * _sg.get(sg).alpha
    _compare(x, v0, surrogate=sg, alpha=alpha, v_reset=v_reset,
             mask=mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_if_neuron(v_reset, detach, device):
    """IF: τ = ∞ (k = 0, no decay_input)."""
    x, v0 = _inputs(7, 37, device=device, scale=0.6)
    _compare(x * 0.5, v0, tau=math.inf, v_reset=v_reset, detach_reset=detach, reset_residual=0.2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("learn", [True, False], ids=["learn", "fixed"])
@pytest.mark.parametrize("N", [1, 127, 300])
@pytest.mark.parametrize("T", [1, 7])
def test_shapes(T, N, learn, device):
    """Block edges (N = 1, 127, 300 → one, one and three interpreter programs) and the no-parameter-gradient
    variant of the backward."""
    x, v0 = _inputs(T, N, device=device)
    _compare(x, v0, learn=learn, surrogate="sigmoid")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_long_sequence(v_reset, device):
    """T = 64 (the conftest fp32 tolerance's horizon), several programs, every gradient."""
    x, v0 = _inputs(64, 300, device=device)
    _compare(x, v0, v_reset=v_reset, surrogate="atan", alpha=2.0, reset_residual=0.2,
             mask=torch.rand(x.shape, device=device) >= 0.2)


@pytest.mark.parametrize("device", DEVICES)
def test_v0_none_float_and_no_v_seq(device):
    x, _ = _inputs(6, 70, device=device)
    _compare(x, None, v_seq=False)
    _compare(x, 0.3, v_seq=False, v_reset=None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use", ["s", "v_T"])
def test_loss_on_one_output(use, device):
    """Only grad_s or only grad_v_T reaches the backward (the other is None or zeros)."""
    x, v0 = _inputs(5, 130, device=device)
    res = {}
    for be in ("reference", "triton"):
        xx = x.clone().requires_grad_()
        theta = torch.tensor(0.8, device=device, requires_grad=True)
        s, v = lif_multistep(xx, v0, tau=2.5, v_threshold=theta, reset_residual=0.2, backend=be)
        loss = (s * torch.linspace(-1, 1, 130, device=device)).sum() if use == "s" else (v * v).sum()
        res[be] = torch.autograd.grad(loss, [xx, theta])
    for a, b, n in zip(res["triton"], res["reference"], ("grad_x", "grad_theta")):
        assert_close(a, b, name=n)
    assert res["reference"][0].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inference_skips_saving(dtype, device):
    """No input requires grad (or no_grad): the inference op runs, saves nothing, same outputs."""
    x, v0 = _inputs(6, 130, dtype=dtype, device=device)
    p = torch.tensor([0.4, 0.8, 4.0], device=device)
    args = (x, v0, p, None, 0, True, 0.0, True, False, 0.0, True)
    def dispatch(*a):  # the forward lif_apply runs for backend 'triton' outside the autograd Function
        return fused_forward(TRITON, *a[:4], a[4:10], a[10])

    s_i, v_i, vs_i, saved_i = dispatch(*args)
    assert saved_i.numel() == 0
    with torch.no_grad():
        assert dispatch(*args[:2], p.clone().requires_grad_(), *args[3:])[3].numel() == 0
    s_t, v_t, vs_t, saved_t = dispatch(*args[:2], p.clone().requires_grad_(), *args[3:])
    assert saved_t.shape == x.shape
    for a, b, n in ((s_i, s_t, "s"), (v_i, v_t, "v_T"), (vs_i, vs_t, "v_seq")):
        assert torch.equal(a, b), n
    ref = lif_multistep(x, v0, tau=2.5, v_threshold=0.8, return_v_seq=True, backend="reference")
    got = lif_multistep(x, v0, tau=2.5, v_threshold=0.8, return_v_seq=True, backend="triton")
    if dtype == torch.float32:
        for a, b, n in zip(got, ref, ("s", "v_T", "v_seq")):
            assert_close(a, b, name=n)


@pytest.mark.parametrize("device", DEVICES)
def test_learnable_decay(device):
    """Learnable λ (k = 1 − λ): the gradient reaches it through the same ∂L/∂k."""
    x, v0 = _inputs(6, 50, device=device)
    d = {}
    for be in ("reference", "triton"):
        lam = torch.tensor(0.6, device=device, requires_grad=True)
        s, v = lif_multistep(x, v0, tau=None, decay=lam, decay_input=False, backend=be)
        (s.sum() + (v * v).sum()).backward()
        d[be] = (s, v, lam.grad)
    for a, b, n in zip(d["triton"], d["reference"], ("s", "v_T", "grad_decay")):
        assert_close(a, b, name=n)
    assert d["reference"][2].abs() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    """[N, T] storage transposed to time-first, and a [T, B, C] shape."""
    base = torch.randn(3, 40, 6, device=device) * 1.5 + 0.4
    x = base.permute(2, 0, 1)  # [T=6, 3, 40], not contiguous
    assert not x.is_contiguous()
    v0 = torch.rand(40, device=device)  # broadcasts over [3, 40]
    _compare(x, v0, surrogate="atan", alpha=2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sg", SURROGATES)
def test_float64(sg, device):
    """float64 end to end (the interpreter computes in double; on GPU Triton has fp64 too)."""
    x, v0 = _inputs(5, 37, dtype=torch.float64, device=device)
    mask = torch.rand(x.shape, device=device) >= 0.3
    alpha = None if _sg.get(sg).alpha is None else 1.5 * _sg.get(sg).alpha
    _compare(x, v0, surrogate=sg, alpha=alpha, mask=mask,
             v_reset=-0.1, reset_residual=0.2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lowp(dtype, noisy, v_reset, device):
    """fp16/bf16 storage, fp32 arithmetic: at least as close to the float64 truth as plain PyTorch in
    that dtype (conftest ``assert_close_lowp``). Also covers the H − θ saved in that dtype."""
    x, v0 = _inputs(8, 300, dtype=dtype, device=device)
    mask = (torch.rand(x.shape, device=device) >= 0.3) if noisy else None
    kw = dict(mask=mask, v_reset=v_reset, surrogate="sigmoid", alpha=4.0, reset_residual=0.2)
    got = _run("triton", x, v0, **kw)
    ref_lowp = _run("reference", x, v0, **kw)
    ref64 = _run("reference", x.double(), v0.double(), **kw)
    for name in ref64:
        assert got[name].dtype == (dtype if name in ("s", "v_T", "v_seq", "grad_x", "grad_v0") else torch.float32)
        # Parameter gradients are float32 sums on both sides; judge them at the storage dtype's ulp.
        assert_close_lowp(got[name], ref64[name], ref_lowp[name].to(dtype), name=f"{dtype} {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_nan_filled_allocations(nan_alloc, device):
    """Every output element is written: fresh allocations come filled with NaN."""
    x, v0 = _inputs(3, 300, device=device)
    got = _run("triton", x, v0, mask=torch.rand(x.shape, device=device) > 0.5)
    for name, t in got.items():
        assert not torch.isnan(t).any(), name
    got = _run("triton", x, v0, learn=False, v_seq=False)
    for name, t in got.items():
        assert not torch.isnan(t).any(), name


def test_unavailable_reason():
    x = torch.zeros(2, 3)
    if lt.INTERPRETED:
        assert _triton.unavailable_reason(x) is None
    else:
        assert "TRITON_INTERPRET" in _triton.unavailable_reason(x)
    assert _triton.unavailable_reason(torch.zeros(1, device="meta")) is not None


def _op_args(device, dtype=torch.float32, mask=True):
    x, v0 = _inputs(4, 37, dtype=dtype, device=device)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    params = torch.tensor([0.4, 0.8, 4.0], dtype=pdt, device=device)
    m = (torch.rand(x.shape, device=device) > 0.3) if mask else None
    return x, v0, params, m


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schema, fake (meta) functions and autograd registration of both ops."""
    x, v0, params, m = _op_args(device)
    fwd_args = (x, v0, params, m, 0, True, 0.0, True, False, 0.2, True)
    torch.library.opcheck(torch.ops.snn_fast.lif_fwd_triton.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(torch.ops.snn_fast.lif_fwd_triton_infer.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor"))
    s, v_last, v_seq, saved = torch.ops.snn_fast.lif_fwd_triton(*fwd_args)
    gs = torch.randn_like(s)
    bwd_args = (gs, torch.randn_like(v_last), torch.randn_like(v_seq), x, v0, params, m, saved, s,
                0, True, 0.0, True, False, 0.2, True)
    torch.library.opcheck(torch.ops.snn_fast.lif_bwd_triton.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    """A model using the Triton op traces with no graph break, forward and backward."""
    import torch._dynamo

    torch._dynamo.reset()
    lin = torch.nn.Linear(16, 16).to(device)
    tau = torch.tensor(2.0, device=device, requires_grad=True)

    def model(x):
        s, v = lif_multistep(lin(x), tau=tau, surrogate="erf", backend="triton")
        return s.sum() + (v * v).sum()

    x = torch.randn(5, 8, 16, device=device)
    backend = "inductor" if device == "cuda" else "aot_eager"  # the interpreter cannot be code-generated
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss = compiled(x)
    loss.backward()
    g_compiled = (lin.weight.grad.clone(), tau.grad.clone())
    lin.zero_grad()
    tau.grad = None
    eager = model(x)
    eager.backward()
    assert_close(loss.detach(), eager.detach(), name="loss")
    assert_close(g_compiled[0], lin.weight.grad, name="grad_weight")
    assert_close(g_compiled[1], tau.grad, name="grad_tau")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fires_at_threshold(dtype, device):
    """Θ(0) = 1: H exactly equal to θ fires, in the forward and in the backward's recomputed spike."""
    x = torch.tensor([[1.0, 0.5, 1.0], [0.0, 0.5, 1.0]], dtype=dtype, device=device)  # v0 = 0: H_0 = x_0
    kw = dict(v_reset=None, decay_input=False, tau=2.0, theta=1.0)
    got = _run("triton", x, 0.0, **kw)
    assert got["s"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    if dtype == torch.float32:
        _compare(x, 0.0, **kw)
    else:  # the soft reset's −θ·S term in grad_θ sees the recomputed spike
        ref64, ref_lowp = _run("reference", x.double(), 0.0, **kw), _run("reference", x, 0.0, **kw)
        for name in ref64:
            assert_close_lowp(got[name], ref64[name], ref_lowp[name].to(dtype), name=name)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_dynamic_sizes(device):
    """Symbolic T and N: a new batch size or length reuses the compiled graph."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    params = torch.tensor([0.4, 0.8, 4.0], device=device, requires_grad=True)

    def f(x, v0):
        s, v, _, _ = torch.ops.snn_fast.lif_fwd_triton(x, v0, params, None, 0, True, 0.0, True, False, 0.0, False)
        return s.sum() + (v * v).sum()

    cnt = CompileCounterWithBackend("inductor" if device == "cuda" else "aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=cnt)
    for T, N in ((4, 40), (5, 70), (2, 300)):  # T ≠ 3: duck sizing would tie T to params.size(0)
        x, v0 = _inputs(T, N, device=device)
        xr = x.clone().requires_grad_()
        out = compiled(xr, v0)
        out.backward()
        g_compiled = (xr.grad.clone(), params.grad.clone())
        params.grad = None
        xe = x.clone().requires_grad_()
        eager = f(xe, v0)
        eager.backward()
        assert_close(out.detach(), eager.detach(), name="loss")
        assert_close(g_compiled[0], xe.grad, name="grad_x")
        assert_close(g_compiled[1], params.grad, name="grad_params")
        params.grad = None
    assert cnt.frame_count == 1


@pytest.mark.skipif(not __import__("snn_fast")._ext.has_kernel("lif_fwd", "CPU"),
                    reason="the C++ extension is not built")
@pytest.mark.skipif("cpu" not in DEVICES, reason="CPU tensors need the Triton interpreter")
@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("sg", ["sigmoid", "atan", "erf", "q_pseudo_spike", "spike_gate"])
def test_matches_cpu_kernel(sg, v_reset, noisy):
    """Triton and the C++ kernel port the same lif_step.h: identical spikes (analog values of the
    noisy spike differ by libm vs Triton rounding only), close everything else."""
    x, v0 = _inputs(6, 130)
    mask = (torch.rand(x.shape) >= 0.3) if noisy else None
    alpha = None if _sg.get(sg).alpha is None else 1.5 * _sg.get(sg).alpha
    kw = dict(surrogate=sg, alpha=alpha, v_reset=v_reset, mask=mask, reset_residual=0.2)
    cpu, got = _run("cpu", x, v0, **kw), _run("triton", x, v0, **kw)
    spikes = mask if mask is not None else torch.ones_like(x, dtype=torch.bool)
    assert torch.equal(got["s"][spikes], cpu["s"][spikes])
    for name in cpu:
        assert_close(got[name], cpu[name], name=name)
