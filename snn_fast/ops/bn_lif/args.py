"""The batch-norm arguments of ``bn_lif`` (the LIF ones are ``snn_fast.ops.lif.args``'): their checks
and the layout the kernels read, x as [T, N] with N = B·C·S and channel (n // S) % C."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..lif import args as lif_args


def layout(x: torch.Tensor) -> Tuple[int, int]:
    """(C, S) of x [T, B, C, *]: the channels and the spatial size (1 without spatial dims)."""
    if x.dim() < 3:
        raise ValueError(f"bn_lif: x must be [T, B, C, *] (at least 3 dims), got shape {tuple(x.shape)}")
    return x.shape[2], math.prod(x.shape[3:])


def check(x: torch.Tensor, weight, bias, running_mean, running_var, training: bool, momentum, eps,
          tdbn_alpha: Optional[float]) -> None:
    """Every batch-norm argument, once, at the public entry point."""
    lif_args.check_x(x)
    C, _ = layout(x)
    if C < 1:
        raise ValueError("bn_lif: x has C = 0 channels")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"bn_lif: {name} must be a tensor or None, got {type(t).__name__}")
        if t.dim() != 1 or t.shape[0] != C:  # not `t.shape != (C,)`: torch.Size's == costs ~8 µs a call
            raise ValueError(f"bn_lif: {name} must be [C] = [{C}] (x's dim 2), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"bn_lif: {name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"bn_lif: {name} is on {t.device} but x is on {x.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("bn_lif: give both running_mean and running_var, or neither")
    if not isinstance(training, bool):
        raise TypeError(f"bn_lif: training must be a bool, got {type(training).__name__}")
    if not training and running_mean is None:
        pass  # as F.batch_norm: no running statistics, so the batch's own are used
    lif_args._check_scalar("momentum", momentum, lo=0.0, hi=1.0, lo_open=False, hi_open=False)
    lif_args._check_scalar("eps", eps, lo=0.0, lo_open=False)
    if tdbn_alpha is not None:
        if isinstance(tdbn_alpha, torch.Tensor):
            raise TypeError("bn_lif: tdbn_alpha must be a float (tdBN's α) or None")
        lif_args._check_scalar("tdbn_alpha", tdbn_alpha, lo=0.0)


def uses_batch_stats(training: bool, running_mean) -> bool:
    """Normalise with the batch's statistics (training, or no running statistics), as F.batch_norm."""
    return training or running_mean is None


def check_count(x: torch.Tensor, C: int) -> int:
    """Values per channel; batch statistics need more than one (nn.BatchNorm's error otherwise)."""
    n = x.numel() // C
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    return n
