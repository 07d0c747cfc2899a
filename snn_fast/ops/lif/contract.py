"""The fused LIF ops' contract: their two schemas, what ``save`` makes the forward keep, the fake
(shape) functions, and the checks of the ops defined in Python.

Every fused backend implements the same two ops, under one schema each (``csrc/ops.cpp`` declares
``snn_fast::lif_fwd`` / ``lif_bwd`` with the C++ CPU and CUDA kernels as their implementations; the
Python-defined pairs, Triton's and the CPU's for a user-registered surrogate, are declared from
``FWD_SCHEMA`` / ``BWD_SCHEMA`` below, and ``tests/test_lif.py`` checks that the C++ schemas read the
same):

    fwd(x [T,N], v0 [N] or [1], params [3]=(k, θ, α), noise_mask?, <flags>, return_v_seq, save)
        -> (s, v_last [N], v_seq or [0], saved)
    bwd(grad_s, grad_v_last?, grad_v_seq?, x, v0, params, noise_mask?, saved, s, sg_grad?, sg_dalpha?,
        <flags>, save, need_param_grad) -> (grad_x, grad_v0 like v0, grad_params [3])

v0 [1] for N > 1 (``uniform_v0``) is one start for every neuron; the kernels compute no gradient for
it (its grad_v0 is NaN) and the autograds refuse one that requires a gradient.

``<flags>`` are ``FLAG_ARGS`` (``args.LIFFlags.op_kwargs``). ``save`` is one of ``SAVE``'s codes and
says what ``saved`` holds (``saved_like``); the backward gets the forward's. ``sg_grad``/``sg_dalpha``
give g′ and ∂g/∂α per element instead of a built-in surrogate's (the CPU kernel only).
"""
from __future__ import annotations

import torch

from ... import surrogate as _sg
from .args import _is_compiling

FLAG_ARGS = ("surrogate", "hard_reset", "v_reset", "decay_input", "detach_reset", "reset_residual",
             "strict_threshold", "reset_timing")

FWD_SCHEMA = ("(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, int surrogate, bool hard_reset, "
              "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, "
              "int reset_timing, bool return_v_seq, int save) -> (Tensor, Tensor, Tensor, Tensor)")
BWD_SCHEMA = ("(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
              "Tensor? noise_mask, Tensor saved, Tensor s, Tensor? sg_grad, Tensor? sg_dalpha, int surrogate, "
              "bool hard_reset, float v_reset, bool decay_input, bool detach_reset, float reset_residual, "
              "bool strict_threshold, int reset_timing, int save, bool need_param_grad) -> (Tensor, Tensor, Tensor)")

# reset_timing: the index of args.RESET_TIMINGS (docs/spec.md §2); the kernels run the first three
# (csrc/include/snn_fast/lif_step.h ResetTiming repeats the codes), the CUDA kernel the first only.
# strict_threshold: fire on H > θ only (Θ(0) = 0; the public fire_at_threshold=False).
RESET_AFTER_FIRE, RESET_DELAYED, RESET_NONE = 0, 1, 2
KERNEL_RESET_CODES = (RESET_AFTER_FIRE, RESET_DELAYED, RESET_NONE)

# --- save: what a forward keeps for its backward ----------------------------------------------------
# The public modes (lif_multistep's save=) and the op's codes, which csrc/common/lif_checks.h repeats.
SAVE_MODES = ("recompute", "state")
SAVE_STATE, SAVE_RECOMPUTE, SAVE_NONE, SAVE_SG_ARG = 0, 1, 2, 3
SAVE = {"state": SAVE_STATE, "recompute": SAVE_RECOMPUTE}
# "state" by measurement: the first GPU check (H200, 2026-11-30, benchmarks/results/NVIDIA_H200-2026-11-30.md,
# W1 [T, 64, 65536] fwd+bwd) found it faster than "recompute" at every point measured, on both GPU
# backends: fp32 T = 8 / 64 Triton 0.728 / 1.634 ms vs 0.940 / 1.712, CUDA 0.245 / 1.788 vs 0.361 / 2.678;
# bf16 T = 64 Triton 0.837 vs 1.278, CUDA 1.525 vs 2.403. "recompute" keeps 39-47 % less peak memory
# (W1 fwd+bwd; T = 64 fp32 1152 vs 2064 MB): the option for a model that does not fit.
DEFAULT_SAVE = "state"
# Steps per recompute segment (K). The Triton and CUDA recompute backwards hold a segment's H in
# registers (K values per neuron, unrolled), so K trades registers for checkpoint bytes: K = 8 keeps
# the backward at <= 4 neurons per thread without spills (tests/test_triton_aot.py,
# tests/test_cuda_compile.py) and saves nothing for T <= 8, N·4·(ceil(T/8) − 1) bytes beyond (fp32
# V), against T·N·b for the saved H of save="state". Must match RC_CHUNK of csrc/cuda/lif_cuda.h.
RECOMPUTE_CHUNK = 8


def check_save(save) -> str:
    if save not in SAVE_MODES:
        raise ValueError(f"save must be one of {SAVE_MODES}, got {save!r}")
    return save


def checkpoint_rows(T, chunk: int = RECOMPUTE_CHUNK):
    """Rows of V checkpoints save="recompute" keeps: V after steps K, 2K, … before the last step."""
    return (T + chunk - 1) // chunk - 1 if chunk else 0


def checkpoints_like(x: torch.Tensor, params: torch.Tensor, chunk: int = RECOMPUTE_CHUNK) -> torch.Tensor:
    """The recompute forward's saved tensor for [T, N] x: [checkpoint_rows(T), N] in the compute dtype
    (params' dtype: float32, float64 for float64 x): the exact V the forward carried, so the backward
    re-runs it bit for bit."""
    return x.new_empty((checkpoint_rows(x.shape[0], chunk), x.shape[1]), dtype=params.dtype)


def saved_like(kernel: str, x: torch.Tensor, params: torch.Tensor, save: int, noise_mask=None,
               chunk: int = RECOMPUTE_CHUNK) -> torch.Tensor:
    """What the forward of ``kernel`` ('cpu', 'cuda', 'triton', 'cpu_custom') saves under ``save``:
    the GPU kernels H, [T, N] in x's dtype (H − θ for fp16/bf16 in Triton's case) for "state" and the
    V checkpoints for "recompute"; the CPU kernel nothing (its backward re-runs the forward) but D =
    H − θ for SAVE_SG_ARG; a user's surrogate on the CPU D for "state" (nothing under a noise mask,
    where its forward is the reference loop)."""
    gpu = kernel in ("cuda", "triton")
    if save == SAVE_STATE and gpu:
        return torch.empty_like(x)
    if save == SAVE_RECOMPUTE and gpu:
        return checkpoints_like(x, params, chunk)
    if (save == SAVE_SG_ARG and kernel == "cpu") or (save == SAVE_STATE and kernel == "cpu_custom"
                                                     and noise_mask is None):
        return x.new_empty(x.shape, dtype=params.dtype)
    return x.new_empty(0)


# --- checks and fakes of the ops defined in Python ------------------------------------------------
# The C++ ops check their arguments in C++; an op defined in Python (Triton) checks them here, so a
# direct caller gets an error naming the argument instead of a kernel reading the wrong memory.
_OP_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_op_args(who: str, x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, surrogate: int,
                  save: int = SAVE_STATE, saves=(SAVE_STATE, SAVE_RECOMPUTE, SAVE_NONE),
                  reset_timing: int = RESET_AFTER_FIRE) -> None:
    # Eager calls: one plain test of the common case (torch._check's lambdas cost microseconds per call);
    # anything off, or a traced call (symbolic shapes), goes through the checks that name the argument.
    if (not _is_compiling() and x.dim() == 2 and x.dtype in _OP_DTYPES and v0.dtype == x.dtype
            and v0.dim() == 1 and (v0.shape[0] == x.shape[1] or uniform_v0(v0, x.shape[1]))
            and params.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
            and params.numel() == 3 and (0 <= surrogate < _sg.NUM_KERNEL_SURROGATES
                                         or surrogate >= _sg.CUSTOM_ID_BASE) and save in saves
            and reset_timing in KERNEL_RESET_CODES):
        return
    torch._check(x.dim() == 2, lambda: f"{who}: x must be [T, N], got {x.dim()} dims")
    torch._check(x.dtype in _OP_DTYPES, lambda: f"{who}: unsupported dtype {x.dtype}")
    torch._check(v0.dtype == x.dtype, lambda: f"{who}: v0 dtype {v0.dtype} != x dtype {x.dtype}")
    torch._check(v0.dim() == 1 and (v0.shape[0] == x.shape[1] or (v0.shape[0] == 1 and x.shape[1] > 1)),
                 lambda: f"{who}: v0 must be [N] = [{x.shape[1]}] (or [1] for N > 1), got {tuple(v0.shape)}")
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    torch._check(params.dtype == want and params.numel() == 3,
                 lambda: f"{who}: params must be [3] {want}, got {tuple(params.shape)} {params.dtype}")
    torch._check(0 <= surrogate < _sg.NUM_KERNEL_SURROGATES or surrogate >= _sg.CUSTOM_ID_BASE,
                 lambda: f"{who}: unknown surrogate id {surrogate}")
    torch._check(save in saves, lambda: f"{who}: save must be one of {tuple(saves)}, got {save}")
    torch._check(reset_timing in KERNEL_RESET_CODES,
                 lambda: f"{who}: reset_timing must be one of {KERNEL_RESET_CODES}, got {reset_timing}")


def uniform_v0(v0: torch.Tensor, N) -> bool:
    """v0 [1] for N > 1: one start for every neuron (v0=None or a float), read once per block instead of
    as a row of N, with no ∂L/∂v0 (the kernels' [1] grad_v0 is NaN); csrc/common/lif_checks.h's uniform_v0."""
    return v0.shape[0] == 1 and N > 1


def refuse_uniform_v0_grad(op: str, v0: torch.Tensor, N) -> None:
    """Where autograd records (as the C++ autograds): the kernels compute no gradient for such a v0."""
    if uniform_v0(v0, N):
        raise RuntimeError(f"{op}: v0 of one element starts all {N} neurons and gets no gradient; "
                           "pass v0 as [N] to differentiate it")


def fake_fwd_outputs(x: torch.Tensor, v0: torch.Tensor, return_v_seq: bool):
    """(s, v_last, v_seq) of a fwd op, for fake (shape) functions; each backend adds what it saves."""
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    return torch.empty_like(x), x.new_empty(x.shape[1:]), v_seq  # v_last [N] (v0 may be [1]: uniform_v0)


def fake_fwd_cpp(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                 reset_residual, strict_threshold, reset_timing, return_v_seq, save):
    """snn_fast::lif_fwd serves 'cpu' and 'cuda', which save different things: x's device says which
    (a meta tensor, which no kernel runs on, gets the CPU's answer)."""
    kernel = "cuda" if x.device.type == "cuda" else "cpu"
    return fake_fwd_outputs(x, v0, return_v_seq) + (saved_like(kernel, x, params, save),)


def fake_bwd(grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, sg_grad, sg_dalpha, surrogate,
             hard_reset, v_reset, decay_input, detach_reset, reset_residual, strict_threshold, reset_timing, save,
             need_param_grad):
    """(grad_x, grad_v0, grad_params) of any backend's bwd op."""
    return torch.empty_like(x), torch.empty_like(v0), torch.empty_like(params)
