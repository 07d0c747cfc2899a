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

snnTorch's and Norse's neurons are refused with an error that says what differs (``_SNNTORCH_LEAKY``,
``_NORSE_BOX``): both fire on mem > θ where snn_fast (and SpikingJelly) fire on H ≥ θ, and snnTorch's
Leaky resets from the previous step's spike.

No peer is imported here unless the model holds one of its modules already (its package is then loaded).
"""
from __future__ import annotations

import copy
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import backends
from .ops.lif import contract as _lif_contract

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
# snnTorch: refused, with what differs (checked against snnTorch 1.0 in tests/test_convert.py)

_SNNTORCH_LEAKY = (
    "snnTorch's Leaky is not snn_fast's LIF: (1) with reset_mechanism='subtract' (its default) step t "
    "subtracts θ·S[t−1], the previous step's spike, after the decay: mem[t] = β·mem[t−1] + x[t] − θ·S[t−1]; "
    "snn_fast subtracts at the spike's own step, before the next decay: V[t] = H[t] − θ·S[t], "
    "H[t+1] = β·V[t] + x[t+1], so the two charges differ by (1 − β)·θ·S[t−1]; (2) it fires on mem > θ, "
    "snn_fast on H ≥ θ; (3) its state is the pre-reset membrane, passed in and out explicitly "
    "(forward(input_, mem) -> (spk, mem)), where snn_fast keeps the post-reset one inside the module. "
    "Rebuild the layer with snn_fast.nn.LIF(decay=β, decay_input=False, v_reset=None) for snn_fast's dynamics")


def _snntorch_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    if not type(m).__module__.startswith("snntorch."):
        return None
    from snntorch._neurons.neurons import SpikingNeuron

    if not isinstance(m, SpikingNeuron):
        return None
    t = type(m)
    if t.__name__ == "Leaky":
        raise _Unsupported(_SNNTORCH_LEAKY)
    raise _Unsupported(f"snnTorch {t.__qualname__} is not supported: snn_fast's LIF family resets at the "
                       "spike's own step and fires on H ≥ θ; snnTorch's neurons reset from the previous "
                       "step's spike and fire on mem > θ")


# ---------------------------------------------------------------------------------------------------
# Norse: refused, with what differs (checked against Norse 1.1 in tests/test_convert.py)

_NORSE_BOX = (
    "Norse's LIFBoxCell is snn_fast's LIF(tau=1/(dt·tau_mem_inv), decay_input=True, v_reset=v_leak) except "
    "that (1) it fires on v > v_th, snn_fast on H ≥ θ: an input that lands exactly on the threshold (e.g. "
    "spikes times weights of a few bits) spikes in one and not the other; (2) its state is passed in and "
    "out explicitly (forward(x, state) -> (z, state)) one step at a time. snn_fast's kernels have no "
    "strict-threshold option, so it is not converted")


def _norse_neuron(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    if not type(m).__module__.startswith("norse."):
        return None
    from norse.torch.module import snn as norse_snn

    if not isinstance(m, (norse_snn.SNNCell, norse_snn.SNNRecurrentCell, norse_snn.SNN, norse_snn.SNNRecurrent)):
        return None
    t = type(m)
    if t.__name__ in ("LIFBoxCell", "LIFBox"):
        raise _Unsupported(_NORSE_BOX)
    raise _Unsupported(f"Norse {t.__qualname__} is not supported: snn_fast's LIF family has no synaptic-current "
                       "or adaptation state and fires on H ≥ θ (Norse: v > v_th)")


# ---------------------------------------------------------------------------------------------------
# The walk


def _factory(m: nn.Module, backend: str) -> Optional[Callable[[], nn.Module]]:
    for peer in (_sj_neuron, _snntorch_neuron, _norse_neuron):
        make = peer(m, backend)
        if make is not None:
            return make
    return None


def _is_converted(m: nn.Module) -> bool:
    from .nn import BaseLIF

    return isinstance(m, BaseLIF)


# ---------------------------------------------------------------------------------------------------
# fuse=True: batch norm directly followed by a neuron becomes one BNLIF / TDBNLIF (docs/spec.md §12)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fused_bn(bn: nn.Module, neuron: nn.Module) -> Optional[nn.Module]:
    """The fused module computing ``neuron(bn(x))`` for x [T, B, C, *], holding ``bn``'s parameter and
    buffer objects and ``neuron`` itself; None when the pair has no exact fused form."""
    from .nn import BNLIF, TDBNLIF, BaseLIF, TDBatchNorm

    if not isinstance(neuron, BaseLIF):
        return None
    if type(bn) is TDBatchNorm:
        theta = neuron.v_threshold
        if isinstance(theta, torch.Tensor) or neuron.step_mode != "m":
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


def _fuse(model: nn.Module) -> int:
    """Replace each batch norm directly followed by an snn_fast neuron, in place; returns how many.

    Directly followed: adjacent in an ``nn.Sequential`` (the batch norm itself, ``nn.MultiStep`` around one, or the last
    module of a ``SeqToANNContainer``), or a pair a module declares in ``snn_fast_fuse_pairs`` (attribute paths
    (bn, neuron) whose forward is ``neuron(bn(…))`` with neither used elsewhere). The fused module takes
    the batch norm's place (a SeqToANNContainer keeps its other modules, the fused module then takes
    the neuron's place), ``nn.Identity`` the other's.
    """
    count = 0
    for parent in list(model.modules()):
        pairs = []
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs = [(names[i], names[i + 1]) for i in range(len(names) - 1)]
        pairs += list(getattr(parent, "snn_fast_fuse_pairs", ()))
        for bn_path, nr_path in pairs:
            try:
                bn, neuron = parent.get_submodule(bn_path), parent.get_submodule(nr_path)
            except AttributeError:
                continue
            inner = _seq_to_ann_bn(bn)
            wrapped = _multistep_bn(bn)
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


def _set_path(parent: nn.Module, path: str, new: nn.Module) -> None:
    *head, last = path.split(".")
    owner = parent.get_submodule(".".join(head)) if head else parent
    setattr(owner, last, new)


def convert(model: nn.Module, *, backend: str = "auto", inplace: bool = False, strict: bool = True,
            save: str = _lif_contract.DEFAULT_SAVE, fuse: bool = False) -> nn.Module:
    """``model`` with every supported spiking neuron replaced by its snn_fast counterpart.

    Args:
        model: a ``torch.nn.Module`` holding SpikingJelly neurons (see the module docstring for the list).
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
            ``SeqToANNContainer`` ending in a BatchNorm, or ``nn.TDBatchNorm``; or a pair a module lists
            in ``snn_fast_fuse_pairs``) by one ``nn.BNLIF`` / ``nn.TDBNLIF`` holding the batch norm's
            parameters and buffers (the same objects) and the neuron (docs/spec.md §12). A pair inside
            a custom ``forward`` is fused only when its module declares it. Parameter names of the
            neuron move under the fused module (``<bn>.neuron.…``).

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
                               "first (spikingjelly functional.reset_net / detach_net), or pass inplace=True") from e
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
            + "; supported: SpikingJelly 2.0 LIFNode, IFNode, ParametricLIFNode, SimpleLIFNode, SimpleIFNode")
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
