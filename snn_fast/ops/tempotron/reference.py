"""Pure-PyTorch Tempotron: exactly the seed's computation (SpikingJelly ``neuron.Tempotron``).

It materialises the dense PSP tensor ``[B, I, T]`` and multiplies it by the weight: O(B·I·T) memory,
O(B·I·O·T) work. This is the definition the fused kernels are checked against; it never calls them.
The one deliberate difference from the seed: ``'v_max'``/``'spikes'`` keep the batch dimension for
B = 1 (the seed's ``squeeze()`` drops it, and drops O too when O = 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import config


def psp_kernel(t: torch.Tensor, tau: float, tau_s: float) -> torch.Tensor:
    """K(u) = (e^{−u/τ} − e^{−u/τ_s})·1[u ≥ 0]  (without v0).

    The seed evaluates the exponentials at u < 0 too and multiplies by the mask; in float16
    e^{−u/τ_s} overflows for u < −τ_s·ln 65504 ≈ −42 and inf − inf = NaN survives the mask. Here
    u < 0 is replaced by 0 before the exponentials: identical values and gradients (0) wherever the
    seed's are finite, and no NaN in half precision.
    """
    causal = t >= 0
    u = torch.where(causal, t, torch.zeros_like(t))
    return (torch.exp(-u / tau) - torch.exp(-u / tau_s)) * causal.to(t.dtype)


def membrane_reference(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float, tau_s: float,
                       v0: float) -> torch.Tensor:
    """V [B, O, T] = v0·Σ_i W[o,i]·K(t − t_i)·1[t_i ≥ 0], via the dense [B, I, T] PSP tensor."""
    B, I = t_in.shape
    t = torch.arange(0, T, device=t_in.device)
    t = t.view(1, 1, T).repeat(B, I, 1)
    in_spikes = t_in.unsqueeze(-1).repeat(1, 1, T)
    v_in = v0 * psp_kernel(t - in_spikes, tau, tau_s) * (in_spikes >= 0).to(in_spikes.dtype)
    return F.linear(v_in.permute(0, 2, 1), weight).permute(0, 2, 1)


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
    config.check_ret_type(ret_type)
    raise AssertionError("unreachable")


def tempotron_reference(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0,
                        tau_s: float = 15.0 / 4, v_threshold: float = 1.0, ret_type: str = "v_max") -> torch.Tensor:
    """The seed's ``Tempotron.forward(in_spikes, ret_type)`` with ``fc.weight = weight``.

    t_in [B, I]: spike times (real or integer; negative = no spike); weight [O, I].
    Returns V [B, O, T] ('v'), the peak [B, O] ('v_max') or straight-through spike times [B, O]
    ('spikes', −t where the peak stays below threshold: the seed multiplies the index by −1).
    """
    config.check_constants(T, tau, tau_s, v_threshold)
    config.check_ret_type(ret_type)
    config.check_inputs(t_in, weight)
    t_in = config.as_times(t_in, weight)
    v0 = config.v0_of(tau, tau_s, v_threshold)
    return outputs_from_v(membrane_reference(t_in, weight, T, tau, tau_s, v0), T, v_threshold, ret_type)


def mse_loss(v_max: torch.Tensor, v_threshold, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Squared distance to threshold of the wrongly classified neurons, summed, divided by B (seed)."""
    if v_max.dim() != 2 or v_max.shape[1] != num_classes:
        raise ValueError(f"v_max must be [batch, num_classes = {num_classes}], got {tuple(v_max.shape)}")
    if label.shape != (v_max.shape[0],):
        raise ValueError(f"label must be [batch] = [{v_max.shape[0]}], got {tuple(label.shape)}")
    wrong_mask = ((v_max >= v_threshold).to(v_max.dtype) != F.one_hot(label, num_classes).to(v_max.dtype))
    return torch.sum(torch.pow((v_max - v_threshold) * wrong_mask.to(v_max.dtype), 2)) / label.shape[0]
