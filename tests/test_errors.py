"""Bad input gives a clear error naming the argument — never a crash, a hang or a wrong result."""
import math

import pytest
import torch

import snn_fast

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
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(5), p, None, 0, True, 0.0, True, False, 0.0, False)
    with pytest.raises(RuntimeError, match="unknown surrogate id 42"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p, None, 42, True, 0.0, True, False, 0.0, False)
    with pytest.raises(RuntimeError, match="params must be"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p.double(), None, 0, True, 0.0, True, False, 0.0, False)
    with pytest.raises(RuntimeError, match="noise_mask must be"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(4), p, torch.ones(3, 4), 0, True, 0.0, True, False, 0.0, False)


def test_if_module_rejects_nothing_and_inf_tau_is_if():
    x = torch.randn(5, 7, dtype=torch.float64)
    a = snn_fast.lif_multistep(x, tau=math.inf, decay_input=True, backend="reference")
    b = snn_fast.lif_multistep(x, tau=math.inf, decay_input=False, backend="reference")
    assert torch.equal(a[0], b[0])  # IF ignores decay_input: H = V + X


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
def test_bwd_op_checks_gradient_shapes():
    x = torch.zeros(3, 4)
    p = torch.tensor([0.5, 1.0, 4.0])
    e = x.new_empty(0)
    with pytest.raises(RuntimeError, match="grad_v_last must be \\[N\\]"):
        torch.ops.snn_fast.lif_bwd(x, torch.zeros(5), None, x, torch.zeros(4), p, None, e, x, 0, True, 0.0, True,
                                   False, 0.0, False)
    with pytest.raises(RuntimeError, match="grad_v_seq must be \\[T, N\\]"):
        torch.ops.snn_fast.lif_bwd(x, None, torch.zeros(2, 4), x, torch.zeros(4), p, None, e, x, 0, True, 0.0, True,
                                   False, 0.0, False)
