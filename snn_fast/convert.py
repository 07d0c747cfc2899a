"""``snn_fast.convert``: swap the spiking neurons of an existing model for snn_fast's fused ones.

Each supported neuron is replaced by the ``snn_fast.nn`` module that computes the same function
(forward and surrogate backward) with its options and parameters: τ (PLIF's learned ``w`` is the same
``Parameter`` object, so an optimizer built before an in-place conversion keeps training it),
threshold, hard/soft reset, ``decay_input``, ``detach_reset``, ``store_v_seq``, the step mode, the
surrogate and its α, and a membrane the neuron holds mid-sequence. Everything else in the model is
left as it is.

Supported (exact classes: a subclass may change the dynamics, so it is refused, not guessed):

- SpikingJelly 2.0, ``spikingjelly.activation_based.neuron``: ``LIFNode``, ``IFNode``,
  ``ParametricLIFNode``, ``SimpleLIFNode`` and ``SimpleIFNode`` (v_reset 0 or None: they start from
  v = 0 whatever v_reset is); ``step_mode`` 'm' and 's'. Surrogates
  (``spiking=True``) by class and α: ``Sigmoid``, ``ATan``, ``PiecewiseQuadratic`` (our 'triangle'),
  ``PiecewiseExp``, ``SoftSign``, ``Erf``, ``QPseudoSpike``, ``Rect`` ('rectangle'),
  ``PiecewiseLeakyReLU`` with c = 0 ('rectangle', α = 1/(2w)), ``SuperSpike`` with α = 1 (SpikingJelly's
  α scales the height, ours the width: they agree only at 1), ``DeterministicPass``
  ('straight_through'), ``LeakyKReLU`` with leak = 0, k = 1 ('spike_gate').

- snnTorch 1.0 ``Leaky`` → :class:`SnnTorchLeaky` (same ``forward(input_, mem) -> (spk, mem)``): every
  ``reset_mechanism`` and both ``reset_delay`` (False runs on the reference backend: its reset by
  S − R has no kernel), learnable β and θ (the same Parameters), ``init_hidden`` both ways,
  ``graded_spikes_factor`` 1; ``spike_grad`` None/atan, fast_sigmoid, sigmoid, triangular (a
  registered surrogate, so it runs on the reference backend) and straight_through_estimator.
- Norse 1.1 ``LIFBoxCell`` → :class:`NorseLIFBoxCell` (same ``forward(x, state) -> (z, state)``, also
  inside ``SequentialState``), method 'super', reset_value with v_leak = v_reset or reset_subtract
  with v_leak = 0. (Norse 1.1 has no multi-step ``LIFBox``; ``multistep()`` is the fused [T, ...] call.)

- Sinabs 3.1 ``LIF``, ``IAF``, ``LIFSqueeze``, ``IAFSqueeze`` → :class:`SinabsLIF` (a Sinabs
  ``StatefulLayer`` over ``[B, T, ...]``, or ``[B·T, ...]``, its membrane in ``v_mem`` across calls; the
  sequence in one fused op): ``spike_fn=SingleSpike`` (fires on v ≥ θ), ``MembraneSubtract`` (θ) or
  ``MembraneReset(0)``, ``tau_mem`` or ``alpha_mem`` (``train_alphas``) learned as Sinabs has them (the
  same Parameters), ``norm_input`` both ways, a fixed ``spike_threshold``; surrogates SingleExponential,
  Heaviside, Gaussian, MultiGaussian, PeriodicExponential (registered per θ: Sinabs's are functions of v
  and θ). Refused: MultiSpike/MaxSpike, tau_syn, min_v_mem, record_states, other resets, a learned θ.

snnTorch and Norse fire on mem > θ (``fire_at_threshold=False``); snnTorch keeps the pre-reset membrane
(``reset_timing='delayed'``).

No peer is imported here unless the model holds one of its modules already (its package is then loaded).
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.fx
from torch import nn

from . import backends
from .ops.lif import args as _lif_args
from .ops.lif import contract as _lif_contract
from .ops.lif.function import lif_apply as _lif_apply

_SJ = "spikingjelly.activation_based"


class _Unsupported(Exception):
    """A neuron of a known peer that has no exact snn_fast counterpart (the message says why)."""


# ---------------------------------------------------------------------------------------------------
# SpikingJelly 2.0


def _sj_surrogate(sf) -> Tuple[str, Optional[float]]:
    """(snn_fast surrogate name, α) of a SpikingJelly surrogate module, or _Unsupported."""
    from spikingjelly.activation_based import surrogate as S

    name = type(sf).__name__
    if not isinstance(sf, S.SurrogateFunctionBase):
        raise _Unsupported(f"surrogate_function {type(sf).__module__}.{type(sf).__qualname__} is not a "
                           "SpikingJelly surrogate module")
    if not getattr(sf, "spiking", True):
        raise _Unsupported(f"surrogate {name} has spiking=False (an analog forward, not a spike)")
    by_alpha = {S.Sigmoid: "sigmoid", S.ATan: "atan", S.PiecewiseQuadratic: "triangle",
                S.PiecewiseExp: "piecewise_exp", S.SoftSign: "soft_sign", S.Erf: "erf",
                S.QPseudoSpike: "q_pseudo_spike", S.Rect: "rectangle"}
    t = type(sf)
    if t in by_alpha:
        return by_alpha[t], float(sf.alpha)
    if t is S.PiecewiseLeakyReLU:  # g' = 1/(2w) on |x| < w, c elsewhere: our rectangle when c = 0
        if float(sf.c) != 0.0:
            raise _Unsupported(f"surrogate PiecewiseLeakyReLU with c={float(sf.c):g} (a gradient c outside "
                               "|x| < w); snn_fast's 'rectangle' is the case c = 0")
        return "rectangle", 1.0 / (2.0 * float(sf.w))
    if t is S.SuperSpike:  # SpikingJelly: α/(1+|x|)²; ours: 1/(1+α|x|)²
        if float(sf.alpha) != 1.0:
            raise _Unsupported(f"surrogate SuperSpike with alpha={float(sf.alpha):g}: SpikingJelly's α scales "
                               "the height, α/(1+|x|)², snn_fast's 'super_spike' the width, 1/(1+α|x|)²; "
                               "they agree only at alpha=1")
        return "super_spike", 1.0
    if t is S.DeterministicPass:
        return "straight_through", None
    if t is S.LeakyKReLU:  # g' = k for x ≥ 0, leak below
        if float(sf.leak) != 0.0 or float(sf.k) != 1.0:
            raise _Unsupported(f"surrogate LeakyKReLU with leak={float(sf.leak):g}, k={float(sf.k):g}; "
                               "snn_fast's 'spike_gate' is leak=0, k=1")
        return "spike_gate", None
    raise _Unsupported(f"surrogate {name} has no snn_fast counterpart (supported: Sigmoid, ATan, "
                       "PiecewiseQuadratic, PiecewiseExp, SoftSign, Erf, QPseudoSpike, Rect, "
                       "PiecewiseLeakyReLU(c=0), SuperSpike(alpha=1), DeterministicPass, LeakyKReLU(0, 1))")


def _sj_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    """A factory of the snn_fast module for SpikingJelly neuron ``m``; None when ``m`` is not a
    SpikingJelly neuron; _Unsupported when it is one we cannot express exactly."""
    if not type(m).__module__.startswith(_SJ + ".neuron"):
        return None
    from spikingjelly.activation_based import neuron as N

    from .nn import IF, LIF, PLIF

    t = type(m)
    kinds = {N.LIFNode: LIF, N.IFNode: IF, N.ParametricLIFNode: PLIF, N.SimpleLIFNode: LIF, N.SimpleIFNode: IF}
    if t not in kinds:
        raise _Unsupported(f"{t.__module__}.{t.__qualname__} has dynamics snn_fast's LIF family does not express "
                           "exactly (supported: LIFNode, IFNode, ParametricLIFNode, SimpleLIFNode, SimpleIFNode; "
                           "their subclasses are not assumed to compute the same)")
    if getattr(m, "_neuron_precision", None) is not None:
        raise _Unsupported(f"{t.__qualname__} runs with an explicit neuron precision {m._neuron_precision}; "
                           "snn_fast computes in the input's dtype")
    if t in (N.SimpleLIFNode, N.SimpleIFNode) and m.v_reset not in (None, 0.0):
        raise _Unsupported(f"{t.__qualname__} with v_reset={m.v_reset:g} starts (and restarts after reset()) "
                           "from v = 0, snn_fast's hard-reset neurons from v_reset; equal only for v_reset 0 or None")
    sg, alpha = _sj_surrogate(m.surrogate_function)
    kw = dict(v_threshold=float(m.v_threshold), v_reset=None if m.v_reset is None else float(m.v_reset),
              detach_reset=bool(m.detach_reset), surrogate=sg, alpha=alpha,
              store_v_seq=bool(getattr(m, "store_v_seq", False)), backend=backend, step_mode=m.step_mode)
    cls = kinds[t]

    def make() -> nn.Module:
        if cls is LIF:
            new = LIF(float(m.tau), decay_input=bool(m.decay_input), **kw)
        elif cls is PLIF:
            new = PLIF(2.0, decay_input=bool(m.decay_input), **kw)
            new.w = m.w  # the same Parameter: its value, dtype, device, and any optimizer holding it
        else:
            new = IF(**kw)
        v = m.__dict__.get("_memories", {}).get("v", m.__dict__.get("v"))
        if isinstance(v, torch.Tensor):  # mid-sequence: carry the membrane (a float is the reset state)
            new.v = v
        v_seq = getattr(m, "v_seq", None)
        if kw["store_v_seq"] and isinstance(v_seq, torch.Tensor):
            new.v_seq = v_seq
        new.train(m.training)
        return new

    return make


# ---------------------------------------------------------------------------------------------------
# snnTorch 1.0: Leaky


def _snntorch_triangular():
    """snnTorch's Triangular as a registered surrogate: its backward is g′(x) = t for x < 0 and −t for
    x ≥ 0 (snntorch.surrogate.Triangular, checked against it in tests/test_convert_peers.py), so
    g(x) = ½ − t·|x| with t = α."""
    from . import surrogate as _sg

    name = "snntorch_triangular"
    try:
        return _sg.get(name)
    except ValueError:
        pass

    def g(x, a):
        return 0.5 - a * x.abs()

    def dg(x, a):
        return torch.where(x < 0, a, -a).to(x.dtype) * torch.ones_like(x)

    def dg_dalpha(x, a):
        return -x.abs()

    try:
        return _sg.register_surrogate(name, g, dg, dg_dalpha, alpha=1.0)
    except ValueError:  # registered meanwhile by another thread
        return _sg.get(name)


def _snntorch_surrogate(fn) -> Tuple[object, Optional[float]]:
    """(snn_fast surrogate, α) of a snnTorch ``spike_grad``, or _Unsupported."""
    import inspect

    if fn is None:
        return "atan", 2.0
    qn = getattr(fn, "__qualname__", "")
    if getattr(fn, "__module__", "") != "snntorch.surrogate" or not qn.endswith(".<locals>.inner"):
        raise _Unsupported(f"spike_grad {fn!r} is not one of snntorch.surrogate's atan(), fast_sigmoid(), "
                           "sigmoid(), triangular(), straight_through_estimator() (or None)")
    factory = qn.split(".")[0]
    cells = inspect.getclosurevars(fn).nonlocals
    if factory == "atan":  # g′ = α/2 / (1 + (π/2·α·x)²): snn_fast's 'atan'
        return "atan", float(cells["alpha"])
    if factory == "fast_sigmoid":  # g′ = 1/(k·|x| + 1)²: 'super_spike' with α = k
        return "super_spike", float(cells["slope"])
    if factory == "sigmoid":  # g′ = k·e^{−kx}/(e^{−kx} + 1)² = k·σ(kx)(1 − σ(kx)): 'sigmoid' with α = k
        return "sigmoid", float(cells["slope"])
    if factory == "straight_through_estimator":  # g′ = 1
        return "straight_through", None
    if factory == "triangular":
        return _snntorch_triangular(), float(cells["threshold"])
    raise _Unsupported(f"spike_grad snntorch.surrogate.{factory}() has no snn_fast counterpart (supported: atan, "
                       "fast_sigmoid, sigmoid, triangular, straight_through_estimator, None)")


# snnTorch's (reset_mechanism, reset_delay) → snn_fast's (v_reset, reset_timing, detach_reset): checked
# against snnTorch 1.0 itself (tests/test_convert_peers.py). reset_delay=False resets by S − R with a
# non-detached S (its "avoid double reset"), which only the reference backend runs.
_SNNTORCH_RESETS = {
    ("subtract", True): (None, "delayed", True),
    ("zero", True): (0.0, "delayed", True),
    ("subtract", False): (None, "after_fire_pending", False),
    ("zero", False): (0.0, "after_fire_pending", False),
    ("none", True): (None, "none", True),
    ("none", False): (None, "none", True),
}


class SnnTorchLeaky(nn.Module):
    """snnTorch 1.0's ``Leaky`` on snn_fast's fused LIF op, made by :func:`convert`.

    The same calling convention: ``forward(input_, mem=None) -> (spk, mem)`` one step at a time from
    the user's own loop (``init_hidden=True``: ``forward(input_) -> spk``, or ``(spk, mem)`` with
    ``output=True``, the membrane kept in ``.mem``); each call is one fused op over T = 1. The same
    parameters: ``beta`` and ``threshold`` are the snnTorch module's own tensors (``Parameter`` when
    learned). ``multistep(x, mem=None)`` runs a whole ``[T, ...]`` sequence in one kernel and returns
    ``(spk [T, ...], mem)``, what T calls of ``forward`` return (spikes stacked, last membrane).

    The dynamics (snn_fast/ops/lif/args.py RESET_TIMINGS): mem[t] = β·mem[t−1] + x[t] − θ·R[t] with
    R[t] = Θ(mem[t−1] − θ) detached, spk = Θ(mem[t] − θ) firing on mem > θ (subtract, reset_delay=True;
    'zero' resets mem[t−1] to 0 before the decay instead). β is clamped to [0, 1] as snnTorch does.
    """

    def __init__(self, src: nn.Module, backend: str = "auto", save: str = _lif_contract.DEFAULT_SAVE):
        nn.Module.__init__(self)  # not snntorch.Leaky's (see _snntorch_leaky_class)
        mech, delay = src.reset_mechanism, bool(src.reset_delay)
        v_reset, timing, detach = _SNNTORCH_RESETS[(mech, delay)]
        sg, alpha = _snntorch_surrogate(src.spike_grad)
        # β and θ are placeholders here: forward passes the module's tensors
        _, _, alpha, self.flags, self.sg = _lif_args.resolve(
            None, 0.5, False, 1.0, v_reset, detach, sg, alpha, 0.0, False, timing)
        self.alpha = float(alpha)
        for name in ("beta", "threshold"):
            t = getattr(src, name)
            if isinstance(t, nn.Parameter):
                setattr(self, name, t)  # the same Parameter object
            else:
                self.register_buffer(name, t)
        self.register_buffer("mem", src.mem, persistent=False)
        self.init_hidden, self.output = bool(src.init_hidden), bool(src.output)
        self.reset_mechanism, self.reset_delay = mech, delay
        self.backend, self.save = backend, save
        self.train(src.training)

    def _run(self, x: torch.Tensor, mem: torch.Tensor):
        k = 1 - self.beta.clamp(0, 1)  # β·V = V − V·(1 − β): snn_fast's leak k = 1 − β
        theta = self.threshold
        if not (k.requires_grad or theta.requires_grad) and k.device.type == "cpu":
            # the same values as Python floats: the op's parameters then come from its cache instead
            # of a stack of small tensors per step (no device sync: CPU tensors only)
            k, theta = float(k), float(theta)
        return _lif_apply(x, mem, k, theta, self.alpha, self.flags, self.sg, None, False, self.backend, self.save)

    def forward(self, input_: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if mem is not None:
            self.mem = mem
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        if self.mem.shape != input_.shape:
            self.mem = torch.zeros_like(input_)
        s, v = self._run(input_.unsqueeze(0), self.mem)
        spk = s[0]
        self.mem = v
        if self.output or not self.init_hidden:
            return spk, v
        return spk

    def multistep(self, x: torch.Tensor, mem: Optional[torch.Tensor] = None):
        """``[T, ...]`` in one fused op: (spikes ``[T, ...]``, the membrane after the last step)."""
        if mem is not None:
            self.mem = mem
        if self.mem.shape != x.shape[1:]:
            self.mem = torch.zeros_like(x[0])
        s, v = self._run(x, self.mem)
        self.mem = v
        return s, v

    def reset_mem(self) -> torch.Tensor:
        self.mem = torch.zeros_like(self.mem)
        return self.mem

    init_leaky = reset_mem

    def detach_hidden(self) -> None:
        self.mem = self.mem.detach()

    def extra_repr(self) -> str:
        return (f"reset_mechanism={self.reset_mechanism!r}, reset_delay={self.reset_delay}, surrogate={self.sg.name}, "
                f"alpha={self.alpha:g}, init_hidden={self.init_hidden}, backend={self.backend}")


_LEAKY_CLASS: Optional[type] = None


def _snntorch_leaky_class() -> type:
    """SnnTorchLeaky as a subclass of snntorch.Leaky too (its methods first), registered in
    snnTorch's instance list: ``snntorch.utils.reset(net)`` and ``Leaky.reset_hidden()`` /
    ``detach_hidden()``, which a tutorial's loop calls, then reset and detach the converted neurons'
    ``mem`` as they did the originals'."""
    global _LEAKY_CLASS
    if _LEAKY_CLASS is None:
        import snntorch

        class _Compat(SnnTorchLeaky, snntorch.Leaky):
            def __init__(self, src, backend="auto", save=_lif_contract.DEFAULT_SAVE):
                SnnTorchLeaky.__init__(self, src, backend, save)
                snntorch.SpikingNeuron.instances.append(self)

            forward = SnnTorchLeaky.forward
            reset_mem = SnnTorchLeaky.reset_mem
            init_leaky = SnnTorchLeaky.reset_mem
            extra_repr = SnnTorchLeaky.extra_repr

        _Compat.__name__ = _Compat.__qualname__ = "SnnTorchLeaky"
        _LEAKY_CLASS = _Compat
    return _LEAKY_CLASS


def _snntorch_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    if not type(m).__module__.startswith("snntorch."):
        return None
    from snntorch._neurons.neurons import SpikingNeuron

    if not isinstance(m, SpikingNeuron):
        return None
    import snntorch

    t = type(m)
    if t is not snntorch.Leaky:
        raise _Unsupported(f"snnTorch {t.__qualname__} is not supported (only Leaky: snn_fast's op has no synaptic "
                           "current, recurrence, adaptation or second-order state)")
    for name in ("beta", "threshold"):
        v = getattr(m, name)
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise _Unsupported(f"Leaky with a per-neuron {name} (shape {tuple(v.shape)}): snn_fast's op takes one "
                               f"{name} per layer")
    if getattr(m, "surrogate_disable", False):
        raise _Unsupported("Leaky with surrogate_disable=True (no gradient through the spike) has no snn_fast "
                           "surrogate")
    if m.inhibition:
        raise _Unsupported("Leaky with inhibition=True (only the strongest neuron may fire) couples the neurons")
    if m.state_quant:
        raise _Unsupported("Leaky with state_quant (a quantised membrane) is not expressed by snn_fast's op")
    gsf = m.graded_spikes_factor
    if isinstance(gsf, nn.Parameter) or float(gsf) != 1.0:
        raise _Unsupported(f"Leaky with graded_spikes_factor={float(gsf):g}"
                           f"{' (learnable)' if isinstance(gsf, nn.Parameter) else ''}: snn_fast emits 0/1 spikes")
    key = (m.reset_mechanism, bool(m.reset_delay))
    if key not in _SNNTORCH_RESETS:
        raise _Unsupported(f"Leaky with reset_mechanism={m.reset_mechanism!r}")
    sg, _ = _snntorch_surrogate(m.spike_grad)  # refuse here, before anything is changed
    on_reference = not m.reset_delay and m.reset_mechanism != "none" or not isinstance(sg, str)
    if on_reference and backend not in ("auto", "reference"):
        why = "reset_delay=False" if isinstance(sg, str) else "spike_grad=triangular()"
        raise _Unsupported(f"Leaky with {why} runs on the reference backend only, not backend={backend!r}; "
                           "convert with backend='auto'")

    def make() -> nn.Module:
        return _snntorch_leaky_class()(m, backend)

    return make


# ---------------------------------------------------------------------------------------------------
# Norse 1.1: LIFBoxCell


class NorseLIFBoxCell(nn.Module):
    """Norse 1.1's ``LIFBoxCell`` on snn_fast's fused LIF op, made by :func:`convert`.

    The same calling convention: ``forward(x, state=None) -> (z, LIFBoxFeedForwardState(v))``, one step per
    call (each one fused op over T = 1), inside a ``SequentialState`` or the user's loop; ``p`` and ``dt``
    are the Norse module's. ``multistep(x, state=None)`` runs ``[T, ...]`` in one kernel and returns
    ``(z [T, ...], state)``, what T calls return (spikes stacked, last state).

    The dynamics: v' = v + dt·τ_mem⁻¹·((x + v_leak) − v), z = Θ(v' − v_th) firing on v' > v_th, then
    v = (1 − z)·v' + z·v_reset (reset_value) or v' − z·v_th (reset_subtract), z not detached; the
    surrogate is Norse's SuperSpike, whose backward is 1/(|x| + 1)² whatever p.alpha is.
    """

    def __init__(self, src: nn.Module, backend: str = "auto", save: str = _lif_contract.DEFAULT_SAVE):
        super().__init__()
        from norse.torch.functional.lif_box import LIFBoxFeedForwardState

        self._state_type = LIFBoxFeedForwardState
        self.p, self.dt = src.p, src.dt
        hard = _norse_reset_is_value(src.p)
        v_reset = float(torch.as_tensor(src.p.v_reset)) if hard else None
        _, _, _, self.flags, self.sg = _lif_args.resolve(
            None, 0.5, True, 1.0, v_reset, False, "super_spike", 1.0, 0.0, False, "after_fire")
        self.v_leak = float(torch.as_tensor(src.p.v_leak))
        self.backend, self.save = backend, save
        self.train(src.training)

    def _run(self, x: torch.Tensor, state):
        v0 = state.v if state is not None else self.v_leak
        k = self.dt * self.p.tau_mem_inv  # Norse's dt·τ_mem⁻¹, in the parameter's own dtype
        theta = self.p.v_th
        if isinstance(k, torch.Tensor) and not k.requires_grad and k.device.type == "cpu":
            k = float(k)  # as SnnTorchLeaky._run
        if isinstance(theta, torch.Tensor) and not theta.requires_grad and theta.device.type == "cpu":
            theta = float(theta)
        s, v = _lif_apply(x, v0, k, theta, 1.0, self.flags, self.sg, None, False, self.backend, self.save)
        return s, self._state_type(v=v)

    def forward(self, input_tensor: torch.Tensor, state=None):
        s, st = self._run(input_tensor.unsqueeze(0), state)
        return s[0], st

    def multistep(self, x: torch.Tensor, state=None):
        """``[T, ...]`` in one fused op: (spikes ``[T, ...]``, the state after the last step)."""
        return self._run(x, state)

    def extra_repr(self) -> str:
        return f"p={self.p}, dt={self.dt}, backend={self.backend}"


def _norse_reset_is_value(p) -> bool:
    from norse.torch.functional.reset import reset_subtract, reset_value

    if p.reset_method is reset_value:
        return True
    if p.reset_method is reset_subtract:
        return False
    raise _Unsupported(f"LIFBoxCell with reset_method {getattr(p.reset_method, '__name__', p.reset_method)} "
                       "(supported: reset_value, reset_subtract)")


def _norse_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    if not type(m).__module__.startswith("norse."):
        return None
    from norse.torch.module import snn as norse_snn

    if not isinstance(m, (norse_snn.SNNCell, norse_snn.SNNRecurrentCell, norse_snn.SNN, norse_snn.SNNRecurrent)):
        return None
    t = type(m)
    if t.__name__ != "LIFBoxCell":
        raise _Unsupported(f"Norse {t.__qualname__} is not supported (only LIFBoxCell): snn_fast's LIF family has no "
                           "synaptic-current, recurrent or adaptation state")
    p = m.p
    for name in ("tau_mem_inv", "v_leak", "v_th", "v_reset"):
        v = torch.as_tensor(getattr(p, name))
        if v.numel() != 1:
            raise _Unsupported(f"LIFBoxCell with a per-neuron p.{name} (shape {tuple(v.shape)}): snn_fast's op takes "
                               "one value per layer")
    if p.method != "super":
        raise _Unsupported(f"LIFBoxCell with method={p.method!r}: only 'super' (SuperSpike) is mapped exactly "
                           "(snn_fast 'super_spike', alpha=1)")
    for name in ("v_leak", "v_reset"):
        if isinstance(getattr(p, name), torch.Tensor) and getattr(p, name).requires_grad:
            raise _Unsupported(f"LIFBoxCell with a learned p.{name}: snn_fast learns τ, θ and α only")
    hard = _norse_reset_is_value(p)
    v_leak, v_reset = (float(torch.as_tensor(getattr(p, n)).detach()) for n in ("v_leak", "v_reset"))
    if hard and v_leak != v_reset:
        raise _Unsupported(f"LIFBoxCell with v_leak={v_leak:g} != v_reset={v_reset:g}: snn_fast's hard reset "
                           "leaks towards its reset value")
    if not hard and v_leak != 0.0:
        raise _Unsupported(f"LIFBoxCell with reset_subtract and v_leak={v_leak:g}: snn_fast's soft reset leaks "
                           "towards 0")
    k = float(m.dt) * float(torch.as_tensor(p.tau_mem_inv).detach())
    if not 0.0 < k < 1.0:
        raise _Unsupported(f"LIFBoxCell with dt·tau_mem_inv = {k:g}: snn_fast needs 0 < 1/τ < 1")

    def make() -> nn.Module:
        return NorseLIFBoxCell(m, backend)

    return make


# ---------------------------------------------------------------------------------------------------
# Sinabs 3.1: LIF, IAF, LIFSqueeze, IAFSqueeze


def _sinabs_sg_fns(sf, theta: float):
    """(g, g′) in x = v − θ of a Sinabs surrogate at threshold θ (its g′ is Sinabs's ``__call__(v, θ)``
    written out, the same operations; g a primitive of it), or _Unsupported."""
    import math

    from sinabs.activation import surrogate_gradient_fn as S

    t = type(sf)
    if t is S.SingleExponential:  # s/c · exp(−|v − θ|/c), c = θ·width
        c, s = theta * float(sf.grad_width), float(sf.grad_scale)

        def dg(x, a):
            return s / c * torch.exp(-torch.abs(x) / c)

        def g(x, a):
            return s * torch.sign(x) * (1 - torch.exp(-torch.abs(x) / c))
        return g, dg
    if t is S.Heaviside:  # [v ≥ θ − window] / θ
        w = float(sf.window)

        def dg(x, a):
            return (x + theta >= theta - w).to(x.dtype) / theta

        def g(x, a):
            return torch.relu(x + theta - (theta - w)) / theta
        return g, dg
    # Sinabs's normal density divides by σ·sqrt(2π) computed in float32 (2π is a float32 tensor): the
    # same denominator here
    def den(sigma):
        return float(sigma * torch.sqrt(2 * torch.tensor(math.pi)))

    def normal(x, mu, sigma):
        return torch.exp(-((x - mu) ** 2) / (2 * sigma ** 2)) / den(sigma)

    def normal_cdf(x, mu, sigma):  # the primitive of normal()
        return sigma * math.sqrt(2 * math.pi) / den(sigma) * 0.5 * (1 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))

    if t is S.Gaussian:
        mu, sigma, s = float(sf.mu), float(sf.sigma), float(sf.grad_scale)
        return (lambda x, a: s * normal_cdf(x, mu, sigma)), (lambda x, a: normal(x, mu, sigma) * s)
    if t is S.MultiGaussian:
        mu, sigma, h, sw, s = (float(v) for v in (sf.mu, sf.sigma, sf.h, sf.s, sf.grad_scale))

        def dg(x, a):
            return ((1 + h) * normal(x, mu, sigma) - h * normal(x, sigma, sw * sigma)
                    - h * normal(x, -sigma, sw * sigma)) * s

        def g(x, a):
            return ((1 + h) * normal_cdf(x, mu, sigma) - h * normal_cdf(x, sigma, sw * sigma)
                    - h * normal_cdf(x, -sigma, sw * sigma)) * s
        return g, dg
    if t is S.PeriodicExponential:  # below θ: exp(x/w); from θ on, a peak exp(−2|v − nθ|/w) per period θ
        w, s = float(sf.grad_width), float(sf.grad_scale)

        def dg(x, a):
            v = x + theta
            vn = v / theta - 0.5
            vp = theta * (2 * (vn - torch.floor(vn)) - 1)
            new = (v - theta) * (v < theta) + vp * (v >= theta)
            return s * torch.exp(-torch.abs(new) / w)

        def g(x, a):
            v = x + theta
            n = torch.floor(v / theta - 0.5) + 1  # the period's peak nθ, n ≥ 1 from θ on
            d = v - n * theta

            def f(d):
                return s * w / 2 * torch.sign(d) * (1 - torch.exp(-2 * torch.abs(d) / w))
            period = 2 * f(torch.tensor(theta / 2, dtype=x.dtype))
            above = s * w + (n - 1) * period + f(d)
            return torch.where(v < theta, s * w * torch.exp(torch.clamp(x, max=0.0) / w), above)
        return g, dg
    raise _Unsupported(f"surrogate_grad_fn {t.__module__}.{t.__qualname__} has no snn_fast counterpart "
                       "(supported: sinabs.activation SingleExponential, Heaviside, Gaussian, MultiGaussian, "
                       "PeriodicExponential)")


def _sinabs_surrogate(sf, theta: float):
    """The registered snn_fast surrogate computing Sinabs surrogate ``sf`` at threshold θ (one per
    surrogate class, its fields and θ: Sinabs's surrogates are functions of v and θ, not of v − θ alone)."""
    import dataclasses

    from . import surrogate as _sg

    fields = dataclasses.astuple(sf) if dataclasses.is_dataclass(sf) else ()
    name = f"sinabs_{type(sf).__name__.lower()}{fields!r}@theta={theta!r}".replace(" ", "")
    try:
        return _sg.get(name)
    except ValueError:
        pass
    g, dg = _sinabs_sg_fns(sf, theta)
    try:
        return _sg.register_surrogate(name, g, dg)
    except ValueError as e:
        try:
            return _sg.get(name)  # registered meanwhile by another thread
        except ValueError:
            raise _Unsupported(f"surrogate {sf!r} at threshold {theta:g}: {e}") from None


def _sinabs_scalar(m: nn.Module, name: str) -> Optional[torch.Tensor]:
    v = getattr(m, name, None)
    if isinstance(v, torch.Tensor) and v.numel() != 1:
        raise _Unsupported(f"{type(m).__qualname__} with a per-neuron {name} (shape {tuple(v.shape)}): snn_fast's "
                           f"op takes one {name} per layer")
    return v


class SinabsLIF(nn.Module):
    """Sinabs 3.1's ``LIF`` / ``IAF`` (and ``LIFSqueeze`` / ``IAFSqueeze``) on snn_fast's fused LIF op,
    made by :func:`convert`; also a ``sinabs.layers.StatefulLayer`` (``SqueezeMixin`` for the squeeze
    forms), so ``sinabs.reset_states(net)``, ``sinabs.zero_grad(net)`` and ``reset_states()`` reach it.

    The same calling convention: a stateful module over ``[B, T, ...]`` (squeeze forms: ``[B·T, ...]``
    with the layer's ``batch_size`` or ``num_timesteps``), the membrane kept in the buffer ``v_mem``
    across calls (with its graph, as Sinabs keeps it), ``firing_rate`` set by each call; the whole
    sequence runs in one fused op over time-first ``[T, B, ...]``. The same parameters: ``tau_mem``
    (or ``alpha_mem`` with ``train_alphas``) and ``spike_threshold`` are the Sinabs module's own.

    The dynamics, Sinabs's with α = exp(−1/τ_mem) (or ``alpha_mem``; 1 for IAF): v ← α·v + (1 − α)·x
    (``norm_input``; α·v + x without), spike Θ(v − θ) firing on v ≥ θ (``SingleSpike``), then
    ``MembraneSubtract`` v − S·θ with the spike's surrogate gradient through the reset, or
    ``MembraneReset(0)`` v·[S = 0] (the reset carries no gradient); snn_fast's leak k = 1 − α.
    Spikes come out in the input's dtype (Sinabs's are float32 whatever the input's).
    """

    def __init__(self, src: nn.Module, backend: str = "auto", save: str = _lif_contract.DEFAULT_SAVE):
        nn.Module.__init__(self)  # not StatefulLayer's (see _sinabs_class)
        from sinabs.activation import MembraneReset
        from sinabs.layers import IAF

        self.is_iaf = isinstance(src, IAF)
        self.train_alphas = bool(getattr(src, "train_alphas", False)) and not self.is_iaf
        if self.train_alphas:
            self.alpha_mem = src.alpha_mem  # the same Parameter objects
            self.alpha_syn = None
        else:
            self.tau_mem = src.tau_mem
            self.tau_syn = None
        self.spike_threshold = src.spike_threshold
        self.min_v_mem = None
        self.register_buffer("v_mem", src.v_mem)
        self.spike_fn, self.reset_fn, self.surrogate_grad_fn = src.spike_fn, src.reset_fn, src.surrogate_grad_fn
        self.norm_input = bool(src.norm_input)
        self.record_states = False
        self.recordings = {}
        self.squeeze = hasattr(src, "squeeze_forward")
        if self.squeeze:
            self.batch_size, self.num_timesteps = src.batch_size, src.num_timesteps
        self.hard = isinstance(src.reset_fn, MembraneReset)
        self._ops: Dict[float, tuple] = {}  # θ → (flags, surrogate)
        self.backend, self.save = backend, save
        self.train(src.training)

    @property
    def alpha_mem_calculated(self) -> torch.Tensor:
        if self.is_iaf:
            return torch.tensor(1.0)
        return self.alpha_mem if self.train_alphas else torch.exp(-1.0 / self.tau_mem)

    @property
    def tau_mem_calculated(self) -> Optional[torch.Tensor]:
        if self.is_iaf:
            return None
        return -1.0 / torch.log(self.alpha_mem) if self.train_alphas else self.tau_mem

    @property
    def shape(self):
        return self.v_mem.shape if self.v_mem.shape != torch.Size([0]) else None

    def _op(self, theta: float):
        """(flags, surrogate) at threshold θ (Sinabs's surrogate depends on θ: one per value)."""
        op = self._ops.get(theta)
        if op is None:
            sg = _sinabs_surrogate(self.surrogate_grad_fn, theta)
            _, _, _, flags, sg = _lif_args.resolve(
                None, 0.5, self.norm_input, 1.0, 0.0 if self.hard else None, self.hard, sg, None, 0.0)
            op = self._ops[theta] = (flags, sg)
        return op

    def _prepare_state(self, batch_size: int, trailing) -> None:  # Sinabs's own handling, step by step
        shape = (batch_size, *trailing)
        if self.v_mem.shape == torch.Size([0]):
            self.v_mem = torch.zeros(shape, device=self.v_mem.device)
        if self.v_mem.shape != shape:
            if self.v_mem.shape[1:] != torch.Size(trailing):
                self.v_mem = torch.zeros(shape, device=self.v_mem.device)
            else:  # only the batch size changed: Sinabs draws the states of the new batch at random
                idx = torch.randint(low=0, high=self.v_mem.shape[0], size=(batch_size,)).to(self.v_mem.device)
                self.v_mem = torch.index_select(self.v_mem, 0, idx)

    def forward(self, input_data: torch.Tensor) -> torch.Tensor:
        x = input_data
        if self.squeeze:
            x = x.reshape(self.batch_size, self.num_timesteps, *x.shape[1:])
        batch_size, _, *trailing = x.shape
        self._prepare_state(batch_size, trailing)
        if self.is_iaf:
            k = 0.0
        else:
            k = 1 - self.alpha_mem_calculated
            if not k.requires_grad and k.device.type == "cpu":
                k = float(k)  # as SnnTorchLeaky._run
        theta = float(self.spike_threshold.detach())
        flags, sg = self._op(theta)
        s, v = _lif_apply(x.transpose(0, 1).contiguous(), self.v_mem, k, theta, 1.0, flags, sg, None, False,
                          self.backend, self.save)
        spikes = s.transpose(0, 1).contiguous()
        # a tensor of its own, not a view of the op's [N] output: Sinabs's reset_states detaches its
        # buffers in place, which torch refuses on a view
        self.v_mem = v if v._base is None else v.clone()
        self.recordings = {}
        self.firing_rate = spikes.mean()
        if self.squeeze:
            return spikes.flatten(start_dim=0, end_dim=1)
        return spikes

    def __deepcopy__(self, memo):  # nn.Module's copy (StatefulLayer's rebuilds a Sinabs layer)
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == "_buffers":  # the membrane without its graph, as Sinabs's copy
                value = {k: None if b is None else b.detach() for k, b in value.items()}
            elif isinstance(value, torch.Tensor):  # firing_rate
                value = value.detach()
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)

    def extra_repr(self) -> str:
        kind = "IAF" if self.is_iaf else "LIF"
        reset = "MembraneReset(0)" if self.hard else "MembraneSubtract"
        return (f"{kind}{'Squeeze' if self.squeeze else ''}, reset={reset}, "
                f"surrogate_grad_fn={self.surrogate_grad_fn!r}, norm_input={self.norm_input}, backend={self.backend}")


_SINABS_CLASSES: Dict[bool, type] = {}


def _sinabs_class(squeeze: bool) -> type:
    """SinabsLIF as a subclass of sinabs.layers.StatefulLayer too (and SqueezeMixin for the squeeze
    forms; its methods first), so Sinabs's utilities treat it as one of its layers."""
    if squeeze not in _SINABS_CLASSES:
        from sinabs.layers import SqueezeMixin, StatefulLayer

        bases = (SinabsLIF, StatefulLayer) + ((SqueezeMixin,) if squeeze else ())
        cls = type("SinabsLIF", bases, {"forward": SinabsLIF.forward, "__repr__": SinabsLIF.__repr__,
                                        "__deepcopy__": SinabsLIF.__deepcopy__, "shape": SinabsLIF.shape,
                                        "__module__": __name__})
        _SINABS_CLASSES[squeeze] = cls
    return _SINABS_CLASSES[squeeze]


def _sinabs_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    if not type(m).__module__.startswith("sinabs."):
        return None
    from sinabs.layers import StatefulLayer

    if not isinstance(m, StatefulLayer):
        return None
    from sinabs import activation as A
    from sinabs import layers as L

    t = type(m)
    if t not in (L.LIF, L.IAF, L.LIFSqueeze, L.IAFSqueeze):
        raise _Unsupported(f"Sinabs {t.__qualname__} is not supported (only LIF, IAF, LIFSqueeze, IAFSqueeze): "
                           "snn_fast's op has no recurrent, adaptive or non-spiking (ExpLeak) variant")
    if m.spike_fn is not A.SingleSpike:
        what = getattr(m.spike_fn, "__name__", repr(m.spike_fn))
        raise _Unsupported(f"{t.__qualname__} with spike_fn={what}: snn_fast emits one spike per step "
                           "(spike_fn=SingleSpike); MultiSpike/MaxSpike emit ⌊v/θ⌋ spikes and reset by them")
    if getattr(m, "tau_syn", None) is not None or getattr(m, "alpha_syn", None) is not None:
        raise _Unsupported(f"{t.__qualname__} with tau_syn: snn_fast's op has no synaptic current")
    if m.record_states:
        raise _Unsupported(f"{t.__qualname__} with record_states=True: the fused op does not record the "
                           "per-step states")
    if m.min_v_mem is not None:
        raise _Unsupported(f"{t.__qualname__} with min_v_mem={float(m.min_v_mem):g}: snn_fast's op does not clip "
                           "the membrane from below")
    theta = _sinabs_scalar(m, "spike_threshold")
    if theta is None:
        raise _Unsupported(f"{t.__qualname__} with spike_threshold=None")
    if theta.requires_grad:
        raise _Unsupported(f"{t.__qualname__} with a learned spike_threshold: Sinabs's spike gives it no "
                           "gradient (only its reset does); snn_fast differentiates θ through both")
    th = float(theta.detach())
    if not th > 0:
        raise _Unsupported(f"{t.__qualname__} with spike_threshold={th:g}: Sinabs's surrogates divide by θ > 0")
    rf = m.reset_fn
    if type(rf) is A.MembraneSubtract:
        if rf.subtract_value is not None and float(rf.subtract_value) != th:
            raise _Unsupported(f"{t.__qualname__} with MembraneSubtract(subtract_value={float(rf.subtract_value):g}) "
                               f"!= spike_threshold {th:g}: snn_fast's soft reset subtracts θ")
    elif type(rf) is A.MembraneReset:
        if float(rf.reset_value) != 0.0:
            raise _Unsupported(f"{t.__qualname__} with MembraneReset(reset_value={float(rf.reset_value):g}): Sinabs "
                               "then adds reset_value to every neuron's membrane, spiking or not (v·[S = 0] + "
                               "reset_value), which is no reset of snn_fast's; reset_value=0 is exact")
    else:
        raise _Unsupported(f"{t.__qualname__} with reset_fn={rf!r} (supported: MembraneSubtract, MembraneReset(0))")
    if t in (L.LIF, L.LIFSqueeze):
        a = _sinabs_scalar(m, "alpha_mem" if m.train_alphas else "tau_mem")
        alpha = float(a.detach()) if m.train_alphas else math.exp(-1.0 / float(a.detach()))
        if not 0.0 <= alpha < 1.0:
            raise _Unsupported(f"{t.__qualname__} with decay α = {alpha:g}: snn_fast needs 0 ≤ α < 1 (IAF for α = 1)")
    _sinabs_surrogate(m.surrogate_grad_fn, th)  # refuse here, before anything is changed

    def make() -> nn.Module:
        return _sinabs_class(t in (L.LIFSqueeze, L.IAFSqueeze))(m, backend)

    return make


# ---------------------------------------------------------------------------------------------------
# The walk


def _factory(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    for peer in (_sj_neuron, _snntorch_neuron, _norse_neuron, _sinabs_neuron):
        make = peer(m, backend)
        if make is not None:
            return make
    return None


def _is_converted(m: nn.Module) -> bool:
    from .nn import BaseLIF

    return isinstance(m, (BaseLIF, SnnTorchLeaky, NorseLIFBoxCell, SinabsLIF))


# ---------------------------------------------------------------------------------------------------
# fuse=True: batch norm directly followed by a neuron becomes one BNLIF / TDBNLIF (docs/spec.md §12)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _user_surrogate_fuses(bn: nn.Module, neuron: nn.Module) -> bool:
    """A user's surrogate where the fused op runs it on a kernel, for the device the batch norm is on
    at conversion: on a GPU with its @triton.jit functions (Triton); on the CPU translated into the C++
    walk (native_surrogate.translatable), with the default firing and no noise (the CPU path's scope).
    Elsewhere the fused op would run the reference, or batch norm in torch around the LIF op's backward:
    slower than the pair."""
    t = next(iter(bn.buffers()), None)
    t = next(iter(bn.parameters()), None) if t is None else t
    return _user_surrogate_fuses_on(t.device.type if t is not None else "cpu", neuron)


def _user_surrogate_fuses_on(device_type: str, neuron: nn.Module) -> bool:
    """_user_surrogate_fuses for a batch norm on ``device_type`` (apart, so both ways are tested without
    a GPU)."""
    if device_type == "cuda":
        return neuron.sg.triton is not None
    if not neuron.flags.fire_at_threshold or neuron.noise_prob > 0:
        return False
    from .ops.lif import native_surrogate

    return native_surrogate.translatable(neuron.sg)


def _fused_bn(bn: nn.Module, neuron: nn.Module) -> Optional[nn.Module]:
    """The fused module computing ``neuron(bn(x))`` for x [T, B, C, *], holding ``bn``'s parameter and
    buffer objects and ``neuron`` itself; None when the pair has no exact fused form."""
    from .nn import BNLIF, IF, LIF, PLIF, TDBNLIF, TDBatchNorm

    # BNLIF runs the neuron's op itself, never neuron.forward: a subclass's forward, or a hook on either
    # module, would be skipped. A timing the fused kernels do not run would run on the reference (or be
    # refused by a neuron's explicit backend): slower than not fusing. So would a user's surrogate the
    # fused op cannot run as fast as the pair (_user_surrogate_fuses).
    if type(neuron) not in (LIF, IF, PLIF) or _has_hooks(bn) or _has_hooks(neuron):
        return None
    # one training flag drives both halves of the fused module (a frozen batch norm before a training
    # neuron would lose the neuron's noise); a parametrized weight cannot be handed over as is
    if bn.training != neuron.training or torch.nn.utils.parametrize.is_parametrized(bn):
        return None
    if neuron.flags.reset_timing != "after_fire" or (neuron.sg.custom and not _user_surrogate_fuses(bn, neuron)):
        return None
    if neuron.step_mode == "s" and neuron.store_v_seq:
        return None  # a single-step neuron appends to its v_seq per call; BNLIF keeps none
    if type(bn) is TDBatchNorm:
        theta = neuron.v_threshold
        if isinstance(theta, torch.Tensor) or neuron.step_mode != "m" or float(theta) == 0.0:
            return None  # tdBN's θ is a constant; the neuron's would be learned through the gain too
        new = TDBNLIF(bn.num_features, bn.alpha * bn.v_threshold / float(theta), bn.eps, bn.momentum,
                      bn.weight is not None, bn.track_running_stats, neuron=neuron)
    elif isinstance(bn, _BN_TYPES) and (type(bn) in _BN_TYPES or type(bn).__module__.startswith(_SJ + ".layer")):
        # torch's own class inside SeqToANNContainer ([T·B, …]), or SpikingJelly's step-mode subclass
        sj_mode = getattr(bn, "step_mode", None)
        if sj_mode is not None and sj_mode != neuron.step_mode:
            return None
        if sj_mode is None and neuron.step_mode != "m":
            return None
        new = BNLIF(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, neuron=neuron)
    else:
        return None
    for name in ("weight", "bias"):  # the same Parameter objects: an optimizer holding them keeps working
        setattr(new, name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if name in new._buffers:
            new._buffers[name] = getattr(bn, name)
    new.train(bn.training)
    return new


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _seq_to_ann_bn(m: nn.Module) -> Optional[nn.Module]:
    """A SpikingJelly SeqToANNContainer ending in a torch BatchNorm: that BatchNorm, else None."""
    if type(m).__name__ != "SeqToANNContainer" or not type(m).__module__.startswith(_SJ + ".layer"):
        return None
    kids = list(m.children())
    return kids[-1] if kids and type(kids[-1]) in _BN_TYPES else None


def _multistep_bn(m: nn.Module) -> Optional[nn.Module]:
    """snn_fast's ``nn.MultiStep`` around a torch BatchNorm (T folded into the batch): that BatchNorm."""
    from .nn import MultiStep

    return m.module if type(m) is MultiStep and type(m.module) in _BN_TYPES else None


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's own ``forward``: every submodule call is one node (none is traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


# Modules whose own forward is traced for pairs: SpikingJelly 2.0's zoo ResNets and their blocks (read:
# no Python-level use of a batch norm's output besides the neuron, no state changed while tracing).
# fx sees only the tensor graph: a forward that also stores the batch norm's output (``self.pre = y``)
# or changes state when run would be fused wrongly or changed by the trace, so any other module's
# pairs must be declared in ``snn_fast_fuse_pairs``.
_TRACED_FORWARDS = {
    _SJ + ".model.spiking_resnet": ("BasicBlock", "Bottleneck", "SpikingResNet"),
    _SJ + ".model.sew_resnet": ("BasicBlock", "Bottleneck", "SEWResNet"),
}


def _traced_pairs(parent: nn.Module) -> List[Tuple[str, str]]:
    """(bn, neuron) submodule paths of ``parent`` whose own ``forward`` computes ``neuron(bn(…))`` with
    the batch norm's output used by nothing else and each of the two modules called once, read from
    the graph torch.fx traces (SpikingJelly's zoo blocks: ``out = self.sn1(self.bn1(self.conv1(x)))``
    written over three lines). Only the classes of ``_TRACED_FORWARDS``; a forward fx cannot trace
    gives no pair: the modules stay as they are."""
    t = type(parent)
    if t.__name__ not in _TRACED_FORWARDS.get(t.__module__, ()):
        return []
    try:
        graph = _ChildrenAsLeaves().trace(parent)
    except Exception:  # noqa: BLE001 - any tracing failure only means nothing is fused here
        return []
    calls: Dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    pairs = []
    for n in graph.nodes:
        if n.op != "call_module" or calls[n.target] != 1 or len(n.args) != 1 or n.kwargs:
            continue
        src = n.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and calls[src.target] == 1
                and len(src.users) == 1):
            pairs.append((src.target, n.target))
    return pairs


def _fuse(model: nn.Module) -> int:
    """Replace each batch norm directly followed by an snn_fast neuron, in place; returns how many.

    Directly followed: adjacent in an ``nn.Sequential`` (the batch norm itself, ``nn.MultiStep`` around one, or the last
    module of a ``SeqToANNContainer``); in the own ``forward`` of SpikingJelly's zoo ResNets and blocks,
    ``neuron(bn(…))`` with the batch norm's output used nowhere else, as torch.fx reads it
    (``_traced_pairs``); or a pair any module declares in ``snn_fast_fuse_pairs`` (attribute paths
    (bn, neuron) whose forward is ``neuron(bn(…))`` with neither used elsewhere). The fused
    module takes the batch norm's place (a SeqToANNContainer keeps its other modules, the fused module
    then takes the neuron's place), ``nn.Identity`` the other's.
    """
    count = 0
    for parent in list(model.modules()):
        pairs = []
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs = [(names[i], names[i + 1]) for i in range(len(names) - 1)]
        elif type(parent).forward is not nn.Module.forward and _has_bn_and_neuron(parent):
            pairs = _traced_pairs(parent)
        pairs += [p for p in getattr(parent, "snn_fast_fuse_pairs", ()) if p not in pairs]
        for bn_path, nr_path in pairs:
            try:
                bn, neuron = parent.get_submodule(bn_path), parent.get_submodule(nr_path)
            except AttributeError:
                continue
            inner = _seq_to_ann_bn(bn)
            wrapped = _multistep_bn(bn)
            if type(bn) in _BN_TYPES:
                # torch's own batch norm called on [T, B, C, …] itself would take T·… as its layout
                # (BatchNorm1d: B as the channels); only its multi-step wrappers fuse
                continue
            fused = _fused_bn(inner if inner is not None else wrapped if wrapped is not None else bn, neuron)
            if fused is None:
                continue
            if inner is not None:
                rest = list(bn.children())[:-1]
                _set_path(parent, bn_path, type(bn)(*rest) if rest else nn.Identity())
                _set_path(parent, nr_path, fused)
            else:
                _set_path(parent, bn_path, fused)
                _set_path(parent, nr_path, nn.Identity())
            count += 1
    return count


def _has_bn_and_neuron(parent: nn.Module) -> bool:
    """A direct child is a batch norm (or a container ending in one) and another an snn_fast neuron:
    only then is the forward traced."""
    from .nn import BaseLIF, TDBatchNorm

    kids = list(parent.children())
    has_bn = any(isinstance(k, _BN_TYPES + (TDBatchNorm,)) or _seq_to_ann_bn(k) is not None
                 or _multistep_bn(k) is not None for k in kids)
    return has_bn and any(isinstance(k, BaseLIF) for k in kids)


def _set_path(parent: nn.Module, path: str, new: nn.Module) -> None:
    *head, last = path.split(".")
    owner = parent.get_submodule(".".join(head)) if head else parent
    setattr(owner, last, new)


def convert(model: nn.Module, *, backend: str = "auto", inplace: bool = False, strict: bool = True,
            save: str = _lif_contract.DEFAULT_SAVE, fuse: bool = False) -> nn.Module:
    """``model`` with every supported spiking neuron replaced by its snn_fast counterpart.

    Args:
        model: a ``torch.nn.Module`` holding SpikingJelly, snnTorch or Norse neurons (see the module
            docstring for the list).
        backend: the ``backend`` of the new neurons ('auto', 'reference', 'cpu', 'cuda', 'triton').
        inplace: replace the neurons inside ``model`` itself (an optimizer built on it stays valid:
            the other parameters, and PLIF's ``w``, are the same objects); else a deep copy is
            converted and ``model`` is left untouched.
        strict: a neuron or surrogate without an exact counterpart raises ``ValueError`` naming it
            (nothing is changed then); with ``strict=False`` it is left in place with a warning.
        save: what the new neurons' GPU kernels keep for the backward: "state" (H of every step; the
            default, the faster) or "recompute" (only the membrane every 8 steps; the backward re-runs
            the forward); see ``snn_fast.lif_multistep``. Neurons already converted keep theirs.
        fuse: also replace each batch norm directly followed by a neuron (adjacent in an
            ``nn.Sequential``: SpikingJelly's multi-step ``layer.BatchNorm1d/2d/3d``, a
            ``SeqToANNContainer`` ending in a BatchNorm, or ``nn.TDBatchNorm``; ``sn(bn(…))`` in
            SpikingJelly's zoo ResNets (spiking and SEW) and their blocks; or a pair a module lists
            in ``snn_fast_fuse_pairs``) by one ``nn.BNLIF`` / ``nn.TDBNLIF`` holding the batch norm's
            parameters and buffers (the same objects) and the neuron (docs/spec.md §12). A pair inside
            any other custom ``forward`` is fused only when its module declares it. Not fused: a
            neuron subclass, a module with hooks, a timing other than 'after_fire', a user's surrogate
            the fused op cannot run on a kernel on the batch norm's device (CUDA: without Triton
            functions; CPU: one that does not translate into the C++ walk, or with noise or
            ``fire_at_threshold=False``).
            Parameter names of the neuron move under the fused module (``<bn>.neuron.…``).

    Returns:
        The converted model (``model`` itself when ``inplace``; a new neuron when ``model`` is one).

    Raises:
        ValueError: a model with no supported neuron; with ``strict``, an unsupported neuron or surrogate.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    backends.requested(backend)  # an unknown name fails here, not at the first forward
    _lif_contract.check_save(save)
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except RuntimeError as e:  # a membrane that keeps its graph (a peer's neuron after a forward)
            raise RuntimeError(f"snn_fast.convert could not copy the model ({e}); reset or detach its neurons "
                               "first (SpikingJelly functional.reset_net / detach_net, snnTorch utils.reset(net) "
                               "or the neurons' detach_hidden()), or pass inplace=True") from e
    # Plan first, change after: a strict refusal leaves the model as it was.
    plan: List[Tuple[Optional[nn.Module], str, nn.Module, Callable[[], nn.Module]]] = []
    refused: List[Tuple[str, str]] = []
    already = 0
    seen: Dict[int, bool] = {}

    def visit(parent: Optional[nn.Module], name: str, path: str, m: nn.Module) -> None:
        nonlocal already
        if _is_converted(m):
            already += 1
            return
        try:
            make = _factory(m, backend)
        except _Unsupported as e:
            refused.append((path or "<model>", str(e)))
            return
        if make is not None:
            plan.append((parent, name, m, make))
            return
        if id(m) in seen:  # a module reachable twice: walk its children once
            return
        seen[id(m)] = True
        for child_name, child in m.named_children():
            visit(m, child_name, f"{path}.{child_name}" if path else child_name, child)

    visit(None, "", "", model)
    if refused:
        lines = "\n".join(f"  {p}: {why}" for p, why in refused)
        if strict:
            raise ValueError(f"snn_fast.convert: {len(refused)} neuron(s) cannot be converted exactly "
                             f"(strict=False leaves them in place):\n{lines}")
        warnings.warn(f"snn_fast.convert: left {len(refused)} neuron(s) in place:\n{lines}", stacklevel=2)
    if not plan and not already:
        raise ValueError(
            f"snn_fast.convert: no supported spiking neuron in this {type(model).__name__}"
            + (" (only unsupported ones, listed above)" if refused else "")
            + "; supported: SpikingJelly 2.0 LIFNode, IFNode, ParametricLIFNode, SimpleLIFNode, SimpleIFNode; "
              "snnTorch 1.0 Leaky; Norse 1.1 LIFBoxCell; Sinabs 3.1 LIF, IAF, LIFSqueeze, IAFSqueeze")
    new_of: Dict[int, nn.Module] = {}  # a neuron shared by two parents stays shared
    for parent, name, old, make in plan:
        new = new_of.get(id(old))
        if new is None:
            new = new_of[id(old)] = make()
            new.save = save
        if parent is None:
            model = new
        else:
            setattr(parent, name, new)
    if fuse:
        _fuse(model)
    if inplace and "spikingjelly.activation_based.functional" in sys.modules:
        # SpikingJelly's reset_net caches each net's resettable modules: forget the replaced ones
        from spikingjelly.activation_based import functional as F

        for m in model.modules():
            F.invalidate_reset_cache(m)
    return model
