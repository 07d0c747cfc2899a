"""User-registered surrogates the tests run through every backend (not a test module).

Three kinds, one of each way to register:
  - ``user_sigmoid``: the built-in sigmoid re-registered by a user, ``scaling=True`` (∂g/∂α derived,
    in torch and in Triton); the same arithmetic as the built-in, so its results must equal the
    built-in's bit for bit on Triton.
  - ``user_shifted``: g(x; α) = σ((α + 1)·x): not a function of α·x, so ∂g/∂α is given explicitly,
    in torch and in Triton (the three-function form).
  - ``user_box``: no width (α = None: ∂g/∂α = 0), torch only for ∂g/∂α; piecewise (kinks at ±½).
And ``user_torch_only``: no Triton functions ('triton' cannot run it; 'cpu' and the reference can).
"""
from __future__ import annotations

import torch

from snn_fast import surrogate as sgm

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a test dependency
    triton = None


def _sig(x, a):
    return torch.sigmoid(a * x)


def _sig_dg(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def _shift_g(x, a):
    return torch.sigmoid((a + 1) * x)


def _shift_dg(x, a):
    s = torch.sigmoid((a + 1) * x)
    return (a + 1) * s * (1 - s)


def _shift_da(x, a):
    s = torch.sigmoid((a + 1) * x)
    return x * s * (1 - s)


def _box_g(x, a):
    return torch.clamp(x + 0.5, 0.0, 1.0)


def _box_dg(x, a):
    return (x.abs() < 0.5).to(x.dtype)


if triton is not None:
    @triton.jit
    def sig_g_tl(x, a):
        return 1.0 / (1.0 + tl.exp(-(a * x)))

    @triton.jit
    def sig_dg_tl(x, a):  # the built-in's formula (triton_surrogate.py sg_grad, SIGMOID)
        s = 1.0 / (1.0 + tl.exp(-(a * x)))
        return a * s * (1.0 - s)

    @triton.jit
    def sig_dg_wrong_tl(x, a):  # the factor a is missing (test_custom_surrogate.py: refused at first use)
        s = 1.0 / (1.0 + tl.exp(-(a * x)))
        return s * (1.0 - s)

    @triton.jit
    def shift_g_tl(x, a):
        return 1.0 / (1.0 + tl.exp(-((a + 1.0) * x)))

    @triton.jit
    def shift_dg_tl(x, a):
        s = 1.0 / (1.0 + tl.exp(-((a + 1.0) * x)))
        return (a + 1.0) * s * (1.0 - s)

    @triton.jit
    def shift_da_tl(x, a):
        s = 1.0 / (1.0 + tl.exp(-((a + 1.0) * x)))
        return x * s * (1.0 - s)

    @triton.jit
    def box_g_tl(x, a):
        return tl.minimum(tl.maximum(x + 0.5, 0.0), 1.0)

    @triton.jit
    def box_dg_tl(x, a):
        return tl.where(tl.abs(x) < 0.5, 1.0, 0.0).to(x.dtype)


NAMES = ("user_sigmoid", "user_shifted", "user_box", "user_torch_only")
WITH_ALPHA = ("user_sigmoid", "user_shifted", "user_torch_only")
WITH_TRITON = ("user_sigmoid", "user_shifted", "user_box")
KINKS = {"user_box": [0.5, -0.5]}


def register_all():
    """Register the four (once per process) and return their names. Called from fixtures, not at
    import: test modules collected in the same process read ``surrogate.names()`` at import
    (test_lif.py's grid of the built-ins) and must see the built-ins only."""
    have = set(sgm.names())
    tr = triton is not None
    specs = {
        "user_sigmoid": dict(g=_sig, dg=_sig_dg, alpha=4.0, scaling=True,
                             triton=(sig_g_tl, sig_dg_tl) if tr else None),
        "user_shifted": dict(g=_shift_g, dg=_shift_dg, dg_dalpha=_shift_da, alpha=2.0,
                             triton=(shift_g_tl, shift_dg_tl, shift_da_tl) if tr else None),
        "user_box": dict(g=_box_g, dg=_box_dg, triton=(box_g_tl, box_dg_tl) if tr else None),
        "user_torch_only": dict(g=_shift_g, dg=_shift_dg, dg_dalpha=_shift_da, alpha=3.0),
    }
    for name, kw in specs.items():
        if name not in have:
            sgm.register_surrogate(name, **kw)
    return NAMES
