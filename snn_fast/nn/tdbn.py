"""Threshold-dependent batch norm (tdBN, seed 004; docs/spec.md §7.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TDBatchNorm(nn.Module):
    """Per-channel batch norm of ``[T, B, C, *]`` over (T, B, *), normalised to N(0, (α·θ)²), then the
    learned affine: y = weight·α·θ·(x − μ)/√(σ² + ε) + bias.

    α = 1 by default, 1/√2 before a residual add (the seed's basic block); θ is the following
    neurons' threshold. Running statistics as ``nn.BatchNorm``.
    """

    def __init__(self, num_features: int, alpha: float = 1.0, v_threshold: float = 1.0, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if alpha <= 0 or v_threshold <= 0:
            raise ValueError(f"alpha and v_threshold must be > 0, got {alpha}, {v_threshold}")
        self.num_features, self.alpha, self.v_threshold = num_features, float(alpha), float(v_threshold)
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
        else:
            self.running_mean = self.running_var = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(f"TDBatchNorm expects [T, B, C={self.num_features}, ...], got {tuple(x.shape)}")
        scale = self.alpha * self.v_threshold
        w = self.weight * scale if self.weight is not None else torch.full(
            (self.num_features,), scale, dtype=x.dtype, device=x.device)
        use_batch = self.training or not self.track_running_stats
        y = F.batch_norm(x.flatten(0, 1), self.running_mean, self.running_var, w, self.bias, use_batch,
                         self.momentum, self.eps)
        return y.view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha={self.alpha:g}, v_threshold={self.v_threshold:g}, eps={self.eps:g}"
