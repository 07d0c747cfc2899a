"""The fused Tempotron ops' contract: every backend implements one pair of ops (schemas in
``csrc/ops.cpp``; Triton's pair has the same signature, ``triton.py``)

    fwd(t_in [B, I], weight [O, I], T, tau, tau_s, scale) -> V [B, O, T]
    bwd(grad_V, t_in, weight, tau, tau_s, scale, need_t_grad, need_w_grad) -> (grad_t_in, grad_weight)

with t_in in ``args.times_dtype(weight.dtype)``; here are the checks of the ops defined in Python and
the fake (shape) functions of all of them."""
from __future__ import annotations

import math

import torch

from .args import times_dtype


def check_op_args(who: str, t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float, tau_s: float) -> None:
    """What an op defined in Python (Triton) checks itself; the C++ ops check the same in C++."""
    torch._check(t_in.dim() == 2 and weight.dim() == 2 and t_in.shape[1] == weight.shape[1],
                 lambda: f"{who}: t_in [B, I] and weight [O, I] expected, got {tuple(t_in.shape)}, "
                         f"{tuple(weight.shape)}")
    torch._check(t_in.dtype == times_dtype(weight.dtype),
                 lambda: f"{who}: t_in dtype {t_in.dtype} must be {times_dtype(weight.dtype)} for weight dtype "
                         f"{weight.dtype}")
    torch._check(t_in.device == weight.device, lambda: f"{who}: t_in and weight on different devices")
    torch._check(T >= 1 and 0 < tau < math.inf and 0 < tau_s < math.inf, lambda: f"{who}: bad constants")


def fake_fwd(t_in, weight, T, tau, tau_s, scale):
    """V [B, O, T] of any backend's fwd op, for fake (shape) functions."""
    torch._check(t_in.shape[1] == weight.shape[1])
    return weight.new_empty(t_in.shape[0], weight.shape[0], T)


def fake_bwd(grad_v, t_in, weight, tau, tau_s, scale, need_t_grad, need_w_grad):
    """(grad_t_in, grad_weight) of any backend's bwd op; an empty tensor for the one not asked for."""
    gt = torch.empty_like(t_in) if need_t_grad else t_in.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w_grad else weight.new_empty(0)
    return gt, gw
