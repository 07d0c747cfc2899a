"""Surrogate gradient registry (docs/spec.md §3).

Every surrogate has a primitive ``g(x, a)`` (the analog forward of the noisy spike, docs/spec.md §4),
its derivative ``dg(x, a)`` (the surrogate gradient g′), and ``dg_dalpha(x, a)`` (∂g/∂α, for a learnable
width). ``x = H − θ``. The integer ``id`` is what the fused kernels switch on; it is part of the ABI
shared with ``csrc/include/snn_fast/surrogate.h`` and ``snn_fast/ops/common/triton_surrogate.py`` and must never
be renumbered.

Surrogates registered by users (:func:`register_surrogate`) get ids from ``CUSTOM_ID_BASE`` up, in
registration order, for this process only (they are pickled by name, never by id), and run on:
  - 'cpu': the C++ forward (which does not involve the surrogate unless a noise mask is given) and the
    C++ backward walk with the user's torch ``dg`` (and ``dg_dalpha``) translated to C++ and compiled
    into it on this machine (``snn_fast/ops/lif/native_surrogate.py``); where they do not translate,
    their values over H − θ computed before the walk, compiled by torch.compile into one fused loop
    (eager torch calls with ``compile=False``), and read by the walk (``snn_fast/ops/lif/custom_cpu.py``);
  - 'triton': when ``triton=(g, dg[, dg_dalpha])`` gives ``@triton.jit`` versions, passed to the
    kernels as constexpr functions, so each such surrogate compiles into its own kernel variant;
  - 'reference': always. Not 'cuda' (its kernels are compiled ahead of time).
A ``Surrogate`` built by hand (not registered) has ``id = -1`` and runs on the reference only.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
import sys
from typing import Callable, Dict, Optional, Tuple

import torch

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Ids of user-registered surrogates start here (the built-in ids 0…10 are the kernel ABI; the gap
# keeps room for more built-ins). Never reused within a process, so a kernel variant compiled for
# one registration is never run for another.
CUSTOM_ID_BASE = 1000


@dataclass(frozen=True)
class Surrogate:
    name: str
    id: int  # kernel id: built-in 0…10 (ABI); user-registered ≥ CUSTOM_ID_BASE; -1 = reference only
    alpha: Optional[float]  # default α; None = the surrogate has no width parameter
    g: Fn
    dg: Fn
    dg_dalpha: Optional[Fn]
    aliases: Tuple[str, ...] = field(default=())
    # α must exceed this (exclusive bound): 0 for every width; q_pseudo_spike needs α > 1, since its
    # u = 1 + 2|x|/(α − 1) has a pole at α = 1 and flips sign below it.
    alpha_min: float = 0.0
    # A user's @triton.jit (g, g′, ∂g/∂α) for the Triton kernels; ∂g/∂α may be None when it follows
    # from g′ (``scaling``: g(x; α) = G(αx)) or is 0 (no width). None: no Triton version.
    triton: Optional[tuple] = None
    scaling: bool = False
    # Compile the torch g′ (and ∂g/∂α) with torch.compile for the 'cpu' backward (custom_cpu.py);
    # False: evaluate them eagerly. SNN_FAST_COMPILE_SURROGATES=0 turns it off for every surrogate.
    compile: bool = True

    @property
    def builtin(self) -> bool:
        """A built-in surrogate, which every fused backend runs."""
        return 0 <= self.id < CUSTOM_ID_BASE

    @property
    def custom(self) -> bool:
        """Registered by a user: runs on the backends that accept user surrogates (see the module docstring)."""
        return self.id >= CUSTOM_ID_BASE

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


# What ∂g/∂α of a surrogate is, for the kernels that compute it from g′ where they can (the CPU paths
# of a user's surrogate): 0 (no width), x·g′/α (scaling=True, derived), or its own dg_dalpha.
DALPHA_ZERO, DALPHA_SCALED, DALPHA_OWN = "zero", "scaled", "dalpha"


def dalpha_kind(sg: "Surrogate") -> str:
    da = sg.dg_dalpha
    if da is None or da is _zero_dalpha:
        return DALPHA_ZERO
    if isinstance(da, _ScalingDAlpha) and da.dg is sg.dg:
        return DALPHA_SCALED
    return DALPHA_OWN


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


class SurrogateCompileWarning(UserWarning):
    """A user's surrogate could not be compiled for the 'cpu' backward; it runs eagerly (slower)."""


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
assert NUM_KERNEL_SURROGATES <= CUSTOM_ID_BASE
# The built-ins' names: a test that is a constant under torch.compile (a registered Surrogate reached
# through a closure is traced with its id as a symbolic int there, so sg.custom would be symbolic).
BUILTIN_NAMES = frozenset(_REGISTRY)


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


_CUSTOM_IDS = iter(range(CUSTOM_ID_BASE, 1 << 30))


def register_surrogate(
    name: str,
    g: Fn,
    dg: Fn,
    dg_dalpha: Optional[Fn] = None,
    alpha: Optional[float] = None,
    aliases: Tuple[str, ...] = (),
    alpha_min: float = 0.0,
    *,
    scaling: bool = False,
    triton: Optional[tuple] = None,
    compile: bool = True,
) -> Surrogate:
    """Register a surrogate of your own; it runs in the fused 'cpu' and 'triton' backends too.

    Args:
        g, dg: torch functions ``(x, a) -> tensor like x``: the primitive g (emitted where a noise
            mask is False) and its derivative g′ (the surrogate gradient), elementwise in ``x = H − θ``
            with ``a`` (α) a 0-d tensor of x's dtype.
        dg_dalpha: ∂g/∂α, needed to learn α. Not needed with ``scaling=True`` or without a width.
        alpha: the default width α; None = g does not depend on α (∂g/∂α = 0).
        alpha_min: α must exceed this.
        scaling: g(x; α) = G(α·x), so ∂g/∂α = x·g′(x)/α (derived when ``dg_dalpha`` is not given).
        triton: ``(g, dg)`` or ``(g, dg, dg_dalpha)`` as ``@triton.jit`` functions ``(x, a)`` of a
            block of x and the scalar α, in the kernel's compute dtype (float32; float64 for float64
            data), returning a block like x; defined at module level with ``triton.language``
            imported there (Triton resolves a jit function's globals from its module). Without
            it, 'triton' cannot run this surrogate. Its ∂g/∂α may be left out when ``scaling`` or
            ``alpha is None``.
        compile: on the 'cpu' backend, translate g′ (and ∂g/∂α) to C++ and compile them into the C++
            backward walk, computed inline as a built-in's (``snn_fast/ops/lif/native_surrogate.py``:
            5–10 s per surrogate and dtype the first time on a machine, cached on disk after; checked
            against the torch functions before first use; ``SNN_FAST_NATIVE_SURROGATES=0`` skips it).
            Where a function does not translate (an op outside its list, a reduction, a branch on a
            value) or cannot be compiled, compile g′ (and ∂g/∂α) with ``torch.compile`` (Inductor,
            dynamic shapes) into one fused loop over H − θ that writes the buffers the C++ backward
            reads (several times faster than the eager torch ops: the sigmoid's g′ at [16, 262144]
            float32 takes ~1.2 ms against 3–4 ms), at the cost of one compilation per
            surrogate, dtype and kind (g′ alone, or g′ with ∂g/∂α for a learnable α) in a process,
            seconds each, the first time a backward needs it (Inductor's disk cache serves later
            processes). Only for layers whose H − θ ([T, N] in float32, or float64) takes at least
            1 MiB: below that the eager functions are about as fast and nothing is compiled. If
            compilation fails (no C++ compiler; a function torch.compile cannot trace in one
            graph) it warns once (``SurrogateCompileWarning``) and evaluates the functions
            eagerly, as with ``compile=False``. Under an active TorchDispatchMode the functions
            run eagerly too. The environment variable ``SNN_FAST_COMPILE_SURROGATES=0``
            turns compilation off for every surrogate (read at each backward).

    Checked here, before anything is registered: the name is free; g, g′ and ∂g/∂α are finite on a
    grid of x and two widths; g′ matches central differences of g, and ∂g/∂α of g in α (the error
    names the worst point). The Triton functions need a device (or the interpreter) to run: the Triton
    backend checks them against the torch ones on the same grid the first time it runs them on a
    device type, and refuses a disagreement (``snn_fast/ops/common/triton_surrogate.py``, ``verify_user``).

    ``backend='auto'`` picks the fastest backend that runs the surrogate; naming one that cannot
    ('cuda'; 'triton' without ``triton=``) is an error that says so.
    """
    name = name.lower()
    aliases = tuple(a.lower() for a in aliases)
    for n in (name,) + aliases:
        if n in _REGISTRY:
            raise ValueError(f"surrogate name {n!r} is already registered")
    if alpha is not None:
        alpha = float(alpha)
        if not alpha > alpha_min:
            raise ValueError(f"surrogate {name!r}: default alpha {alpha} must exceed alpha_min {alpha_min}")
    if dg_dalpha is None:
        if alpha is None:
            dg_dalpha = _zero_dalpha
        elif scaling:
            dg_dalpha = _scaling_dalpha(dg)
    if triton is not None:
        triton = _check_triton_fns(name, triton, alpha is None or scaling)
    s = Surrogate(name, -1, alpha, g, dg, dg_dalpha, aliases, float(alpha_min), triton, bool(scaling),
                  bool(compile))
    check_derivatives(s)
    return _add(dataclasses.replace(s, id=next(_CUSTOM_IDS)))


def _check_triton_fns(name: str, fns, dalpha_optional: bool) -> tuple:
    fns = tuple(fns)
    if len(fns) not in (2, 3):
        raise ValueError(f"surrogate {name!r}: triton= takes (g, dg) or (g, dg, dg_dalpha), got {len(fns)} items")
    if len(fns) == 2:
        if not dalpha_optional:
            raise ValueError(f"surrogate {name!r}: give triton=(g, dg, dg_dalpha) (∂g/∂α for a learnable alpha), "
                             "or scaling=True when g(x; α) = G(α·x)")
        fns = fns + (None,)
    tr = sys.modules.get("triton")  # the functions were made by triton.jit, so triton is imported
    kinds = ()
    if tr is not None:
        from triton.runtime import interpreter, jit  # noqa: PLC0415 - only when triton is in use

        kinds = (jit.JITFunction, interpreter.InterpretedFunction)
    for what, f in zip(("g", "dg", "dg_dalpha"), fns):
        if f is not None and not (kinds and isinstance(f, kinds)):
            raise TypeError(f"surrogate {name!r}: triton {what} must be a @triton.jit function, "
                            f"got {type(f).__name__}")
    return fns


# The registration check (docs/spec.md §3, on a grid): x from −8 to 8 in steps of 0.004, shifted by
# an irrational 0.001·√2 so that no point sits on a kink at a round number (0, ±0.5/α, ±1/α, …),
# where a central difference straddles the jump in g′ and means nothing. Step H = 1e-6 in float64:
# truncation ~H²·g‴/6 (1e-10 for sigmoid at α = 20), rounding ~1e-16/H = 1e-10; the tolerance,
# 1e-6·(1 + max|g′|), is 10⁴ times that and still catches any wrong factor, sign or term.
_CHECK_X = torch.linspace(-8.0, 8.0, 4001, dtype=torch.float64) + 1e-3 * math.sqrt(2.0)
_CHECK_H = 1e-6
_CHECK_RTOL = 1e-6


def check_derivatives(s: Surrogate) -> None:
    """Raise ValueError unless g, g′ and ∂g/∂α are finite and g′, ∂g/∂α are the derivatives of g
    (central differences on a grid of x, at the default α and twice it); the message names the
    surrogate and the worst point. Runs on every registration; the built-ins pass it too."""
    x = _CHECK_X
    alphas = [s.alpha, 2.0 * s.alpha] if s.alpha is not None else [1.0]
    h = _CHECK_H
    for a in alphas:
        ta = torch.tensor(a, dtype=torch.float64)
        fns = [("g", s.g), ("dg", s.dg)] + ([("dg_dalpha", s.dg_dalpha)] if s.dg_dalpha is not None else [])
        vals = {}
        for what, f in fns:
            v = f(x, ta)
            if not isinstance(v, torch.Tensor) or v.shape != x.shape:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"surrogate {s.name!r}: {what}(x, a) must return a tensor shaped like x "
                                 f"{tuple(x.shape)}, got {got}")
            v = v.to(torch.float64)
            bad = ~torch.isfinite(v)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"surrogate {s.name!r}: {what}(x, a) is not finite ({v[i].item()}) at "
                                 f"x = {x[i].item():.6g}, a = {a:g}")
            vals[what] = v
        scale = 1.0 + vals["dg"].abs().max().item()
        checks = [("dg", "g′ is not the derivative of g", vals["dg"],
                   (s.g(x + h, ta) - s.g(x - h, ta)) / (2 * h))]
        if "dg_dalpha" in vals:
            fd = (s.g(x, ta + h) - s.g(x, ta - h)) / (2 * h)
            checks.append(("dg_dalpha", "dg_dalpha is not ∂g/∂α", vals["dg_dalpha"], fd))
        for what, why, got, fd in checks:
            err = (got - fd.to(torch.float64)).abs()
            i = int(err.argmax())
            if not err[i] <= _CHECK_RTOL * scale:  # also catches NaN
                raise ValueError(f"surrogate {s.name!r}: {why}: worst at x = {x[i].item():.6g}, a = {a:g}: "
                                 f"{what} gives {got[i].item():.9g}, central differences of g give "
                                 f"{fd[i].item():.9g} (tolerance {_CHECK_RTOL * scale:.2g})")


def unregister_surrogate(name: str) -> None:
    """Remove a user-registered surrogate (built-in ones cannot be removed)."""
    s = get(name)
    if s.builtin:
        raise ValueError(f"built-in surrogate {s.name!r} cannot be unregistered")
    with _LOCK:
        for n in (s.name,) + s.aliases:
            if _REGISTRY.get(n) is s:
                del _REGISTRY[n]
        if _BY_ID.get(s.id) is s:
            del _BY_ID[s.id]
