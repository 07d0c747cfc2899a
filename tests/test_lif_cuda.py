"""The CUDA C++ backend (``backend="cuda"``) against the reference, on the option grid of SPEC §2–§4,
and against the Triton backend where that is available. Runs only on a machine with a CUDA device
and the extension built with its CUDA kernels; skipped with the reason otherwise.

Tolerances come from conftest: float64 and float32 compare with ``assert_close`` against the
reference in the same dtype on the same device; float16/bfloat16 with ``assert_close_lowp`` (the
kernel computes in float32, so it must be at least as close to the float64 truth as PyTorch in that
dtype is).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import snn_fast
from snn_fast import _ext
from snn_fast import surrogate as _sg
from snn_fast.ops.lif.reference import lif_multistep_reference

from conftest import HAS_CUDA, TOL, assert_close, assert_close_lowp

HAS_CUDA_KERNEL = HAS_CUDA and _ext.has_kernel("lif_fwd", "CUDA")
pytestmark = pytest.mark.skipif(
    not HAS_CUDA_KERNEL,
    reason="needs a CUDA device and snn_fast._C built with its CUDA kernels"
    + ("" if HAS_CUDA else " (no CUDA device)")
    + ("" if _ext.HAS_C else f" ({_ext.C_IMPORT_ERROR})"),
)

SURROGATES = list(_sg.names())

# (name, options): the reset/charge/gradient-path variants of SPEC §2, each run for every surrogate.
VARIANTS = {
    "hard0": dict(v_reset=0.0),
    "hard-neg_decayx": dict(v_reset=-0.3, decay_input=False),
    "soft": dict(v_reset=None),
    "soft_detach_kappa": dict(v_reset=None, detach_reset=True, reset_residual=0.2),
    "hard_detach_kappa_if": dict(v_reset=0.0, detach_reset=True, reset_residual=0.2, tau=math.inf),
}


def _alpha_for(name):
    return {"q_pseudo_spike": 2.5}.get(name, None)


def run(backend, x, *, v0=None, learn=False, noise_mask=None, return_v_seq=True, seed=1, **opts):
    """Forward + backward of a fixed random loss; returns every output and gradient by name."""
    dtype = x.dtype
    x = x.detach().clone().requires_grad_(True)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    tau = opts.pop("tau", 2.0)
    theta = opts.pop("v_threshold", 0.9)
    sg_name = opts.get("surrogate", "sigmoid")
    alpha = _alpha_for(sg_name) or _sg.get(sg_name).alpha
    params = {}
    if learn:
        if not math.isinf(tau):
            params["tau"] = tau = torch.tensor(tau, dtype=pdtype, device=x.device, requires_grad=True)
        params["v_threshold"] = theta = torch.tensor(theta, dtype=pdtype, device=x.device, requires_grad=True)
        if alpha is not None and _sg.get(sg_name).dg_dalpha is not None:
            params["alpha"] = alpha = torch.tensor(alpha, dtype=pdtype, device=x.device, requires_grad=True)
    v0_t = None
    if v0 is not None:
        v0_t = v0.detach().clone().to(dtype).requires_grad_(True)
    kw = dict(tau=tau, v_threshold=theta, alpha=alpha, noise_mask=noise_mask, return_v_seq=return_v_seq, **opts)
    if backend == "reference":
        out = lif_multistep_reference(x, v0_t, **kw)
    else:
        out = snn_fast.lif_multistep(x, v0_t, backend=backend, **kw)
    g = torch.Generator(device=x.device).manual_seed(seed)
    loss = 0
    for o in out:
        w = torch.randn(o.shape, generator=g, device=x.device, dtype=torch.float32).to(o.dtype)
        loss = loss + (o * w).float().sum()
    loss.backward()
    res = {"s": out[0], "v_last": out[1]}
    if return_v_seq:
        res["v_seq"] = out[2]
    res["grad_x"] = x.grad
    if v0_t is not None:
        res["grad_v0"] = v0_t.grad
    for name, p in params.items():
        res["grad_" + name] = p.grad
    return {k: v.detach() for k, v in res.items()}


def compare(actual, expected, dtype, ref64=None, tag=""):
    assert actual.keys() == expected.keys()
    for k in expected:
        if dtype in (torch.float16, torch.bfloat16):
            # Parameter gradients come back in float32 (the params dtype); the low-precision
            # reference computed them from `dtype` arithmetic, so its error is that dtype's.
            assert_close_lowp(actual[k], ref64[k], expected[k].to(dtype), name=f"{tag} {k}")
        else:
            assert_close(actual[k], expected[k], dtype=dtype, name=f"{tag} {k}")


def make_x(T, N, dtype, device="cuda", scale=1.2):
    return (torch.randn(T, N, device=device, dtype=torch.float32) * scale + 0.5).to(dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_reference_grid(surrogate, variant, dtype, nan_alloc):
    x = make_x(12, 3 * 512, dtype)  # N divisible by every vector width: the 16-byte path
    v0 = torch.rand(3 * 512, device="cuda", dtype=dtype) * 0.5
    opts = dict(VARIANTS[variant], surrogate=surrogate)
    got = run("cuda", x, v0=v0, learn=True, **opts)
    want = run("reference", x, v0=v0, learn=True, **opts)
    compare(got, want, dtype, tag=f"{surrogate}/{variant}")


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_noisy_spike(surrogate, hard, dtype, nan_alloc):
    """ASGL noisy spike (SPEC §4): analog g(H − θ) where the mask is False, partial hard reset."""
    x = make_x(10, 1000, dtype)
    mask = snn_fast.noise_mask_like(x, 0.4)
    opts = dict(surrogate=surrogate, v_reset=0.0 if hard else None, noise_mask=mask)
    got = run("cuda", x, learn=True, **opts)
    want = run("reference", x, learn=True, **opts)
    compare(got, want, dtype, tag=f"noisy {surrogate}")


LOWP_CASES = [
    ("sigmoid", dict(v_reset=0.0)),
    ("atan", dict(v_reset=None)),
    ("triangle", dict(v_reset=0.0, decay_input=False)),
    ("rectangle", dict(v_reset=0.0, detach_reset=True, reset_residual=0.2)),
    ("q_pseudo_spike", dict(v_reset=None)),
    ("spike_gate", dict(v_reset=0.0, detach_reset=True, reset_residual=0.2)),
]


@pytest.mark.parametrize("case", range(len(LOWP_CASES)), ids=[c[0] for c in LOWP_CASES])
@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(case, learn, dtype, nan_alloc):
    surrogate, opts = LOWP_CASES[case]
    x64 = make_x(16, 4096, torch.float64)
    x = x64.to(dtype)
    x64 = x.double()  # the same inputs, exactly
    opts = dict(opts, surrogate=surrogate)
    got = run("cuda", x, learn=learn, **opts)
    want_lowp = run("reference", x, learn=learn, **opts)
    want64 = run("reference", x64, learn=learn, **opts)
    compare(got, want_lowp, dtype, ref64=want64, tag=f"{dtype} {surrogate}")


SHAPES = [
    (1, 8),          # T = 1
    (5, 123 * 123),  # odd N: the scalar fallback
    (7, 4 * 8 * 33),  # N divisible by 8: the 16-byte path for every dtype
    (64, 1000),      # long T
    (3, 1),          # a single neuron
]


@pytest.mark.parametrize("T,N", SHAPES, ids=[f"T{t}-N{n}" for t, n in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shapes(T, N, dtype, nan_alloc):
    x = make_x(T, N, dtype)
    got = run("cuda", x, learn=True, v_reset=None)
    want = run("reference", x, learn=True, v_reset=None)
    if dtype == torch.float32:
        compare(got, want, dtype)
    else:
        compare(got, want, dtype, ref64=run("reference", x.double(), learn=True, v_reset=None))


def test_cuda_misaligned_and_strided_inputs(nan_alloc):
    """Offset storage (not 16-byte aligned) and non-contiguous x take the scalar/contiguous paths."""
    T, N = 6, 2048
    base = torch.randn(T * N + 1, device="cuda")
    x_off = base[1:].view(T, N)  # contiguous, 4 bytes past a 16-byte boundary
    assert x_off.data_ptr() % 16 != 0
    x_t = make_x(N, T, torch.float32).t()  # [T, N] view, not contiguous
    for x in (x_off, x_t):
        got = run("cuda", x, learn=True)
        want = run("reference", x, learn=True)
        compare(got, want, torch.float32)


def test_cuda_multidim_and_broadcast_v0(nan_alloc):
    x = make_x(4, 2 * 3 * 5 * 7, torch.float32).view(4, 2, 3, 5, 7)
    v0 = torch.rand(3, 1, 7, device="cuda")
    got = run("cuda", x, v0=v0)
    want = run("reference", x, v0=v0)
    compare(got, want, torch.float32)


def test_cuda_param_grads_deterministic():
    x = make_x(16, 1 << 16, torch.float32)
    a = run("cuda", x, learn=True)
    b = run("cuda", x, learn=True)
    for k in ("grad_tau", "grad_v_threshold", "grad_alpha"):
        assert torch.equal(a[k], b[k]), f"{k} differs between two identical runs"


def test_cuda_no_param_grad_and_no_v_seq(nan_alloc):
    x = make_x(8, 1024, torch.float32)
    got = run("cuda", x, return_v_seq=False)
    want = run("reference", x, return_v_seq=False)
    compare(got, want, torch.float32)


def test_cuda_uses_current_stream_and_device():
    x = make_x(8, 4096, torch.float32)
    want = run("reference", x, learn=True)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = run("cuda", x, learn=True)
    s.synchronize()
    compare(got, want, torch.float32)
    if torch.cuda.device_count() > 1:
        x1 = x.to("cuda:1")
        got1 = run("cuda", x1, learn=True)
        compare({k: v.to("cuda:0") for k, v in got1.items()}, want, torch.float32)


def test_cuda_int64_offsets():
    """T·N > 2^31 elements: offsets must not wrap. Forward only, checked on the last neurons."""
    T, N = 2, (1 << 30) + 16
    free, _ = torch.cuda.mem_get_info()
    need = 4 * T * N * 2 + (1 << 30)  # x, s, saved, v_seq (fp16) + slack
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} free")
    x = torch.empty(T, N, device="cuda", dtype=torch.float16)
    x.normal_(0.5, 1.0)
    with torch.no_grad():
        s, v, vs = snn_fast.lif_multistep(x, backend="cuda", return_v_seq=True)
        tail = slice(N - 4096, N)
        s_r, v_r, vs_r = lif_multistep_reference(x[:, tail].float(), return_v_seq=True)
    torch.testing.assert_close(s[:, tail].float(), s_r, atol=0, rtol=0)
    torch.testing.assert_close(v[tail].float(), v_r, atol=2e-3, rtol=1e-3)  # fp16 store
    del x, s, v, vs
    torch.cuda.empty_cache()


def test_cuda_bwd_rejects_foreign_saved_state():
    x = make_x(4, 64, torch.float32)
    v0 = torch.zeros(64, device="cuda")
    params = torch.tensor([0.5, 1.0, 4.0], device="cuda")
    flags = (0, True, 0.0, True, False, 0.0)
    s, v, _, saved = torch.ops.snn_fast.lif_fwd(x, v0, params, None, *flags, False)
    assert saved.shape == x.shape
    with pytest.raises(RuntimeError, match="saved"):
        torch.ops.snn_fast.lif_bwd(torch.ones_like(s), None, None, x, v0, params, None, x.new_empty(0), s,
                                   *flags, False)


def _triton_available():
    try:
        from snn_fast.ops.lif.function import BACKENDS

        return BACKENDS.unavailable("triton", torch.empty(1, device="cuda")) is None
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False


@pytest.mark.skipif(not (HAS_CUDA_KERNEL and _triton_available()), reason="the Triton backend is not available")
@pytest.mark.parametrize("surrogate,variant", list(itertools.product(["sigmoid", "triangle", "q_pseudo_spike"],
                                                                     list(VARIANTS))))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_triton(surrogate, variant, dtype):
    x = make_x(16, 8192, dtype)
    mask = snn_fast.noise_mask_like(x, 0.2)
    opts = dict(VARIANTS[variant], surrogate=surrogate)
    got = run("cuda", x, learn=True, noise_mask=mask, **opts)
    tri = run("triton", x, learn=True, noise_mask=mask, **opts)
    if dtype == torch.float32:
        compare(got, tri, dtype, tag=f"cuda vs triton {surrogate}/{variant}")
    else:
        ref64 = run("reference", x.double(), learn=True, noise_mask=mask, **opts)
        lowp = run("reference", x, learn=True, noise_mask=mask, **opts)
        for k in ref64:  # both fp32-inside kernels: each as close to float64 as the bound allows
            assert_close_lowp(got[k], ref64[k], lowp[k], name=f"cuda {k}")
            assert_close_lowp(tri[k], ref64[k], lowp[k], name=f"triton {k}")


@pytest.mark.parametrize("learn", [False, True])
def test_cuda_opcheck(learn):
    """torch.library.opcheck: schema, fake tensors, autograd registration, AOT dispatch."""
    x = make_x(5, 64, torch.float32).requires_grad_(True)
    v0 = torch.zeros(64, device="cuda", requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], device="cuda", requires_grad=learn)
    mask = torch.rand(5, 64, device="cuda") > 0.3
    args = (x, v0, params, mask, 0, True, 0.0, True, False, 0.1, True)
    torch.library.opcheck(torch.ops.snn_fast.lif_fwd.default, args)
