"""NIR (Neuromorphic Intermediate Representation) export and import for models of snn_fast neurons.

``export(model, sample)`` and ``load(graph, dialect=...)`` need the optional packages ``nir`` and
``nirtorch``. NIR describes neurons in continuous time; each exporter discretises them its own way and
leaves some of its neurons' behaviour out of the graph, so ``load`` is told which library wrote the
graph (``dialect``) and reads it as that library's exported model computes. The loaded model takes
``[T, B, ...]`` (time first; Sinabs's layers take ``[B, T, ...]``); layers are wrapped in
``snn_fast.nn.MultiStep``: ``nir.Affine``/``Linear`` → ``nn.Linear``, ``Conv2d``, ``Flatten``.

``dialect="spikingjelly"`` (the default; also ``export``'s graphs): dt = 1e-4 s as SpikingJelly's
``nir_exchange``, so a graph exported by SpikingJelly loads here to the same function and back:

- ``LIF(τ, decay_input, v_reset=V_r, θ)`` ↔ ``nir.LIF(tau = τ·dt, r = 1 if decay_input else τ,
  v_leak = V_r, v_threshold = θ, v_reset = V_r)``; ``PLIF`` exports its current τ = 1/sigmoid(w).
- ``IF(θ, V_r)`` ↔ ``nir.IF(r = 1/dt, v_threshold = θ, v_reset = V_r)``. Fires on v ≥ θ, sigmoid (α = 4).

``dialect="snntorch"`` (snnTorch 1.0, dt = 1e-4 as its code fixes): as its ``import_from_nir`` reads a
``nir.LIF``: ``Leaky(β = 1 − dt/tau, θ / (r·dt/tau), reset_mechanism="zero", reset_delay=False)``:
H = β·V + X, fires on H > θ, resets to 0, atan (α = 2). The graph does not record the reset: a Leaky
exported with another ``reset_mechanism``/``reset_delay`` (the default is "subtract", True) loads, in
snnTorch too, as this one. Refused: v_leak ≠ 0, v_reset ≠ 0 (snnTorch's import ignores it), ``nir.IF``
(snnTorch exports none and imports one as a ``Leaky(beta=0.9)``), RLeaky/RSynaptic (a subgraph).
snnTorch 1.0's ``export_to_nir`` itself fails under nir 1.0.8: its closing ``nir_graph.infer_types()``
raises "type mismatch: input.output: [[1 4]] -> 0.input: [[4]]" (the Input node keeps the sample's
batch dim) or, with ``ignore_dims=[0]``, "0.output: [[5]] -> 1.input: []" (a scalar β is written as
0-d LIF parameters); the graph before that call (``nirtorch.extract_nir_graph`` with snnTorch's
``_extract_snntorch_module``, as ``export_to_nir`` calls it) loads.

``dialect="norse"`` (Norse 1.1; dt = the ``dt`` given to ``to_nir``, 1e-3 by default, which must be
the cells' own): Norse writes ``tau = dt / tau_mem_inv`` (not 1/tau_mem_inv), so the loader reads
dt·tau_mem_inv = dt²/tau: ``LIFBoxCell`` v ← v + dt·tau_mem_inv·(x − v) (r = 1, v_leak = 0 = v_reset),
``IAFCell`` v ← v + x (r = 1); both fire on v > θ, reset to 0, SuperSpike (``super_spike``, α = 1).
Norse's own ``from_nir`` reads tau as 1/tau_mem_inv, so it does not load Norse's LIF export back (its
IAF it does, the same function as here). Refused: r ≠ 1, v_leak ≠ 0, v_reset ≠ 0 (Norse's import
ignores it), ``nir.CubaLIF`` (``LIFCell``), ``nir.LI`` (``LIBoxCell``).

``dialect="sinabs"`` (Sinabs 3.1, dt = 1: its τ is in steps), the exact (exponential) discretisation:
``nir.LIF`` → α = exp(−dt/tau), v ← α·v + (1 − α)·r·x: r = 1 is ``norm_input=True`` (Sinabs's default),
r = 1/(1 − α) ``norm_input=False``; ``nir.IF`` (r = 1/dt) → v ← v + x; fires on v ≥ θ (``SingleSpike``),
subtracts θ (``MembraneSubtract``), Sinabs's ``SingleExponential()`` surrogate at θ (needs sinabs
unless ``surrogate`` is given). The graph does not record ``spike_fn`` (Sinabs's default ``MultiSpike``
is several spikes per step, not NIR's neuron), ``reset_fn``, ``min_v_mem`` or ``norm_input`` (Sinabs
writes r = 1 for both): a layer exported with other values loads as this one. Sinabs's own
``from_nir`` reads a LIF as ``norm_input=False`` and an IF with ``min_v_mem=−θ`` (a clip), so it is
not the exported model either. Refused: v_leak ≠ 0, v_reset ≠ 0, another r, ``nir.LI`` (``ExpLeak``).

Every dialect refuses, naming the node and what differs: parameters that differ across neurons (one
value per layer here), ``nir.CubaLIF`` (a synaptic current state), a subgraph or a recurrent cycle,
node types without a mapping; and (SpikingJelly's) v_leak ≠ v_reset, r other than 1 or τ/dt. NIR
carries no surrogate: ``surrogate`` / ``alpha`` override the dialect's default. ``export`` refuses soft
reset (NIR resets to ``v_reset``). For the function a peer's own import gives (where it differs),
import with the peer and ``snn_fast.convert`` the result.
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


# Each dialect reads a graph the way the named library's exporter wrote it: its discretisation step
# (dt, in the graph's time unit), and what its neurons do that the graph does not say (the firing
# comparison, the reset, the default surrogate). See the module docstring.
DIALECTS = ("spikingjelly", "snntorch", "norse", "sinabs")
_DEFAULT_DT = {"spikingjelly": 1e-4, "snntorch": 1e-4, "norse": 1e-3, "sinabs": 1.0}
# the surrogate of the exporter's default neuron (Sinabs's, SingleExponential, depends on θ: made per layer)
_DEFAULT_SURROGATE = {"spikingjelly": ("sigmoid", None), "snntorch": ("atan", 2.0), "norse": ("super_spike", 1.0)}


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


def _sinabs_single_exponential(theta: float):
    """Sinabs's default surrogate (``SingleExponential()``) at threshold θ, as snn_fast.convert registers it."""
    try:
        from sinabs.activation import SingleExponential
    except ImportError as e:
        raise ImportError("dialect='sinabs' gives its neurons Sinabs's default surrogate, SingleExponential, "
                          "which is made from the sinabs package; install it, or pass surrogate=") from e
    from .convert import _sinabs_surrogate, _Unsupported

    try:
        return _sinabs_surrogate(SingleExponential(), theta)
    except _Unsupported as e:
        raise ValueError(str(e)) from None


def _cycle(graph) -> Optional[list]:
    """A list of node names forming a cycle of ``graph``'s edges, or None."""
    succ = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    state = {}  # 1: on the stack, 2: done
    for start in graph.nodes:
        if state.get(start):
            continue
        stack = [(start, iter(succ.get(start, ())))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(succ.get(nxt, ()))))
                path.append(nxt)
    return None


def load(graph, *, dialect: str = "spikingjelly", dt: Optional[float] = None, surrogate=None,
         alpha: Optional[float] = None, backend: str = "auto", dtype: torch.dtype = torch.float32,
         device="cpu") -> nn.Module:
    """A module computing ``graph`` (a ``nir.NIRGraph`` or the path of a NIR file) on ``[T, B, ...]``.

    Args:
        graph: the graph, or the path of a NIR file.
        dialect: the library that exported it: "spikingjelly" (and snn_fast's own ``export``),
            "snntorch", "norse" or "sinabs". It fixes how τ, r and the reset are read (the module
            docstring lists each).
        dt: the exporter's time step in the graph's unit; by default the dialect's: SpikingJelly and
            snnTorch 1e-4 (fixed in their code), Norse 1e-3 (``to_nir``'s default: pass the ``dt`` you
            exported with), Sinabs 1 (its τ is in steps).
        surrogate, alpha: the neurons' surrogate gradient (NIR has none); by default the exporter's
            default neuron's: SpikingJelly sigmoid (α = 4), snnTorch atan (α = 2), Norse SuperSpike
            ('super_spike', α = 1), Sinabs ``SingleExponential()`` at the layer's θ.
        backend, dtype, device: of the loaded modules.

    Raises:
        ValueError: a node, parameter or structure the dialect's neurons do not compute exactly; the
            message names the node and what differs.
    """
    nir, nirtorch = _import()
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    if dt is None:
        dt = _DEFAULT_DT[dialect]
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if isinstance(graph, str):
        graph = nir.read(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"load expects a nir.NIRGraph or a file path, got {type(graph).__name__}")
    names = {id(n): k for k, n in graph.nodes.items()}

    def who(node) -> str:
        return f"node {names.get(id(node), '?')!r} ({type(node).__name__})"

    def sg_kw(theta: float) -> dict:
        if surrogate is not None:
            return dict(surrogate=surrogate, alpha=alpha, backend=backend)
        if dialect == "sinabs":
            return dict(surrogate=_sinabs_single_exponential(theta), alpha=alpha, backend=backend)
        sg, a = _DEFAULT_SURROGATE[dialect]
        return dict(surrogate=sg, alpha=a if alpha is None else alpha, backend=backend)

    def params(node, *fields):
        out = []
        for f in fields:
            v = getattr(node, f)
            out.append(0.0 if v is None and f == "v_reset" else _uniform(v, f"{who(node)} {f}"))
        return out

    # --- SpikingJelly (and snn_fast.nir.export): Euler with dt; H = V + (X − (V − V_r))/τ or V − (V − V_r)/τ + X

    def sj_lif(node):
        tau, r, v_leak, theta, vr = params(node, "tau", "r", "v_leak", "v_threshold", "v_reset")
        tau /= dt
        if not np.isfinite(tau) or tau <= 1.0:
            raise ValueError(f"{who(node)}: tau / dt = {tau:g}: snn_fast's LIF needs τ > 1 steps")
        if _close(r, 1.0):
            decay_input = True
        elif _close(r, tau):
            decay_input = False
        else:
            raise ValueError(f"{who(node)}: r = {r:g}: snn_fast expresses r = 1 (decay_input=True) or "
                             f"r = τ/dt = {tau:g} (decay_input=False)")
        if not _close(v_leak, vr):
            raise ValueError(f"{who(node)}: v_leak={v_leak:g} ≠ v_reset={vr:g}: snn_fast's LIF leaks towards "
                             "its reset value")
        return LIF(tau, decay_input=decay_input, v_threshold=theta, v_reset=vr, **sg_kw(theta))

    def sj_if(node):
        r, theta, vr = params(node, "r", "v_threshold", "v_reset")
        if not _close(r * dt, 1.0):
            raise ValueError(f"{who(node)}: r = {r:g}: snn_fast's IF is r = 1/dt = {1.0 / dt:g}")
        return IF(v_threshold=theta, v_reset=vr, **sg_kw(theta))

    # --- snnTorch 1.0, as its import_from_nir reads a LIF: Leaky(β = 1 − dt/τ, θ / (r·dt/τ),
    # reset_mechanism='zero', reset_delay=False); H = β·V + X, fires on H > θ

    def snntorch_lif(node):
        tau, r, v_leak, theta, vr = params(node, "tau", "r", "v_leak", "v_threshold", "v_reset")
        if not np.isclose(v_leak, 0.0):
            raise ValueError(f"{who(node)}: v_leak = {v_leak:g}: snnTorch's Leaky leaks towards 0 (its import "
                             "refuses v_leak ≠ 0)")
        if vr != 0.0:
            raise ValueError(f"{who(node)}: v_reset = {vr:g}: snnTorch's import resets to 0 "
                             "(reset_mechanism='zero') whatever v_reset says")
        beta = 1.0 - dt / tau
        if not 0.0 < beta < 1.0:
            raise ValueError(f"{who(node)}: β = 1 − dt/tau = {beta:g}: snn_fast needs 0 < β < 1")
        w_scale = r * dt / tau
        if not np.isclose(w_scale, 1.0):  # snnTorch's hack_w_scale: the threshold divided, not the input scaled
            theta = theta / w_scale
        from .convert import _SNNTORCH_RESETS

        v_reset, timing, detach = _SNNTORCH_RESETS[("zero", False)]
        return LIF(decay=beta, decay_input=False, v_threshold=theta, v_reset=v_reset, detach_reset=detach,
                   reset_timing=timing, fire_at_threshold=False, **sg_kw(theta))

    def snntorch_if(node):
        raise ValueError(f"{who(node)}: snnTorch 1.0 exports no IF node, and its import reads one as "
                         "Leaky(beta=0.9, reset_mechanism='subtract'), a leaky neuron, not NIR's IF; "
                         "load it with dialect='spikingjelly' for NIR's IF")

    # --- Norse 1.1: to_nir writes tau = dt / tau_mem_inv (so dt·tau_mem_inv = dt²/tau), r = 1, no v_reset;
    # LIFBoxCell: v ← v + dt·tau_mem_inv·((x + v_leak) − v), fires on v > θ, v_reset 0 (reset_value)

    def norse_reset(node, vr):
        if vr != 0.0:
            raise ValueError(f"{who(node)}: v_reset = {vr:g}: Norse's export writes none and its import resets "
                             "to v_reset = 0 whatever the graph says")

    def norse_lif(node):
        tau, r, v_leak, theta, vr = params(node, "tau", "r", "v_leak", "v_threshold", "v_reset")
        norse_reset(node, vr)
        if not _close(r, 1.0):
            raise ValueError(f"{who(node)}: r = {r:g}: Norse's LIFBoxCell has no input resistance (its export "
                             "writes r = 1)")
        if v_leak != 0.0:
            raise ValueError(f"{who(node)}: v_leak = {v_leak:g} ≠ v_reset = 0: snn_fast's LIF leaks towards its "
                             "reset value")
        k = dt * dt / tau
        if not 0.0 < k < 1.0:
            raise ValueError(f"{who(node)}: dt·tau_mem_inv = dt²/tau = {k:g} (Norse writes tau = dt/tau_mem_inv): "
                             "snn_fast needs 0 < 1/τ < 1; is dt the one the graph was exported with?")
        return LIF(1.0 / k, decay_input=True, v_threshold=theta, v_reset=0.0, fire_at_threshold=False,
                   **sg_kw(theta))

    def norse_if(node):
        r, theta, vr = params(node, "r", "v_threshold", "v_reset")
        norse_reset(node, vr)
        if not _close(r, 1.0):
            raise ValueError(f"{who(node)}: r = {r:g}: Norse's IAFCell adds its input, v ← v + x (its export "
                             "writes r = 1)")
        return IF(v_threshold=theta, v_reset=0.0, fire_at_threshold=False, **sg_kw(theta))

    # --- Sinabs 3.1: τ in steps (dt = 1), α = exp(−dt/τ); LIF v ← α·v + (1 − α)·r·x (r = 1: norm_input=True;
    # r = 1/(1 − α): norm_input=False), IAF v ← v + r·dt·x; SingleSpike (fires on v ≥ θ), MembraneSubtract

    def sinabs_common(node, v_leak, vr):
        if v_leak != 0.0:
            raise ValueError(f"{who(node)}: v_leak = {v_leak:g}: Sinabs's neurons leak towards 0")
        if vr != 0.0:
            raise ValueError(f"{who(node)}: v_reset = {vr:g}: Sinabs's neurons subtract θ on a spike "
                             "(MembraneSubtract) and its export writes no v_reset")

    def sinabs_lif(node):
        tau, r, v_leak, theta, vr = params(node, "tau", "r", "v_leak", "v_threshold", "v_reset")
        sinabs_common(node, v_leak, vr)
        a = float(np.exp(-dt / tau))
        if not 0.0 < a < 1.0:
            raise ValueError(f"{who(node)}: α = exp(−dt/tau) = {a:g}: snn_fast needs 0 < α < 1")
        if _close(r, 1.0):
            norm_input = True
        elif _close(r * (1.0 - a), 1.0):
            norm_input = False
        else:
            raise ValueError(f"{who(node)}: r = {r:g}: Sinabs's LIF is r = 1 (norm_input=True) or "
                             f"r = 1/(1 − α) = {1.0 / (1.0 - a):g} (norm_input=False)")
        return LIF(decay=a, decay_input=norm_input, v_threshold=theta, v_reset=None, **sg_kw(theta))

    def sinabs_if(node):
        r, theta, vr = params(node, "r", "v_threshold", "v_reset")
        sinabs_common(node, 0.0, vr)
        if not _close(r * dt, 1.0):
            raise ValueError(f"{who(node)}: r = {r:g}: Sinabs's IAF adds its input, v ← v + x (r = 1/dt = "
                             f"{1.0 / dt:g})")
        return IF(v_threshold=theta, v_reset=None, **sg_kw(theta))

    neurons = {"spikingjelly": (sj_lif, sj_if), "snntorch": (snntorch_lif, snntorch_if),
               "norse": (norse_lif, norse_if), "sinabs": (sinabs_lif, sinabs_if)}[dialect]

    def map_cuba(node):
        raise ValueError(f"{who(node)}: a synaptic current state (current-based LIF: snnTorch Synaptic, Norse "
                         "LIFCell) that snn_fast's LIF family does not have")

    def map_li(node):
        raise ValueError(f"{who(node)}: a leaky integrator without spikes (Norse LIBoxCell, Sinabs ExpLeak); "
                         "snn_fast has spiking neurons only")

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

    builders = {nir.LIF: neurons[0], nir.IF: neurons[1], nir.CubaLIF: map_cuba, nir.LI: map_li,
                nir.Affine: map_affine, nir.Linear: map_affine, nir.Conv2d: map_conv2d, nir.Flatten: map_flatten}
    # every node built here first, so that an error names it (nirtorch's node_map is given only the node)
    built = {}
    for key, node in graph.nodes.items():
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        if isinstance(node, nir.NIRGraph):
            raise ValueError(f"node {key!r} is a subgraph (snnTorch writes RLeaky/RSynaptic as one, a recurrent "
                             "LIF): snn_fast loads flat feed-forward graphs")
        build = builders.get(type(node))
        if build is None:
            raise ValueError(f"node {key!r}: nir.{type(node).__name__} has no mapping in snn_fast.nir (supported: "
                             "LIF, IF, Affine, Linear, Conv2d, Flatten, Input, Output)")
        built[id(node)] = build(node)
    cycle = _cycle(graph)
    if cycle is not None:
        raise ValueError(f"the graph has a recurrent cycle {' → '.join(map(str, cycle))}: snn_fast loads "
                         "feed-forward graphs")
    node_map = {cls: (lambda node: built[id(node)]) for cls in builders}
    gm = nirtorch.nir_to_torch(graph, node_map, device=device, dtype=dtype)
    return NIRModel(gm).to(device)
