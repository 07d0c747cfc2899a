"""bn_lif's Triton ops, ``snn_fast::bn_lif_fwd_triton`` / ``bn_lif_bwd_triton`` (the schemas of
``contract.py``): the kernels of ``triton_kernels.py`` and the per-channel algebra of batch norm's
backward in torch (on [C] tensors, in float64). Under ``TRITON_INTERPRET=1`` (no GPU) the kernels run
in Triton's interpreter on CPU tensors, which is how CI tests them.

Save modes: "state" keeps H of every step ([T, N] in the compute dtype) for the backward;
"recompute" keeps nothing, and the backward re-runs the forward into a scratch H first.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..common import triton_surrogate as tsg
from ..lif import contract as lif_contract
from ..lif.triton import EXACT_MUL, INTERPRETED, _wide_buffer, launch
from . import contract
from . import triton_kernels as _k

BLOCK = 64 if INTERPRETED else 256
NUM_WARPS = 4
DX_BLOCK = 256 if INTERPRETED else 1024


def _cdiv(a, b):
    return (a + b - 1) // b


def _check(x, v0, params, weight, inner, reset_timing):
    torch._check(x.dim() == 2, lambda: "bn_lif_triton: x must be [T, N]")
    # The kernels reset after the spike only (function.py routes the other timings to the reference).
    torch._check(reset_timing == lif_contract.RESET_AFTER_FIRE,
                 lambda: f"bn_lif_triton: reset_timing must be 0 (after the spike), got {reset_timing}")
    torch._check(v0.dtype == x.dtype, lambda: "bn_lif_triton: v0 must have x's dtype")
    pd = contract.pdtype(x)
    torch._check(params.dtype == pd and params.numel() == 3, lambda: f"bn_lif_triton: params must be [3] {pd}")
    C = weight.numel()
    torch._check(C >= 1 and inner >= 1 and x.shape[1] % (C * inner) == 0,
                 lambda: f"bn_lif_triton: x's N = {x.shape[1]} is not a multiple of C·inner = {C}·{inner}")


def _scale(weight, rstd, params, tdbn_alpha):
    """a_c = weight·(rstd·gain), gain = tdbn_alpha·θ or 1 (as the C++ op computes it)."""
    gain = tdbn_alpha * params[1] if tdbn_alpha > 0 else torch.ones((), dtype=params.dtype, device=params.device)
    return weight * (rstd * gain), gain


def bn_lif_fwd_triton(x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, tdbn_alpha: float, inner: int,
                      batch_stats: bool, noise_mask: Optional[torch.Tensor], surrogate: int, hard_reset: bool,
                      v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
                      strict_threshold: bool, reset_timing: int, return_v_seq: bool, save: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, v0, params, weight, inner, reset_timing)
    x, v0, params = x.contiguous(), v0.contiguous(), params.contiguous()
    T, N = x.shape
    a, _ = _scale(weight, rstd, params, tdbn_alpha)
    s = torch.empty_like(x)
    v_last = torch.empty_like(v0)
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    save_h = save == lif_contract.SAVE_STATE
    saved = torch.empty((T, N) if save_h else (0,), dtype=params.dtype, device=x.device)
    mask = noise_mask.contiguous() if noise_mask is not None else None
    if N > 0:
        launch(_k.bn_lif_fwd_kernel, (_cdiv(N, BLOCK),),
               (x, v0, params, _wide_buffer(float(v_reset), float(reset_residual), params), a.contiguous(),
                mean.contiguous(), bias.contiguous(), mask if mask is not None else x, s, v_last, v_seq, saved,
                T, N, weight.numel(), inner, float(v_reset)),
               dict(tsg.surrogate_args(surrogate, x, "bn_lif_triton"), HARD_RESET=hard_reset,
                    DECAY_INPUT=decay_input, HAS_MASK=mask is not None, STORE_VSEQ=return_v_seq, SAVE_H=save_h,
                    WIDE=x.dtype == torch.float64, EXACT=EXACT_MUL, BLOCK=BLOCK, STRICT=strict_threshold,
                    num_warps=NUM_WARPS))
    return s, v_last, v_seq, saved


def bn_lif_bwd_triton(grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor],
                      x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, tdbn_alpha: float, inner: int,
                      batch_stats: bool, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
                      surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool,
                      reset_residual: float, strict_threshold: bool, reset_timing: int, save: int,
                      need_param_grad: bool
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, v0, params, weight, inner, reset_timing)
    T, N = x.shape
    C = weight.numel()
    rerun = save != lif_contract.SAVE_STATE
    if not rerun:
        torch._check(saved.shape == x.shape and saved.dtype == params.dtype,
                     lambda: "bn_lif_bwd_triton: `saved` must be the forward's H with save=0")
    x, v0, params = x.contiguous(), v0.contiguous(), params.contiguous()
    grad_s = grad_s.to(x.dtype).contiguous()
    gvl = grad_v_last.to(x.dtype).contiguous() if grad_v_last is not None else None
    gvs = grad_v_seq.to(x.dtype).contiguous() if grad_v_seq is not None and grad_v_seq.numel() > 0 else None
    mask = noise_mask.contiguous() if noise_mask is not None else None
    a, gain = _scale(weight, rstd, params, tdbn_alpha)
    h = torch.empty((T, N), dtype=params.dtype, device=x.device) if rerun else saved.contiguous()
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(v0)
    sums = torch.empty((2, N), dtype=params.dtype, device=x.device)
    psum = torch.empty((3, N), dtype=params.dtype, device=x.device) if need_param_grad else sums
    if N > 0:
        launch(_k.bn_lif_bwd_kernel, (_cdiv(N, BLOCK),),
               (grad_s, gvl if gvl is not None else grad_s, gvs if gvs is not None else grad_s, x, v0, params,
                _wide_buffer(float(v_reset), float(reset_residual), params), a.contiguous(), mean.contiguous(),
                bias.contiguous(), mask if mask is not None else x, h, gx, gv0, sums, psum,
                T, N, C, inner, float(v_reset), float(reset_residual)),
               dict(tsg.surrogate_args(surrogate, x, "bn_lif_triton"), HARD_RESET=hard_reset,
                    DECAY_INPUT=decay_input, DETACH_RESET=detach_reset, HAS_MASK=mask is not None,
                    HAS_GVLAST=gvl is not None, HAS_GVSEQ=gvs is not None, NEED_PARAM_GRAD=need_param_grad,
                    SCALE_BY_A=not batch_stats, RERUN=rerun, WIDE=x.dtype == torch.float64, EXACT=EXACT_MUL,
                    BLOCK=BLOCK, STRICT=strict_threshold, num_warps=NUM_WARPS))
    # The per-channel algebra (docs/spec.md §12) in float64, as the C++ op does it.
    ch = sums.view(2, -1, C, inner).double().sum(dim=(1, 3))
    g0, g1 = ch[0], ch[1]
    r = rstd.double()
    gw = g1 * r * gain.double()
    gb = g0
    gp = psum.double().sum(1) if need_param_grad else torch.zeros(3, dtype=torch.float64, device=x.device)
    if need_param_grad and tdbn_alpha > 0:
        gp = gp + torch.stack([gp.new_zeros(()), tdbn_alpha * (g1 * weight.double() * r).sum(), gp.new_zeros(())])
    if batch_stats and N > 0:
        n = T * (N // C)
        ad = a.double()
        coef = torch.cat([ad, -ad * r * r * g1 / n, -ad * g0 / n]).to(params.dtype)
        launch(_k.bn_lif_dx_kernel, (_cdiv(T * N, DX_BLOCK),), (x, gx, coef, mean.contiguous(), T * N, N, C, inner),
               dict(BLOCK=DX_BLOCK, num_warps=NUM_WARPS))
    return gx, gv0, gp.to(params.dtype), gw.to(params.dtype), gb.to(params.dtype)


def _fake_fwd(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, noise_mask, surrogate,
              hard_reset, v_reset, decay_input, detach_reset, reset_residual, strict_threshold, reset_timing,
              return_v_seq, save):
    saved = x.new_empty(x.shape if save == lif_contract.SAVE_STATE else (0,), dtype=params.dtype)
    return contract.fake_fwd_outputs(x, v0, return_v_seq) + (saved,)


FWD_NAME = "snn_fast::bn_lif_fwd_triton"
BWD_NAME = "snn_fast::bn_lif_bwd_triton"

for _name, _fn, _schema, _fake in ((FWD_NAME, bn_lif_fwd_triton, contract.FWD_SCHEMA, _fake_fwd),
                                   (BWD_NAME, bn_lif_bwd_triton, contract.BWD_SCHEMA, contract.fake_bwd)):
    if INTERPRETED:
        torch.library.custom_op(_name, mutates_args=(), schema=_schema)(_fn).register_fake(_fake)
    else:
        torch.library.triton_op(_name, mutates_args=(), schema=_schema)(_fn)
