"""The fused bn_lif ops' contract: their schemas (``csrc/ops.cpp`` declares the C++ ones; a
Python-defined backend declares its pair from these strings) and their fake (shape) functions.

    fwd(x [T,N], v0 [N] (or [1] for N > 1: every neuron's start, no gradient; grad_v0 is then [1] NaN),
        params [3]=(k, θ, α), weight, bias, mean, rstd [C], tdbn_alpha, inner,
        batch_stats, noise_mask?, <LIF flags>, return_v_seq, save) -> (s, v_last, v_seq or [0], saved)
    bwd(grad_s, grad_v_last?, grad_v_seq?, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner,
        batch_stats, noise_mask?, saved, s, <LIF flags>, save, need_param_grad)
        -> (grad_x, grad_v0, grad_params [3], grad_weight [C], grad_bias [C])
    stats(x [T,N], C, inner, eps) -> (mean [C], rstd [C] = 1/√(biased var + eps), unbiased var [C])

N = B·C·inner; element n of a row is in channel (n // inner) % C. The charge's input is
X' = (x − mean)·a + bias, a = weight·rstd·gain, gain = tdbn_alpha·θ (tdBN) or 1 (tdbn_alpha = 0).
[C] tensors are in params' dtype (float64 for float64 x, else float32). ``save`` is the LIF op's
(``snn_fast.ops.lif.contract.SAVE``).
"""
from __future__ import annotations

import torch

from ..lif.contract import FLAG_ARGS, SAVE_RECOMPUTE, SAVE_STATE, fake_fwd_outputs  # noqa: F401  (the same flags as the LIF op)
from ..lif.contract import uniform_v0  # noqa: F401  (v0 [1] for N > 1: one start for every neuron, as the LIF op's)

FWD_SCHEMA = ("(Tensor x, Tensor v0, Tensor params, Tensor weight, Tensor bias, Tensor mean, Tensor rstd, "
              "float tdbn_alpha, int inner, bool batch_stats, Tensor? noise_mask, int surrogate, bool hard_reset, "
              "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, "
              "int reset_timing, bool return_v_seq, int save) -> (Tensor, Tensor, Tensor, Tensor)")
BWD_SCHEMA = ("(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
              "Tensor weight, Tensor bias, Tensor mean, Tensor rstd, float tdbn_alpha, int inner, bool batch_stats, "
              "Tensor? noise_mask, Tensor saved, Tensor s, int surrogate, bool hard_reset, float v_reset, "
              "bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, int reset_timing, "
              "int save, bool need_param_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
STATS_SCHEMA = "(Tensor x, int C, int inner, float eps) -> (Tensor, Tensor, Tensor)"


def pdtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of params and of the [C] tensors for x."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


CUDA_SEG = 8  # steps per segment of the CUDA backward (csrc/cuda/bn_lif_cuda.h kBNLIFSeg)


def checkpoint_rows(T: int, seg: int = CUDA_SEG) -> int:
    """Rows of a GPU forward's membrane checkpoints: V after steps seg, 2·seg, … before the last (CUDA,
    and Triton with its own ``triton.SEG``; save "state" or "recompute" alike)."""
    return max(T - 1, 0) // seg




def fake_fwd_checkpoints(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, noise_mask,
                         surrogate, hard_reset, v_reset, decay_input, detach_reset, reset_residual, strict_threshold,
                         reset_timing, return_v_seq, save, seg=CUDA_SEG):
    """A GPU forward: with save 0 or 1 alike the membrane every ``seg`` steps, [⌈T/seg⌉ − 1, N] in
    params' dtype (the backward re-runs the segments from them); else an empty tensor of x's dtype."""
    if save in (SAVE_STATE, SAVE_RECOMPUTE):
        saved = x.new_empty((checkpoint_rows(x.shape[0], seg), x.shape[1]), dtype=params.dtype)
    else:
        saved = x.new_empty(0)
    return fake_fwd_outputs(x, v0, return_v_seq) + (saved,)


def fake_fwd_cpp(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, noise_mask, surrogate,
                 hard_reset, v_reset, decay_input, detach_reset, reset_residual, strict_threshold, reset_timing,
                 return_v_seq, save):
    """The C++ op: the CPU forward saves nothing (its backward re-runs the forward); the CUDA one the
    checkpoints of ``fake_fwd_checkpoints`` (csrc/cuda/bn_lif_cuda_binding.cpp)."""
    if x.device.type == "cuda":
        return fake_fwd_checkpoints(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats,
                                    noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                                    reset_residual, strict_threshold, reset_timing, return_v_seq, save)
    return fake_fwd_outputs(x, v0, return_v_seq) + (x.new_empty(0),)


def fake_bwd(grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats,
             noise_mask, saved, s, surrogate, hard_reset, v_reset, decay_input, detach_reset, reset_residual,
             strict_threshold, reset_timing, save, need_param_grad):
    return (torch.empty_like(x), torch.empty_like(v0), torch.empty_like(params), torch.empty_like(weight),
            torch.empty_like(bias))


def fake_bwd_native(grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias, *rest):
    """bn_lif_bwd_native (a user's surrogate compiled into the CPU walk): bn_lif_bwd's outputs."""
    return (torch.empty_like(x), torch.empty_like(v0), torch.empty_like(params), torch.empty_like(weight),
            torch.empty_like(bias))


def fake_stats(x, C, inner, eps):
    return tuple(x.new_empty(C, dtype=pdtype(x)) for _ in range(3))
