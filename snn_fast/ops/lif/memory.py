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
backward that needs V_{t−1}; a start every neuron shares, v0=None or a float, reaches the kernels as
v0 [1] and costs none of the v0 and grad_v0 rows: ``uniform_start``), v_seq / grad_v_seq (T·N·b
each) and the noise mask (T·N bytes per kernel that reads it) when present. The floor of
docs/spec.md §10 is 5·T·N·b for forward+backward; recompute is there up to its checkpoints. The CPU
backend saves nothing in either mode (its backward re-runs the forward). tests/test_lif.py checks
``saved_bytes`` against what autograd actually keeps.

A user-registered surrogate on the CPU (custom_cpu.py, ``custom_cpu_bytes``) evaluates its g′ on
D = H − θ, [T, N] in the compute size a, and hands g′ to the C++ walk as a [T, N] buffer:

    save="state"      forward  read x, write s, write D                            T·N·(2b + a)
                      saved    D                                                   T·N·a
    save="recompute"  forward  read x, write s                                     2·T·N·b
                      backward lif_sg_arg: read x, write D                         T·N·(b + a)
    both              backward the user's dg: read D, write g′                     2·T·N·a
                               (compiled: one fused loop; eager: + its temporaries, in
                               cache: it runs on 1 MiB pieces)
                               lif_bwd_given_sg: read x, grad_s, g′, write grad_x  T·N·(3b + a)
                               with parameter gradients, compiled: ∂g/∂α written   +2·T·N·a
                               in the same pass over D, read by the walk
                               eager: D read again (and g′, for a scaling          +4·T·N·a
                               surrogate's x·g′/α), ∂g/∂α written and read
    under a noise mask: the forward is the reference loop and saves nothing; both backward kernels
    read s (+2·T·N·b)

Compiled into the C++ walk (native_surrogate.py: the default where the functions translate and a
compiler is there) a user's surrogate moves the built-in kernel's bytes: no D, no g′ buffers
(``custom_cpu_bytes(..., native=True)``; under a noise mask the table above still holds).

Forward+backward, float32: 36 B per element (state) or 40 B (recompute) against the built-in's 20 B
(5b): g′ written and read (2a) and D written and read (2a, + b for the re-run). The blocked Python
backward this replaced moved 8b = 32 B (forward 3b: x, s and V saved for the backward; backward 5b:
x, V, s, grad_s read, grad_x written, its per-block temporaries in cache), but made ~20 torch calls
per block of 2048 neurons plus one per time step per block, and its time went to them.
"""
from __future__ import annotations

from typing import Dict

import torch

from .contract import RECOMPUTE_CHUNK, checkpoint_rows


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
    if backend == "cpu_custom":  # a user's surrogate on the CPU: D = H − θ (none under a noise mask)
        return T * N * a if save == "state" else 0
    if save == "state":
        return T * N * b
    return checkpoint_rows(T, chunk) * N * a


def bytes_moved(T: int, N: int, dtype: torch.dtype, save: str, *, mask: bool = False, v_seq: bool = False,
                learn_tau_decay_input: bool = False, param_grad: bool = False, backend: str = "triton",
                chunk: int = RECOMPUTE_CHUNK, uniform_start: bool = False) -> Dict[str, int]:
    """{"fwd", "bwd", "total", "saved"}: bytes of one forward and one backward of the GPU kernels
    (grad_v_last given; ``param_grad``: learnable τ/θ/α, which makes the state backward read v0;
    ``uniform_start``: v0 None or a float, [1] to the kernels: no v0 or grad_v0 row).
    ``backend`` "cuda" or "triton": their recompute backwards differ in one term (below)."""
    b, a = _sizes(dtype)
    TN = T * N
    v0_row = 0 if uniform_start else N * b  # each read of v0, and the grad_v0 written
    extra = (TN * b if v_seq else 0) + (TN if mask else 0)  # v_seq written / grad_v_seq read; mask read
    fwd = 2 * TN * b + extra + N * b + v0_row  # x, s; v_last, v0
    bwd = 3 * TN * b + extra + N * b + v0_row  # grad_s, grad_x + (H | x); grad_v_last, grad_v0
    if save == "state":
        fwd += TN * b  # H
        if learn_tau_decay_input:
            bwd += TN * b  # x for ∂H/∂τ
        if param_grad:
            bwd += v0_row  # v0 for V_{−1}
    else:
        ck = checkpoint_rows(T, chunk) * N * a
        fwd += ck
        bwd += ck + v0_row  # checkpoints; v0 starts the first segment
        if mask:
            bwd += TN  # the walk back reads the mask again (the re-run read it a segment before)
        if learn_tau_decay_input and backend == "cuda":
            bwd += TN * b  # CUDA reads X_t again in the walk (Triton keeps the segment's X in registers)
    return {"fwd": fwd, "bwd": bwd, "total": fwd + bwd, "saved": saved_bytes(T, N, dtype, save, chunk=chunk)}


def passes(T: int, N: int, dtype: torch.dtype, save: str, **kw) -> float:
    """Forward+backward bytes in units of one pass over [T, N] (the floor is 5)."""
    b, _ = _sizes(dtype)
    return bytes_moved(T, N, dtype, save, **kw)["total"] / (T * N * b)


def custom_cpu_bytes(T: int, N: int, dtype: torch.dtype, save: str = "state", *, param_grad: bool = False,
                     mask: bool = False, v_seq: bool = False, compiled: bool = True,
                     native: bool = False, uniform_start: bool = False) -> Dict[str, int]:
    """{"fwd", "bwd", "total", "saved"} of a user-registered surrogate on the CPU (the table above),
    grad_v_last given; ``compiled``: the user's functions compiled (one pass over D), else eager (their
    temporaries not counted: they stay in cache); ``native``: compiled into the walk (no noise mask),
    the built-in CPU kernel's bytes; ``uniform_start`` as ``bytes_moved``'s."""
    b, a = _sizes(dtype)
    TN = T * N
    v0_row = 0 if uniform_start else N * b
    if native and not mask:  # the built-in walk's: x, s; x, grad_s, grad_x (lif_cpu.cpp); the [N] vectors
        fwd = 2 * TN * b + N * b + v0_row + (TN * b if v_seq else 0)
        bwd = 3 * TN * b + N * b + 2 * v0_row + (TN * b if v_seq else 0)  # grad_v_last; v0, grad_v0; grad_v_seq
        return {"fwd": fwd, "bwd": bwd, "total": fwd + bwd, "saved": 0}
    fwd = 2 * TN * b + N * b + v0_row + (TN * b if v_seq else 0) + (TN if mask else 0)  # x, s; v_last, v0
    bwd = 0
    rerun = not (save == "state" and not mask)  # lif_sg_arg re-runs the forward for D, from v0
    if not rerun:
        fwd += TN * a  # D
    else:
        bwd += TN * (b + a) + v0_row  # lif_sg_arg: x, D; v0
    bwd += TN * 2 * a  # the user's dg: D, g′
    bwd += TN * (3 * b + a)  # the walk: x, grad_s, g′, grad_x
    bwd += N * b + 2 * v0_row  # grad_v_last; v0 (the walk's re-run), grad_v0
    if param_grad:  # ∂g/∂α written, read by the walk; eagerly also D (and g′) read again
        bwd += (2 if compiled else 4) * TN * a
    if v_seq:
        bwd += TN * b  # grad_v_seq
    if mask:
        bwd += 2 * TN * b  # s (the emitted values), read by both kernels instead of the mask
    saved = 0 if mask else saved_bytes(T, N, dtype, save, backend="cpu_custom")
    return {"fwd": fwd, "bwd": bwd, "total": fwd + bwd, "saved": saved}
