"""NIR (Neuromorphic Intermediate Representation) export and import for models of snn_fast neurons.

``export(model, sample)`` and ``load(graph)`` need the optional packages ``nir`` and ``nirtorch``.
NIR describes neurons in continuous time; the discretisation is SpikingJelly's (``dt`` = 1e-4 s by
default, as in its ``nir_exchange``), so a graph exported by SpikingJelly loads here to the same
function and back:

- ``LIF(τ, decay_input, v_reset=V_r, θ)`` ↔ ``nir.LIF(tau = τ·dt, r = 1 if decay_input else τ,
  v_leak = V_r, v_threshold = θ, v_reset = V_r)``; ``PLIF`` exports its current τ = 1/sigmoid(w).
- ``IF(θ, V_r)`` ↔ ``nir.IF(r = 1/dt, v_threshold = θ, v_reset = V_r)``.
- ``nn.Linear`` ↔ ``nir.Affine`` / ``nir.Linear``, ``nn.Conv2d`` ↔ ``nir.Conv2d``, ``nn.Flatten`` ↔
  ``nir.Flatten`` (each wrapped in ``snn_fast.nn.MultiStep`` on load: the model takes ``[T, B, ...]``).

Not expressible, hence refused with a message: soft reset (NIR resets to ``v_reset``), a neuron whose
leak target differs from its reset value (``v_leak ≠ v_reset``), per-neuron parameters that differ
across neurons, ``nir.LIF.r`` other than 1 or τ/dt, ``nir.CubaLIF`` (a synaptic current state the
LIF family does not have). NIR carries no surrogate: a loaded neuron has the default (sigmoid, α = 4)
unless ``surrogate`` / ``alpha`` are given.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .nn import IF, LIF, PLIF, BaseLIF, MultiStep

__all__ = ["export", "load"]


def _import():
    try:
        import nir
        import nirtorch
    except ImportError as e:  # optional dependencies
        raise ImportError("snn_fast.nir needs the optional packages 'nir' and 'nirtorch' "
                          "(pip install nir nirtorch)") from e
    return nir, nirtorch


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# export


def export(model: nn.Module, sample: torch.Tensor, *, dt: float = 1e-4):
    """The ``nir.NIRGraph`` of ``model`` (Linear/Conv2d/Flatten, optionally in ``MultiStep``, and the
    LIF family); ``sample`` (``[T, B, ...]``) gives the shapes. The model's state is left as it was."""
    nir, nirtorch = _import()
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    shapes = {}  # module -> per-sample input shape (no T, no batch)
    hooks = []

    def record(m, args, strip):
        shapes.setdefault(m, tuple(args[0].shape[strip:]))

    layers = (nn.Linear, nn.Conv2d, nn.Flatten)
    for m in model.modules():
        if isinstance(m, BaseLIF) or isinstance(m, layers):
            # [T, B, ...] in multi-step mode (ours, SpikingJelly's layers); [B, ...] or [T·B, ...]
            # inside MultiStep otherwise
            hooks.append(m.register_forward_pre_hook(
                lambda m, a: record(m, a, 2 if getattr(m, "step_mode", None) == "m" else 1)))
    saved = {m: (m.v, m.v_seq) for m in model.modules() if isinstance(m, BaseLIF)}
    try:
        with torch.no_grad():
            for m in saved:
                m.reset()
            model(sample)
    finally:
        for h in hooks:
            h.remove()
        for m, (v, v_seq) in saved.items():
            m.v, m.v_seq = v, v_seq

    def neuron_shape(m):
        if m not in shapes:
            raise ValueError(f"{type(m).__name__} was not called by the sample's forward: its shape is unknown")
        return shapes[m]

    def lif(m):
        f = m.flags
        if not f.hard_reset:
            raise ValueError(f"{type(m).__name__} with soft reset (v_reset=None) has no NIR form: NIR neurons "
                             "reset to v_reset")
        # detach_reset, κ and the noisy spike change training only, not the function NIR describes
        shape = neuron_shape(m)
        theta = float(m.v_threshold.detach()) if isinstance(m.v_threshold, torch.Tensor) else float(m.v_threshold)
        if isinstance(m, IF):
            return nir.IF(r=np.full(shape, 1.0 / dt), v_threshold=np.full(shape, theta),
                          v_reset=np.full(shape, f.v_reset))
        k = m.leak()
        tau = 1.0 / (float(k.detach()) if isinstance(k, torch.Tensor) else float(k))
        return nir.LIF(tau=np.full(shape, tau * dt), r=np.full(shape, 1.0 if f.decay_input else tau),
                       v_leak=np.full(shape, f.v_reset), v_threshold=np.full(shape, theta),
                       v_reset=np.full(shape, f.v_reset))

    def layer(m):
        if isinstance(m, MultiStep):
            m = m.module
        if isinstance(m, nn.Linear):
            return nir.Linear(_np(m.weight)) if m.bias is None else nir.Affine(_np(m.weight), _np(m.bias))
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise ValueError(f"Conv2d padding_mode={m.padding_mode!r} has no NIR form")
            bias = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels, dtype=_np(m.weight).dtype)
            if m not in shapes:
                raise ValueError("a Conv2d was not called by the sample's forward: its input shape is unknown")
            return nir.Conv2d(input_shape=shapes[m][-2:], weight=_np(m.weight), stride=m.stride, padding=m.padding,
                              dilation=m.dilation, groups=m.groups, bias=bias)
        if isinstance(m, nn.Flatten):
            if m not in shapes:
                raise ValueError("a Flatten was not called by the sample's forward: its input shape is unknown")
            start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim  # NIR's shapes have no batch dim
            end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
            return nir.Flatten(input_type={"input": np.array(shapes[m])}, start_dim=start, end_dim=end)
        raise ValueError(f"{type(m).__name__} has no NIR mapping in snn_fast.nir")

    module_map = {LIF: lif, IF: lif, PLIF: lif, MultiStep: layer}
    for m in model.modules():  # subclasses too (SpikingJelly's layer.Linear, …): leaves of the trace
        if isinstance(m, layers) and not isinstance(m, BaseLIF):
            module_map[type(m)] = layer
    return nirtorch.torch_to_nir(model, module_map, type_check=False)


# ---------------------------------------------------------------------------------------------------
# load


def _uniform(a, what: str) -> float:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{what} is empty")
    v = float(a.reshape(-1)[0])
    if not np.all(a == v):
        raise ValueError(f"{what} differs across neurons; snn_fast's neurons share one value per layer")
    return v


def _close(a: float, b: float) -> bool:
    # graphs are often float32 (snnTorch writes r = τ/dt as 5.0000005 for τ = 5): a few float32 ulps
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


class NIRModel(nn.Module):
    """A loaded NIR graph: ``forward(x [T, B, ...])`` → the output node's value (spikes ``[T, B, ...]``).
    The neurons are ``snn_fast.nn`` modules (``snn_fast.nn.reset_net`` resets them)."""

    def __init__(self, gm: nn.Module):
        super().__init__()
        self.graph = gm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph(x)
        return out[0] if isinstance(out, tuple) else out


def load(graph, *, dt: float = 1e-4, surrogate="sigmoid", alpha: Optional[float] = None, backend: str = "auto",
         dtype: torch.dtype = torch.float32, device="cpu") -> nn.Module:
    """A module computing ``graph`` (a ``nir.NIRGraph`` or the path of a NIR file) on ``[T, B, ...]``."""
    nir, nirtorch = _import()
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if isinstance(graph, str):
        graph = nir.read(graph)
    kw = dict(surrogate=surrogate, alpha=alpha, backend=backend)

    def v_reset(node, v_leak: Optional[float] = None) -> float:
        vr = 0.0 if node.v_reset is None else _uniform(node.v_reset, f"{type(node).__name__}.v_reset")
        if v_leak is not None and not _close(v_leak, vr):
            raise ValueError(f"nir.LIF with v_leak={v_leak:g} ≠ v_reset={vr:g}: snn_fast's LIF leaks towards its "
                             "reset value")
        return vr

    def map_lif(node):
        tau = _uniform(node.tau, "nir.LIF.tau") / dt
        if not np.isfinite(tau) or tau <= 1.0:
            raise ValueError(f"nir.LIF.tau / dt = {tau:g}: snn_fast's LIF needs τ > 1 steps")
        r = _uniform(node.r, "nir.LIF.r")
        if _close(r, 1.0):
            decay_input = True
        elif _close(r, tau):
            decay_input = False
        else:
            raise ValueError(f"nir.LIF.r = {r:g}: snn_fast expresses r = 1 (decay_input=True) or r = τ/dt = {tau:g} "
                             "(decay_input=False)")
        vr = v_reset(node, _uniform(node.v_leak, "nir.LIF.v_leak"))
        return LIF(tau, decay_input=decay_input, v_threshold=_uniform(node.v_threshold, "nir.LIF.v_threshold"),
                   v_reset=vr, **kw)

    def map_if(node):
        r = _uniform(node.r, "nir.IF.r")
        if not _close(r * dt, 1.0):
            raise ValueError(f"nir.IF.r = {r:g}: snn_fast's IF is r = 1/dt = {1.0 / dt:g}")
        return IF(v_threshold=_uniform(node.v_threshold, "nir.IF.v_threshold"), v_reset=v_reset(node), **kw)

    def map_cuba(node):
        raise ValueError("nir.CubaLIF has a synaptic current state that snn_fast's LIF family does not have")

    def t(a):
        return torch.as_tensor(np.asarray(a), dtype=dtype)

    def map_affine(node):
        w = t(node.weight)
        m = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine), dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            if m.bias is not None:
                m.bias.copy_(t(node.bias))
        return MultiStep(m)

    def map_conv2d(node):
        w = t(node.weight)
        pad = node.padding if isinstance(node.padding, str) else tuple(np.atleast_1d(node.padding).tolist())
        m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                      stride=tuple(np.atleast_1d(node.stride).tolist()), padding=pad,
                      dilation=tuple(np.atleast_1d(node.dilation).tolist()), groups=int(node.groups), dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.copy_(t(node.bias))
        return MultiStep(m)

    def map_flatten(node):
        start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim  # add the batch dim back
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return MultiStep(nn.Flatten(start, end))

    node_map = {nir.LIF: map_lif, nir.IF: map_if, nir.CubaLIF: map_cuba, nir.Affine: map_affine,
                nir.Linear: map_affine, nir.Conv2d: map_conv2d, nir.Flatten: map_flatten}
    gm = nirtorch.nir_to_torch(graph, node_map, device=device, dtype=dtype)
    return NIRModel(gm).to(device)
