"""Pure-PyTorch Tempotron: the seed's computation (SpikingJelly ``neuron.Tempotron``).

It materialises the dense PSP tensor ``[B, I, T]`` and multiplies it by the weight: O(B·I·T) memory,
O(B·I·O·T) work. This is the definition the fused kernels are checked against; it never calls them.
Deliberate differences from the seed: ``'v_max'``/``'spikes'`` keep the batch dimension for B = 1
(the seed's ``squeeze()`` drops it, and drops O too when O = 1); the PSP v0·K(u) is evaluated as
scale·K̃(u) (``args``: the same function, without the cancellation of two nearly equal
exponentials as τ_s → τ, and defined at τ = τ_s); spike times stay float32 (float64 with a float64
weight) and the PSP is rounded to the weight dtype only before the product with the weight.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import args


def psp_shape(t: torch.Tensor, tau: float, tau_s: float) -> torch.Tensor:
    """K̃(u) = e^{−u/τ_slow}·u·φ(u·δ)·1[u ≥ 0] = K(u)/(1/τ_s − 1/τ) (``args``), the alpha kernel
    u·e^{−u/τ} at τ = τ_s.

    The seed evaluates the exponentials at u < 0 too and multiplies by the mask; in float16
    e^{−u/τ_s} overflows for u < −τ_s·ln 65504 ≈ −42 and inf − inf = NaN survives the mask. Here
    u < 0 is replaced by 0 first: identical values and gradients (0) wherever the seed's are finite.
    φ(z) = −expm1(−z)/z is evaluated at z = 1 where z = 0 (u = 0) and replaced by its limit 1, so its
    gradient there is finite too.
    """
    causal = t >= 0
    u = torch.where(causal, t, torch.zeros_like(t))
    slow, _ = args.slow_fast(tau, tau_s)
    delta = abs(args.rate_gap(tau, tau_s))
    shape = torch.exp(-u / slow) * u
    if delta != 0:
        z = u * delta
        zero = z == 0
        z1 = torch.where(zero, torch.ones_like(z), z)
        shape = shape * torch.where(zero, torch.ones_like(z), -torch.expm1(-z1) / z1)
    return shape * causal.to(t.dtype)


def psp_kernel(t: torch.Tensor, tau: float, tau_s: float) -> torch.Tensor:
    """K(u) = (e^{−u/τ} − e^{−u/τ_s})·1[u ≥ 0] (without v0), as δ_signed·K̃(u) (no cancellation)."""
    return args.rate_gap(tau, tau_s) * psp_shape(t, tau, tau_s)


def membrane_reference(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float, tau_s: float,
                       v0: Optional[float] = None, *, scale: Optional[float] = None) -> torch.Tensor:
    """V [B, O, T] = v0·Σ_i W[o,i]·K(t − t_i)·1[t_i ≥ 0] = scale·Σ_i W[o,i]·K̃(t − t_i)·1[t_i ≥ 0],
    via the dense [B, I, T] PSP tensor. Give ``v0`` (the seed's) or ``scale`` (``args.scale_of``).
    The PSP is computed in t_in's dtype and rounded to the weight's before the product."""
    if (v0 is None) == (scale is None):
        raise TypeError("membrane_reference: give exactly one of v0 and scale")
    if scale is None:
        scale = args.scale_from_v0(v0, tau, tau_s)
    B, I = t_in.shape
    t = torch.arange(0, T, device=t_in.device)
    t = t.view(1, 1, T).repeat(B, I, 1)
    in_spikes = t_in.unsqueeze(-1).repeat(1, 1, T)
    # A silent input (t_i < 0, NaN) contributes 0 with gradient 0: its time difference is made acausal
    # before the kernel, since t − (−inf) = inf would give e^{−inf}·inf = NaN, which a mask after it keeps.
    fires = in_spikes >= 0
    diff = torch.where(fires, t - in_spikes, torch.full_like(in_spikes, -1.0))
    v_in = scale * psp_shape(diff, tau, tau_s) * fires.to(in_spikes.dtype)
    return F.linear(v_in.permute(0, 2, 1).to(weight.dtype), weight).permute(0, 2, 1)


def outputs_from_v(v_out: torch.Tensor, T: int, v_threshold: float, ret_type: str) -> torch.Tensor:
    """'v' / 'v_max' / 'spikes' from the membrane, with the seed's formulas (shared by all backends)."""
    if ret_type == "v":
        return v_out
    if ret_type == "v_max":
        return F.max_pool1d(v_out, kernel_size=T).squeeze(-1)
    if ret_type == "spikes":
        B, O = v_out.shape[:2]
        max_index = v_out.argmax(dim=2)
        t = torch.arange(0, T, device=v_out.device, dtype=v_out.dtype).view(1, 1, T).repeat(B, O, 1)
        max_index_soft = (F.softmax(v_out * T, dim=2) * t).sum(dim=2)
        v_max = F.max_pool1d(v_out, kernel_size=T).squeeze(-1)
        mask = (v_max >= v_threshold).to(v_out.dtype) * 2 - 1
        max_index = max_index.to(v_out.dtype) * mask
        max_index_soft = max_index_soft * mask
        return max_index_soft + (max_index - max_index_soft).detach()
    args.check_ret_type(ret_type)
    raise AssertionError("unreachable")


def tempotron_reference(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0,
                        tau_s: float = 15.0 / 4, v_threshold: float = 1.0, ret_type: str = "v_max") -> torch.Tensor:
    """The seed's ``Tempotron.forward(in_spikes, ret_type)`` with ``fc.weight = weight``.

    t_in [B, I]: spike times (real or integer; negative = no spike); weight [O, I].
    Returns V [B, O, T] ('v'), the peak [B, O] ('v_max') or straight-through spike times [B, O]
    ('spikes', −t where the peak stays below threshold: the seed multiplies the index by −1).
    """
    args.check_constants(T, tau, tau_s, v_threshold)
    args.check_ret_type(ret_type)
    args.check_inputs(t_in, weight)
    t_in = args.as_times(t_in, weight)
    scale = args.scale_of(tau, tau_s, v_threshold)
    return outputs_from_v(membrane_reference(t_in, weight, T, tau, tau_s, scale=scale), T, v_threshold, ret_type)


def mse_loss(v_max: torch.Tensor, v_threshold, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Squared distance to threshold of the wrongly classified neurons, summed, divided by B (seed)."""
    if v_max.dim() != 2 or v_max.shape[1] != num_classes:
        raise ValueError(f"v_max must be [batch, num_classes = {num_classes}], got {tuple(v_max.shape)}")
    if label.shape != (v_max.shape[0],):
        raise ValueError(f"label must be [batch] = [{v_max.shape[0]}], got {tuple(label.shape)}")
    wrong_mask = ((v_max >= v_threshold).to(v_max.dtype) != F.one_hot(label, num_classes).to(v_max.dtype))
    return torch.sum(torch.pow((v_max - v_threshold) * wrong_mask.to(v_max.dtype), 2)) / label.shape[0]
