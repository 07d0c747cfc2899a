"""Surrogate gradient registry (SPEC §3).

Every surrogate has a primitive ``g(x, a)`` (the analog forward of the noisy spike, SPEC §4), its
derivative ``dg(x, a)`` (the surrogate gradient g′), and ``dg_dalpha(x, a)`` (∂g/∂α, for a learnable
width). ``x = H − θ``. The integer ``id`` is what the fused kernels switch on; it is part of the ABI
shared with ``csrc/include/snn_fast/surrogate.h`` and ``snn_fast/ops/lif/triton.py`` and must never
be renumbered. Surrogates registered by users have ``id = -1`` and run on the reference backend only.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Surrogate:
    name: str
    id: int  # kernel id; -1 = reference only
    alpha: Optional[float]  # default α; None = the surrogate has no width parameter
    g: Fn
    dg: Fn
    dg_dalpha: Optional[Fn]
    aliases: Tuple[str, ...] = field(default=())
    # α must exceed this (exclusive bound): 0 for every width; q_pseudo_spike needs α > 1, since its
    # u = 1 + 2|x|/(α − 1) has a pole at α = 1 and flips sign below it.
    alpha_min: float = 0.0

    @property
    def has_kernel(self) -> bool:
        return self.id >= 0

    def __reduce_ex__(self, protocol):
        # Pickled (and deep-copied) by name: a module holding a surrogate then pickles even when the
        # surrogate's functions are lambdas or closures (a user's), and loading gives back the one
        # registered object. A Surrogate that is not the registered one of its name (built by hand)
        # pickles field by field, which needs module-level functions.
        if _REGISTRY.get(self.name) is self:
            return (get, (self.name,))
        return object.__reduce_ex__(self, protocol)


# Scaling family: g(x; α) = G(α x)  ⇒  ∂g/∂α = x · g′(x) / α. A class, not a closure, so that a
# Surrogate built by hand from it still pickles.
@dataclass(frozen=True)
class _ScalingDAlpha:
    dg: Fn

    def __call__(self, x, a):
        return x * self.dg(x, a) / a


def _scaling_dalpha(dg: Fn) -> Fn:
    return _ScalingDAlpha(dg)


def _zero_dalpha(x, a):  # no width: g does not depend on α
    return torch.zeros_like(x)


def _sigmoid_g(x, a):
    return torch.sigmoid(a * x)


def _sigmoid_dg(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def _atan_g(x, a):
    return 0.5 + torch.atan(math.pi / 2 * a * x) / math.pi


def _atan_dg(x, a):
    return a / (2 * (1 + (math.pi / 2 * a * x) ** 2))


def _rect_g(x, a):
    return torch.clamp(a * x + 0.5, 0.0, 1.0)


def _rect_dg(x, a):
    return a * ((x.abs() < 0.5 / a).to(x.dtype))


def _tri_g(x, a):
    ax = a * x
    lo = 0.5 * (ax + 1) ** 2
    hi = 1 - 0.5 * (1 - ax) ** 2
    out = torch.where(ax < 0, lo, hi)
    out = torch.where(ax <= -1, torch.zeros_like(out), out)
    return torch.where(ax >= 1, torch.ones_like(out), out)


def _tri_dg(x, a):
    return torch.clamp(a - a * a * x.abs(), min=0.0)


def _pexp_g(x, a):
    e = 0.5 * torch.exp(-a * x.abs())
    return torch.where(x < 0, e, 1 - e)


def _pexp_dg(x, a):
    return a / 2 * torch.exp(-a * x.abs())


def _softsign_g(x, a):
    ax = a * x
    return 0.5 * (ax / (1 + ax.abs()) + 1)


def _softsign_dg(x, a):
    return a / (2 * (1 + (a * x).abs()) ** 2)


def _erf_g(x, a):
    return 0.5 * torch.erfc(-a * x)


def _erf_dg(x, a):
    return a / math.sqrt(math.pi) * torch.exp(-((a * x) ** 2))


def _superspike_g(x, a):
    return 0.5 + x / (1 + a * x.abs())


def _superspike_dg(x, a):
    return 1 / (1 + a * x.abs()) ** 2


def _superspike_dalpha(x, a):
    return -x * x.abs() / (1 + a * x.abs()) ** 2


def _qps_g(x, a):
    h = 0.5 * (1 + 2 * x.abs() / (a - 1)) ** (1 - a)
    return torch.where(x >= 0, 1 - h, h)


def _qps_dg(x, a):
    return (1 + 2 * x.abs() / (a - 1)) ** (-a)


def _qps_dalpha(x, a):
    # h = ½ u^{1−α}, u = 1 + 2|x|/(α−1):  ∂h/∂α = h · (−ln u + 2|x| / ((α−1) u)); g = 1 − h or h.
    u = 1 + 2 * x.abs() / (a - 1)
    dh = 0.5 * u ** (1 - a) * (-torch.log(u) + 2 * x.abs() / ((a - 1) * u))
    return torch.where(x >= 0, -dh, dh)


def _st_g(x, a):
    return x + 0.5


def _st_dg(x, a):
    return torch.ones_like(x)


def _gate_g(x, a):
    return torch.clamp(x, min=0.0)


def _gate_dg(x, a):
    return (x >= 0).to(x.dtype)


_REGISTRY: Dict[str, Surrogate] = {}
_BY_ID: Dict[int, Surrogate] = {}
# Registering and unregistering hold this lock (the name check and the inserts are one step);
# lookups are single dict reads and listings iterate over a snapshot (tests/test_threads.py).
_LOCK = threading.Lock()


def _add(s: Surrogate) -> Surrogate:
    with _LOCK:
        for n in (s.name,) + s.aliases:
            if n in _REGISTRY:
                raise ValueError(f"surrogate name {n!r} is already registered")
        for n in (s.name,) + s.aliases:
            _REGISTRY[n] = s
        if s.id >= 0:
            _BY_ID[s.id] = s
    return s


# id, name, default α, g, g′, ∂g/∂α, aliases, α lower bound. The ids are the kernel ABI (see module docstring).
for _sid, _name, _alpha, _g, _dg, _da, _aliases, _alpha_min in [
    (0, "sigmoid", 4.0, _sigmoid_g, _sigmoid_dg, None, (), 0.0),
    (1, "atan", 2.0, _atan_g, _atan_dg, None, (), 0.0),
    (2, "rectangle", 1.0, _rect_g, _rect_dg, None, ("rect", "stbp"), 0.0),
    (3, "triangle", 1.0, _tri_g, _tri_dg, None, ("zif", "piecewise_quadratic"), 0.0),
    (4, "piecewise_exp", 1.0, _pexp_g, _pexp_dg, None, (), 0.0),
    (5, "soft_sign", 2.0, _softsign_g, _softsign_dg, None, (), 0.0),
    (6, "super_spike", 10.0, _superspike_g, _superspike_dg, _superspike_dalpha, ("fast_sigmoid",), 0.0),
    (7, "erf", 2.0, _erf_g, _erf_dg, None, (), 0.0),
    (8, "q_pseudo_spike", 2.0, _qps_g, _qps_dg, _qps_dalpha, (), 1.0),
    (9, "straight_through", None, _st_g, _st_dg, None, (), 0.0),
    (10, "spike_gate", None, _gate_g, _gate_dg, None, (), 0.0),
]:
    if _da is None:  # no width: g does not depend on α, so ∂g/∂α = 0
        _da = _scaling_dalpha(_dg) if _alpha is not None else _zero_dalpha
    _add(Surrogate(_name, _sid, _alpha, _g, _dg, _da, _aliases, _alpha_min))

NUM_KERNEL_SURROGATES = len(_BY_ID)


def names() -> Tuple[str, ...]:
    """Canonical names of every registered surrogate (aliases not repeated)."""
    seen = []
    for s in tuple(_REGISTRY.values()):
        if s.name not in seen:
            seen.append(s.name)
    return tuple(seen)


def get(name) -> Surrogate:
    """Look a surrogate up by name, alias, or pass a ``Surrogate`` through."""
    if isinstance(name, Surrogate):
        return name
    if not isinstance(name, str):
        raise TypeError(f"surrogate must be a name (str) or a Surrogate, got {type(name).__name__}")
    key = name.lower()
    s = _REGISTRY.get(key)  # one read: a concurrent unregister cannot fall between a check and a lookup
    if s is None:
        known = ", ".join(sorted(tuple(_REGISTRY)))
        raise ValueError(f"unknown surrogate {name!r}; known surrogates: {known}")
    return s


def by_id(sid: int) -> Surrogate:
    return _BY_ID[sid]


def register_surrogate(
    name: str,
    g: Fn,
    dg: Fn,
    dg_dalpha: Optional[Fn] = None,
    alpha: Optional[float] = None,
    aliases: Tuple[str, ...] = (),
    alpha_min: float = 0.0,
) -> Surrogate:
    """Register a surrogate of your own for the reference backend.

    ``g(x, a)`` is the primitive, ``dg(x, a)`` its derivative (the surrogate gradient) and
    ``dg_dalpha(x, a)`` its derivative in the width ``a`` (needed only for a learnable α); a given α
    must exceed ``alpha_min``. The fused
    kernels cannot run Python functions, so ``backend='auto'`` uses the reference for it and asking
    for a fused backend by name is an error.
    """
    return _add(Surrogate(name.lower(), -1, alpha, g, dg, dg_dalpha, tuple(a.lower() for a in aliases),
                          float(alpha_min)))


def unregister_surrogate(name: str) -> None:
    """Remove a user-registered surrogate (built-in ones cannot be removed)."""
    s = get(name)
    if s.id >= 0:
        raise ValueError(f"built-in surrogate {s.name!r} cannot be unregistered")
    with _LOCK:
        for n in (s.name,) + s.aliases:
            if _REGISTRY.get(n) is s:
                del _REGISTRY[n]
