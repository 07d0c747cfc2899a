"""The fused batch-norm + LIF CUDA kernels (csrc/cuda/bn_lif.cu, docs/spec.md §12) emulated on the host
against the reference, on any machine with nvcc (no GPU and no CUDA build of torch needed).

``csrc/cuda/emulate/bn_lif_emulate.cu`` runs the kernels' own per-thread bodies (bn_lif_kernels.cuh:
forward, backward, dx) for every thread index of the launchers' grid, and their block reductions (the
backward's blocks, the channel sums and algebra, ∂params, the batch statistics) share by share with the
device's summation tree. ``emulate`` below drives them as csrc/cuda/bn_lif_cuda_binding.cpp does, with
its allocations and launches: the kernels compute the scale a = weight·(rstd·gain), gain =
tdbn_alpha·θ or 1, themselves; the forward keeps the membrane every 8 steps (both save modes) and the
backward re-runs each 8-step segment from it into registers, walks it back, and sums its block's
neurons ([C, P, 5] in double); ``scale_by_a = not batch_stats``; the channel pass (∂weight, ∂bias,
the dx coefficients [a, −a·rstd²·g1/n, −a·g0/n] with batch statistics, the channels' parameter terms
with tdBN's θ term); the ∂params pass. The batch statistics come from the emulated ``bn_lif_stats``
(chunked, shifted sums in double), as snn_fast/ops/bn_lif/function.py takes them on a GPU. Every
output, the checkpoints, the block sums, the coefficients and the chunk sums start as NaN, so an
element no thread writes shows.

Compared with ``bn_lif_reference_k`` (batch norm, then the LIF reference; gradients by autograd):
float64 and float32 with ``assert_close``, float16/bfloat16 with ``assert_close_lowp`` and the spike
flip bound of tests/test_bn_lif.py. The grid: hard/soft reset, decay_input on/off, detach_reset, κ,
IF, the strict threshold (H = θ exactly included), batch and running statistics, plain BN and tdBN,
the noise mask, save state and recompute, with and without parameter gradients; the shapes: inner = 1
and > 1, C = 1, T = 1, T = 8, 9 and 17 (one segment, a checkpoint, two and a ragged tail), B·S = 1,
B = 0, a channel's neurons below, equal to and past one block (kThreads). The last tests break the
host algebra on purpose and check that the comparison notices.

Skipped, with the reason, when nvcc is not found (``SNN_FAST_NVCC`` names a specific nvcc).
"""
from __future__ import annotations

import ctypes
import math
import os
import tempfile

import pytest
import torch

from conftest import assert_close, assert_close_lowp
from test_cuda_compile import DTYPE_ID, NVCC, ROOT, _compile_emulator, _ptr

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set SNN_FAST_NVCC or CUDA_HOME)")

BN_EMULATOR = os.path.join(ROOT, "csrc", "cuda", "emulate", "bn_lif_emulate.cu")
SAVE_STATE, SAVE_RECOMPUTE = 0, 1  # snn_fast.ops.lif.contract's codes (checked below)
EPS, MOMENTUM = 1e-5, 0.1


@pytest.fixture(scope="module")
def bn_emulator():
    with tempfile.TemporaryDirectory() as d:
        cmd, rc, text, path = _compile_emulator(d, BN_EMULATOR)
        assert rc == 0, f"bn_lif host emulator failed to build ({' '.join(cmd)}):\n{text}"
        lib = ctypes.CDLL(path)
    P, I, L, D = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
    flags = [I, I, D, I, I, D, I]
    lib.emu_bnlif_fwd.argtypes = [I, L, L, L, L] + [P] * 5 + [D] + [P] * 7 + flags + [I]  # + v0_uniform
    lib.emu_bnlif_bwd.argtypes = [I, L, L, L, L] + [P] * 8 + [D] + [P] * 4 + [I, I] + [P] * 3 + flags + [I]
    lib.emu_bnlif_dx.argtypes = [I, L, L, L, L] + [P] * 4
    lib.emu_bnlif_channels.argtypes = [I, L, L, L, L] + [P] * 4 + [D, I] + [P] * 5
    lib.emu_bnlif_bwd_blocks.argtypes = [L, L, L]
    lib.emu_bnlif_bwd_blocks.restype = L
    lib.emu_bnlif_bwd_lanes.argtypes = [L, L, L]
    lib.emu_bnlif_checkpoints.argtypes = [L]
    lib.emu_bnlif_checkpoints.restype = L
    lib.emu_bnlif_stats.argtypes = [I, L, L, L, L, P, P, D, P, P, P]
    lib.emu_bnlif_stats_chunks.argtypes = [L, L, L, L]
    lib.emu_bnlif_stats_chunks.restype = L
    lib.emu_bnlif_force_wide_index.argtypes = [I]
    return lib


def test_save_codes_are_the_package_codes(bn_emulator):
    from snn_fast.ops.lif import contract

    assert (contract.SAVE_STATE, contract.SAVE_RECOMPUTE) == (SAVE_STATE, SAVE_RECOMPUTE)
    assert bn_emulator.emu_bnlif_threads() == 256
    # the checkpoints every 8 steps (the fake of snn_fast/ops/bn_lif/contract.py counts them too)
    from snn_fast.ops.bn_lif.contract import checkpoint_rows

    for T in range(1, 40):
        assert bn_emulator.emu_bnlif_checkpoints(T) == checkpoint_rows(T) == (T - 1) // 8


# --- the binding, in torch -------------------------------------------------------------------------


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def emulate(lib, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, mask, flags, gs, gvl, gvs,
            save, need_param_grad, return_v_seq=True, mutate=()):
    """bn_lif_fwd_cuda then bn_lif_bwd_cuda (csrc/cuda/bn_lif_cuda_binding.cpp) on the emulated kernels,
    with the binding's allocations and launches: forward; backward walk; the channel sums and their
    algebra (and ∂params); the dx pass with batch statistics. x [T, N]; v0 [N] (or [1] for N > 1: the
    start of every neuron, lif_checks.h's uniform_v0); params, weight, bias,
    mean, rstd in params' dtype; flags = (sg, hard, vr, di, det, κ, strict). ``mutate`` breaks one step
    on purpose (test_a_broken_algebra_is_caught)."""
    T, N = x.shape
    C = weight.numel()
    pt = params.dtype
    dt = DTYPE_ID[x.dtype]
    lif_flags = (flags[0], int(flags[1]), flags[2], int(flags[3]), int(flags[4]), flags[5], int(flags[6]))
    w, r, m, b = weight.contiguous(), rstd.contiguous(), mean.contiguous(), bias.contiguous()
    k_inner = 1 if "inner" in mutate else inner
    uniform = int(v0.numel() == 1 and N > 1)
    # forward
    s, v_last = _nan((T, N), x.dtype), _nan((N,), x.dtype)
    v_seq = _nan((T, N), x.dtype) if return_v_seq else torch.empty(0, dtype=x.dtype)
    # the membrane every 8 steps, kept in both save modes ("no_checkpoint": the forward told to keep none)
    saved = _nan((lib.emu_bnlif_checkpoints(T), N), pt)
    keep = saved.shape[0] > 0 and "no_checkpoint" not in mutate
    assert lib.emu_bnlif_fwd(dt, T, N, C, k_inner, _ptr(x), _ptr(v0), _ptr(params), _ptr(w), _ptr(r), tdbn_alpha,
                             _ptr(m), _ptr(b), _ptr(mask), _ptr(s), _ptr(v_last),
                             _ptr(v_seq) if return_v_seq else None, _ptr(saved) if keep else None, *lif_flags,
                             uniform) == 0
    # backward
    gvlast = None if gvl is None else gvl.to(x.dtype).contiguous()
    gvseq = None if gvs is None or gvs.numel() == 0 else gvs.to(x.dtype).contiguous()
    gx, gv0 = _nan((T, N), x.dtype), _nan(tuple(v0.shape), x.dtype)
    # the binding's double scratch: the blocks' sums [C, P, 5] | the channels' parameter terms [3, C];
    # the dx coefficients [3, C] in params' dtype
    P = lib.emu_bnlif_bwd_blocks(N, C, k_inner)
    scratch = _nan((C * P * 5 + (3 * C if need_param_grad else 0),), torch.float64)
    part = scratch[:C * P * 5]
    pchan = scratch[C * P * 5:] if need_param_grad else None
    coef = _nan((3 * C,), pt) if batch_stats else None
    scale_by_a = not batch_stats
    if "scale_by_a" in mutate:
        scale_by_a = not scale_by_a
    assert lib.emu_bnlif_bwd(dt, T, N, C, k_inner, _ptr(gs.contiguous()), _ptr(gvlast), _ptr(gvseq), _ptr(x),
                             _ptr(v0), _ptr(params), _ptr(w), _ptr(r), tdbn_alpha, _ptr(m), _ptr(b), _ptr(mask),
                             _ptr(saved) if saved.shape[0] > 0 else None, int(scale_by_a), int(need_param_grad),
                             _ptr(gx), _ptr(gv0), _ptr(part), *lif_flags, uniform) == 0
    # the channel sums and their algebra, then ∂params
    gw, gb, gp = _nan((C,), pt), _nan((C,), pt), _nan((3,), pt)
    # "theta": the channel pass told plain batch norm (no tdBN gain: neither its θ term nor its scale)
    assert lib.emu_bnlif_channels(dt, T, N, C, k_inner, _ptr(part), _ptr(params), _ptr(w), _ptr(r),
                                  0.0 if "theta" in mutate else tdbn_alpha, int(batch_stats), _ptr(gw), _ptr(gb),
                                  _ptr(coef), _ptr(pchan), _ptr(gp)) == 0
    if batch_stats and N > 0:
        if "dx_mean" in mutate:
            coef[2 * C:] = 0
        assert lib.emu_bnlif_dx(dt, T, N, C, inner, _ptr(x), _ptr(gx), _ptr(coef), _ptr(m)) == 0
    out = dict(s=s, v_last=v_last, grad_x=gx, grad_v0=gv0, grad_params=gp, grad_weight=gw, grad_bias=gb)
    if return_v_seq:
        out["v_seq"] = v_seq
    return out, dict(saved=saved, part=part.view(C, P, 5), coef=coef, pchan=pchan)


def emulate_stats(lib, x2, C, inner, eps=EPS):
    """bn_lif_stats_cuda on the emulated kernels: (mean, rstd, unbiased var) of x2 [T, N], and the chunk
    sums [C, P, 2]."""
    T, N = x2.shape
    pd = torch.float64 if x2.dtype == torch.float64 else torch.float32
    P = lib.emu_bnlif_stats_chunks(T, N, C, inner)
    part = _nan((C * P * 2,), torch.float64)
    mean, rstd, varu = _nan((C,), pd), _nan((C,), pd), _nan((C,), pd)
    assert lib.emu_bnlif_stats(DTYPE_ID[x2.dtype], T, N, C, inner, _ptr(x2.contiguous()), _ptr(part), eps,
                               _ptr(mean), _ptr(rstd), _ptr(varu)) == 0
    return mean, rstd, varu, part.view(C, P, 2)


# --- cases and the reference -----------------------------------------------------------------------

# (hard_reset, v_reset, decay_input, detach_reset, κ, k, strict threshold): the reset, charge and gradient
# paths of docs/spec.md §2 the CUDA kernels run (the reset after the spike only).
VARIANTS = {
    "hard-di": (True, 0.0, True, False, 0.0, 0.5, False),
    "hard-neg-nodi": (True, -0.3, False, False, 0.0, 0.25, False),
    "soft-di-det-kappa": (False, 0.0, True, True, 0.2, 0.4, False),
    "if-hard-det-kappa": (True, 0.0, False, True, 0.2, 0.0, False),
    "soft-nodi-strict": (False, 0.0, False, False, 0.0, 0.3, True),
    "hard-di-kappa-strict": (True, 0.0, True, False, 0.2, 0.5, True),
}
# (batch statistics, tdbn_alpha; 0 = plain batch norm)
MODES = {"batch-bn": (True, 0.0), "batch-tdbn": (True, 0.7), "running-tdbn": (False, 0.7), "running-bn": (False, 0.0)}
SURROGATES = ["sigmoid", "atan", "rectangle", "q_pseudo_spike", "spike_gate", "triangle"]


def make_case(shape, dtype, variant, mode, sg_name="sigmoid", noisy=False, seed=0, theta=1.0):
    """Inputs of one bn_lif call: x [T, B, C, *] and the rest, the parameters in params' dtype."""
    from snn_fast import surrogate as _sg

    g = torch.Generator().manual_seed(seed)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    C = shape[2]
    hard, vr, di, det, kappa, k, strict = VARIANTS[variant]
    sg = _sg.get(sg_name)
    alpha = 2.5 if sg_name == "q_pseudo_spike" else (sg.alpha or 1.0)
    batch, tdbn = MODES[mode]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(dtype)
    return dict(
        x=x, v0=(torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.2).to(dtype),
        weight=(torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pd),
        bias=(torch.randn(C, generator=g, dtype=torch.float64) * 0.3 + 0.5).to(pd),
        rm=(torch.randn(C, generator=g, dtype=torch.float64) * 0.2).to(pd),
        rv=(torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(pd),
        params=torch.tensor([k, theta, alpha], dtype=pd),
        mask=(torch.rand(shape, generator=g) >= 0.4) if noisy else None,
        gs=torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        gvl=torch.randn(shape[1:], generator=g, dtype=torch.float64).to(dtype),
        gvs=torch.randn(shape, generator=g, dtype=torch.float64).to(dtype),
        flags=(sg.id, hard, vr, di, det, kappa, strict), sg_name=sg_name, batch=batch, tdbn=tdbn)


def reference(c, dtype=None, no_grad_outputs=False):
    """Outputs and gradients of ``bn_lif_reference_k`` in ``dtype`` (x's by default), flattened to [T, N]."""
    from snn_fast import surrogate as _sg
    from snn_fast.ops.bn_lif.reference import bn_lif_reference_k
    from snn_fast.ops.lif.args import LIFFlags

    dtype = dtype or c["x"].dtype
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    sg, hard, vr, di, det, kappa, strict = c["flags"]
    fl = LIFFlags(surrogate_id=sg, hard_reset=hard, v_reset=vr, decay_input=di, detach_reset=det,
                  reset_residual=kappa, fire_at_threshold=not strict, reset_timing="after_fire")
    x = c["x"].detach().to(dtype).requires_grad_(True)
    v0 = c["v0"].detach().to(dtype).requires_grad_(True)
    w = c["weight"].detach().to(pd).requires_grad_(True)
    b = c["bias"].detach().to(pd).requires_grad_(True)
    k, theta, alpha = (p.detach().to(pd).requires_grad_(True) for p in c["params"].unbind())
    rm, rv = c["rm"].to(pd).clone(), c["rv"].to(pd).clone()
    s, v_last, v_seq = bn_lif_reference_k(x, w, b, rm, rv, c["batch"], MOMENTUM, EPS, v0, k, theta, alpha, fl,
                                          _sg.get(c["sg_name"]), c["mask"], True, c["tdbn"] or None)
    gs, gvl, gvs = (c[n].to(dtype) for n in ("gs", "gvl", "gvs"))
    if no_grad_outputs:
        gvl, gvs = torch.zeros_like(gvl), torch.zeros_like(gvs)
    grads = torch.autograd.grad((s, v_last, v_seq), (x, v0, k, theta, alpha, w, b), (gs, gvl, gvs),
                                allow_unused=True)
    gx, gv0, gk, gth, gal, gw, gb = (torch.zeros((), dtype=pd) if g is None else g for g in grads)
    T = x.shape[0]
    return dict(s=s.detach().reshape(T, -1), v_last=v_last.detach().reshape(-1), v_seq=v_seq.detach().reshape(T, -1),
                grad_x=gx.reshape(T, -1), grad_v0=gv0.reshape(-1), grad_params=torch.stack([gk, gth, gal]).to(pd),
                grad_weight=gw, grad_bias=gb)


def run(lib, c, save, need_param_grad, no_grad_outputs=False, return_v_seq=True, mutate=()):
    """The case through the emulated binding: the batch statistics from the emulated bn_lif_stats (as
    function.py takes them for the CUDA backend), the running ones as function.py folds them."""
    x = c["x"]
    T, C = x.shape[0], x.shape[2]
    inner = math.prod(x.shape[3:])
    x2 = x.reshape(T, -1).contiguous()
    pd = c["params"].dtype
    if c["batch"]:
        mean, rstd, _, _ = emulate_stats(lib, x2, C, inner)
    else:
        mean, rstd = c["rm"].to(pd, copy=True), torch.rsqrt(c["rv"].to(pd) + EPS)
    mask = None if c["mask"] is None else c["mask"].reshape(T, -1).contiguous()
    gvl = None if no_grad_outputs else c["gvl"].reshape(-1)
    gvs = None if no_grad_outputs else c["gvs"].reshape(T, -1)
    return emulate(lib, x2, c["v0"].reshape(-1).contiguous(), c["params"], c["weight"], c["bias"], mean, rstd,
                   c["tdbn"], inner, c["batch"], mask, c["flags"], c["gs"].reshape(T, -1), gvl, gvs, save,
                   need_param_grad, return_v_seq, mutate)


SAVES = {"state": SAVE_STATE, "recompute": SAVE_RECOMPUTE}


def check_all(lib, c, want, dtype, what, saves=SAVES, params=(True, False), **kw):
    """Every save mode and parameter-gradient setting against ``want``; the state and recompute paths
    also against each other (bit for bit: on CUDA they are one path)."""
    for need_param in params:
        first = None
        for save_name, save in saves.items():
            got, extra = run(lib, c, save, need_param, **kw)
            name = f"{what}/save={save_name}/param={need_param}"
            for key in got:
                if key == "grad_params" and not need_param:
                    assert torch.equal(got[key], torch.zeros_like(got[key])), f"{name}: grad_params not zero"
                    continue
                assert_close(got[key], want[key], dtype=dtype, name=f"{name} {key}")
            assert not extra["saved"].isnan().any(), f"{name}: checkpoints not written everywhere"
            assert not extra["part"].isnan().any(), f"{name}: block sums not written everywhere"
            if need_param:
                assert not extra["pchan"].isnan().any(), f"{name}: pchan not written everywhere"
            else:
                assert not extra["part"][:, :, 2:].any(), f"{name}: parameter terms without need_param_grad"
            if extra["coef"] is not None:
                assert not extra["coef"].isnan().any(), f"{name}: dx coefficients not written everywhere"
            if first is None:
                first = got
            else:
                for key in got:
                    assert torch.equal(got[key], first[key]), f"{name} {key}: recompute differs from state"


# --- float64: the whole option grid ----------------------------------------------------------------


@pytest.mark.parametrize("noisy", [False, True], ids=["spike", "noisy"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_emulated_bn_lif_float64(bn_emulator, variant, mode, noisy):
    """[T, B, C, S] = [11, 3, 4, 25]: 75 neurons per channel, one block each; T = 11 is a segment of 8
    steps from v0 and a ragged one of 3 from the checkpoint."""
    sg_name = SURROGATES[(list(VARIANTS).index(variant) + list(MODES).index(mode)) % len(SURROGATES)]
    c = make_case((11, 3, 4, 5, 5), torch.float64, variant, mode, sg_name, noisy=noisy)
    check_all(bn_emulator, c, reference(c), torch.float64, f"{variant}/{mode}/{sg_name}/noisy={noisy}")


# --- shapes ------------------------------------------------------------------------------------------

SHAPES = {
    "inner1": (4, 3, 6),  # [T, B, C]: no spatial dims, inner = 1
    "c1": (4, 3, 1, 5, 5),  # one channel
    "t1": (1, 4, 3, 4, 4),  # one step
    "t8": (8, 2, 3, 5),  # one full segment, no checkpoint
    "t9": (9, 2, 3, 5),  # a checkpoint and a segment of one step
    "t17": (17, 2, 3, 2, 2),  # two checkpoints, ragged tail
    "bs1": (6, 1, 5),  # B·S = 1: n = T
    "n5": (3, 1, 5),  # N = 5, most of the block idle
    "c256": (2, 16, 2, 4, 4),  # 256 neurons per channel: one block each, exactly full
    "c294-inner49": (3, 6, 3, 7, 7),  # 294 per channel: two blocks, the second ragged, runs across them
    "c771": (10, 771, 2),  # inner = 1, 771 per channel: 2 lanes × 128 rows, 7 chunks, the last ragged
    "inner1-c5": (3, 300, 5),  # inner = 1: 8 lanes (3 past the channels) × 32 rows, 10 chunks
    "c70-b3": (2, 3, 70),  # 3 neurons per channel: 32 channels a block, the third group ragged (6)
    "inner2": (3, 20, 6, 2),  # inner = 2: 4 lanes × 64 rows, two channel groups
}


@pytest.mark.parametrize("mode", ["batch-tdbn", "running-bn"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_emulated_bn_lif_shapes(bn_emulator, shape, mode):
    c = make_case(SHAPES[shape], torch.float64, "soft-di-det-kappa", mode, "atan", noisy=shape == "c294-inner49")
    check_all(bn_emulator, c, reference(c), torch.float64, f"{shape}/{mode}")


def test_backward_block_layout(bn_emulator):
    """The backward's block: G channels × 256 / G rows (csrc/cuda/bn_lif_kernels.cuh bnlif_bwd_lanes),
    for the issue's shapes and a Linear layer's; the grid covers every (channel, neuron) once (checked
    by every emulated case: all block sums written, the results right)."""
    cases = {  # [T, B, C, inner] -> (G, P)
        (4, 32, 64, 3136): (1, 392),  # one channel a block: 1 KB runs
        (4, 32, 512, 49): (1, 7),
        (4, 256, 4096, 1): (8, 8),  # runs of 1: 8 channels per warp row, 32 rows
        (4, 8, 4096, 1): (32, 1),  # 8 neurons per channel: 32 channels × 8 rows
        (4, 3, 6, 1): (8, 1),  # no more lanes than the next power of two of C
        (4, 0, 3, 2): (4, 1),
    }
    for (_, B, C, inner), want in cases.items():
        N = B * C * inner
        assert (bn_emulator.emu_bnlif_bwd_lanes(N, C, inner), bn_emulator.emu_bnlif_bwd_blocks(N, C, inner)) == want
    # The Triton backward lays its programs out by the same rule (snn_fast/ops/bn_lif/triton.py
    # bwd_lanes, its block a parameter; bwd_chunks is 0 where the CUDA grid keeps one empty block).
    from snn_fast.ops.bn_lif.triton import bwd_chunks, bwd_lanes

    for B in (0, 1, 2, 3, 8, 32, 100):
        for C in (1, 2, 3, 6, 64, 70, 512, 4096):
            for inner in (1, 2, 3, 7, 8, 49, 3136):
                N = B * C * inner
                got = bwd_lanes(N, C, inner, 256), bwd_chunks(N, C, inner, 256)
                want = bn_emulator.emu_bnlif_bwd_lanes(N, C, inner), bn_emulator.emu_bnlif_bwd_blocks(N, C, inner)
                assert got == (want[0], want[1] if B else 0), (B, C, inner)


def test_emulated_bn_lif_empty_batch(bn_emulator):
    """B = 0 (running statistics): no neuron, yet every backward block runs and writes zero sums, so
    ∂weight, ∂bias and ∂params are 0, not what an unwritten scratch held."""
    c = make_case((9, 0, 3, 2), torch.float64, "hard-di", "running-tdbn")
    for need_param in (True, False):
        got, extra = run(bn_emulator, c, SAVE_STATE, need_param)
        assert torch.equal(extra["part"], torch.zeros(3, 1, 5, dtype=torch.float64))
        for key in ("grad_weight", "grad_bias", "grad_params"):
            assert torch.equal(got[key], torch.zeros_like(got[key])), key
        assert got["grad_x"].shape == (9, 0) and got["s"].shape == (9, 0)


@pytest.mark.parametrize("mode", ["batch-bn", "running-tdbn"])
def test_emulated_bn_lif_uniform_start(bn_emulator, mode):
    """v0 [1] (the op's start for v0=None or a float: lif_checks.h uniform_v0): every output bit for bit what the
    same value given per neuron ([N]) gives, at T = 11 (a checkpoint) in both save modes; ∂L/∂v0 [1]
    is NaN, written by element 0's thread, never a number."""
    c = make_case((11, 3, 4, 5, 5), torch.float64, "hard-di", mode)
    N = c["x"][0].numel()
    c["v0"] = torch.full(c["x"].shape[1:], 0.3, dtype=torch.float64)
    for save in (SAVE_STATE, SAVE_RECOMPUTE):
        for need_param in (True, False):
            want, _ = run(bn_emulator, c, save, need_param)
            uni = dict(c, v0=torch.full((1,), 0.3, dtype=torch.float64))
            got, _ = run(bn_emulator, uni, save, need_param)
            assert want["grad_v0"].shape == (N,) and not want["grad_v0"].isnan().any()
            assert got["grad_v0"].shape == (1,) and got["grad_v0"].isnan().all()
            for key in want:
                if key != "grad_v0":
                    assert torch.equal(got[key], want[key]), (save, need_param, key)


@pytest.mark.parametrize("mode", ["batch-bn", "running-tdbn"])
def test_emulated_bn_lif_without_optional_inputs(bn_emulator, mode):
    """No grad_v_last, no grad_v_seq (zeros assumed), no v_seq written."""
    c = make_case((4, 3, 4, 3, 3), torch.float64, "hard-di", mode)
    want = reference(c, no_grad_outputs=True)
    want.pop("v_seq")
    check_all(bn_emulator, c, want, torch.float64, mode, no_grad_outputs=True, return_v_seq=False)


@pytest.mark.parametrize("strict", [False, True], ids=["at-threshold", "strict"])
@pytest.mark.parametrize("variant", ["soft-nodi-strict", "if-hard-det-kappa"])
def test_emulated_bn_lif_exactly_at_threshold(bn_emulator, variant, strict):
    """Channel 0 lands exactly on θ at t = 0 (running mean 0, x = 0, v0 = 0, bias = θ, no decay of the
    input: H = X' = b): a spike there with fire_at_threshold, none with the strict threshold."""
    c = make_case((3, 4, 3, 2, 2), torch.float64, variant, "running-bn", "sigmoid")
    c["flags"] = c["flags"][:6] + (strict,)
    theta = float(c["params"][1])
    c["rm"][0] = 0.0
    c["bias"][0] = theta
    c["x"][0, :, 0] = 0.0
    c["v0"][:, 0] = 0.0
    want = reference(c)
    s0 = want["s"].view(3, 4, 3, 4)[0, :, 0]
    assert (s0 == (0.0 if strict else 1.0)).all(), "the case must put H exactly on θ"
    check_all(bn_emulator, c, want, torch.float64, f"{variant}/strict={strict}")


# --- float32 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch-bn", "batch-tdbn", "running-tdbn"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_emulated_bn_lif_float32(bn_emulator, variant, mode):
    c = make_case((6, 4, 8, 7, 7), torch.float32, variant, mode, "atan", seed=1)
    check_all(bn_emulator, c, reference(c), torch.float32, f"{variant}/{mode}")


# --- float16 / bfloat16 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("save", list(SAVES))
@pytest.mark.parametrize("mode", ["batch-tdbn", "running-bn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_bn_lif_low_precision(bn_emulator, dtype, mode, save):
    """fp16/bf16 storage, fp32 arithmetic (H saved in fp32): within the low-precision bound of conftest
    and tests/test_bn_lif.py's spike-flip bound."""
    c = make_case((6, 4, 8, 5, 5), dtype, "hard-di", mode, "sigmoid")
    ref64, ref_lp = reference(c, torch.float64), reference(c, dtype)
    got, _ = run(bn_emulator, c, SAVES[save], True)
    for key in ("v_last", "v_seq", "grad_x", "grad_v0", "grad_weight", "grad_bias", "grad_params"):
        assert not got[key].isnan().any(), f"{key}: NaN (an element not written)"
        assert_close_lowp(got[key], ref64[key], ref_lp[key].to(dtype), name=f"{dtype}/{mode}/{save} {key}")
    flips = (got["s"].double() != ref64["s"]).float().mean().item()
    flips_torch = (ref_lp["s"].double() != ref64["s"]).float().mean().item()
    assert flips <= 2 * flips_torch + 1e-3, (flips, flips_torch)


# --- the batch statistics --------------------------------------------------------------------------------

STATS_SHAPES = {
    "one-chunk": (3, 4, 5, 7, 7),  # [T, B, C, *]: 588 values per channel
    "chunks": (2, 3, 2, 1000),  # 6000 values per channel: two chunks, the second ragged
    "many-chunks": (4, 8, 1, 2500),  # 80000 values, one channel: 20 chunks
    "inner1": (5, 7, 3),
    "two-values": (2, 1, 4),  # n = 2 per channel
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(STATS_SHAPES))
def test_emulated_stats_match_torch(bn_emulator, shape, dtype):
    """Mean, rstd and the unbiased variance against torch in float64 (from x as stored): float64 to
    1e-12 relative, float32 outputs to their rounding; every chunk sum written."""
    shp = STATS_SHAPES[shape]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shp, generator=g, dtype=torch.float64) * 2 + 0.7).to(dtype)
    T, C = shp[0], shp[2]
    inner = x[0, 0, 0].numel()
    x2 = x.reshape(T, -1)
    mean, rstd, varu, part = emulate_stats(bn_emulator, x2, C, inner)
    xd = x2.double().reshape(-1, C, inner)
    var, m = torch.var_mean(xd, dim=(0, 2), correction=0)
    want_r, want_vu = torch.rsqrt(var + EPS), torch.var(xd, dim=(0, 2), correction=1)
    assert not part.isnan().any()
    n = xd.numel() // C
    assert part.shape[1] == (1 if n <= 4096 else min(-(-n // 4096), -(-2048 // C)))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-7, atol=1e-7)
    for got, want, what in ((mean, m, "mean"), (rstd, want_r, "rstd"), (varu, want_vu, "var_unbiased")):
        torch.testing.assert_close(got.double(), want, **tol, msg=what)


def test_emulated_stats_shift_keeps_a_large_mean(bn_emulator):
    """|mean| ≫ std: 1e6 + N(0, 1e-2) in float64. Σx² − (Σx)²/n unshifted loses the variance (~1e-4)
    to cancellation (checked below: relative error ≫ 1e-3); the shift by the channel's first value keeps
    it to ~1e-12. The reference is torch on x − 1e6 (exact in float64), since torch's own Welford on x
    carries ~1e-8 here."""
    g = torch.Generator().manual_seed(4)
    x = 1e6 + torch.randn(4, 8, 3, 300, generator=g, dtype=torch.float64) * 1e-2
    x2 = x.reshape(4, -1)
    mean, rstd, varu, _ = emulate_stats(bn_emulator, x2, 3, 300)
    xs = x2.reshape(-1, 3, 300) - 1e6
    want = torch.var(xs, dim=(0, 2))
    torch.testing.assert_close(varu, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(mean - 1e6, xs.mean(dim=(0, 2)), rtol=1e-6, atol=1e-12)
    xd, n = x2.reshape(-1, 3, 300), 4 * 8 * 300
    naive = ((xd * xd).sum((0, 2)) - xd.sum((0, 2)) ** 2 / n) / (n - 1)
    assert ((naive - want).abs() / want).max() > 1e-3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_emulated_stats_keep_a_non_finite_channel(bn_emulator, bad):
    """A NaN or inf in a channel gives that channel NaN statistics (as the CPU op and torch: no clamp of
    a NaN variance to 0, which would leave running_var finite while running_mean is not); the other
    channels are untouched."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64)
    x[1, 2, 1, 3] = bad
    x2 = x.reshape(3, -1)
    mean, rstd, varu, _ = emulate_stats(bn_emulator, x2, 3, 5)
    assert rstd[1].isnan() and varu[1].isnan() and not mean[1].isfinite()
    xd = x2.reshape(-1, 3, 5)
    for c in (0, 2):
        torch.testing.assert_close(varu[c], xd[:, c].var(), rtol=1e-12, atol=0)


def test_emulated_wide_index_path_equals_narrow(bn_emulator):
    """The 64-bit index instantiations of the channel and statistics reductions (taken past 2^31 values
    per channel) give bit for bit the 32-bit ones' results: the same values in the same order."""
    c = make_case((3, 4, 3, 2, 1000), torch.float64, "soft-di-det-kappa", "batch-tdbn", "atan")
    try:
        got = []
        for wide in (0, 1):
            bn_emulator.emu_bnlif_force_wide_index(wide)
            got.append(run(bn_emulator, c, SAVE_RECOMPUTE, True)[0])
    finally:
        bn_emulator.emu_bnlif_force_wide_index(0)
    for key in got[0]:
        assert torch.equal(got[0][key], got[1][key]), key
    assert_close(got[0]["grad_weight"], reference(c)["grad_weight"], dtype=torch.float64, name="grad_weight")


def test_emulated_channel_pass_without_param_grad_zeroes_params(bn_emulator):
    """Without parameter gradients block 0 writes ∂params = 0 (the binding returns it unread), and the
    coefficients exist only with batch statistics."""
    c = make_case((3, 2, 4, 3), torch.float64, "hard-di", "running-bn")
    got, extra = run(bn_emulator, c, SAVE_STATE, False)
    assert torch.equal(got["grad_params"], torch.zeros(3, dtype=torch.float64))
    assert extra["coef"] is None and extra["pchan"] is None


# --- the checks can fail -------------------------------------------------------------------------------

MUTATIONS = {
    "scale_by_a": "running-tdbn",  # ∂L/∂X' unscaled in eval (or scaled twice in training)
    "theta": "batch-tdbn",  # no θ term of the tdBN gain
    "dx_mean": "batch-bn",  # dx without the path through the batch mean
    "inner": "batch-bn",  # the kernels told inner = 1: the wrong channel's a, m, b
    "no_checkpoint": "batch-bn",  # the forward keeps no checkpoint: the NaN rows are read
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_broken_algebra_is_caught(bn_emulator, mutation):
    c = make_case((10, 3, 4, 3, 3), torch.float64, "hard-di", MUTATIONS[mutation], "sigmoid")
    want = reference(c)
    got, _ = run(bn_emulator, c, SAVE_RECOMPUTE, True, mutate=(mutation,))
    with pytest.raises(AssertionError):
        for key in got:
            assert_close(got[key], want[key], name=key)
