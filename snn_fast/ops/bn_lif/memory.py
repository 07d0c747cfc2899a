"""Bytes a batch-norm + LIF layer moves per forward+backward: the fused op against batch norm followed by
the LIF op (the one place these are counted; ``benchmarks/test_bench_bn_lif.py`` prints them).

Counted in passes over [T, N] in the storage dtype (b bytes per element), from the kernels' loads and
stores (``csrc/cpu/bn_lif_cpu.cpp``, ``triton_kernels.py``), plus rows of N (below), leaving out
the [C] vectors:

    fused (CPU)      forward   statistics: read x                                        1
                               normalise and fire: read x, write s                       2
                     backward  the walk: read x, read ∂L/∂S, write a·∂L/∂X'              3
                               batch statistics (training): read a·∂L/∂X', read x,
                               write ∂L/∂x (eval: none, a·∂L/∂X' is ∂L/∂x)               3
                     total, training                                                     9
    BN + LIF (CPU)   BN forward: statistics (read x), normalise (read x, write y)        3
                     LIF forward: read y, write s                                        2
                     LIF backward: read y, read ∂L/∂S, write ∂L/∂y                       3
                     BN backward: sums (read ∂L/∂y, read x), then read ∂L/∂y, read x,
                     write ∂L/∂x                                                         5
                     total, training                                                     13

Both also move rows of N. For a v0 tensor: the initial membrane v0 read by the forward and again by
the backward, v_T written by the forward and ∂L/∂v0 by the backward (``STATE_ROWS``, 4). For v0=None
(the reset value) or a float, the start every neuron shares, one value (the kernels of both ops take
v0 as [1]) and no ∂L/∂v0, so v_T alone (``UNIFORM_START_ROWS``, 1). At T = 4 with v0=None: 9.25 and
13.25 passes. ``benchmarks/bytes_bn_lif.py`` measures them (on the CPU, 2026-12-07, v0=None, at
[4, 32, 64, 56, 56]: 10.01 passes fused while it still read and wrote the 4 rows, 9.25 after; batch
norm + LIF 12 while the LIF op read and wrote them, not 14: torch's CPU batch norm backward goes channel
by channel, so its second read of ∂L/∂y and x finds them in the cache).

The C++ CPU kernel's training backward goes channel by channel where the shape allows it
(``cpu_backward_by_channel``, the mirror of ``csrc/cpu/bn_lif_cpu_kernels_impl.h`` backward_by_channel:
runs of 2048 elements or more, a channel's x, ∂L/∂S and ∂L/∂x within 8 MiB, two channels or more): a
channel's walk completes its sums, and its batch-statistics pass follows at once, finding its
a·∂L/∂X' and x in the cache. Where the cache holds the channel (``fused_bytes(by_channel=True)``), the
backward reads x and ∂L/∂S and writes ∂L/∂x once: 3 passes, 6 in all.

The fused op never writes the normalised y (nor reads it back twice), and sums batch norm's
per-channel terms inside the LIF backward instead of in a pass of their own: 4 passes fewer. It also
keeps no [T, N] tensor between forward and backward beyond x (BN + LIF keeps y). The CUDA kernels
(``csrc/cuda/bn_lif_cuda.h``) move the same 9, plus for T > 8 the membrane every 8 steps (⌈T/8⌉ − 1
rows of N in params' dtype, written and read) and [C, P, 5] block sums; Triton the same with the
membrane every 4 steps (``triton.SEG``).
"""
from __future__ import annotations

import torch

FUSED_PASSES = {"forward": 3, "backward": 6}
BY_CHANNEL_BACKWARD_PASSES = 3  # the CPU kernel's, channel by channel, each channel held in the cache
# backward_by_channel's limits: the least run (S), and a channel's x, ∂L/∂S and ∂L/∂x (with ∂L/∂v_seq
# and the mask where given)
CPU_CHANNEL_MIN_RUN = 2048
CPU_CHANNEL_BYTES = 8 << 20
UNFUSED_PASSES = {"forward": 5, "backward": 8}
STATE_ROWS = 4  # rows of N: v0 (forward and backward), v_T, ∂L/∂v0
UNIFORM_START_ROWS = 1  # either op with v0=None or a float: v_T only


def _b(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def cpu_backward_by_channel(T: int, N: int, C: int, inner: int, dtype: torch.dtype, grad_v_seq: bool = False,
                            mask: bool = False) -> bool:
    """Whether the CPU kernel's training backward goes channel by channel for x [T, N] with C channels of
    ``inner`` elements per run (else by blocks of the row, then the batch-statistics pass over all of
    it). Shape only: never the thread count, so the sums' order never depends on it."""
    b = _b(dtype)
    per_channel = T * (N // C) * (3 * b + (b if grad_v_seq else 0) + (1 if mask else 0))
    return inner >= CPU_CHANNEL_MIN_RUN and C >= 2 and per_channel <= CPU_CHANNEL_BYTES


def cpu_channel_bytes(T: int, N: int, C: int, inner: int, dtype: torch.dtype) -> int:
    """One channel's x, ∂L/∂S and ∂L/∂x where the backward goes channel by channel (else 0): what the
    cache must hold, per thread, for ``fused_bytes(by_channel=True)``."""
    if not cpu_backward_by_channel(T, N, C, inner, dtype):
        return 0
    return T * (N // C) * 3 * _b(dtype)


def fused_bytes(T: int, N: int, dtype: torch.dtype, training: bool = True, uniform_start: bool = True,
                by_channel: bool = False) -> int:
    """Bytes the fused op moves for one forward+backward of x [T, N]; ``uniform_start``: v0 None or a
    float (else a tensor); ``by_channel``: the CPU kernel's training backward channel by channel, each
    channel held in the cache from its walk to its batch-statistics pass."""
    passes = 9 if training else 5  # eval: no statistics pass, no batch-statistics pass
    if training and by_channel:
        passes -= FUSED_PASSES["backward"] - BY_CHANNEL_BACKWARD_PASSES
    return (passes * T + (UNIFORM_START_ROWS if uniform_start else STATE_ROWS)) * N * _b(dtype)


def unfused_bytes(T: int, N: int, dtype: torch.dtype, training: bool = True, uniform_start: bool = True) -> int:
    """Bytes batch norm followed by the LIF op moves (eval: BN is one read and one write each way);
    ``uniform_start`` as ``fused_bytes``'."""
    passes = 13 if training else 9
    return (passes * T + (UNIFORM_START_ROWS if uniform_start else STATE_ROWS)) * N * _b(dtype)
