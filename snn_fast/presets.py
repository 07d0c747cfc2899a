"""The training methods of the source documents as named LIF option sets (docs/spec.md §5).

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
- ``bpsa`` (seed 003): IF neuron (``bpsa_lif`` for the leaky one), θ = 0.5, hard reset to 0.
  Spatial adjustment as the document's text gives it ("we normalize the membrane potential"):
  where the neuron fires S = V/sg(V), so ∂S/∂V = 1/V there and 0 elsewhere — the surrogate
  ``bpsa_norm`` (g′(x) = 1[x ≥ 0]/(α + x) at x = V − θ with α = θ), which this module registers.
  ``spatial="gate"`` gives the document's listed node instead: the ``spike_gate`` surrogate
  (∂S/∂V = 1 where fired). Temporal adjustment, both: detach_reset with the residual κ = 0.2.
  The input ReLU is part of the model (apply ``torch.relu`` before the neuron). ``bpsa_norm`` is a
  user-registered surrogate, so it runs on the reference, 'cpu' and 'triton' backends, not 'cuda'
  ('auto' picks one that runs it); the gate runs everywhere.
- ``plif``: PLIF of Fang et al., τ initialised to 2, sigmoid surrogate.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from . import surrogate as _sg

PRESETS: Dict[str, dict] = {
    "stbp_tdbn": dict(decay=0.25, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=False,
                      surrogate="rectangle", alpha=1.0),
    "csbp": dict(decay=0.5, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                 surrogate="triangle", alpha=1.0),
    "asgl": dict(decay=0.5, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=False,
                 surrogate="sigmoid", alpha=4.0, noise_prob=0.5),
    "bpsa": dict(tau=math.inf, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                 surrogate="bpsa_norm", alpha=0.5, reset_residual=0.2),
    "bpsa_lif": dict(tau=2.0, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                     surrogate="bpsa_norm", alpha=0.5, reset_residual=0.2),
    "plif": dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="sigmoid",
                 alpha=4.0),
}


# BPSA's spatial adjustment: the spike S = V/sg(V) where the neuron fired, so ∂S/∂V = 1/V there and 0
# elsewhere. As a surrogate of x = V − θ with α := θ: g′(x) = 1[x ≥ 0]/(α + x⁺) = 1/V where fired. g is
# a primitive of g′ (ln(1 + x⁺/α)), emitted only where a noise mask asks for the analog value; ∂g/∂α
# lets α be learned and the registration check it. x⁺ is x where x > 0, else 0 (NaN → 0: g, g′ and
# ∂g/∂α stay finite, the same on every backend).
BPSA_NORM = "bpsa_norm"
BPSA_SPATIAL = ("norm", "gate")


def _pos(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def _bpsa_norm_g(x, a):
    return torch.log1p(_pos(x) / a)


def _bpsa_norm_dg(x, a):
    return torch.where(x >= 0, 1 / (a + _pos(x)), torch.zeros_like(x))


def _bpsa_norm_dalpha(x, a):
    xp = _pos(x)
    return -xp / (a * (a + xp))


def register_bpsa_norm() -> _sg.Surrogate:
    """Register the ``bpsa_norm`` surrogate (once per process; ``preset``/``lif`` call this for the
    BPSA presets). Call it before loading a pickled module that uses it in a fresh process."""
    if BPSA_NORM in _sg.names():
        return _sg.get(BPSA_NORM)
    try:
        from . import _bpsa_triton as tr

        fns = (tr.bpsa_norm_g, tr.bpsa_norm_dg, tr.bpsa_norm_dalpha)
    except ImportError:  # no Triton: the reference and 'cpu' run it
        fns = None
    try:
        return _sg.register_surrogate(BPSA_NORM, _bpsa_norm_g, _bpsa_norm_dg, _bpsa_norm_dalpha, alpha=0.5,
                                      triton=fns)
    except ValueError:  # another thread registered it between the check and here
        if BPSA_NORM in _sg.names():
            return _sg.get(BPSA_NORM)
        raise


def preset(name: str, spatial: Optional[str] = None, **overrides) -> dict:
    """Keyword arguments of the named preset, with ``overrides`` applied.

    ``spatial`` (BPSA presets only): ``"norm"`` (default, ∂S/∂V = 1/V where fired: the ``bpsa_norm``
    surrogate with α = θ, following an overridden ``v_threshold``) or ``"gate"`` (∂S/∂V = 1 where
    fired: ``spike_gate``).
    """
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    out = dict(PRESETS[key])
    if spatial is not None:
        if not key.startswith("bpsa"):
            raise ValueError(f"spatial= is an option of the BPSA presets only, not of {name!r}")
        if spatial not in BPSA_SPATIAL:
            raise ValueError(f"spatial must be one of {BPSA_SPATIAL}, got {spatial!r}")
        if spatial == "gate":
            out["surrogate"] = "spike_gate"
            out.pop("alpha")
    if out.get("surrogate") == BPSA_NORM and "v_threshold" in overrides and "alpha" not in overrides:
        out["alpha"] = float(overrides["v_threshold"])  # α = θ: g′ = 1/V where fired
    if "tau" in overrides:
        out.pop("decay", None)
    if "decay" in overrides:
        out.pop("tau", None)
    out.update(overrides)
    if out.get("surrogate") == BPSA_NORM:
        register_bpsa_norm()
    return out


def functional_kwargs(name: str, spatial: Optional[str] = None, **overrides) -> dict:
    """The preset's arguments for ``snn_fast.lif_multistep`` (module-only options removed)."""
    kw = preset(name, spatial, **overrides)
    kw.pop("noise_prob", None)
    if "decay" in kw:
        kw["tau"] = None
    return kw


def lif(name: str, learn: bool = False, spatial: Optional[str] = None, **overrides):
    """The named preset as a module: ``nn.LIF``, ``nn.IF`` for τ = ∞, ``nn.PLIF`` for 'plif'.

    ``learn=True`` (ASGL) makes λ (through PLIF's sigmoid), θ and α learnable. ``spatial``: see
    :func:`preset`.
    """
    from . import nn

    kw = preset(name, spatial, **overrides)
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
