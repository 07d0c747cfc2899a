"""Tempotron layer and Gaussian tuning-curve encoder (docs/spec.md §6, seed 001: SpikingJelly's
``neuron.Tempotron`` and ``encoding.GaussianTuning``), on the fused Tempotron op."""
from __future__ import annotations


import torch
import torch.nn as nn

from .. import backends
from ..ops.tempotron import args as tempotron_args
from ..ops.tempotron.function import tempotron_membrane
from ..ops.tempotron.reference import mse_loss as _mse_loss
from ..ops.tempotron.reference import outputs_from_v


class Tempotron(nn.Module):
    """``out_features`` tempotrons reading ``in_features`` input spike times over T steps.

    V(t) = v0·Σ_i w_i·K(t − t_i), K(u) = (e^{−u/τ} − e^{−u/τ_s})·1[u ≥ 0], v0 chosen so that the
    PSP of a unit weight peaks at ``v_threshold``. The weight is ``fc.weight`` ``[out, in]`` and is
    initialised like the seed's ``nn.Linear(in_features, out_features, bias=False)``. τ = τ_s is
    allowed (the normalised PSP is then the alpha kernel; ``v0`` is ``inf`` there, and the op
    evaluates v0·K in its stable form, ``tempotron_args.scale_of``).
    """

    def __init__(self, in_features: int, out_features: int, T: int, tau: float = 15.0, tau_s: float = 15.0 / 4,
                 v_threshold: float = 1.0, backend: str = "auto"):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        tempotron_args.check_constants(T, tau, tau_s, v_threshold)
        backends.check_name(backend)
        self.in_features, self.out_features = in_features, out_features
        self.T, self.tau, self.tau_s, self.v_threshold = T, float(tau), float(tau_s), float(v_threshold)
        self.backend = backend
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.v0 = tempotron_args.v0_of(self.tau, self.tau_s, self.v_threshold)  # the seed's, for reference

    @property
    def weight(self) -> torch.Tensor:
        return self.fc.weight

    def forward(self, t_in: torch.Tensor, ret_type: str = "v_max") -> torch.Tensor:
        """t_in ``[B, in_features]`` spike times (negative = none) → ``'v'`` ``[B, out, T]``,
        ``'v_max'`` ``[B, out]`` or ``'spikes'`` ``[B, out]`` (the batch dimension is kept for B = 1)."""
        tempotron_args.check_ret_type(ret_type)
        if t_in.dim() != 2 or t_in.shape[1] != self.in_features:
            raise ValueError(f"t_in must be [batch, in_features = {self.in_features}], got {tuple(t_in.shape)}")
        # v0=None: the op's own normalisation for (τ, τ_s, θ) — self.v0's value, without its cancellation
        v = tempotron_membrane(t_in, self.fc.weight, self.T, self.tau, self.tau_s, None, self.v_threshold,
                               self.backend)
        return outputs_from_v(v, self.T, self.v_threshold, ret_type)

    @staticmethod
    def mse_loss(v_max: torch.Tensor, v_threshold, label: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Σ((v_max − θ)·wrong)² / B over the wrongly classified neurons (seed)."""
        return _mse_loss(v_max, v_threshold, label, num_classes)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, T={self.T}, tau={self.tau}, "
                f"tau_s={self.tau_s}, v_threshold={self.v_threshold}")


class GaussianTuning:
    """Gaussian tuning-curve encoder (Bohte et al. 2002): each of n features → m spike times.

    μ_j = x_min + (2j − 3)/2·(x_max − x_min)/(m − 2), σ = (x_max − x_min)/(1.5·(m − 2)), j = 1 … m;
    t = round(T·(1 − exp(−(x − μ)²/(2σ²)))), and t ≥ T becomes −1 (no spike). Tensors live on
    ``x_min.device``.
    """

    def __init__(self, n: int, m: int, x_min: torch.Tensor, x_max: torch.Tensor):
        if isinstance(m, bool) or not isinstance(m, int) or m <= 2:
            raise ValueError(f"m (neurons per feature) must be an int > 2, got {m!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (number of features) must be a positive int, got {n!r}")
        x_min = torch.as_tensor(x_min, dtype=torch.get_default_dtype())
        x_max = torch.as_tensor(x_max, dtype=torch.get_default_dtype(), device=x_min.device)
        if x_min.shape != (n,) or x_max.shape != (n,):
            raise ValueError(f"x_min and x_max must be [n] = [{n}], got {tuple(x_min.shape)} and {tuple(x_max.shape)}")
        if not bool((x_max > x_min).all()):
            raise ValueError("x_max must exceed x_min for every feature (σ would be ≤ 0)")
        self.m, self.n = m, n
        i = torch.arange(1, m + 1).unsqueeze(0).repeat(n, 1).to(x_min)
        span = (x_max - x_min).unsqueeze(-1).repeat(1, m)
        self.mu = x_min.unsqueeze(-1).repeat(1, m) + (2 * i - 3) / 2 * span / (m - 2)
        self.sigma2 = (1 / 1.5 * (x_max - x_min) / (m - 2)).unsqueeze(-1).square().repeat(1, m)

    def encode(self, x: torch.Tensor, max_spike_time: int = 50) -> torch.Tensor:
        """x ``[B, n, k]`` → spike times ``[B, n, k, m]`` in [0, max_spike_time) or −1."""
        if x.dim() != 3 or x.shape[1] != self.n:
            raise ValueError(f"x must be [batch, n = {self.n}, k], got {tuple(x.shape)}")
        if isinstance(max_spike_time, bool) or not isinstance(max_spike_time, int) or max_spike_time < 1:
            raise ValueError(f"max_spike_time must be a positive int, got {max_spike_time!r}")
        if bool(torch.isnan(x).any()):
            # A NaN feature would come out as NaN spike times, which the Tempotron reads as "no
            # spike" only by accident (NaN >= 0 is False); say where instead.
            raise ValueError(f"x contains NaN ({int(torch.isnan(x).sum())} of {x.numel()} values): "
                             "GaussianTuning.encode needs finite or infinite features (±inf → no spike)")
        B, n, k = x.shape
        mu, sigma2 = self.mu.to(x), self.sigma2.to(x)
        x = x.permute(0, 2, 1).reshape(-1, n).unsqueeze(-1).repeat(1, 1, self.m)  # [B·k, n, m]
        y = torch.exp(-(x - mu).square() / 2 / sigma2)
        out = (max_spike_time * (1 - y)).round()
        out[out >= max_spike_time] = -1
        return out.view(B, k, n, self.m).permute(0, 2, 1, 3)


__all__ = ["Tempotron", "GaussianTuning"]
