"""LIF on the CPU with a user-registered surrogate: the ops behind backend 'cpu' for such a surrogate.

The C++ kernels cannot call a user's Python function per element; they do not need to:

  - forward: the LIF forward does not involve the surrogate unless a noise mask is given (the spike
    is Θ(H − θ) whatever g′ is), so the fused C++ forward runs unchanged, with any built-in id. With
    save="state" it also writes D = H − θ for every step, [T, N] in the compute dtype (float32;
    float64 for float64 data), the values the forward's comparison saw, and saves it
    (``snn_fast::lif_fwd`` with ``contract.SAVE_SG_ARG``); with save="recompute" and for inference it
    saves nothing. With a noise mask the emitted value g(H − θ) needs the user's g: the forward is
    then the reference loop, without autograd, and saves nothing.
  - backward, a fixed number of calls per ``_CHUNK_BYTES`` of D:
      1. D saved by the forward, or ``snn_fast::lif_sg_arg``: the forward re-run in C++, returning D
         (under a noise mask the forward's emitted values stand in the reset);
      2. the user's torch ``dg`` (and ``dg_dalpha`` with parameter gradients) on D, in pieces of
         ``_CHUNK_BYTES`` (one call per function for a layer up to that size);
      3. ``snn_fast::lif_bwd`` given ``sg_grad``/``sg_dalpha``: the C++ backward of every built-in
         surrogate (the same per-element step, csrc/include/snn_fast/lif_step.h, in the same
         operation order) reading g′ and ∂g/∂α from those buffers instead of computing a built-in's.
    Memory: D (kept from the forward with save="state"), g′ (and ∂g/∂α) live during the backward,
    a·T·N bytes each (a = 4, or 8 for float64), plus the temporaries of the user's functions on one
    piece; ``memory.custom_cpu_bytes`` counts the traffic.

Timings: the README section "Your own surrogate" (benchmarks/test_bench_surrogate.py).

float16/bfloat16: D and g′ are float32, as the kernels' arithmetic. Under a noise mask the forward
is the reference loop in the storage dtype and the re-run takes its emitted values rounded to it, so
H in the backward may differ from the forward's by that rounding (within the low-precision bound).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import _ext
from ... import surrogate as _sg
from . import args as lif_args
from . import contract
from .reference import lif_reference_k

# The user's functions see D in pieces of this many bytes, their results copied into one [T, N] buffer
# from the C++ output cache. Why not all of D at once: each of their torch ops then allocates a
# [T, N] temporary, and glibc hands blocks that large back to the OS when they are freed, so every
# call faulted its pages in again: at W4 ([16, 262144] float32, 16 MiB per array) 4,000–8,000 page
# faults per backward and 2–3× the time of the same arithmetic on pieces, whose temporaries are
# reused from the allocator's free lists and stay in cache. Sized by bytes: a few calls per MiB,
# against one per time step and per cache-sized block before (benchmarks/test_bench_surrogate.py).
_CHUNK_BYTES = 1 << 20


def _surrogate(sid: int) -> _sg.Surrogate:
    try:
        return _sg.by_id(sid)
    except KeyError:
        raise ValueError(f"lif_custom_cpu: no registered surrogate has id {sid} (unregistered?)") from None


def _check(x, v0, params, surrogate):
    torch._check(x.dim() == 2, lambda: f"lif_custom_cpu: x must be [T, N], got {x.dim()} dims")
    torch._check(x.device.type == "cpu", lambda: f"lif_custom_cpu: x must be on the CPU, got {x.device}")
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    torch._check(params.dtype == want and params.numel() == 3,
                 lambda: f"lif_custom_cpu: params must be [3] {want}, got {tuple(params.shape)} {params.dtype}")
    torch._check(v0.dtype == x.dtype, lambda: f"lif_custom_cpu: v0 dtype {v0.dtype} != x dtype {x.dtype}")
    torch._check(surrogate >= _sg.CUSTOM_ID_BASE, lambda: f"lif_custom_cpu: {surrogate} is not a user surrogate id")


def _check_firing(strict_threshold, reset_timing):
    # lif_sg_arg re-runs the default firing and reset only: the others run on the reference
    # (function.py routes them there)
    torch._check(not strict_threshold and reset_timing == contract.RESET_AFTER_FIRE,
                 lambda: "lif_custom_cpu: a user surrogate runs strict_threshold=False and reset_timing=0 "
                         f"(after the spike) only, got {strict_threshold}, {reset_timing}; use backend='reference'")


def lif_fwd_custom_cpu(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    strict_threshold: bool, reset_timing: int, return_v_seq: bool, save: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, v_last, v_seq or [0], saved): D [T, N] for save 0 ("state") without a noise mask, else [0]."""
    _check(x, v0, params, surrogate)
    contract.check_op_args("lif_custom_cpu", x, v0, params, surrogate, save)
    _check_firing(strict_threshold, reset_timing)
    if noise_mask is None and _ext.HAS_C:
        keep = contract.SAVE_SG_ARG if save == contract.SAVE_STATE else contract.SAVE_NONE
        return torch.ops.snn_fast.lif_fwd.default(x, v0, params, None, 0, hard_reset, v_reset, decay_input,
                                                  detach_reset, reset_residual, False, contract.RESET_AFTER_FIRE,
                                                  return_v_seq, keep)
    sg = _surrogate(surrogate)
    k, theta, alpha = params.tolist()
    flags = lif_args.LIFFlags(surrogate, hard_reset, v_reset if hard_reset else 0.0, decay_input, detach_reset,
                              reset_residual)
    with torch.no_grad():
        s, v_last, *v_seq = lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
    return s, v_last, (v_seq[0] if return_v_seq else x.new_empty(0)), x.new_empty(0)


def _evaluate(fn, d: torch.Tensor, alpha: torch.Tensor, name: str, *more: torch.Tensor) -> torch.Tensor:
    """fn(d, alpha) (fn(d, *more, alpha) with ``more``: tensors like d) as a [T, N] buffer of d's
    dtype: one call up to _CHUNK_BYTES, else one per piece of the flattened arrays (the functions are
    elementwise)."""
    def one(part, *rest):
        out = fn(part, *rest, alpha)
        if out.dtype != part.dtype:
            out = out.to(part.dtype)
        torch._check(out.shape == part.shape,
                     lambda: f"surrogate {name!r}: returned shape {tuple(out.shape)} for an input of "
                             f"{tuple(part.shape)}")
        return out

    n = d.numel()
    per = max(1, _CHUNK_BYTES // d.element_size())
    if n <= per:
        return one(d, *more)
    out = torch.ops.snn_fast.cpu_cache_empty_like.default(d)
    flat, d_flat, more_flat = out.view(-1), d.view(-1), [m.view(-1) for m in more]
    for j in range(0, n, per):
        flat[j:j + per].copy_(one(d_flat[j:j + per], *(m[j:j + per] for m in more_flat)))
    return out


def _scaled(x, gp, a):  # ∂g/∂α = x·g′/α of a scaling surrogate, from g′ already computed
    return x * gp / a


def _dalpha(sg: _sg.Surrogate, d: torch.Tensor, alpha: torch.Tensor, gp: torch.Tensor) -> torch.Tensor:
    """∂g/∂α at D. The derived one of scaling=True (x·g′(x)/α) reuses g′, the values its own call of
    dg would give again; a surrogate without a width has ∂g/∂α = 0."""
    da = sg.dg_dalpha
    if da is None or da is _sg._zero_dalpha:
        return torch.ops.snn_fast.cpu_cache_empty_like.default(d).zero_()
    if isinstance(da, _sg._ScalingDAlpha) and da.dg is sg.dg:
        return _evaluate(_scaled, d, alpha, sg.name, gp)
    return _evaluate(da, d, alpha, sg.name)


def lif_bwd_custom_cpu(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    sg_grad: Optional[torch.Tensor], sg_dalpha: Optional[torch.Tensor], surrogate: int, hard_reset: bool,
    v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float, strict_threshold: bool,
    reset_timing: int, save: int, need_param_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's g′ (and ∂g/∂α) at D, then the C++ walk reading them (given ones are used as they are)."""
    _check(x, v0, params, surrogate)
    _check_firing(strict_threshold, reset_timing)
    if sg_grad is None:
        sg = _surrogate(surrogate)
        if saved.numel() > 0:  # D from the forward (save="state")
            d = saved
        else:
            d = torch.ops.snn_fast.lif_sg_arg.default(x, v0, params, noise_mask, s, hard_reset, v_reset, decay_input)
        alpha = params[2]  # a 0-dim tensor of the compute dtype, as the reference passes α
        sg_grad = _evaluate(sg.dg, d, alpha, sg.name)
        sg_dalpha = _dalpha(sg, d, alpha, sg_grad) if need_param_grad else None
        del d
    return torch.ops.snn_fast.lif_bwd.default(
        grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, sg_grad, sg_dalpha, 0, hard_reset,
        v_reset, decay_input, detach_reset, reset_residual, False, contract.RESET_AFTER_FIRE, save, need_param_grad)


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, strict_threshold, reset_timing, return_v_seq, save):
    return contract.fake_fwd_outputs(x, v0, return_v_seq) + (
        contract.saved_like("cpu_custom", x, params, save, noise_mask),)


def _fake_sg_arg(x, v0, params, noise_mask, s, hard_reset, v_reset, decay_input):
    return x.new_empty(x.shape, dtype=params.dtype)


FWD_NAME = "snn_fast::lif_fwd_custom_cpu"
BWD_NAME = "snn_fast::lif_bwd_custom_cpu"

torch.library.custom_op(FWD_NAME, mutates_args=(), schema=contract.FWD_SCHEMA)(lif_fwd_custom_cpu).register_fake(
    _fake_fwd)
torch.library.custom_op(BWD_NAME, mutates_args=(), schema=contract.BWD_SCHEMA)(lif_bwd_custom_cpu).register_fake(
    contract.fake_bwd)
if _ext.HAS_C:
    torch.library.register_fake("snn_fast::lif_sg_arg")(_fake_sg_arg)
