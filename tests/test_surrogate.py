"""Surrogate contract (docs/spec.md §3): g′ and ∂g/∂α against central differences of the primitive g, for
the torch formulas and for every fused backend's kernel, so no surrogate can silently return zeros. The
contract covers the built-ins and user-registered surrogates alike (tests/user_surrogates.py: each
way to register one), on every backend that runs them."""
import math

import pytest
import torch

import snn_fast
from snn_fast import surrogate as sgm
from snn_fast.ops.lif import reference
import user_surrogates

BUILTIN = sgm.names()[: sgm.NUM_KERNEL_SURROGATES]
USER = user_surrogates.NAMES
ALL = BUILTIN + USER
USER_KINKS = user_surrogates.KINKS


@pytest.fixture(autouse=True, scope="module")
def _user_surrogates():
    user_surrogates.register_all()
H = 1e-6  # central difference step in float64: truncation ~h², rounding ~1e-16/h ⇒ error ~1e-10


def _points(name, a):
    """x values away from the kinks (where g′ jumps and finite differences are meaningless)."""
    x = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    kinks = {"rectangle": [0.5 / a, -0.5 / a], "triangle": [1 / a, -1 / a, 0.0], "spike_gate": [0.0],
             "piecewise_exp": [0.0], "soft_sign": [0.0], "super_spike": [0.0], "q_pseudo_spike": [0.0], **USER_KINKS}
    keep = torch.ones_like(x, dtype=torch.bool)
    for k in kinks.get(name, []):
        keep &= (x - k).abs() > 1e-3
    return x[keep]


def _alpha(name):
    s = sgm.get(name)
    return 2.5 if name == "q_pseudo_spike" else (s.alpha * 0.8 if s.alpha else 1.0)


@pytest.mark.parametrize("name", ALL)
def test_dg_matches_finite_difference_of_g(name):
    s = sgm.get(name)
    a = torch.tensor(_alpha(name), dtype=torch.float64)
    x = _points(name, float(a))
    fd = (s.g(x + H, a) - s.g(x - H, a)) / (2 * H)
    torch.testing.assert_close(s.dg(x, a), fd, atol=1e-7, rtol=1e-6)
    assert s.dg(torch.zeros(1, dtype=torch.float64), a).abs().item() > 0, "g′(0) must not vanish"


WITH_ALPHA = [n for n in BUILTIN if sgm.get(n).alpha is not None] + list(user_surrogates.WITH_ALPHA)


@pytest.mark.parametrize("name", WITH_ALPHA)
def test_dg_dalpha_matches_finite_difference(name):
    s = sgm.get(name)
    a = _alpha(name)
    x = _points(name, a)
    ta = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    fd = (s.g(x, ta(a + H)) - s.g(x, ta(a - H))) / (2 * H)
    # rectangle/triangle are only piecewise smooth in α too: drop points whose kink moves past them
    ok = torch.ones_like(x, dtype=torch.bool)
    if name in ("rectangle", "triangle"):
        w = 0.5 if name == "rectangle" else 1.0
        for edge in (w / (a + H), w / (a - H)):
            ok &= (x.abs() - edge).abs() > 1e-4
    torch.testing.assert_close(s.dg_dalpha(x, ta(a))[ok], fd[ok], atol=1e-7, rtol=1e-6)


# Every fused backend, on the device it runs on: 'triton' on a GPU when there is one (else in the
# interpreter on CPU tensors), 'cuda' skipped without one.
_DEVICE = {"cpu": "cpu", "cuda": "cuda", "triton": "cuda" if torch.cuda.is_available() else "cpu"}


def _skip_unless_available(backend, name=None):
    from snn_fast.ops.lif.function import BACKENDS

    why = BACKENDS.cannot_run(backend, sgm.get(name)) if name is not None else None
    if why is not None:  # a user surrogate on a backend that cannot run it (test_custom_surrogate.py: the error)
        pytest.skip(f"{backend} cannot run {name}: {why}")
    device = _DEVICE[backend]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"the '{backend}' backend needs a CUDA device")
    why = BACKENDS.unavailable(backend, torch.empty(0, device=device))
    if why is not None:
        pytest.skip(why)
    return device


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
@pytest.mark.parametrize("name", ALL)
def test_kernel_surrogate_gradient_matches_primitive(backend, name):
    """One IF step with θ = 0 and a detached reset: ∂s/∂x is exactly the kernel's g′(x), and
    ∂(Σs)/∂α its Σ ∂g/∂α. Both are compared to finite differences of the reference primitive."""
    device = _skip_unless_available(backend, name)
    s = sgm.get(name)
    a = _alpha(name)
    x = _points(name, a)[::6].contiguous()
    dtype = torch.float64 if backend == "cpu" else torch.float32  # the CUDA kernels have no float64
    xx = x.to(dtype).reshape(1, -1).to(device).requires_grad_(True)
    alpha = torch.tensor(a, dtype=dtype, device=device, requires_grad=True)
    out, _ = snn_fast.lif_multistep(xx, tau=math.inf, v_threshold=0.0, v_reset=0.0, detach_reset=True,
                                    surrogate=name, alpha=alpha, backend=backend)
    gx, ga = torch.autograd.grad(out.sum(), [xx, alpha])
    ta = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    fd = (s.g(x + H, ta(a)) - s.g(x - H, ta(a))) / (2 * H)
    tol = dict(atol=1e-7, rtol=1e-6) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx.reshape(-1).double().cpu(), fd, **tol)
    fda = ((s.g(x, ta(a + H)) - s.g(x, ta(a - H))) / (2 * H)).sum()
    if s.alpha is not None:
        torch.testing.assert_close(ga.double().cpu(), fda, atol=1e-5, rtol=1e-4)
    else:
        assert ga.item() == 0.0


def test_aliases_and_unknown_name():
    assert sgm.get("zif") is sgm.get("triangle")
    assert sgm.get("STBP") is sgm.get("rectangle")
    assert sgm.get("fast_sigmoid") is sgm.get("super_spike")
    with pytest.raises(ValueError, match="unknown surrogate 'nope'.*sigmoid"):
        sgm.get("nope")
    with pytest.raises(ValueError, match="unknown surrogate"):
        snn_fast.lif_multistep(torch.zeros(2, 3), surrogate="nope")


def test_kernel_ids_are_stable():
    expected = ["sigmoid", "atan", "rectangle", "triangle", "piecewise_exp", "soft_sign", "super_spike", "erf",
                "q_pseudo_spike", "straight_through", "spike_gate"]
    assert [sgm.by_id(i).name for i in range(sgm.NUM_KERNEL_SURROGATES)] == expected


def test_user_surrogate_torch_only():
    sgm.register_surrogate("my_tanh", g=lambda x, a: 0.5 * (torch.tanh(a * x) + 1),
                           dg=lambda x, a: 0.5 * a * (1 - torch.tanh(a * x) ** 2), alpha=3.0)
    try:
        x = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
        s, _ = snn_fast.lif_multistep(x, surrogate="my_tanh")  # auto: 'cpu' (custom_cpu.py), else the reference
        s_ref, _ = reference.lif_multistep_reference(x, surrogate="my_tanh")
        assert torch.equal(s, s_ref)
        (g,) = torch.autograd.grad(s.sum(), x)
        assert g.abs().sum() > 0
        # Registered without Triton functions: 'cuda' and 'triton' cannot run it ('cpu' can,
        # tests/test_custom_surrogate.py), and say so before looking for a GPU.
        for be in ("cuda", "triton"):
            with pytest.raises(ValueError, match="user-registered surrogate"):
                snn_fast.lif_multistep(x, surrogate="my_tanh", backend=be)
        with pytest.raises(ValueError, match="already registered"):
            sgm.register_surrogate("my_tanh", g=lambda x, a: x, dg=lambda x, a: x)
    finally:
        sgm.unregister_surrogate("my_tanh")
    with pytest.raises(ValueError):
        sgm.get("my_tanh")


_EXTREME = [-math.inf, math.inf, math.nan, -3.0e38, 3.0e38]  # ±inf, NaN, near float32's max


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
@pytest.mark.parametrize("name", ALL)
def test_kernel_surrogate_at_inf_and_nan_matches_reference(backend, name, v_reset):
    """At x = ±inf, NaN and near the dtype's max, a kernel's g′ and ∂g/∂α are the reference's (the
    torch formulas in IEEE arithmetic, NaN where they give NaN): no 0·x trick on data that turns a
    finite answer into NaN. One IF step per point, as above (θ = 0, detached reset)."""
    device = _skip_unless_available(backend, name)
    dtype = torch.float64 if backend == "cpu" else torch.float32
    a = _alpha(name)
    for value in _EXTREME:
        got, ref = {}, {}
        for be, out in ((backend, got), ("reference", ref)):
            xx = torch.tensor([[value]], dtype=dtype, device=device, requires_grad=True)
            alpha = torch.tensor(a, dtype=dtype, device=device, requires_grad=True)
            s, _ = snn_fast.lif_multistep(xx, tau=math.inf, v_threshold=0.0, v_reset=v_reset, detach_reset=True,
                                          surrogate=name, alpha=alpha, backend=be)
            out["s"] = s.detach()
            out["grad_x"], out["grad_alpha"] = torch.autograd.grad(s.sum(), [xx, alpha])
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], equal_nan=True, msg=lambda m: f"{k} at x = {value}: {m}")
