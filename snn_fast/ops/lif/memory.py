"""Bytes a fused LIF layer moves and keeps, per save mode: the one place these are counted.

Counted from the kernels' loads and stores (snn_fast/ops/lif/triton_kernels.py, csrc/cuda/lif_kernels.cuh;
the comments there list the same terms), per call on x of shape [T, N] with storage size b bytes
(4 fp32, 2 fp16/bf16, 8 fp64) and compute size a (4; 8 for fp64):

    save="state"      forward  read x, write s, write H (H − θ for fp16/bf16)      3·T·N·b
                      backward read grad_s, read H, write grad_x                   3·T·N·b
                               (+ read x when learning τ with decay_input)
                      saved    H                                                   T·N·b
    save="recompute"  forward  read x, write s, write V every K steps              2·T·N·b + R·N·a
                      backward read x, grad_s, write grad_x, read the checkpoints  3·T·N·b + R·N·a
                      saved    V after steps K, 2K, … (R = ceil(T/K) − 1 rows)     R·N·a
    inference (no grad)        read x, write s                                     2·T·N·b

plus the [N] vectors (v0 read, v_last written; grad_v_last read, grad_v0 written; v0 read again by a
backward that needs V_{t−1}), v_seq / grad_v_seq (T·N·b each) and the noise mask (T·N bytes per
kernel that reads it) when present. The floor of BENCHMARKS.md is 5·T·N·b for forward+backward;
recompute is there up to its checkpoints. The CPU backend saves nothing in either mode (its backward
re-runs the forward). tests/test_lif.py checks ``saved_bytes`` against what autograd actually keeps.
"""
from __future__ import annotations

from typing import Dict

import torch

from .config import RECOMPUTE_CHUNK, checkpoint_rows


def _sizes(dtype: torch.dtype):
    b = torch.empty(0, dtype=dtype).element_size()
    return b, (8 if dtype == torch.float64 else 4)


def saved_bytes(T: int, N: int, dtype: torch.dtype, save: str, backend: str = "triton",
                chunk: int = RECOMPUTE_CHUNK) -> int:
    """Bytes a layer keeps for its backward beyond its input x (and v0, the parameters, the spikes
    autograd keeps anyway)."""
    if backend == "cpu":
        return 0
    b, a = _sizes(dtype)
    if save == "state":
        return T * N * b
    return checkpoint_rows(T, chunk) * N * a


def bytes_moved(T: int, N: int, dtype: torch.dtype, save: str, *, mask: bool = False, v_seq: bool = False,
                learn_tau_decay_input: bool = False, param_grad: bool = False, backend: str = "triton",
                chunk: int = RECOMPUTE_CHUNK) -> Dict[str, int]:
    """{"fwd", "bwd", "total", "saved"}: bytes of one forward and one backward of the GPU kernels
    (grad_v_last given; ``param_grad``: learnable τ/θ/α, which makes the state backward read v0).
    ``backend`` "cuda" or "triton": their recompute backwards differ in one term (below)."""
    b, a = _sizes(dtype)
    TN = T * N
    extra = (TN * b if v_seq else 0) + (TN if mask else 0)  # v_seq written / grad_v_seq read; mask read
    fwd = 2 * TN * b + extra + 2 * N * b  # x, s; v0, v_last
    bwd = 3 * TN * b + extra + 2 * N * b  # grad_s, grad_x + (H | x); grad_v_last, grad_v0
    if save == "state":
        fwd += TN * b  # H
        if learn_tau_decay_input:
            bwd += TN * b  # x for ∂H/∂τ
        if param_grad:
            bwd += N * b  # v0 for V_{−1}
    else:
        ck = checkpoint_rows(T, chunk) * N * a
        fwd += ck
        bwd += ck + N * b  # checkpoints; v0 starts the first segment
        if mask:
            bwd += TN  # the walk back reads the mask again (the re-run read it a segment before)
        if learn_tau_decay_input and backend == "cuda":
            bwd += TN * b  # CUDA reads X_t again in the walk (Triton keeps the segment's X in registers)
    return {"fwd": fwd, "bwd": bwd, "total": fwd + bwd, "saved": saved_bytes(T, N, dtype, save, chunk=chunk)}


def passes(T: int, N: int, dtype: torch.dtype, save: str, **kw) -> float:
    """Forward+backward bytes in units of one pass over [T, N] (the floor is 5)."""
    b, _ = _sizes(dtype)
    return bytes_moved(T, N, dtype, save, **kw)["total"] / (T * N * b)
