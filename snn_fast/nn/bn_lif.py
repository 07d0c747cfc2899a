"""Batch norm and a LIF-family neuron in one module (``snn_fast.bn_lif``, docs/spec.md §12).

``BNLIF`` holds batch norm's parameters and buffers under ``nn.BatchNorm``'s names (``weight``,
``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so a BatchNorm's state dict
loads into it and its own into a BatchNorm; the neuron (an ``nn.LIF``, ``nn.IF`` or ``nn.PLIF``) is
its submodule ``neuron``, whose options, learnable parameters and membrane it uses. ``TDBNLIF`` is the
same with tdBN's normalisation to N(0, (α·θ)²) (θ the neuron's threshold) and ``nn.TDBatchNorm``'s
names (no ``num_batches_tracked``). Under DDP each rank normalises over its own batch, as
``nn.BatchNorm`` does (no SyncBatchNorm).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.bn_lif.function import bn_lif_apply
from ..ops.lif import args as lif_args
from .neuron import LIF, BaseLIF


class BNLIF(nn.Module):
    """``neuron(BatchNorm(x))`` for x ``[T, B, C, *]`` (statistics over T, B and space), fused.

    ``neuron``: the neuron to drive (default ``nn.LIF(**lif_kwargs)``); its ``step_mode='s'`` takes
    ``[B, C, *]`` per call (batch norm over B, the membrane carried). The batch-norm arguments are
    ``nn.BatchNorm2d``'s (``momentum=None``: the cumulative average).
    """

    _tdbn_alpha: Optional[float] = None
    _tracks_batches = True  # has num_batches_tracked (nn.BatchNorm does, nn.TDBatchNorm does not)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, neuron: Optional[BaseLIF] = None, **lif_kwargs):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if neuron is None:
            neuron = LIF(**lif_kwargs)
        elif lif_kwargs:
            raise TypeError(f"give either neuron= or the LIF options, not both: {sorted(lif_kwargs)}")
        if not isinstance(neuron, BaseLIF):
            raise TypeError(f"neuron must be an snn_fast.nn LIF-family module, got {type(neuron).__name__}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            if self._tracks_batches:
                self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = None
        self.neuron = neuron

    @property
    def step_mode(self) -> str:
        return self.neuron.step_mode

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        self.neuron.step_mode = mode

    def _factor(self) -> float:
        """nn.BatchNorm's exponential_average_factor (and its num_batches_tracked count)."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        nbt = getattr(self, "num_batches_tracked", None)
        if nbt is not None:
            nbt.add_(1)
            if self.momentum is None:
                return 1.0 / float(nbt)
        return 0.1 if self.momentum is None else self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.neuron
        single = n.step_mode == "s"
        if single:
            x = x.unsqueeze(0)
        lif_args.check_x(x)
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects [T, B, C={self.num_features}, ...], got {tuple(x.shape)}")
        mask = lif_args.noise_mask_like(x, n.noise_prob) if self.training and n.noise_prob > 0.0 else None
        factor = self._factor()
        track = not self.training or self.track_running_stats
        rm = self.running_mean if track else None
        rv = self.running_var if track else None
        bn_training = self.training or rm is None
        out = bn_lif_apply(x, self.weight, self.bias, rm, rv, bn_training, factor, self.eps, n.v, n.leak(),
                           n.v_threshold, n.alpha, n.flags, n.sg, mask, n.store_v_seq and not single,
                           self._tdbn_alpha, n.backend, n.save)
        n.__dict__["v"] = out[1]
        if n.store_v_seq and not single:
            n.__dict__["v_seq"] = out[2]
        return out[0].squeeze(0) if single else out[0]

    def reset(self) -> None:
        self.neuron.reset()

    def detach(self) -> None:
        self.neuron.detach()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class TDBNLIF(BNLIF):
    """``neuron(TDBatchNorm(x))`` fused: y = weight·α·θ·x̂ + bias with θ the neuron's threshold
    (docs/spec.md §7.1); ``nn.TDBatchNorm``'s parameters and buffers."""

    _tracks_batches = False

    def __init__(self, num_features: int, alpha: float = 1.0, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, neuron: Optional[BaseLIF] = None,
                 **lif_kwargs):
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, neuron=neuron, **lif_kwargs)
        self.alpha = float(alpha)
        self._tdbn_alpha = self.alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, " + super().extra_repr()
