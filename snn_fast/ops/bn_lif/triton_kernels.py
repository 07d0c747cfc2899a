"""Triton kernels of bn_lif (docs/spec.md §12): the LIF kernels' building blocks
(``snn_fast/ops/lif/triton_kernels.py``: ``_mul_rn``, ``_lif_step``, ``_bwd_step``, ``_param_terms``)
around the per-channel affine X' = (x − m_c)·a_c + b_c, channel c = (n // INNER) % C of element n, with
a_c = w_c·(rstd_c·gain) computed in the kernels as the C++ op computes it (gain = α_tdBN·θ or 1).

Per element and step (storage b bytes, compute a):
    forward   read x, write s (+ H in a with save="state")                      2b (+ a)
    backward  read H (or re-run the forward into a scratch H: read x, write H), read x, read ∂L/∂S,
              write ∂L/∂X' (a_c·∂L/∂X' in eval)                                  3b + a (+ b + a)
    dx        training only: read ∂L/∂X', read x, write ∂L/∂x                     3b
and per element (not per step) the backward writes its sums over t of ∂L/∂X' and ∂L/∂X'·(x − m)
([2, N]) and, with parameter gradients, its (∂k, ∂θ, ∂α) terms ([3, N]), which ``bn_lif_channels_kernel``
reduces per channel (in float64, with batch norm's per-channel algebra) and ``bn_lif_params_kernel``
over the channels. The batch statistics are two more kernels (``bn_lif_stats_*``): float64 sums of
x − x_c0 per (channel, chunk), then mean, rstd and the unbiased variance per channel. So the whole
op is kernels: no torch arithmetic on the host per call (the CUDA binding's layout, ``csrc/cuda/``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..common import triton_surrogate as tsg  # noqa: F401  (the surrogates the building blocks call)
from ..lif.triton_kernels import _bwd_step, _fires, _lif_step, _mul_rn, _param_terms


@triton.jit
def _affine(n, C, INNER, w_ptr, r_ptr, m_ptr, b_ptr, gain, m, TDBN: tl.constexpr):
    """Element n's channel affine: a_c = w_c·(rstd_c·gain) (the C++ op's order; w_c·rstd_c without
    tdBN, its gain being exactly 1 whatever θ is), m_c, b_c."""
    c = (n // INNER) % C
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
def _forward(x_ptr, v0_ptr, mask_ptr, s_ptr, vseq_ptr, h_ptr, start, lane, m, a, mm, bb, k, theta, alpha, vr, T, N,
             SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
             HAS_MASK: tl.constexpr, STORE_S: tl.constexpr, STORE_VSEQ: tl.constexpr, SAVE_H: tl.constexpr,
             EXACT: tl.constexpr, STRICT: tl.constexpr):
    """All T steps of one block from v0 → V_T; writes s, v_seq and H as asked."""
    v = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    row = start
    for _t in range(0, T):
        xv = tl.load(x_ptr + row + lane, mask=m, other=0.0).to(k.dtype)
        xp = _mul_rn(xv - mm, a, EXACT) + bb
        if HAS_MASK:
            mk = tl.load(mask_ptr + row + lane, mask=m, other=1) != 0
        else:
            mk = m
        h, xs, s, v = _lif_step(v, xp, mk, k, theta, alpha, vr, SG, HARD_RESET, DECAY_INPUT, HAS_MASK, EXACT, SGF,
                                STRICT)
        if STORE_S:
            tl.store(s_ptr + row + lane, s.to(s_ptr.dtype.element_ty), mask=m)
        if SAVE_H:
            tl.store(h_ptr + row + lane, h.to(h_ptr.dtype.element_ty), mask=m)
        if STORE_VSEQ:
            tl.store(vseq_ptr + row + lane, v.to(vseq_ptr.dtype.element_ty), mask=m)
        row += N
    return v


@triton.jit
def bn_lif_fwd_kernel(
    x_ptr, v0_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, m_ptr, b_ptr, mask_ptr, s_ptr, vlast_ptr, vseq_ptr, h_ptr,
    T, N, C, INNER, v_reset,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr,
    STORE_VSEQ: tl.constexpr, SAVE_H: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr,
    TDBN: tl.constexpr, STRICT: tl.constexpr = False,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    a, mm, bb = _affine(start + lane, C, INNER, w_ptr, r_ptr, m_ptr, b_ptr, _gain(theta, wide_ptr) if TDBN else theta,
                        m, TDBN)
    v = _forward(x_ptr, v0_ptr, mask_ptr, s_ptr, vseq_ptr, h_ptr, start, lane, m, a, mm, bb, k, theta, alpha, vr,
                 T, N, SG, SGF, HARD_RESET, DECAY_INPUT, HAS_MASK, True, STORE_VSEQ, SAVE_H, EXACT, STRICT)
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
    gs_ptr, gvl_ptr, gvs_ptr, x_ptr, v0_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, m_ptr, b_ptr, mask_ptr, h_ptr,
    gx_ptr, gv0_ptr, sums_ptr,
    T, N, C, INNER, v_reset, kappa,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, SCALE_BY_A: tl.constexpr, RERUN: tl.constexpr, WIDE: tl.constexpr,
    EXACT: tl.constexpr, BLOCK: tl.constexpr, TDBN: tl.constexpr, STRICT: tl.constexpr = False,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    if WIDE:
        kap = tl.load(wide_ptr + 1)
    else:
        kap = kappa + 0.0 * k
    a, mm, bb = _affine(start + lane, C, INNER, w_ptr, r_ptr, m_ptr, b_ptr, _gain(theta, wide_ptr) if TDBN else theta,
                        m, TDBN)
    if RERUN:  # save="recompute": the forward again, its H into the scratch h_ptr
        _forward(x_ptr, v0_ptr, mask_ptr, h_ptr, h_ptr, h_ptr, start, lane, m, a, mm, bb, k, theta, alpha, vr,
                 T, N, SG, SGF, HARD_RESET, DECAY_INPUT, HAS_MASK, False, False, True, EXACT, STRICT)
    if HAS_GVLAST:
        dv = tl.load(gvl_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    else:
        dv = tl.zeros([BLOCK], dtype=k.dtype)
    v0 = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    g0 = tl.zeros([BLOCK], dtype=k.dtype)
    g1 = tl.zeros([BLOCK], dtype=k.dtype)
    sk = tl.zeros([BLOCK], dtype=k.dtype)
    sth = tl.zeros([BLOCK], dtype=k.dtype)
    sal = tl.zeros([BLOCK], dtype=k.dtype)
    for i in range(0, T):
        t = T - 1 - i
        row = tl.cast(t, tl.int64) * N + start
        h = tl.load(h_ptr + row + lane, mask=m, other=0.0).to(k.dtype)
        xs, s = _emitted(h, theta, alpha, mask_ptr + row + lane, m, SG, SGF, HAS_MASK, STRICT)
        if HAS_GVSEQ:
            dv += tl.load(gvs_ptr + row + lane, mask=m, other=0.0).to(k.dtype)
        g_s = tl.load(gs_ptr + row + lane, mask=m, other=0.0).to(k.dtype)
        eps, ds, gp = _bwd_step(h, xs, s, g_s, dv, theta, alpha, vr, kap, SG, HARD_RESET, DETACH_RESET, SGF)
        xc = tl.load(x_ptr + row + lane, mask=m, other=0.0).to(k.dtype) - mm
        if DECAY_INPUT:
            gxp = eps * k
        else:
            gxp = eps
        if SCALE_BY_A:
            tl.store(gx_ptr + row + lane, (gxp * a).to(gx_ptr.dtype.element_ty), mask=m)
        else:
            tl.store(gx_ptr + row + lane, gxp.to(gx_ptr.dtype.element_ty), mask=m)
        g0 += gxp
        g1 += gxp * xc
        if NEED_PARAM_GRAD:
            xp = _mul_rn(xc, a, EXACT) + bb
            first = (lane * 0 + t) == 0
            hp = tl.load(h_ptr + row - N + lane, mask=m & (~first), other=0.0).to(k.dtype)
            _, sp = _emitted(hp, theta, alpha, mask_ptr + row - N + lane, m & (~first), SG, SGF, HAS_MASK,
                             STRICT)
            if HARD_RESET:
                vprev = sp * vr + (1.0 - sp) * hp
            else:
                vprev = hp - sp * theta
            vprev = tl.where(first, v0, vprev)
            dk, dth, dal = _param_terms(eps, ds, gp, dv, s, xs, xp, vprev, vr, alpha, SG, HARD_RESET, DECAY_INPUT,
                                        SGF)
            sk += tl.where(m, dk, 0.0)
            sth += tl.where(m, dth, 0.0)
            sal += tl.where(m, dal, 0.0)
        dv = eps - eps * k
    tl.store(gv0_ptr + start + lane, dv.to(gv0_ptr.dtype.element_ty), mask=m)
    n64 = tl.cast(N, tl.int64)  # the scratch's row offsets: 4·N passes 2³¹ from N = 2²⁹
    tl.store(sums_ptr + start + lane, g0, mask=m)
    tl.store(sums_ptr + n64 + start + lane, g1, mask=m)
    if NEED_PARAM_GRAD:
        tl.store(sums_ptr + 2 * n64 + start + lane, sk, mask=m)  # rows 2–4 of the scratch
        tl.store(sums_ptr + 3 * n64 + start + lane, sth, mask=m)
        tl.store(sums_ptr + 4 * n64 + start + lane, sal, mask=m)


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
def _channel_run(k, INNER, C, c):
    """Value k of channel c's values in run order (run r = k // INNER, a (t, b) or b) → its element."""
    r = k // INNER
    return (r.to(tl.int64) * C + c) * INNER + (k - r * INNER)


@triton.jit
def bn_lif_channels_kernel(
    sums_ptr, params_ptr, wide_ptr, w_ptr, r_ptr, gw_ptr, gb_ptr, gp_ptr, coef_ptr, pchan_ptr,
    T, N, C, INNER, COUNT,
    NEED_PARAM_GRAD: tl.constexpr, BATCH_STATS: tl.constexpr, TDBN: tl.constexpr, NARROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program c: channel c's totals over its COUNT = B·inner neurons of the backward's per-neuron
    sums (rows 0–1 of ``sums``: Σ∂L/∂X', Σ∂L/∂X'·(x − m); rows 2–4 with parameter gradients), then
    batch norm's algebra in float64 as the C++ op does it: ∂weight = g1·rstd·gain, ∂bias = g0; with
    batch statistics the dx coefficients A = a, B = −a·rstd²·g1/n, D = −a·g0/n (n = T·COUNT); the
    channel's (∂k, ∂θ + tdBN's θ term g1·w·rstd·α, ∂α) into pchan [3, C], or without parameter
    gradients program 0 zeroes ∂params. tdBN's α: the float64 buffer's third value."""
    c = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    n64 = tl.cast(N, tl.int64)
    s0 = tl.zeros([BLOCK], dtype=tl.float64)
    s1 = tl.zeros([BLOCK], dtype=tl.float64)
    q0 = tl.zeros([BLOCK], dtype=tl.float64)
    q1 = tl.zeros([BLOCK], dtype=tl.float64)
    q2 = tl.zeros([BLOCK], dtype=tl.float64)
    # counted in steps, not values: a 32-bit counter stepping by BLOCK past COUNT could wrap
    for it in range(0, (COUNT - 1) // BLOCK + 1):
        if NARROW:  # 32-bit division while COUNT + BLOCK fits
            k = it * BLOCK + lane
        else:
            k = tl.cast(it, tl.int64) * BLOCK + lane
        mk = k < COUNT
        n = _channel_run(k, INNER, C, c)
        s0 += tl.load(sums_ptr + n, mask=mk, other=0.0).to(tl.float64)
        s1 += tl.load(sums_ptr + n64 + n, mask=mk, other=0.0).to(tl.float64)
        if NEED_PARAM_GRAD:
            q0 += tl.load(sums_ptr + 2 * n64 + n, mask=mk, other=0.0).to(tl.float64)
            q1 += tl.load(sums_ptr + 3 * n64 + n, mask=mk, other=0.0).to(tl.float64)
            q2 += tl.load(sums_ptr + 4 * n64 + n, mask=mk, other=0.0).to(tl.float64)
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
