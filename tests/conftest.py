"""Shared test helpers. Every tolerance of the suite is defined and justified here, nowhere else.

- float64: the kernels and the reference perform the same operations; what differs is summation
  order in the parameter-gradient reductions (over up to ~10^5 terms), so 1e-10 is ample.
- float32: the kernels charge in the reference's operation order, so states agree bitwise and
  spikes do not flip; gradients differ by reduction order and by contraction of a few products:
  relative 1e-4 of the largest magnitude over T ≤ 64 steps (each step loses ~1e-7 relative,
  gradients through T steps compound that by ~T).
- float16/bfloat16: the kernels compute in fp32 and round only on store; the reference computes in
  that dtype. The kernel must be at least as close to the float64 truth as plain PyTorch in that
  dtype is (× LOWP_FACTOR, + one storage ulp), and its spike flips no more frequent.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# No GPU: run Triton kernels on CPU tensors in its interpreter. Must precede any `import triton`
# (pytest imports this file before any test module).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A user's surrogate on the CPU backend: its g′ (and ∂g/∂α) evaluated eagerly in the suite, not
# compiled by torch.compile. Every (surrogate, kind, dtype) compiles once per process, seconds each on
# two cores: the option grids of the user surrogates (test_custom_surrogate.py, test_surrogate.py, …)
# would compile ~16 of them in each xdist worker. Both paths compute the same functions;
# test_custom_surrogate.py turns compilation on where it checks the compiled path (against the eager
# one, within the float64 tolerance) and the switches. SNN_FAST_TEST_COMPILED_SURROGATES=1 runs the
# suite compiled, the small layers of the tests included (``_compiled_surrogates`` below).
COMPILED_SURROGATES = os.environ.get("SNN_FAST_TEST_COMPILED_SURROGATES") == "1"
os.environ["SNN_FAST_COMPILE_SURROGATES"] = "1" if COMPILED_SURROGATES else "0"
# The same surrogates compiled into the C++ walk (native_surrogate.py): off in the suite but for
# test_native_surrogate.py, which turns it on (the libraries are built once per session into a shared
# temporary cache); SNN_FAST_TEST_NATIVE_SURROGATES=1 (with the variable above) runs the suite on them.
os.environ["SNN_FAST_NATIVE_SURROGATES"] = "1" if os.environ.get("SNN_FAST_TEST_NATIVE_SURROGATES") == "1" else "0"


def _inductor_cache_per_op_schemas():
    """Inductor's FX-graph cache key leaves out a custom op's schema (pytorch/pytorch#187319): a graph
    compiled against another build of our ops is reused and calls them with that build's arguments
    ("expected at most 11 argument(s) but received 12"). Give each set of our op schemas (with torch's
    version) its own cache directory under the temp dir, so a warm cache still serves the same build."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    import hashlib
    import tempfile

    import snn_fast  # noqa: F401  (registers the C++ ops)
    try:  # the Triton ops are registered from Python, on import
        import snn_fast.ops.lif.triton  # noqa: F401
        import snn_fast.ops.tempotron.triton  # noqa: F401
    except ImportError:
        pass
    schemas = sorted(str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith("snn_fast::"))
    key = hashlib.sha256("\n".join([torch.__version__, *schemas]).encode()).hexdigest()[:16]
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_snn_fast_{key}")


_inductor_cache_per_op_schemas()

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
}
LOWP_FACTOR = 2.0
LOWP_ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def devices():
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


def assert_close(actual, expected, dtype=None, name="", equal_nan=False):
    """Compare against the reference in the same dtype (float64 or float32). The absolute tolerance
    scales with the largest finite magnitude of ``expected`` (an inf there must not make every value
    pass); ±inf must match exactly, and NaN only where ``equal_nan`` allows it (extreme inputs)."""
    dtype = dtype or expected.dtype
    tol = TOL[dtype]
    finite = expected[torch.isfinite(expected)]
    scale = max(finite.abs().max().item(), 1.0) if finite.numel() else 1.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=tol["atol"] * scale, rtol=tol["rtol"],
                               equal_nan=equal_nan, msg=lambda m: f"{name}: {m}")


# A converted model against the peer library itself (snnTorch, Norse, Sinabs), both in float64: the
# same operations in another order, relative to the largest magnitude.
PEER_RTOL = 1e-9


def assert_close_to_peer(got, want, what):
    assert got is not None and want is not None, f"{what}: a gradient is missing ({got is None}, {want is None})"
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = want.abs().max().item() or 1.0
    err = (got - want).abs().max().item() / scale
    assert err <= PEER_RTOL, f"{what}: relative error {err:.3g} > {PEER_RTOL:g}"



# The peers' spike functions return float32 whatever the membrane's dtype (snnTorch's ``(x > 0).float()``,
# Sinabs's SingleSpike ``(v − θ >= 0).float()``), so the gradient reaching each spike is rounded to
# float32 in their own float64 backward. These fixtures swap ``.float()`` for the input's dtype in
# those forwards (their backwards are untouched) so that a comparison can be made at float64
# precision (tests/test_convert_peers.py, test_convert_sinabs.py, test_nir_peers.py).


@pytest.fixture
def snntorch_f64(monkeypatch):
    """snnTorch's spike forwards with the input's dtype instead of float32."""
    sgm = pytest.importorskip("snntorch.surrogate")

    def one(ctx, input_):
        return (input_ > 0).to(input_.dtype)

    def two(ctx, input_, a):
        ctx.save_for_backward(input_)
        for name in ("alpha", "slope", "threshold"):
            setattr(ctx, name, a)
        return (input_ > 0).to(input_.dtype)

    monkeypatch.setattr(sgm.StraightThroughEstimator, "forward", staticmethod(one))
    for cls in (sgm.ATan, sgm.FastSigmoid, sgm.Sigmoid, sgm.Triangular):
        monkeypatch.setattr(cls, "forward", staticmethod(two))


@pytest.fixture
def sinabs_f64(monkeypatch):
    """Sinabs's SingleSpike forward (and Heaviside's gradient) with the membrane's dtype instead of float32."""
    A = pytest.importorskip("sinabs.activation")

    def forward(ctx, v_mem, spike_threshold, surrogate_grad_fn):
        ctx.save_for_backward(v_mem.clone())
        ctx.spike_threshold = spike_threshold
        ctx.surrogate_grad_fn = surrogate_grad_fn
        return (v_mem - spike_threshold >= 0).to(v_mem.dtype)

    def heaviside(self, v_mem, spike_threshold):
        return (v_mem >= (spike_threshold - self.window)).to(v_mem.dtype) / spike_threshold

    monkeypatch.setattr(A.SingleSpike, "forward", staticmethod(forward))
    monkeypatch.setattr(A.Heaviside, "__call__", heaviside)


def assert_close_lowp(actual, ref64, ref_lowp, name=""):
    """fp16/bf16: the kernel's error vs float64 must not exceed plain PyTorch's (× factor + ulp)."""
    ulp = LOWP_ULP[ref_lowp.dtype]
    scale = max(ref64.abs().max().item(), 1.0)
    err_kernel = (actual.double() - ref64.double()).abs().max().item()
    err_torch = (ref_lowp.double() - ref64.double()).abs().max().item()
    bound = LOWP_FACTOR * err_torch + ulp * scale
    print(f"{name}: kernel err {err_kernel:.3e}, torch {ref_lowp.dtype} err {err_torch:.3e}, bound {bound:.3e}")
    assert err_kernel <= bound, f"{name}: kernel error {err_kernel:.3e} > bound {bound:.3e} (torch err {err_torch:.3e})"


@contextlib.contextmanager
def nan_filled_allocations():
    """Fresh allocations (torch.empty and friends, in Python or C++) come filled with NaN, so an
    output element a kernel forgets to write shows up as NaN instead of passing by luck."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill


@pytest.fixture
def nan_alloc():
    with nan_filled_allocations():
        yield


@pytest.fixture(autouse=True, scope="session")
def _compiled_surrogates():
    """With SNN_FAST_TEST_COMPILED_SURROGATES=1: a user's surrogate compiled on the CPU whatever the
    size of the layer (custom_cpu._COMPILE_MIN_BYTES, 1 MiB, would leave the tests' layers eager)."""
    if COMPILED_SURROGATES:
        from snn_fast.ops.lif import custom_cpu

        custom_cpu._COMPILE_MIN_BYTES = 0
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# hypothesis profiles (tests/test_properties.py): "ci", the default, is derandomized (the same examples
# on every run: CI cannot flake) with no example database and no deadline (the interpreter's first
# call compiles); "long" (`pytest --hypothesis-profile=long`) draws fresh random examples, 20× as many.
try:
    from hypothesis import HealthCheck as _HealthCheck
    from hypothesis import settings as _hsettings
except ImportError:  # a test dependency; test_properties.py skips without it
    pass
else:
    _SLOW_OK = [_HealthCheck.too_slow, _HealthCheck.data_too_large, _HealthCheck.filter_too_much]
    _hsettings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None,
                                print_blob=True, suppress_health_check=_SLOW_OK)
    _hsettings.register_profile("long", max_examples=2000, derandomize=False, deadline=None, print_blob=True,
                                suppress_health_check=_SLOW_OK)
    _hsettings.load_profile("ci")  # pytest's --hypothesis-profile, applied after this file, overrides it


class OpLog(TorchDispatchMode):
    """Names (``namespace.op``) of the top-level torch calls made while active: the fused ops,
    allocations, copies, ``.item()``'s ``_local_scalar_dense`` sync (tests/test_host_work.py,
    tests/test_cuda_graphs.py)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(f"{func.namespace}.{func._schema.name.split('::')[-1]}")
        return func(*args, **(kwargs or {}))

    def names(self):
        """The op names without their namespace."""
        return {o.split(".")[-1] for o in self.ops}


def op_v0_shapes(op: str, fn) -> list:
    """fn() under a dispatch mode: the shape of the v0 argument (the second) of each snn_fast op call
    whose name starts with ``op``, seen below autograd."""

    shapes = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "snn_fast" and func._schema.name.split("::")[-1].startswith(op):
                shapes.append(tuple(args[1].shape))
            return func(*args, **(kwargs or {}))

    with Spy():
        fn()
    return shapes
