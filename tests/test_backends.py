"""The backend tables (``BACKENDS`` in each op's function.py) and the one autograd Function per op.

What is checked here is wiring, on tiny inputs: every backend runs under its op's one autograd
Function in eager mode; each entry says what its forward saves, and the C++ op's fake follows the
entry of the tensor's device; a Triton module is loaded by its table, not by importing it; the
first use of a lazily loaded backend may come inside a torch.compile(fullgraph=True) trace.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import snn_fast
from snn_fast import _triton
from snn_fast.ops.lif.function import BACKENDS as LIF
from snn_fast.ops.tempotron import tempotron_membrane
from snn_fast.ops.tempotron.function import BACKENDS as TEMPOTRON

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _node(t):
    """The autograd node that made ``t``, below the reshapes the functional API adds."""
    fn = t.grad_fn
    while fn.name().startswith(("View", "Reshape", "Unsafe")):
        fn = fn.next_functions[0][0]
    return fn.name()


# The C++ ops carry their autograd in C++ (csrc/autograd/lif_autograd.cpp); the others go through
# the one Python Function of every op (snn_fast/backends.py FusedAutograd).
LIF_NODE = {"cpu": "CppNode<snn_fast::(anonymous namespace)::LIFFunction>",
            "cuda": "CppNode<snn_fast::(anonymous namespace)::LIFFunction>",
            "triton": "_FusedFunctionBackward"}


def _runnable(table, names=("cpu", "triton", "cuda")):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return [n for n in names if table.unavailable(n, torch.empty(0, device=dev if n != "cpu" else "cpu")) is None]


@pytest.mark.parametrize("backend", _runnable(LIF))
def test_every_lif_backend_runs_under_the_one_function(backend):
    dev = "cpu" if backend == "cpu" else ("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(3, 5, device=dev, requires_grad=True)
    s, v = snn_fast.lif_multistep(x, backend=backend)
    assert _node(s) == _node(v) and _node(s).endswith(LIF_NODE[backend]), _node(s)
    (g,) = torch.autograd.grad(s.sum() + v.sum(), x)
    s_r, v_r = snn_fast.lif_multistep(x, backend="reference")
    (g_r,) = torch.autograd.grad(s_r.sum() + v_r.sum(), x)
    torch.testing.assert_close(g, g_r, atol=1e-5, rtol=1e-4)  # conftest's float32 tolerance
    with torch.no_grad():  # no gradient can flow: the raw op, no autograd node
        assert snn_fast.lif_multistep(x, backend=backend)[0].grad_fn is None


@pytest.mark.parametrize("backend", _runnable(TEMPOTRON))
def test_every_tempotron_backend_runs_under_the_one_function(backend):
    dev = "cpu" if backend == "cpu" else ("cuda" if torch.cuda.is_available() else "cpu")
    t = (torch.rand(2, 6) * 8).to(dev)
    w = torch.randn(3, 6, device=dev, requires_grad=True)
    v = tempotron_membrane(t, w, 10, backend=backend)
    assert _node(v) == "_FusedFunctionBackward", _node(v)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(v.sum(), w, create_graph=True)


def test_each_kernel_says_what_it_saves():
    """The C++ op serves 'cpu' (re-runs the forward: saves nothing, but D = H − θ for SAVE_SG_ARG) and
    'cuda' (H, [T, N] in x.dtype, or the V checkpoints); its fake asks the kernel of x's device."""
    from snn_fast.ops.lif import contract as c

    x, p = torch.empty(20, 6, dtype=torch.bfloat16), torch.empty(3)
    assert c.saved_like("cpu", x, p, c.SAVE_STATE).numel() == 0
    assert c.saved_like("cpu", x, p, c.SAVE_RECOMPUTE).numel() == 0
    assert c.saved_like("cpu", x, p, c.SAVE_SG_ARG).shape == x.shape
    h = c.saved_like("cuda", x, p, c.SAVE_STATE)
    assert h.shape == x.shape and h.dtype == x.dtype
    assert c.saved_like("cuda", x, p, c.SAVE_RECOMPUTE).shape == (2, 6)  # V after steps 8 and 16
    assert c.saved_like("cuda", x, p, c.SAVE_NONE).numel() == 0
    if snn_fast.HAS_C:
        from torch._subclasses.fake_tensor import FakeTensorMode

        for save, want in ((c.SAVE_STATE, (0,)), (c.SAVE_NONE, (0,)), (c.SAVE_SG_ARG, (4, 6))):
            args = (torch.randn(4, 6), torch.zeros(6), torch.tensor([0.5, 1.0, 4.0]), None, 0, True, 0.0, True,
                    False, 0.0, False, 0, False, save)
            real = torch.ops.snn_fast.lif_fwd(*args)[3]
            with FakeTensorMode(allow_non_fake_inputs=True):
                fake = torch.ops.snn_fast.lif_fwd(*args)[3]
            assert fake.shape == real.shape == want and fake.dtype == real.dtype, (save, fake, real)


@pytest.mark.skipif(_triton.import_error() is not None, reason="triton is not installed")
def test_triton_module_does_not_register_itself():
    """Importing a Triton module defines its ops and touches no table: the table loads it."""
    code = textwrap.dedent("""
        import torch
        from snn_fast.ops.lif.function import BACKENDS
        from snn_fast.ops.lif import triton  # noqa: F401
        assert ("triton", False) not in BACKENDS._loaded and hasattr(torch.ops.snn_fast, "lif_fwd_triton")
        BACKENDS.load("triton")
        assert "snn_fast::lif_fwd_triton" in BACKENDS._registered
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.skipif(_triton.import_error() is not None, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-interpreter check (on a GPU the other tests cover it)")
def test_first_triton_use_inside_a_fullgraph_trace():
    """A fresh process whose first Triton call is traced by torch.compile(fullgraph=True): loading
    the backend (an import and torch.library registrations) must not break the graph."""
    code = textwrap.dedent("""
        import torch, snn_fast
        from snn_fast.ops.tempotron import tempotron
        tau = torch.tensor(2.0, requires_grad=True)
        def f(x):
            s, v = snn_fast.lif_multistep(x, tau=tau, backend="triton")
            return s.sum() + (v * v).sum()
        x = torch.randn(3, 8, requires_grad=True)
        torch.compile(f, fullgraph=True, backend="aot_eager")(x).backward()
        g = x.grad.clone(); x.grad = None
        f(x).backward()
        assert torch.allclose(g, x.grad), (g, x.grad)
        t, w = torch.rand(2, 8) * 10, torch.randn(3, 8, requires_grad=True)
        torch.compile(lambda w: tempotron(t, w, 10, backend="triton").sum(), fullgraph=True,
                      backend="aot_eager")(w).backward()
        assert w.grad.abs().sum() > 0
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
