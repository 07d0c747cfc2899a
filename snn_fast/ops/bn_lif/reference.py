"""Batch norm followed by the LIF reference: the definition of ``bn_lif`` (docs/spec.md §12).

Nothing else: ``F.batch_norm`` over x folded to [T·B, C, *] (so statistics per channel over
(T, B, spatial), the running statistics updated in place as ``nn.BatchNorm`` does, with the unbiased
variance), its weight multiplied by α·θ for tdBN (``nn.TDBatchNorm``'s form), then
``lif_reference_k``. Every gradient comes from autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..lif import args as lif_args
from ..lif.reference import lif_reference_k
from . import args as bn_args


def batch_norm_reference(x, weight, bias, running_mean, running_var, training, momentum, eps, theta,
                         tdbn_alpha: Optional[float]):
    """The normalised input of the neurons, [T, B, C, *]."""
    if tdbn_alpha is not None:  # tdBN: N(0, (α·θ)²) before the affine
        scale = tdbn_alpha * theta
        weight = weight * scale if weight is not None else torch.full(
            (x.shape[2],), 1.0, dtype=x.dtype, device=x.device) * scale
    y = F.batch_norm(x.flatten(0, 1), running_mean, running_var, weight, bias,
                     bn_args.uses_batch_stats(training, running_mean), momentum, eps)
    return y.view(x.shape)


def bn_lif_reference(x, weight=None, bias=None, running_mean=None, running_var=None, training: bool = True,
                     momentum: float = 0.1, eps: float = 1e-5, *, v0=None, tau=None, decay=None,
                     decay_input: bool = True, v_threshold=1.0, v_reset: Optional[float] = 0.0,
                     detach_reset: bool = False, surrogate="sigmoid", alpha=None, reset_residual: float = 0.0,
                     fire_at_threshold: bool = True, reset_timing: str = "after_fire", noise_mask=None,
                     return_v_seq: bool = False, tdbn_alpha: Optional[float] = None):
    """Same arguments and results as :func:`snn_fast.bn_lif`, computed in ``x.dtype``."""
    bn_args.check(x, weight, bias, running_mean, running_var, training, momentum, eps, tdbn_alpha)
    k, theta, alpha, flags, sg = lif_args.resolve(tau, decay, decay_input, v_threshold, v_reset, detach_reset,
                                                  surrogate, alpha, reset_residual, fire_at_threshold,
                                                  reset_timing)
    noise_mask = lif_args.check_noise_mask(x, noise_mask)
    return bn_lif_reference_k(x, weight, bias, running_mean, running_var, training, momentum, eps, v0, k, theta,
                              alpha, flags, sg, noise_mask, return_v_seq, tdbn_alpha)


def bn_lif_reference_k(x, weight, bias, running_mean, running_var, training, momentum, eps, v0, k, theta, alpha,
                       flags, sg, noise_mask=None, return_v_seq=False, tdbn_alpha=None):
    """On checked arguments (``k`` = 1/τ)."""
    y = batch_norm_reference(x, weight, bias, running_mean, running_var, training, momentum, eps, theta, tdbn_alpha)
    return lif_reference_k(y, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
