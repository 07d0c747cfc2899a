"""Argument checks and constants shared by every Tempotron backend (SPEC §5), and the op contract's shapes."""
from __future__ import annotations

import math
from typing import Tuple

import torch

RET_TYPES = ("v", "v_max", "spikes")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_constants(T, tau, tau_s, v_threshold) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T (number of time steps) must be a positive int, got {T!r}")
    for name, v in (("tau", tau), ("tau_s", tau_s), ("v_threshold", v_threshold)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if tau == tau_s:
        # K = e^{-u/τ} − e^{-u/τ_s} vanishes identically and t_max = τ·τ_s·ln(τ/τ_s)/(τ − τ_s) is 0/0.
        raise ValueError(f"tau and tau_s must differ (both are {tau}): the PSP kernel would be identically 0")


def v0_of(tau: float, tau_s: float, v_threshold: float) -> float:
    """Normalisation so that the PSP peak v0·K(t_max) equals v_threshold (the seed's formula)."""
    t_max = (tau * tau_s * math.log(tau / tau_s)) / (tau - tau_s)
    return v_threshold / (math.exp(-t_max / tau) - math.exp(-t_max / tau_s))


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


def as_times(t_in: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Spike times in the weight's dtype (integer times become floats; negative = no spike)."""
    return t_in if t_in.dtype == weight.dtype else t_in.to(weight.dtype)


# --- the fused ops' contract (function.py), checked and shaped for Python-defined ops -------------


def check_op_args(who: str, t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float, tau_s: float) -> None:
    """What an op defined in Python (Triton) checks itself; the C++ ops check the same in C++."""
    torch._check(t_in.dim() == 2 and weight.dim() == 2 and t_in.shape[1] == weight.shape[1],
                 lambda: f"{who}: t_in [B, I] and weight [O, I] expected, got {tuple(t_in.shape)}, "
                         f"{tuple(weight.shape)}")
    torch._check(t_in.dtype == weight.dtype, lambda: f"{who}: t_in dtype {t_in.dtype} != weight dtype {weight.dtype}")
    torch._check(t_in.device == weight.device, lambda: f"{who}: t_in and weight on different devices")
    torch._check(T >= 1 and tau > 0 and tau_s > 0 and tau != tau_s, lambda: f"{who}: bad constants")


def fake_fwd(t_in, weight, T, tau, tau_s, v0):
    """V [B, O, T] of any backend's fwd op, for fake (shape) functions."""
    torch._check(t_in.shape[1] == weight.shape[1])
    return weight.new_empty(t_in.shape[0], weight.shape[0], T)


def fake_bwd(grad_v, t_in, weight, tau, tau_s, v0, need_t_grad, need_w_grad):
    """(grad_t_in, grad_weight) of any backend's bwd op; an empty tensor for the one not asked for."""
    gt = torch.empty_like(t_in) if need_t_grad else t_in.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w_grad else weight.new_empty(0)
    return gt, gw
