"""The training methods of the source documents as named LIF option sets (docs/spec.md §2).

Each preset is a dict of ``lif_multistep`` / ``nn.LIF`` keyword arguments; ``lif(name, **over)``
builds the module and ``preset(name, **over)`` returns the arguments, overrides applied.

- ``stbp_tdbn`` (seed 004): u_t = λ·u_{t−1}·(1 − o_{t−1}) + x_t, λ = 0.25, θ = 0.5, rectangle
  surrogate of half-width a = 0.5 (α = 1/(2a) = 1).
- ``csbp`` (seed 000): mem = λ·mem·(1 − spike) + x, λ = 0.5, θ = 1, ZIF (triangle) surrogate,
  γ = 1 (α = 1/γ).
- ``asgl`` (seed 002): v = λ·v + I, hard reset not detached, noisy spike p = 0.5 (decays with
  ``nn.ASGLSchedule``); learn λ, θ and α with ``nn.PLIF``-style parameters (``learn=True`` here).
  α is the sigmoid's sharpness, σ(α·x); the document's "width" is its inverse (its code sets
  ``alpha = 1 / width``), so width w is ``alpha=1/w`` (examples/asgl_width_sweep.py).
- ``bpsa`` (seed 003): IF neuron (``bpsa_lif`` for the leaky one), θ = 0.5, hard reset to 0,
  spatial adjustment = ``spike_gate`` surrogate, temporal adjustment = detach_reset with κ = 0.2.
  The input ReLU is part of the model (apply ``torch.relu`` before the neuron).
- ``plif``: PLIF of Fang et al., τ initialised to 2, sigmoid surrogate.
"""
from __future__ import annotations

import math
from typing import Dict

PRESETS: Dict[str, dict] = {
    "stbp_tdbn": dict(decay=0.25, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=False,
                      surrogate="rectangle", alpha=1.0),
    "csbp": dict(decay=0.5, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                 surrogate="triangle", alpha=1.0),
    "asgl": dict(decay=0.5, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                 surrogate="sigmoid", alpha=4.0, noise_prob=0.5),
    "bpsa": dict(tau=math.inf, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                 surrogate="spike_gate", reset_residual=0.2),
    "bpsa_lif": dict(tau=2.0, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                     surrogate="spike_gate", reset_residual=0.2),
    "plif": dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="sigmoid",
                 alpha=4.0),
}


def preset(name: str, **overrides) -> dict:
    """Keyword arguments of the named preset, with ``overrides`` applied."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    out = dict(PRESETS[key])
    if "tau" in overrides:
        out.pop("decay", None)
    if "decay" in overrides:
        out.pop("tau", None)
    out.update(overrides)
    return out


def functional_kwargs(name: str, **overrides) -> dict:
    """The preset's arguments for ``snn_fast.lif_multistep`` (module-only options removed)."""
    kw = preset(name, **overrides)
    kw.pop("noise_prob", None)
    if "decay" in kw:
        kw["tau"] = None
    return kw


def lif(name: str, learn: bool = False, **overrides):
    """The named preset as a module: ``nn.LIF``, ``nn.IF`` for τ = ∞, ``nn.PLIF`` for 'plif'.

    ``learn=True`` (ASGL) makes λ (through PLIF's sigmoid), θ and α learnable.
    """
    from . import nn

    kw = preset(name, **overrides)
    if name.lower() == "plif" or learn:
        decay = kw.pop("decay", None)
        tau = kw.pop("tau", None)
        init_tau = 1.0 / (1.0 - decay) if decay is not None else tau
        if learn:
            kw.setdefault("learnable_threshold", True)
            kw.setdefault("learnable_alpha", True)
        return nn.PLIF(init_tau, **kw)
    if math.isinf(kw.get("tau", 0.0) or 0.0):
        kw.pop("tau")
        kw.pop("decay_input", None)
        return nn.IF(**kw)
    tau = kw.pop("tau", 2.0)
    return nn.LIF(tau, **kw)
