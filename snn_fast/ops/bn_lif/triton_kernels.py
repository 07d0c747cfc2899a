"""Triton kernels of bn_lif (docs/spec.md §12): the LIF kernels' building blocks
(``snn_fast/ops/lif/triton_kernels.py``: ``_mul_rn``, ``_lif_step``, ``_bwd_step``, ``_param_terms``)
around the per-channel affine X' = (x − m_c)·a_c + b_c, channel c = (n // INNER) % C of element n.

Per element and step (storage b bytes, compute a):
    forward   read x, write s (+ H in a with save="state")                      2b (+ a)
    backward  read H (or re-run the forward into a scratch H: read x, write H), read x, read ∂L/∂S,
              write ∂L/∂X' (a_c·∂L/∂X' in eval)                                  3b + a (+ b + a)
    dx        training only: read ∂L/∂X', read x, write ∂L/∂x                     3b
and per element (not per step) the backward writes its sums over t of ∂L/∂X' and ∂L/∂X'·(x − m)
([2, N], reduced per channel by torch) and, with parameter gradients, its (∂k, ∂θ, ∂α) terms ([3, N]).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..common import triton_surrogate as tsg  # noqa: F401  (the surrogates the building blocks call)
from ..lif.triton_kernels import _bwd_step, _fires, _lif_step, _mul_rn, _param_terms


@triton.jit
def _affine(n, C, INNER, a_ptr, m_ptr, b_ptr, m):
    c = (n // INNER) % C
    a = tl.load(a_ptr + c, mask=m, other=0.0)
    mm = tl.load(m_ptr + c, mask=m, other=0.0)
    bb = tl.load(b_ptr + c, mask=m, other=0.0)
    return a, mm, bb


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
    x_ptr, v0_ptr, params_ptr, wide_ptr, a_ptr, m_ptr, b_ptr, mask_ptr, s_ptr, vlast_ptr, vseq_ptr, h_ptr,
    T, N, C, INNER, v_reset,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr,
    STORE_VSEQ: tl.constexpr, SAVE_H: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr,
    STRICT: tl.constexpr = False,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    a, mm, bb = _affine(start + lane, C, INNER, a_ptr, m_ptr, b_ptr, m)
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
    gs_ptr, gvl_ptr, gvs_ptr, x_ptr, v0_ptr, params_ptr, wide_ptr, a_ptr, m_ptr, b_ptr, mask_ptr, h_ptr,
    gx_ptr, gv0_ptr, sums_ptr, psum_ptr,
    T, N, C, INNER, v_reset, kappa,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, SCALE_BY_A: tl.constexpr, RERUN: tl.constexpr, WIDE: tl.constexpr,
    EXACT: tl.constexpr, BLOCK: tl.constexpr, STRICT: tl.constexpr = False,
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr = _scalars(params_ptr, wide_ptr, v_reset, HARD_RESET, WIDE)
    if WIDE:
        kap = tl.load(wide_ptr + 1)
    else:
        kap = kappa + 0.0 * k
    a, mm, bb = _affine(start + lane, C, INNER, a_ptr, m_ptr, b_ptr, m)
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
    tl.store(sums_ptr + start + lane, g0, mask=m)
    tl.store(sums_ptr + N + start + lane, g1, mask=m)
    if NEED_PARAM_GRAD:
        tl.store(psum_ptr + start + lane, sk, mask=m)
        tl.store(psum_ptr + N + start + lane, sth, mask=m)
        tl.store(psum_ptr + 2 * N + start + lane, sal, mask=m)


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
