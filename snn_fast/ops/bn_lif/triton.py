"""bn_lif's Triton ops, ``snn_fast::bn_lif_fwd_triton`` / ``bn_lif_bwd_triton`` / ``bn_lif_stats_triton``
(the schemas of ``contract.py``): the kernels of ``triton_kernels.py``, batch norm's per-channel algebra
included, so that a call is allocations and launches only (the first GPU run measured this backend at
1.8–2.0 ms per step when ~20 small torch ops on [C] tensors ran around its kernels). Under
``TRITON_INTERPRET=1`` (no GPU) the kernels run in Triton's interpreter on CPU tensors, which is how
CI tests them.

Save modes: "state" and "recompute" alike keep the membrane every ``SEG`` steps ([⌈T/SEG⌉ − 1, N]
in params' dtype, nothing for T ≤ SEG), as the CUDA kernels do every 8: the backward re-runs each
segment from it in registers and needs x anyway for batch norm's sums, so a kept H would only add its
write and read (2 passes).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch

from ..common import triton_surrogate as tsg
from ..lif import contract as lif_contract
from ..lif.triton import EXACT_MUL, INTERPRETED, _wide_buffer, launch
from . import contract
from . import triton_kernels as _k

BLOCK = 64 if INTERPRETED else 256
NUM_WARPS = 4
# The backward: one neuron per thread (a segment's H and x − m live in registers), BWD_BLOCK of them
# per program, in columns of channels (``bwd_lanes``) as the CUDA backward's blocks. Steps per segment
# (SEG): the registers a segment holds grow with it (H and x − m per step, V too with parameter
# gradients). AOT for sm_90 (tests/test_triton_aot.py), fp32, 4 warps: 56 registers at SEG = 4
# (sigmoid, no mask, no parameter gradients; 96 for q_pseudo_spike with mask and parameter gradients)
# against 102 (164) at 8; 8 warps needed as many or more and spilled in float64 (Triton 3.6). The
# price of 4: the checkpoints' write and read, 2·(⌈T/4⌉ − 1)/T of a float32 pass (none for T ≤ 4,
# 0.25 pass at T = 8). Chosen from register counts; not timed on a GPU yet.
BWD_WARPS = 2 if INTERPRETED else 4
BWD_BLOCK = 32 * BWD_WARPS
SEG = 4
DX_BLOCK = 256 if INTERPRETED else 1024
CHAN_BLOCK = 64 if INTERPRETED else 512  # the per-channel reductions: values per step of a program
PARAM_BLOCK = 256
FINISH_BLOCK = 128  # channels per program of the statistics' finish
# The statistics' first pass: ~STATS_GRID programs in all when the channels have the values for it,
# chunks of at least STATS_MIN_CHUNK values (small under the interpreter, so tests cover several).
STATS_GRID = 2048
STATS_MIN_CHUNK = 128 if INTERPRETED else 4096
_I32 = 1 << 31


def _cdiv(a, b):
    return (a + b - 1) // b


@contextlib.contextmanager
def lab_variant(seg: Optional[int] = None, warps: Optional[int] = None):
    """Run the ops with another segment length and/or backward warps (one neuron per thread) instead of
    the defaults (the GPU check's bn-lif stage times them side by side). Not thread-safe; a forward and
    its backward must run under the same variant (the checkpoints' rows depend on ``seg``)."""
    global SEG, BWD_WARPS, BWD_BLOCK
    saved = SEG, BWD_WARPS, BWD_BLOCK
    SEG = saved[0] if seg is None else seg
    BWD_WARPS = saved[1] if warps is None else warps
    BWD_BLOCK = 32 * BWD_WARPS
    try:
        yield
    finally:
        SEG, BWD_WARPS, BWD_BLOCK = saved


def bwd_lanes(N: int, C: int, inner: int, block: int = None) -> int:
    """Channels per backward program (a power of two; rows = block / lanes neurons of each): 1 for a
    channel of many neurons with runs of 8 or more; more where a channel has few neurons (so that the
    program's threads are not idle) or short runs (inner < 8: neighbouring columns are then
    neighbouring elements, so a warp reads whole sectors); never more than the channels. The CUDA
    backward's ``bnlif_bwd_lanes`` (csrc/cuda/bn_lif_kernels.cuh) with its block."""
    block = BWD_BLOCK if block is None else block
    count = N // C if C > 0 else 0
    g = 1
    while g < block and 2 * g * count <= block:
        g *= 2
    while g < block and g * inner < 8:
        g *= 2
    while g > 1 and g // 2 >= C:
        g //= 2
    return g


def bwd_chunks(N: int, C: int, inner: int, block: int = None) -> int:
    """Row chunks P of the backward (its grid: ⌈C / lanes⌉·P programs), 0 when there are no neurons."""
    block = BWD_BLOCK if block is None else block
    count = N // C if C > 0 else 0
    return _cdiv(count, block // bwd_lanes(N, C, inner, block))


def _check(x, v0, params, weight, inner, reset_timing):
    torch._check(x.dim() == 2, lambda: "bn_lif_triton: x must be [T, N]")
    # The kernels reset after the spike only (function.py routes the other timings to the reference).
    torch._check(reset_timing == lif_contract.RESET_AFTER_FIRE,
                 lambda: f"bn_lif_triton: reset_timing must be 0 (after the spike), got {reset_timing}")
    torch._check(v0.dtype == x.dtype, lambda: "bn_lif_triton: v0 must have x's dtype")
    # [N], or [1] for N > 1 (one start for every neuron: contract.uniform_v0)
    torch._check(v0.dim() == 1 and (v0.shape[0] == x.shape[1] or (v0.shape[0] == 1 and x.shape[1] > 1)),
                 lambda: f"bn_lif_triton: v0 must be [N] = [{x.shape[1]}] (or [1] for N > 1), got {list(v0.shape)}")
    pd = contract.pdtype(x)
    torch._check(params.dtype == pd and params.numel() == 3, lambda: f"bn_lif_triton: params must be [3] {pd}")
    C = weight.numel()
    torch._check(C >= 1 and inner >= 1 and x.shape[1] % (C * inner) == 0,
                 lambda: f"bn_lif_triton: x's N = {x.shape[1]} is not a multiple of C·inner = {C}·{inner}")


def _check_channels(x, params, **tensors):
    """The [C] tensors the kernels index by channel: [C], params' dtype, x's device (the C++ op's
    check_bn_args): a wrong one would be read out of bounds or in another precision, not refused."""
    C = tensors["weight"].numel()
    for name, t in tensors.items():
        torch._check(t.dim() == 1 and t.shape[0] == C and t.dtype == params.dtype and t.device == x.device,
                     lambda name=name, t=t: f"bn_lif_triton: {name} must be [{C}] {params.dtype} on {x.device}, "
                                            f"got {list(t.shape)} {t.dtype} on {t.device}")


def _wide(v_reset, reset_residual, tdbn_alpha, params):
    """The kernels' float64 buffer (v_r, κ, tdBN's α), whatever x's dtype: v_r and κ are read from it
    in float64 only, α always (the C++ op keeps α in double; a float argument is fp32)."""
    return _wide_buffer((float(v_reset), float(reset_residual), float(tdbn_alpha)), params, always=True)


def bn_lif_fwd_triton(x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, tdbn_alpha: float, inner: int,
                      batch_stats: bool, noise_mask: Optional[torch.Tensor], surrogate: int, hard_reset: bool,
                      v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
                      strict_threshold: bool, reset_timing: int, return_v_seq: bool, save: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, v0, params, weight, inner, reset_timing)
    _check_channels(x, params, weight=weight, bias=bias, mean=mean, rstd=rstd)
    x, v0, params = x.contiguous(), v0.contiguous(), params.contiguous()
    T, N = x.shape
    s = torch.empty_like(x)
    v_last = x.new_empty(N)
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    keep = save in (lif_contract.SAVE_STATE, lif_contract.SAVE_RECOMPUTE)  # training: the checkpoints
    # the checkpoints, or the C++ ops' empty tensor in x's dtype (the fake's)
    saved = torch.empty((contract.checkpoint_rows(T, SEG), N), dtype=params.dtype, device=x.device) if keep else \
        x.new_empty(0)
    mask = noise_mask.contiguous() if noise_mask is not None else None
    if N > 0:
        launch(_k.bn_lif_fwd_kernel, (_cdiv(N, BLOCK),),
               (x, v0, params, _wide(v_reset, reset_residual, tdbn_alpha, params), weight.contiguous(),
                rstd.contiguous(), mean.contiguous(), bias.contiguous(), mask if mask is not None else x, s, v_last,
                v_seq, saved, T, N, weight.numel(), inner, float(v_reset)),
               dict(tsg.surrogate_args(surrogate, x, "bn_lif_triton"), HARD_RESET=hard_reset,
                    DECAY_INPUT=decay_input, HAS_MASK=mask is not None, STORE_VSEQ=return_v_seq,
                    SEG=SEG if keep else 0, WIDE=x.dtype == torch.float64, EXACT=EXACT_MUL, BLOCK=BLOCK,
                    TDBN=tdbn_alpha > 0, STRICT=strict_threshold, UNIFORM_V0=contract.uniform_v0(v0, N),
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
    _check_channels(x, params, weight=weight, bias=bias, mean=mean, rstd=rstd)
    T, N = x.shape
    C = weight.numel()
    rows = contract.checkpoint_rows(T, SEG)
    torch._check(saved.shape == (rows, N) and saved.dtype == params.dtype,
                 lambda: f"bn_lif_bwd_triton: `saved` must be the forward's membrane checkpoints, [{rows}, {N}] "
                         f"{params.dtype}, got {list(saved.shape)} {saved.dtype}")
    x, v0, params = x.contiguous(), v0.contiguous(), params.contiguous()
    grad_s = grad_s.to(x.dtype).contiguous()
    gvl = grad_v_last.to(x.dtype).contiguous() if grad_v_last is not None else None
    gvs = grad_v_seq.to(x.dtype).contiguous() if grad_v_seq is not None and grad_v_seq.numel() > 0 else None
    mask = noise_mask.contiguous() if noise_mask is not None else None
    weight, rstd, mean, bias = weight.contiguous(), rstd.contiguous(), mean.contiguous(), bias.contiguous()
    wide = _wide(v_reset, reset_residual, tdbn_alpha, params)
    pd, dev = params.dtype, x.device
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(v0)
    count = N // C
    lanes, P = bwd_lanes(N, C, inner), bwd_chunks(N, C, inner)
    # per (channel, chunk): Σ ∂L/∂X', Σ ∂L/∂X'·(x − m) and, with parameter gradients, the (∂k, ∂θ, ∂α) terms
    part = torch.empty((C, P, 5 if need_param_grad else 2), dtype=torch.float64, device=dev)
    gw, gb = torch.empty(C, dtype=pd, device=dev), torch.empty(C, dtype=pd, device=dev)
    gp = torch.empty(3, dtype=pd, device=dev)
    coef = torch.empty(3 * C, dtype=pd, device=dev) if batch_stats else gw  # [A | B | D] of the dx pass
    pchan = torch.empty((3, C), dtype=torch.float64, device=dev) if need_param_grad else gw
    if N > 0:
        launch(_k.bn_lif_bwd_kernel, (_cdiv(C, lanes) * P,),
               (grad_s, gvl if gvl is not None else grad_s, gvs if gvs is not None else grad_s, x, v0, params,
                wide, weight, rstd, mean, bias, mask if mask is not None else x, saved.contiguous(), gx, gv0, part,
                T, N, C, inner, count, P, float(v_reset), float(reset_residual)),
               dict(tsg.surrogate_args(surrogate, x, "bn_lif_triton"), HARD_RESET=hard_reset,
                    DECAY_INPUT=decay_input, DETACH_RESET=detach_reset, HAS_MASK=mask is not None,
                    HAS_GVLAST=gvl is not None, HAS_GVSEQ=gvs is not None, NEED_PARAM_GRAD=need_param_grad,
                    SCALE_BY_A=not batch_stats, WIDE=x.dtype == torch.float64, EXACT=EXACT_MUL, SEG=SEG,
                    LANES=lanes, BLOCK=BWD_BLOCK, TDBN=tdbn_alpha > 0, STRICT=strict_threshold,
                    UNIFORM_V0=contract.uniform_v0(v0, N), num_warps=BWD_WARPS))
    launch(_k.bn_lif_channels_kernel, (C,),
           (part, params, wide, weight, rstd, gw, gb, gp, coef, pchan, T, C, count, P),
           dict(NEED_PARAM_GRAD=need_param_grad, BATCH_STATS=batch_stats, TDBN=tdbn_alpha > 0, BLOCK=CHAN_BLOCK,
                num_warps=NUM_WARPS))
    if need_param_grad:
        launch(_k.bn_lif_params_kernel, (1,), (pchan, gp, C), dict(BLOCK=PARAM_BLOCK, num_warps=NUM_WARPS))
    if batch_stats and N > 0:
        launch(_k.bn_lif_dx_kernel, (_cdiv(T * N, DX_BLOCK),), (x, gx, coef, mean, T * N, N, C, inner),
               dict(BLOCK=DX_BLOCK, num_warps=NUM_WARPS))
    return gx, gv0, gp, gw, gb


def stats_chunk(count: int, C: int) -> int:
    """Values per chunk of the statistics' first pass (a multiple of CHAN_BLOCK)."""
    by_grid = max(1, _cdiv(STATS_GRID, C))
    per = max(STATS_MIN_CHUNK, _cdiv(count, by_grid))
    return _cdiv(per, CHAN_BLOCK) * CHAN_BLOCK


def bn_lif_stats_triton(x: torch.Tensor, C: int, inner: int, eps: float
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, rstd = 1/√(biased var + eps), unbiased var) per channel of x [T, N], in params' dtype:
    the C++ ``bn_lif_stats``'s contract, in two kernels (float64 sums per chunk, then per channel)."""
    torch._check(x.dim() == 2, lambda: "bn_lif_stats_triton: x must be [T, N]")
    T, N = x.shape
    torch._check(C >= 1 and inner >= 1 and N % (C * inner) == 0,
                 lambda: f"bn_lif_stats_triton: x's N = {N} is not a multiple of C·inner = {C}·{inner}")
    count = T * (N // C)
    torch._check(count > 1, lambda: f"Expected more than 1 value per channel when training, got {count} per "
                                    f"channel (bn_lif_stats_triton)")
    x = x.contiguous()
    pd = contract.pdtype(x)
    mean, rstd, var = (torch.empty(C, dtype=pd, device=x.device) for _ in range(3))
    chunk = stats_chunk(count, C)
    P = _cdiv(count, chunk)
    part = torch.empty((C, P, 2), dtype=torch.float64, device=x.device)
    launch(_k.bn_lif_stats_part_kernel, (C, P), (x, part, C, inner, count, chunk, P),
           dict(NARROW=count + 2 * chunk < _I32, BLOCK=CHAN_BLOCK, num_warps=NUM_WARPS))
    launch(_k.bn_lif_stats_finish_kernel, (_cdiv(C, FINISH_BLOCK),),
           (x, part, _wide_buffer((float(eps),), mean, always=True), mean, rstd, var, C, inner, count, P),
           dict(BLOCK=FINISH_BLOCK, num_warps=NUM_WARPS))
    return mean, rstd, var


FWD_NAME = "snn_fast::bn_lif_fwd_triton"
BWD_NAME = "snn_fast::bn_lif_bwd_triton"
STATS_NAME = "snn_fast::bn_lif_stats_triton"



def _fake_fwd(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, noise_mask, surrogate,
              hard_reset, v_reset, decay_input, detach_reset, reset_residual, strict_threshold, reset_timing,
              return_v_seq, save):
    """The checkpoints of SEG as it is at the call (``lab_variant`` changes it)."""
    return contract.fake_fwd_checkpoints(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats,
                                         noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                                         reset_residual, strict_threshold, reset_timing, return_v_seq, save, seg=SEG)


for _name, _fn, _schema, _fake in ((FWD_NAME, bn_lif_fwd_triton, contract.FWD_SCHEMA, _fake_fwd),
                                   (BWD_NAME, bn_lif_bwd_triton, contract.BWD_SCHEMA, contract.fake_bwd),
                                   (STATS_NAME, bn_lif_stats_triton, contract.STATS_SCHEMA, contract.fake_stats)):
    if INTERPRETED:
        torch.library.custom_op(_name, mutates_args=(), schema=_schema)(_fn).register_fake(_fake)
    else:
        torch.library.triton_op(_name, mutates_args=(), schema=_schema)(_fn)
