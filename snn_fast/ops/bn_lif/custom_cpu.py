"""bn_lif on the CPU with a user-registered surrogate: the ops behind backend 'cpu' for such a surrogate.

The forward does not involve the surrogate (no noise mask here: the spike is Θ(H − θ) whatever g′ is),
so it is the fused C++ forward, run with a built-in id; like the built-in path it saves nothing.

The backward, decided per call:
  - first choice: the user's g′ (and ∂g/∂α) translated to C++ and compiled into bn_lif's own walk
    (snn_fast/ops/lif/native_surrogate.py, ``op="bn_lif"``), one call of ``snn_fast::bn_lif_bwd_native``:
    the built-in kernel's bytes and passes;
  - else (a surrogate that does not translate, no compiler, SNN_FAST_NATIVE_SURROGATES=0): batch norm's
    affine X' = (x − m)·a + b in torch, with the forward's operations in its order (so the same bits of
    H and the same spikes), the LIF op's backward given the user's torch g′ on X' (``custom_cpu.py`` of
    the LIF op: D = H − θ re-run, g′ compiled by torch.compile or eager, the C++ walk reading it), and
    batch norm's per-channel algebra in torch, the formulas of csrc/cpu/bn_lif_cpu.cpp, in place on
    ∂L/∂X'. Memory beyond the fused path's: x − m, X' (freed before the sums), ∂L/∂X', the walk's D
    and g′ (and ∂g/∂α), and one product for Σ∂L/∂X'·(x − m): [T, N] arrays in the compute dtype.

Limits (function.py routes the rest to the reference): no noise mask, the reset after the spike, and
fire_at_threshold=True on both paths (the compiled walk could run the strict threshold; the fallback's
re-run of D cannot, and the choice between them is made in the backward).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import _ext
from ... import surrogate as _sg
from ..lif import contract as lif_contract
from ..lif import custom_cpu as lif_custom
from ..lif import native_surrogate
from . import contract


def _check(x, surrogate, noise_mask, reset_timing):
    torch._check(x.device.type == "cpu", lambda: f"bn_lif_custom_cpu: x must be on the CPU, got {x.device}")
    torch._check(surrogate >= _sg.CUSTOM_ID_BASE, lambda: f"bn_lif_custom_cpu: {surrogate} is not a user surrogate id")
    torch._check(noise_mask is None, lambda: "bn_lif_custom_cpu: no noise mask with a user surrogate (its emitted "
                                             "value needs the user's g); use backend='reference'")
    torch._check(reset_timing == lif_contract.RESET_AFTER_FIRE,
                 lambda: f"bn_lif_custom_cpu: reset_timing must be 0 (after the spike), got {reset_timing}")


def bn_lif_fwd_custom_cpu(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor, tdbn_alpha: float, inner: int, batch_stats: bool,
    noise_mask: Optional[torch.Tensor], surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool,
    detach_reset: bool, reset_residual: float, strict_threshold: bool, reset_timing: int, return_v_seq: bool,
    save: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C++ forward (surrogate-free without a noise mask): (s, v_last, v_seq or [0], [0])."""
    _check(x, surrogate, noise_mask, reset_timing)
    lif_contract.check_op_args("bn_lif_custom_cpu", x, v0, params, surrogate, save)
    return torch.ops.snn_fast.bn_lif_fwd.default(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner,
                                                 batch_stats, None, 0, hard_reset, v_reset, decay_input, detach_reset,
                                                 reset_residual, strict_threshold, reset_timing, return_v_seq, save)


def _native(surrogate: int, dtype: torch.dtype) -> Optional[native_surrogate.Native]:
    if not _ext.HAS_C or not _ext.has_kernel("bn_lif_bwd_native", "CPU"):
        return None
    return native_surrogate.lookup(lif_custom._surrogate(surrogate, "bn_lif_custom_cpu"), dtype, op="bn_lif")


def _gain(params: torch.Tensor, tdbn_alpha: float) -> torch.Tensor:
    """α_tdBN·θ, or 1: csrc/cpu/bn_lif_cpu.cpp's bn_gain (α rounded to the compute dtype first)."""
    if tdbn_alpha > 0:
        return torch.tensor(tdbn_alpha, dtype=params.dtype) * params[1]
    return torch.ones((), dtype=params.dtype)


def _bwd_unfused(grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner,
                 batch_stats, s, surrogate, hard_reset, v_reset, decay_input, detach_reset, reset_residual,
                 strict_threshold, need_param_grad):
    """Batch norm's affine in torch around the LIF op's backward of a user surrogate (module docstring)."""
    torch._check(not strict_threshold, lambda: "bn_lif_custom_cpu: without the compiled walk a user surrogate runs "
                                               "fire_at_threshold=True only; use backend='reference'")
    pd = params.dtype
    T, N = x.shape
    C = weight.numel()
    gain = _gain(params, tdbn_alpha)
    a = weight * (rstd * gain)  # bn_scale's order: w·(rstd·gain)
    shape = (T, N // (C * inner), C, inner)
    per_c = (1, 1, C, 1)
    xc = x.to(pd).view(shape) - mean.view(per_c)
    xp = (xc * a.view(per_c)).add_(bias.view(per_c)).view(T, N)  # lif_step.h bn_input: mul, then add
    gvl = grad_v_last.to(pd) if grad_v_last is not None else None
    gvs = grad_v_seq.to(pd) if grad_v_seq is not None else None
    gxp, gv0, gp = lif_custom.bwd_given(  # v0 [1]: one start for every neuron, as the LIF op's (NaN gv0)
        grad_s.to(pd), gvl, gvs, xp, v0.to(pd), params, None,
        xp.new_empty(0), s, None, None, surrogate, hard_reset,
        v_reset, decay_input, detach_reset, reset_residual, lif_contract.SAVE_RECOMPUTE, need_param_grad,
        op="bn_lif_custom_cpu")
    del xp
    # Σ∂X' and Σ∂X'·(x − m) per channel, reduced in the compute dtype (torch's cascaded sums), then the
    # per-channel algebra in float64 as the C++ op does it; the elementwise passes in place on ∂X'.
    g4 = gxp.view(shape)
    g0 = g4.sum((0, 1, 3)).double()
    g1 = (g4 * xc).sum((0, 1, 3)).double()
    r, ad, gd = rstd.double(), a.double(), gain.double()
    grad_w = g1 * r * gd
    gp = gp.double()
    if need_param_grad and tdbn_alpha > 0:  # θ in the gain α·θ
        gp[1] += tdbn_alpha * (g1 * weight.double() * r).sum()
    gx = g4.mul_(a.view(per_c))
    if batch_stats:  # through the batch's mean and variance: ∂x = a·∂X' − a·Σ∂X'/n − a·rstd²·xc·Σ∂X'·xc/n
        n = float(T) * float(N // C)
        gx.addcmul_(xc, (-ad * r * r * g1 / n).to(pd).view(per_c)).add_((-ad * g0 / n).to(pd).view(per_c))
    return (gx.view(T, N).to(x.dtype), gv0.to(x.dtype), gp.to(pd), grad_w.to(pd), g0.to(pd))


def bn_lif_bwd_custom_cpu(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
    rstd: torch.Tensor, tdbn_alpha: float, inner: int, batch_stats: bool, noise_mask: Optional[torch.Tensor],
    saved: torch.Tensor, s: torch.Tensor, surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool,
    detach_reset: bool, reset_residual: float, strict_threshold: bool, reset_timing: int, save: int,
    need_param_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_v0, grad_params, grad_weight, grad_bias): the compiled walk, else the unfused path."""
    _check(x, surrogate, noise_mask, reset_timing)
    native = _native(surrogate, x.dtype)
    if native is not None:
        return torch.ops.snn_fast.bn_lif_bwd_native.default(
            grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats,
            native.address, native.abi, hard_reset, v_reset, decay_input, detach_reset, reset_residual,
            strict_threshold, need_param_grad)
    return _bwd_unfused(grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner,
                        batch_stats, s, surrogate, hard_reset, v_reset, decay_input, detach_reset, reset_residual,
                        strict_threshold, need_param_grad)


FWD_NAME = "snn_fast::bn_lif_fwd_custom_cpu"
BWD_NAME = "snn_fast::bn_lif_bwd_custom_cpu"

torch.library.custom_op(FWD_NAME, mutates_args=(), schema=contract.FWD_SCHEMA)(bn_lif_fwd_custom_cpu).register_fake(
    contract.fake_fwd_cpp)
torch.library.custom_op(BWD_NAME, mutates_args=(), schema=contract.BWD_SCHEMA)(bn_lif_bwd_custom_cpu).register_fake(
    contract.fake_bwd)
