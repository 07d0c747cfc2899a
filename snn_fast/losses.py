"""Losses from the source documents (docs/spec.md §7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def chaotic_loss(h: torch.Tensor, z: float, I0: float = 0.65, s: float = 10.0) -> torch.Tensor:
    """CSBP's chaotic loss (seed 000): −z·Σ[I0·log σ(h/s) + (1 − I0)·log(1 − σ(h/s))].

    ``h`` is a layer's pre-activation or a LIF membrane. Written with log-sigmoid, so it stays finite
    where the seed's ``log(sigmoid(·))`` overflows to −inf (|h/s| ≳ 100 in float32).
    """
    if not 0.0 <= I0 <= 1.0:
        raise ValueError(f"I0 must be in [0, 1], got {I0}")
    if s <= 0:
        raise ValueError(f"s must be > 0, got {s}")
    a = h / s
    return -z * (I0 * F.logsigmoid(a) + (1 - I0) * F.logsigmoid(-a)).sum()


class ChaoticLoss(torch.nn.Module):
    """The chaotic loss with its annealed weight: z ← β·z at every ``step()`` (per step or epoch)."""

    def __init__(self, z: float = 10.0, beta: float = 0.9995, I0: float = 0.65, s: float = 10.0):
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.z, self.beta, self.I0, self.s = float(z), float(beta), float(I0), float(s)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return chaotic_loss(h, self.z, self.I0, self.s)

    def step(self) -> None:
        self.z *= self.beta

    def extra_repr(self) -> str:
        return f"z={self.z:g}, beta={self.beta:g}, I0={self.I0:g}, s={self.s:g}"
