"""The Tempotron's user-facing arguments (docs/spec.md §6): their checks, and the PSP constants derived
from them, shared by every backend. What the fused ops take and return is ``contract.py``."""
from __future__ import annotations

import math
from typing import Tuple

import torch

RET_TYPES = ("v", "v_max", "spikes")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_constants(T, tau, tau_s, v_threshold) -> None:
    """τ = τ_s is allowed: the normalised PSP is then the alpha kernel (see ``scale_of``)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (number of time steps) must be a positive int, got {T!r}")
    for name, v in (("tau", tau), ("tau_s", tau_s), ("v_threshold", v_threshold)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")


# --- the PSP kernel in a form that stays accurate as τ_s → τ (csrc/include/snn_fast/tempotron.h) ---
#
# K(u) = e^{−u/τ} − e^{−u/τ_s} = δ_signed·K̃(u),  δ_signed = 1/τ_s − 1/τ,
# K̃(u) = e^{−u/τ_slow}·u·φ(u·δ),  δ = |δ_signed| = 1/τ_fast − 1/τ_slow,  φ(z) = −expm1(−z)/z, φ(0) = 1.
# K̃ > 0 for u > 0 whatever the order of τ and τ_s, and at τ = τ_s it is the alpha kernel u·e^{−u/τ}.
# The seed's v0·K(u) is scale·K̃(u) with scale = v0·δ_signed = θ / K̃(t_max).


def slow_fast(tau: float, tau_s: float) -> Tuple[float, float]:
    """(τ_slow, τ_fast) = (max, min) of the two time constants."""
    return (tau, tau_s) if tau >= tau_s else (tau_s, tau)


def rate_gap(tau: float, tau_s: float) -> float:
    """δ_signed = 1/τ_s − 1/τ, as (τ − τ_s)/τ/τ_s: τ − τ_s is exact when the two are within a factor 2
    (Sterbenz), so δ keeps full relative precision as τ_s → τ (1/τ_s − 1/τ would not)."""
    return (tau - tau_s) / tau / tau_s


def phi(z: float) -> float:
    """φ(z) = (1 − e^{−z})/z, 1 at z = 0."""
    return 1.0 if z == 0 else -math.expm1(-z) / z


def t_peak(tau: float, tau_s: float) -> float:
    """Time of the PSP's peak, t_max = τ·τ_s·ln(τ/τ_s)/(τ − τ_s) = τ_slow·log1p(z)/z with
    z = (τ_slow − τ_fast)/τ_fast; τ_slow at τ = τ_s."""
    slow, fast = slow_fast(tau, tau_s)
    z = (slow - fast) / fast
    return slow if z == 0 else slow * (math.log1p(z) / z)


def kernel_shape(u: float, tau: float, tau_s: float) -> float:
    """K̃(u) for u ≥ 0 (a Python float)."""
    slow, fast = slow_fast(tau, tau_s)
    return math.exp(-u / slow) * u * phi(u * abs(rate_gap(tau, tau_s)))


def scale_of(tau: float, tau_s: float, v_threshold: float) -> float:
    """The factor of K̃ that makes a unit weight's PSP peak at v_threshold: θ / K̃(t_max). Finite and
    accurate for every τ, τ_s > 0, including τ = τ_s."""
    return v_threshold / kernel_shape(t_peak(tau, tau_s), tau, tau_s)


def scale_from_v0(v0: float, tau: float, tau_s: float) -> float:
    """The kernels' scale for a given seed-style v0 (V = v0·Σ W·K): v0·δ_signed (0 at τ = τ_s, where K ≡ 0)."""
    return v0 * rate_gap(tau, tau_s)


def v0_of(tau: float, tau_s: float, v_threshold: float) -> float:
    """Normalisation so that the PSP peak v0·K(t_max) equals v_threshold (the seed's v0), computed as
    scale / δ_signed (accurate as τ_s → τ). At τ = τ_s, K ≡ 0 and v0 is infinite: ``math.inf``
    (the functional and the module then use ``scale_of``, which stays finite)."""
    gap = rate_gap(tau, tau_s)
    return math.inf if gap == 0 else scale_of(tau, tau_s, v_threshold) / gap


def kernel_consts(tau: float, tau_s: float):
    """(1/τ_slow, 1/τ_fast, δ, da, ds, c1) of the filter recurrences, as tempotron_consts in
    csrc/include/snn_fast/tempotron.h computes them (in float64)."""
    slow, fast = slow_fast(tau, tau_s)
    delta = (slow - fast) / slow / fast
    da = math.exp(-1.0 / slow)
    return 1.0 / slow, 1.0 / fast, delta, da, math.exp(-1.0 / fast), da * phi(delta)


def check_ret_type(ret_type) -> None:
    if ret_type not in RET_TYPES:
        raise ValueError(f"unknown ret_type {ret_type!r}; choose one of {RET_TYPES}")


def check_inputs(t_in: torch.Tensor, weight: torch.Tensor) -> Tuple[int, int, int]:
    if not isinstance(t_in, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("t_in and weight must be tensors")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
    if t_in.dim() != 2:
        raise ValueError(f"t_in must be [batch, in_features] spike times, got shape {tuple(t_in.shape)}")
    O, I = weight.shape
    if t_in.shape[1] != I:
        raise ValueError(f"t_in has {t_in.shape[1]} inputs but weight expects in_features = {I} "
                         f"(t_in {tuple(t_in.shape)}, weight {tuple(weight.shape)})")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"weight must be float16/bfloat16/float32/float64, got {weight.dtype}")
    if t_in.dtype == torch.bool or t_in.is_complex():
        raise TypeError(f"t_in must hold real or integer spike times, got {t_in.dtype}")
    if t_in.device != weight.device:
        raise ValueError(f"t_in is on {t_in.device} but weight is on {weight.device}")
    return t_in.shape[0], I, O


def times_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Spike times are float32 (float64 with a float64 weight) whatever the weight dtype: in bfloat16
    a time of 257 would round to 256 (8 significant bits), in float16 2049 to 2048."""
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def as_times(t_in: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Spike times in ``times_dtype(weight.dtype)`` (integer times become floats; negative = no spike)."""
    dt = times_dtype(weight.dtype)
    return t_in if t_in.dtype == dt else t_in.to(dt)
