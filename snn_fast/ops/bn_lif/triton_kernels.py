"""Triton kernels of bn_lif (docs/spec.md §12): the LIF kernels' building blocks
(``snn_fast/ops/lif/triton_kernels.py``: ``_mul_rn``, ``_lif_step``, ``_bwd_step``, ``_param_terms``)
around the per-channel affine X' = (x − m_c)·a_c + b_c, channel c = (n // INNER) % C of element n, with
a_c = w_c·(rstd_c·gain) computed in the kernels as the C++ op computes it (gain = α_tdBN·θ or 1).

Per element and step (storage b bytes):
    forward   read x, write s                                                   2b
    backward  read x, read ∂L/∂S, write ∂L/∂X' (a_c·∂L/∂X' in eval)               3b
    dx        training only: read ∂L/∂X', read x, write ∂L/∂x                     3b
with the statistics' read of x, 9 passes in training, plus for T > SEG (triton.py) the membrane the
forward keeps every SEG steps, written once and read once (4 bytes, 8 for float64): the backward
re-runs each SEG-step segment from it with H and x − m in registers, then walks it back. Its programs
are columns of channels × rows of their neurons, as the CUDA backward's blocks, so each program sums
its neurons' ∂L/∂X', ∂L/∂X'·(x − m) and, with parameter gradients, (∂k, ∂θ, ∂α) terms per channel
into a [C, P, 5|2] float64 scratch (no per-neuron sums), which ``bn_lif_channels_kernel`` reduces per
channel (in float64, with batch norm's per-channel algebra) and ``bn_lif_params_kernel`` over the
channels. The batch statistics are two more kernels (``bn_lif_stats_*``): float64 sums of x − x_c0
per (channel, chunk), then mean, rstd and the unbiased variance per channel. So the whole op is
kernels: no torch arithmetic on the host per call (the CUDA binding's layout, ``csrc/cuda/``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..common import triton_surrogate as tsg  # noqa: F401  (the surrogates the building blocks call)
from ..lif.triton_kernels import _bwd_step, _fires, _lif_step, _mul_rn, _param_terms


@triton.jit
def _affine(c, m, w_ptr, r_ptr, m_ptr, b_ptr, gain, TDBN: tl.constexpr):
    """Channel c's affine (where m): a_c = w_c·(rstd_c·gain) (the C++ op's order; w_c·rstd_c without
    tdBN, its gain being exactly 1 whatever θ is), m_c, b_c."""
    w = tl.load(w_ptr + c, mask=m, other=0.0)
    r = tl.load(r_ptr + c, mask=m, other=0.0)
    mm = tl.load(m_ptr + c, mask=m, other=0.0)
    bb = tl.load(b_ptr + c, mask=m, other=0.0)
    if TDBN:
        a = w * (r * gain)
    else:
        a = w * r
    return a, mm, bb


@triton.jit
def _channel_run(k, INNER, C, c):
    """Value k of channel c's values in run order (run r = k // INNER, a (t, b) or b) → its element."""
    r = k // INNER
    return (r.to(tl.int64) * C + c) * INNER + (k - r * INNER)


@triton.jit
def _gain(theta, wide_ptr):
    """tdBN's gain α·θ, α the float64 buffer's third value rounded to θ's dtype (as the C++ op)."""
    return tl.load(wide_ptr + 2).to(theta.dtype) * theta


@triton.jit
def _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET: tl.constexpr, WIDE: tl.constexpr):
    k = tl.load(params_ptr)
    theta = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    if WIDE:  # float64: v_reset and κ from the buffer (a float argument would be rounded to fp32)
        vr = tl.load(wide_ptr)
    else:
        vr = v_reset + 0.0 * k
    if not HARD_RESET:
        vr = 0.0 * k
    return k, theta, alpha, vr


@triton.jit
def bn_lif_fwd_kernel(
    x_ptr, v0_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, m_ptr, b_ptr, mask_ptr, s_ptr, vlast_ptr, vseq_ptr, ck_ptr,
    T, N, C, INNER, v_reset,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr,
    STORE_VSEQ: tl.constexpr, SEG: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr,
    TDBN: tl.constexpr, STRICT: tl.constexpr = False, UNIFORM_V0: tl.constexpr = False,
):
    """All T steps of BLOCK consecutive neurons from v0: s (and v_seq); with SEG > 0 (training) also V
    after steps SEG, 2·SEG, … before the last into ck ([⌈T/SEG⌉ − 1, N], compute dtype), from which
    the backward re-runs each segment. UNIFORM_V0: v0 is [1], every neuron's start."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    a, mm, bb = _affine((start + lane) // INNER % C, m, w_ptr, r_ptr, m_ptr, b_ptr,
                        _gain(theta, wide_ptr) if TDBN else theta, TDBN)
    if UNIFORM_V0:
        v = tl.load(v0_ptr).to(k.dtype) + tl.zeros([BLOCK], dtype=k.dtype)
    else:
        v = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    row = start
    for t in range(0, T):
        xv = tl.load(x_ptr + row + lane, mask=m, other=0.0).to(k.dtype)
        xp = _mul_rn(xv - mm, a, EXACT) + bb
        if HAS_MASK:
            mk = tl.load(mask_ptr + row + lane, mask=m, other=1) != 0
        else:
            mk = m
        h, xs, s, v = _lif_step(v, xp, mk, k, theta, alpha, vr, SG, HARD_RESET, DECAY_INPUT, HAS_MASK, EXACT, SGF,
                                STRICT)
        tl.store(s_ptr + row + lane, s.to(s_ptr.dtype.element_ty), mask=m)
        if STORE_VSEQ:
            tl.store(vseq_ptr + row + lane, v.to(vseq_ptr.dtype.element_ty), mask=m)
        if SEG > 0:
            tc = lane * 0 + t + 1  # as a tensor (t may be a plain int in the interpreter)
            tl.store(ck_ptr + tl.cast(t // SEG, tl.int64) * N + start + lane, v,
                     mask=m & (tc % SEG == 0) & (tc < T))
        row += N
    tl.store(vlast_ptr + start + lane, v.to(vlast_ptr.dtype.element_ty), mask=m)


@triton.jit
def _emitted(h, theta, alpha, mp, m, SG: tl.constexpr, SGF: tl.constexpr, HAS_MASK: tl.constexpr,
             STRICT: tl.constexpr):
    xs = h - theta
    s = _fires(xs, STRICT).to(theta.dtype)
    if HAS_MASK:
        mk = tl.load(mp, mask=m, other=1) != 0
        s = tl.where(mk, s, tsg.sg_prim(xs, alpha, SG, SGF))
    return xs, s


@triton.jit
def bn_lif_bwd_kernel(
    gs_ptr, gvl_ptr, gvs_ptr, x_ptr, v0_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, m_ptr, b_ptr, mask_ptr, ck_ptr,
    gx_ptr, gv0_ptr, part_ptr,
    T, N, C, INNER, COUNT, P, v_reset, kappa,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, SCALE_BY_A: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr,
    SEG: tl.constexpr, LANES: tl.constexpr, BLOCK: tl.constexpr, TDBN: tl.constexpr, STRICT: tl.constexpr = False,
    UNIFORM_V0: tl.constexpr = False,
):
    """Program (channel group g, chunk p), the group fastest in the grid: LANES channels c = g·LANES + j
    (columns) × BLOCK / LANES of each channel's COUNT = B·inner neurons (rows, k = p·rows + i; run
    r = k // INNER, element (r·C + c)·INNER + k % INNER), one neuron per thread. Segments of SEG steps,
    last first: the forward re-run over the segment from its V (v0 or the forward's checkpoint) with
    H and x − m in registers (tuples unrolled by ``tl.static_range``: Triton has no indexable register
    arrays), then walked back, writing ∂L/∂X' (a_c·∂L/∂X' in eval) and ∂L/∂v0. Each column's sums
    over its neurons and steps, Σ∂L/∂X', Σ∂L/∂X'·(x − m) and with parameter gradients the (∂k, ∂θ, ∂α)
    terms, go in float64 to part[c, p, :] ([C, P, W], W = 5 or 2) for ``bn_lif_channels_kernel``.
    UNIFORM_V0: v0 is [1], every neuron's start, and ∂L/∂v0 is not computed (its [1] gets NaN)."""
    ROWS: tl.constexpr = BLOCK // LANES
    W: tl.constexpr = 5 if NEED_PARAM_GRAD else 2
    pid = tl.program_id(0)
    groups = (C + LANES - 1) // LANES
    p = (pid // groups).to(tl.int64)
    col = (pid % groups) * LANES + tl.arange(0, LANES)  # [LANES] channels
    c = col[None, :]
    kk = p * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1] neurons of the channel
    m = (c < C) & (kk < COUNT)
    n = _channel_run(kk, INNER, C, c)  # [ROWS, LANES] elements of a row of x
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    if WIDE:
        kap = tl.load(wide_ptr + 1)
    else:
        kap = kappa + 0.0 * k
    a, mm, bb = _affine(c, c < C, w_ptr, r_ptr, m_ptr, b_ptr, _gain(theta, wide_ptr) if TDBN else theta, TDBN)
    if HAS_GVLAST:
        dv = tl.load(gvl_ptr + n, mask=m, other=0.0).to(k.dtype)
    else:
        dv = tl.zeros([ROWS, LANES], dtype=k.dtype)
    if UNIFORM_V0:
        v_init = tl.load(v0_ptr).to(k.dtype) + tl.zeros([ROWS, LANES], dtype=k.dtype)
    else:
        v_init = tl.load(v0_ptr + n, mask=m, other=0.0).to(k.dtype)
    zero = tl.zeros([ROWS, LANES], dtype=k.dtype)
    g0 = zero
    g1 = zero
    sk = zero
    sth = zero
    sal = zero
    nseg = (T + SEG - 1) // SEG
    for i in range(0, nseg):
        seg = nseg - 1 - i
        first = (kk * 0 + seg) == 0  # as a tensor (seg may be a plain int in the interpreter)
        t0 = seg * SEG
        vck = tl.load(ck_ptr + tl.cast(seg - 1, tl.int64) * N + n, mask=m & ~first, other=0.0).to(k.dtype)
        v = tl.where(first, v_init, vck)
        # Re-run the forward over the segment: the forward's own step, so the same H and S.
        hs = ()
        xcs = ()  # x − m_c of each step (Σ ∂L/∂X'·(x − m), and X' for the parameter terms)
        vs = ()  # V_{t−1} of each step (parameter gradients)
        for j in tl.static_range(SEG):
            ok = m & ((kk * 0 + t0 + j) < T)
            off = tl.cast(t0 + j, tl.int64) * N + n  # 64-bit: (t0 + j)·N passes 2³¹ before T·N does
            xc = tl.load(x_ptr + off, mask=ok, other=0.0).to(k.dtype) - mm
            if HAS_MASK:
                mk = tl.load(mask_ptr + off, mask=ok, other=1) != 0
            else:
                mk = ok  # unread
            if NEED_PARAM_GRAD:
                vs = vs + (v,)
            h, xs, s, v = _lif_step(v, _mul_rn(xc, a, EXACT) + bb, mk, k, theta, alpha, vr, SG, HARD_RESET,
                                    DECAY_INPUT, HAS_MASK, EXACT, SGF, STRICT)
            hs = hs + (h,)
            xcs = xcs + (xc,)
        # Walk it back. Steps past T (last segment only) leave ∂L/∂V and the sums unchanged.
        for j in tl.static_range(SEG - 1, -1, -1):
            ok = m & ((kk * 0 + t0 + j) < T)
            off = tl.cast(t0 + j, tl.int64) * N + n  # 64-bit: (t0 + j)·N passes 2³¹ before T·N does
            h = hs[j]
            xs, s = _emitted(h, theta, alpha, mask_ptr + off, ok, SG, SGF, HAS_MASK, STRICT)
            dvt = dv
            if HAS_GVSEQ:
                dvt += tl.load(gvs_ptr + off, mask=ok, other=0.0).to(k.dtype)
            g_s = tl.load(gs_ptr + off, mask=ok, other=0.0).to(k.dtype)
            eps, ds, gp = _bwd_step(h, xs, s, g_s, dvt, theta, alpha, vr, kap, SG, HARD_RESET, DETACH_RESET, SGF)
            if DECAY_INPUT:
                gxp = eps * k
            else:
                gxp = eps
            if SCALE_BY_A:
                tl.store(gx_ptr + off, (gxp * a).to(gx_ptr.dtype.element_ty), mask=ok)
            else:
                tl.store(gx_ptr + off, gxp.to(gx_ptr.dtype.element_ty), mask=ok)
            g0 += tl.where(ok, gxp, zero)
            g1 += tl.where(ok, gxp * xcs[j], zero)
            if NEED_PARAM_GRAD:
                xp = _mul_rn(xcs[j], a, EXACT) + bb
                dk, dth, dal = _param_terms(eps, ds, gp, dvt, s, xs, xp, vs[j], vr, alpha, SG, HARD_RESET,
                                            DECAY_INPUT, SGF)
                sk += tl.where(ok, dk, zero)
                sth += tl.where(ok, dth, zero)
                sal += tl.where(ok, dal, zero)
            dv = tl.where(ok, eps - eps * k, dv)
    if UNIFORM_V0:  # never a gradient: NaN, by the thread of element 0
        nan = tl.full([ROWS, LANES], float("nan"), k.dtype)  # made in k's dtype: bf16 has no such constant
        tl.store(gv0_ptr + n, nan.to(gv0_ptr.dtype.element_ty), mask=m & (n == 0))
    else:
        tl.store(gv0_ptr + n, dv.to(gv0_ptr.dtype.element_ty), mask=m)
    at = (col.to(tl.int64) * P + p) * W
    cm1 = col < C
    tl.store(part_ptr + at, tl.sum(g0.to(tl.float64), axis=0), mask=cm1)
    tl.store(part_ptr + at + 1, tl.sum(g1.to(tl.float64), axis=0), mask=cm1)
    if NEED_PARAM_GRAD:
        tl.store(part_ptr + at + 2, tl.sum(sk.to(tl.float64), axis=0), mask=cm1)
        tl.store(part_ptr + at + 3, tl.sum(sth.to(tl.float64), axis=0), mask=cm1)
        tl.store(part_ptr + at + 4, tl.sum(sal.to(tl.float64), axis=0), mask=cm1)


@triton.jit
def bn_lif_dx_kernel(x_ptr, gx_ptr, coef_ptr, m_ptr, TN, N, C, INNER, BLOCK: tl.constexpr):
    """In place: gx ← A_c·gx + B_c·(x − m_c) + D_c, coef = [A | B | D]."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < TN
    c = ((i % N) // INNER) % C
    A = tl.load(coef_ptr + c, mask=m, other=0.0)
    B = tl.load(coef_ptr + C + c, mask=m, other=0.0)
    D = tl.load(coef_ptr + 2 * C + c, mask=m, other=0.0)
    mm = tl.load(m_ptr + c, mask=m, other=0.0)
    g = tl.load(gx_ptr + i, mask=m, other=0.0).to(A.dtype)
    xv = tl.load(x_ptr + i, mask=m, other=0.0).to(A.dtype)
    tl.store(gx_ptr + i, (A * g + (B * (xv - mm) + D)).to(gx_ptr.dtype.element_ty), mask=m)


# --- per-channel reductions (float64 sums in a fixed order: the result does not depend on timing) ---

@triton.jit
def bn_lif_channels_kernel(
    part_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, gw_ptr, gb_ptr, gp_ptr, coef_ptr, pchan_ptr,
    T, C, COUNT, P,
    NEED_PARAM_GRAD: tl.constexpr, BATCH_STATS: tl.constexpr, TDBN: tl.constexpr, BLOCK: tl.constexpr,
):
    """Program c: channel c's totals over the backward's P chunks (``part`` [C, P, W]: Σ∂L/∂X',
    Σ∂L/∂X'·(x − m); with parameter gradients, W = 5, the (∂k, ∂θ, ∂α) terms), then batch norm's
    algebra in float64 as the C++ op does it: ∂weight = g1·rstd·gain, ∂bias = g0; with batch statistics
    the dx coefficients A = a, B = −a·rstd²·g1/n, D = −a·g0/n (n = T·COUNT, COUNT = B·inner); the
    channel's (∂k, ∂θ + tdBN's θ term g1·w·rstd·α, ∂α) into pchan [3, C], or without parameter
    gradients program 0 zeroes ∂params. tdBN's α: the float64 buffer's third value."""
    W: tl.constexpr = 5 if NEED_PARAM_GRAD else 2
    c = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    s0 = tl.zeros([BLOCK], dtype=tl.float64)
    s1 = tl.zeros([BLOCK], dtype=tl.float64)
    q0 = tl.zeros([BLOCK], dtype=tl.float64)
    q1 = tl.zeros([BLOCK], dtype=tl.float64)
    q2 = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, P, BLOCK):
        j = off + lane
        mk = j < P
        at = (c * P + j) * W
        s0 += tl.load(part_ptr + at, mask=mk, other=0.0)
        s1 += tl.load(part_ptr + at + 1, mask=mk, other=0.0)
        if NEED_PARAM_GRAD:
            q0 += tl.load(part_ptr + at + 2, mask=mk, other=0.0)
            q1 += tl.load(part_ptr + at + 3, mask=mk, other=0.0)
            q2 += tl.load(part_ptr + at + 4, mask=mk, other=0.0)
    g0 = tl.sum(s0, 0)
    g1 = tl.sum(s1, 0)
    w = tl.load(w_ptr + c)
    r = tl.load(r_ptr + c)
    rd = r.to(tl.float64)
    if TDBN:
        gain = _gain(tl.load(params_ptr + 1), wide_ptr)
        gw = g1 * rd * gain.to(tl.float64)
        a = w * (r * gain)  # the forward's a_c, exactly
    else:
        gw = g1 * rd
        a = w * r
    tl.store(gw_ptr + c, gw.to(gw_ptr.dtype.element_ty))
    tl.store(gb_ptr + c, g0.to(gb_ptr.dtype.element_ty))
    if BATCH_STATS:
        nf = tl.cast(T, tl.float64) * tl.cast(COUNT, tl.float64)
        ad = a.to(tl.float64)
        tl.store(coef_ptr + c, ad.to(coef_ptr.dtype.element_ty))
        tl.store(coef_ptr + C + c, (-ad * rd * rd * g1 / nf).to(coef_ptr.dtype.element_ty))
        tl.store(coef_ptr + 2 * C + c, (-ad * g0 / nf).to(coef_ptr.dtype.element_ty))
    if NEED_PARAM_GRAD:
        dth = tl.sum(q1, 0)
        if TDBN:
            dth += g1 * w.to(tl.float64) * rd * tl.load(wide_ptr + 2)
        tl.store(pchan_ptr + c, tl.sum(q0, 0))
        tl.store(pchan_ptr + C + c, dth)
        tl.store(pchan_ptr + 2 * C + c, tl.sum(q2, 0))
    else:
        j = tl.arange(0, 4)
        tl.store(gp_ptr + j, tl.zeros([4], dtype=gp_ptr.dtype.element_ty), mask=(j < 3) & (c == 0))


@triton.jit
def bn_lif_params_kernel(pchan_ptr, gp_ptr, C, BLOCK: tl.constexpr):
    """One program: ∂params = Σ over channels of pchan's three rows, in float64."""
    lane = tl.arange(0, BLOCK)
    a0 = tl.zeros([BLOCK], dtype=tl.float64)
    a1 = tl.zeros([BLOCK], dtype=tl.float64)
    a2 = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, C, BLOCK):
        c = off + lane
        m = c < C
        a0 += tl.load(pchan_ptr + c, mask=m, other=0.0)
        a1 += tl.load(pchan_ptr + C + c, mask=m, other=0.0)
        a2 += tl.load(pchan_ptr + 2 * C + c, mask=m, other=0.0)
    tl.store(gp_ptr, tl.sum(a0, 0).to(gp_ptr.dtype.element_ty))
    tl.store(gp_ptr + 1, tl.sum(a1, 0).to(gp_ptr.dtype.element_ty))
    tl.store(gp_ptr + 2, tl.sum(a2, 0).to(gp_ptr.dtype.element_ty))


@triton.jit
def bn_lif_stats_part_kernel(x_ptr, part_ptr, C, INNER, COUNT, CHUNK, P, NARROW: tl.constexpr,
                             BLOCK: tl.constexpr):
    """Program (c, p): Σd and Σd² in float64, d = x − K_c, over chunk p (CHUNK values, a multiple of
    BLOCK) of channel c's COUNT = T·B·inner values in run order. The shift K_c, the channel's first
    value, keeps Σd² − (Σd)²/n from cancelling when |mean| ≫ std."""
    c = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1)
    if NARROW:  # 32-bit division while COUNT + 2·CHUNK fits
        begin = p * CHUNK
    else:
        begin = p.to(tl.int64) * CHUNK
    K = tl.load(x_ptr + c * INNER).to(tl.float64)
    lane = tl.arange(0, BLOCK)
    s1 = tl.zeros([BLOCK], dtype=tl.float64)
    s2 = tl.zeros([BLOCK], dtype=tl.float64)
    for off in range(0, CHUNK, BLOCK):
        k = begin + off + lane
        m = k < COUNT
        d = tl.load(x_ptr + _channel_run(k, INNER, C, c), mask=m, other=0.0).to(tl.float64) - K
        d = tl.where(m, d, 0.0)
        s1 += d
        s2 += d * d
    at = (c * P + p) * 2
    tl.store(part_ptr + at, tl.sum(s1, 0))
    tl.store(part_ptr + at + 1, tl.sum(s2, 0))


@triton.jit
def bn_lif_stats_finish_kernel(x_ptr, part_ptr, eps_ptr, mean_ptr, rstd_ptr, var_ptr, C, INNER, COUNT, P,
                               BLOCK: tl.constexpr):
    """Channels c of this program: mean = K_c + Σd/n, biased var = Σd²/n − (Σd/n)² (rounding below 0
    clamped; a NaN kept), rstd = 1/√(var + eps) and the unbiased var·n/(n − 1), from the P chunks'
    sums in chunk order, in float64 (eps from a float64 buffer; tl.sqrt of a float64 is IEEE-rounded:
    sqrt.rn.f64; on a GPU Triton may contract a product and a sum into an FMA, the C++ op on the CPU
    does not: last-bit differences in float64)."""
    c = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = c < C
    s1 = tl.zeros([BLOCK], dtype=tl.float64)
    s2 = tl.zeros([BLOCK], dtype=tl.float64)
    for p in range(0, P):
        s1 += tl.load(part_ptr + (c * P + p) * 2, mask=m, other=0.0)
        s2 += tl.load(part_ptr + (c * P + p) * 2 + 1, mask=m, other=0.0)
    n = tl.cast(COUNT, tl.float64)
    K = tl.load(x_ptr + c * INNER, mask=m, other=0.0).to(tl.float64)
    dm = s1 / n
    var = s2 / n - dm * dm
    var = tl.where(var < 0, 0.0, var)
    e = tl.load(eps_ptr)  # float64 whatever x is (a float argument would be rounded to fp32)
    tl.store(mean_ptr + c, (K + dm).to(mean_ptr.dtype.element_ty), mask=m)
    den = tl.where(m, var + e, 1.0)  # lanes past C: no 1/0 (the interpreter warns of it)
    tl.store(rstd_ptr + c, (1.0 / tl.sqrt(den)).to(rstd_ptr.dtype.element_ty), mask=m)
    tl.store(var_ptr + c, (var * n / (n - 1.0)).to(var_ptr.dtype.element_ty), mask=m)
