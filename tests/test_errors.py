"""Bad input gives a clear error naming the argument — never a crash, a hang or a wrong result."""
import math

import pytest
import torch

import snn_fast
from snn_fast.ops.tempotron import tempotron

BACKENDS = ["reference"] + (["cpu"] if snn_fast.HAS_C else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(tau=1.0), ValueError, "tau must be > 1"),
        (dict(tau=0.5), ValueError, "tau must be > 1"),
        (dict(tau=float("nan")), ValueError, "tau must be finite"),
        (dict(tau=torch.tensor(0.9)), ValueError, "tau must be > 1"),
        (dict(tau=None, decay=1.0), ValueError, "decay must be < 1"),
        (dict(tau=None, decay=0.0), ValueError, "decay must be > 0"),
        (dict(tau=2.0, decay=0.5), ValueError, "either tau or decay"),
        (dict(v_threshold=float("nan")), ValueError, "v_threshold must be finite"),
        (dict(v_threshold=torch.tensor(float("inf"))), ValueError, "v_threshold must be finite"),
        (dict(alpha=-1.0), ValueError, "alpha must be > 0"),
        (dict(alpha=torch.tensor([1.0, 2.0])), ValueError, "alpha must be a scalar"),
        (dict(surrogate="q_pseudo_spike", alpha=0.5), ValueError, "alpha must be > 1"),
        (dict(v_reset=float("inf")), ValueError, "v_reset must be finite"),
        (dict(reset_residual=float("nan")), ValueError, "reset_residual must be finite"),
        (dict(surrogate="bogus"), ValueError, "unknown surrogate 'bogus'"),
        (dict(surrogate=3), TypeError, "surrogate must be a name"),
        (dict(backend="gpu9000"), ValueError, "unknown backend"),
    ],
)
def test_bad_arguments(backend, kwargs, exc, match):
    x = torch.randn(3, 4)
    with pytest.raises(exc, match=match):
        snn_fast.lif_multistep(x, **{"backend": backend, **kwargs})


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_tensors(backend):
    with pytest.raises(TypeError, match="x must have dtype"):
        snn_fast.lif_multistep(torch.zeros(3, 4, dtype=torch.int32), backend=backend)
    with pytest.raises(ValueError, match="T = 0"):
        snn_fast.lif_multistep(torch.zeros(0, 4), backend=backend)
    with pytest.raises(ValueError, match="at least one dimension"):
        snn_fast.lif_multistep(torch.tensor(1.0), backend=backend)
    with pytest.raises(ValueError, match="v0 of shape \\(5,\\) does not broadcast"):
        snn_fast.lif_multistep(torch.zeros(3, 4), torch.zeros(5), backend=backend)
    with pytest.raises(ValueError, match="v0 must be finite"):
        snn_fast.lif_multistep(torch.zeros(3, 4), float("nan"), backend=backend)
    with pytest.raises(TypeError, match="v0 must be a floating-point"):
        snn_fast.lif_multistep(torch.zeros(3, 4), torch.zeros(4, dtype=torch.long), backend=backend)
    with pytest.raises(ValueError, match="noise_mask has shape"):
        snn_fast.lif_multistep(torch.zeros(3, 4), noise_mask=torch.ones(3, 5, dtype=torch.bool), backend=backend)
    with pytest.raises(TypeError, match="noise_mask must be torch.bool"):
        snn_fast.lif_multistep(torch.zeros(3, 4), noise_mask=torch.ones(3, 4), backend=backend)
    with pytest.raises(TypeError, match="x must be a tensor"):
        snn_fast.lif_multistep([[1.0]], backend=backend)


def test_device_mix_is_named():
    x = torch.zeros(3, 4, device="meta")
    with pytest.raises(ValueError, match="v0 is on cpu but x is on meta"):
        snn_fast.lif_multistep(x, torch.zeros(4), backend="reference")


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_named_backend_unavailable_says_how_to_get_it():
    with pytest.raises(RuntimeError, match="'cuda' backend runs on CUDA tensors"):
        snn_fast.lif_multistep(torch.zeros(3, 4), backend="cuda")


def test_env_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("SNN_FAST_BACKEND", "reference")
    from snn_fast import backends
    from snn_fast.ops.lif.function import BACKENDS as LIF
    from snn_fast.ops.tempotron.function import BACKENDS as TEMPOTRON

    assert backends.select("auto", torch.zeros(2, 2), op=LIF) == "reference"
    assert TEMPOTRON.select("auto", torch.zeros(2, 2)) == "reference"  # one chooser for every op
    monkeypatch.setenv("SNN_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        backends.select(None, torch.zeros(2, 2), op=LIF)
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        TEMPOTRON.select(None, torch.zeros(2, 2))


def test_auto_picks_cpu_kernel_for_cpu_tensors():
    from snn_fast import backends
    from snn_fast.ops.lif.function import BACKENDS as LIF
    from snn_fast.ops.tempotron.function import BACKENDS as TEMPOTRON

    assert backends.select("auto", torch.zeros(2, 2), op=LIF) == ("cpu" if snn_fast.HAS_C else "reference")
    assert TEMPOTRON.select("auto", torch.zeros(2, 2)) == ("cpu" if snn_fast.HAS_C else "reference")
    # a user surrogate (no kernel) runs on the reference under auto
    assert LIF.select("auto", torch.zeros(2, 2), has_kernel=False) == "reference"


def test_triton_named_on_cpu_without_interpreter_says_how(monkeypatch):
    """One answer for "is Triton usable / interpreted" (snn_fast._triton) serves every op's probe."""
    from snn_fast import _triton
    from snn_fast.ops.lif.function import BACKENDS as LIF
    from snn_fast.ops.tempotron.function import BACKENDS as TEMPOTRON

    if _triton.import_error() is not None:
        pytest.skip(f"triton is not installed: {_triton.import_error()}")
    monkeypatch.setattr(_triton, "interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="'triton' backend runs on CUDA tensors, x is on cpu.*TRITON_INTERPRET"):
        LIF.select("triton", torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="t_in is on cpu.*TRITON_INTERPRET"):
        TEMPOTRON.select("triton", torch.zeros(2, 2))
    assert "TRITON_INTERPRET" not in _triton.unavailable_reason(torch.zeros(1, device="meta"))


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_op_level_checks_name_the_argument():
    x = torch.zeros(3, 4)
    p = torch.tensor([0.5, 1.0, 4.0])
    with pytest.raises(RuntimeError, match="v0 must be \\[N\\]"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(5), p, None, 0, True, 0.0, True, False, 0.0, False, 0, False, 0)
    with pytest.raises(RuntimeError, match="unknown surrogate id 42"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p, None, 42, True, 0.0, True, False, 0.0, False, 0, False, 0)
    with pytest.raises(RuntimeError, match="params must be"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p.double(), None, 0, True, 0.0, True, False, 0.0, False, 0, False,
                                   0)
    with pytest.raises(RuntimeError, match="noise_mask must be"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p, torch.ones(3, 4), 0, True, 0.0, True, False, 0.0, False, 0,
                                   False, 0)
    with pytest.raises(RuntimeError, match="unknown save mode 7"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p, None, 0, True, 0.0, True, False, 0.0, False, 0, False, 7)
    with pytest.raises(RuntimeError, match="sg_dalpha is given without sg_grad"):
        torch.ops.snn_fast.lif_bwd(x, None, None, x, torch.zeros(4), p, None, x.new_empty(0), x, None, x, 0, True,
                                   0.0, True, False, 0.0, False, 0, 0, False)
    with pytest.raises(RuntimeError, match="sg_grad must be \\[T, N\\]"):
        torch.ops.snn_fast.lif_bwd(x, None, None, x, torch.zeros(4), p, None, x.new_empty(0), x, x[:2], None, 0,
                                   True, 0.0, True, False, 0.0, False, 0, 0, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_if_module_rejects_nothing_and_inf_tau_is_if(backend):
    x = torch.randn(5, 7, dtype=torch.float64)
    a = snn_fast.lif_multistep(x, tau=math.inf, decay_input=True, backend="reference")
    b = snn_fast.lif_multistep(x, tau=math.inf, decay_input=False, backend="reference")
    assert torch.equal(a[0], b[0])  # IF ignores decay_input: H = V + X
    # the IF module itself, not only the functional reference: any real input
    # runs, gives the functional IF's spikes, and leaks nothing (H = V + X, so a constant input
    # below θ charges linearly and fires at step ⌈θ/x⌉)
    m = snn_fast.nn.IF(backend=backend)
    assert torch.equal(m(x), a[0])
    m.reset()
    ramp = m(torch.full((5, 1), 0.3, dtype=torch.float64))
    assert ramp.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # V = 0.3, 0.6, 0.9, 1.2 → fire, reset
    m.reset()
    extreme = torch.tensor([[0.0, -1e300, 1e300, 5e-324]], dtype=torch.float64).expand(5, 4)
    assert m(extreme).shape == (5, 4)
    with pytest.raises(TypeError, match="IF has no leak: it takes no 'tau'"):
        snn_fast.nn.IF(tau=2.0)


# --- arguments that could pass unnoticed: each must raise an error naming it --------------------


@pytest.mark.parametrize("bad", [0, 123, 1.5, b"cpu", ["cpu"]])
def test_backend_that_is_not_a_string_is_named(bad):
    """Before: backend=0 silently meant 'auto' and 123 raised AttributeError ('int' has no 'lower')."""
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match=r"backend must be a str, one of .*got "):
        snn_fast.lif_multistep(x, backend=bad)
    with pytest.raises(TypeError, match=r"backend must be a str, one of .*got "):
        tempotron(torch.zeros(2, 5), torch.zeros(3, 5), 10, backend=bad)
    with pytest.raises(TypeError, match=r"backend must be a str, one of .*got "):
        snn_fast.nn.LIF(backend=bad)  # refused when the module is built, not at its first forward
    with pytest.raises(TypeError, match=r"backend must be a str, one of .*got "):
        snn_fast.nn.Tempotron(5, 3, 10, backend=bad)


def test_empty_backend_string_is_refused_but_empty_env_is_unset(monkeypatch):
    """Before: backend='' silently meant 'auto'. An empty SNN_FAST_BACKEND still means unset."""
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="unknown backend ''"):
        snn_fast.lif_multistep(x, backend="")
    monkeypatch.setenv("SNN_FAST_BACKEND", "")
    assert torch.equal(snn_fast.lif_multistep(x)[0], snn_fast.lif_multistep(x, backend="reference")[0])


@pytest.mark.parametrize("shape", [(), (7,)])
def test_multistep_on_fewer_than_two_dims_is_named(shape):
    """Before: 'not enough values to unpack (expected 2, got 1)' from inside forward."""
    m = snn_fast.nn.MultiStep(torch.nn.Identity())
    with pytest.raises(ValueError, match=r"MultiStep: x must be \[T, B, \.\.\.\] \(at least 2 dims\), got "):
        m(torch.zeros(shape))
    assert m(torch.zeros(2, 3)).shape == (2, 3)  # two dims is enough


@pytest.mark.parametrize("init_tau", [math.inf, torch.tensor(math.inf), -math.inf])
def test_plif_infinite_init_tau_is_refused(init_tau):
    """Before: PLIF(init_tau=inf) built w = −inf (1/τ = sigmoid(w) stuck at 0, no gradient)."""
    with pytest.raises(ValueError, match="init_tau must be a finite number > 1"):
        snn_fast.nn.PLIF(init_tau=init_tau)


@pytest.mark.parametrize("init_tau,match", [(math.nan, "tau must be finite"), (1.0, "tau must be > 1"),
                                            (0.5, "tau must be > 1")])
def test_plif_other_bad_init_tau_is_named(init_tau, match):
    with pytest.raises(ValueError, match=match):
        snn_fast.nn.PLIF(init_tau=init_tau)


@pytest.mark.parametrize("name", ["straight_through", "spike_gate"])
def test_learnable_alpha_of_a_widthless_surrogate_is_refused(name):
    """Before: learnable_alpha=True trained α with a gradient that is always 0."""
    with pytest.raises(ValueError, match=f"learnable_alpha=True: surrogate '{name}' has no width"):
        snn_fast.nn.LIF(surrogate=name, learnable_alpha=True)
    snn_fast.nn.LIF(surrogate=name)  # fixed α (unused) is fine
    snn_fast.nn.LIF(surrogate="sigmoid", learnable_alpha=True)


def test_gaussian_tuning_nan_input_is_named():
    """Before: NaN features came out as NaN spike times. ±inf is a far-away value: no spike."""
    enc = snn_fast.nn.GaussianTuning(2, 5, torch.zeros(2), torch.ones(2))
    x = torch.rand(3, 2, 4)
    x[1, 0, 2] = math.nan
    with pytest.raises(ValueError, match=r"x contains NaN \(1 of 24 values\)"):
        enc.encode(x, 10)
    x[1, 0, 2] = math.inf
    t = enc.encode(x, 10)
    assert not torch.isnan(t).any() and bool((t[1, 0, 2] == -1).all())


def test_decay_alone_and_tau_default():
    x = torch.randn(5, 7, dtype=torch.float64)
    a = snn_fast.lif_multistep(x, decay=0.5, backend="reference")
    b = snn_fast.lif_multistep(x, tau=2.0, backend="reference")
    c = snn_fast.lif_multistep(x, backend="reference")
    assert torch.equal(a[0], b[0]) and torch.equal(b[0], c[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_tau_inf_is_refused(backend):
    """IF is selected by a float inf; a tensor inf would silently drop the input under decay_input."""
    with pytest.raises(ValueError, match="tau must be finite"):
        snn_fast.lif_multistep(torch.randn(3, 4), tau=torch.tensor(math.inf), backend=backend)


@pytest.mark.parametrize("name", ["decay_input", "detach_reset"])
def test_flags_must_be_bools(name):
    with pytest.raises(TypeError, match=f"{name} must be a bool"):
        snn_fast.lif_multistep(torch.randn(3, 4), **{name: "False"})


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_double_backward_is_refused_not_silently_zero():
    x = torch.randn(4, 6, requires_grad=True)
    s, v = snn_fast.lif_multistep(x, backend="cpu")
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad((s.sum() + v.sum()), x, create_graph=True)
    # the reference supports it
    s, v = snn_fast.lif_multistep(x, backend="reference", v_reset=None)
    (g,) = torch.autograd.grad(v.sum() + s.sum(), x, create_graph=True)
    assert g.requires_grad


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_bn_lif_double_backward_is_refused_not_silently_zero():
    """The fused batch norm + LIF's C++ autograd (csrc/autograd/bn_lif_autograd.cpp) refuses it too,
    for the input and for batch norm's weight."""
    x = torch.randn(4, 2, 3, 5, requires_grad=True)
    w = torch.rand(3).add_(0.5).requires_grad_(True)
    b = torch.zeros(3, requires_grad=True)
    for wrt in (x, w):
        s, v = snn_fast.bn_lif(x, w, b, backend="cpu")
        with pytest.raises(NotImplementedError, match="double backward"):
            torch.autograd.grad(s.sum() + v.sum(), wrt, create_graph=True)
    s, v = snn_fast.bn_lif(x, w, b, backend="reference", v_reset=None)
    (g,) = torch.autograd.grad(v.sum() + s.sum(), w, create_graph=True)
    assert g.requires_grad


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_bwd_op_checks_gradient_shapes():
    x = torch.zeros(3, 4)
    p = torch.tensor([0.5, 1.0, 4.0])
    e = x.new_empty(0)
    with pytest.raises(RuntimeError, match="grad_v_last must be \\[N\\]"):
        torch.ops.snn_fast.lif_bwd(x, torch.zeros(5), None, x, torch.zeros(4), p, None, e, x, None, None, 0, True,
                                   0.0, True, False, 0.0, False, 0, 0, False)
    with pytest.raises(RuntimeError, match="grad_v_seq must be \\[T, N\\]"):
        torch.ops.snn_fast.lif_bwd(x, None, torch.zeros(2, 4), x, torch.zeros(4), p, None, e, x, None, None, 0, True,
                                   0.0, True, False, 0.0, False, 0, 0, False)
