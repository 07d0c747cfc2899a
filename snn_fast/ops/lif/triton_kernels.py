"""Triton kernels of the fused LIF op (docs/spec.md §LIF): the forward, the backward over the saved state,
and the backward of save="recompute". ``triton.py`` beside this launches them and defines the ops.

One program owns BLOCK neurons and walks all T steps with the membrane in registers; the math of a
step is the port of ``csrc/include/snn_fast/lif_step.h`` (same formulas, same operation order, so fp32
states match the fp32 reference bit for bit and spikes do not flip). The surrogate functions come from
``snn_fast/ops/common/triton_surrogate.py``.

What the forward saves for the backward (``h_ptr``, [T, N]):
  - float32/float64: H in the storage dtype; S = Θ(H − θ) is recomputed exactly from it.
  - float16/bfloat16 (``H_MINUS_THETA``): H − θ rounded to the storage dtype. Rounding to nearest never
    changes the sign bit (not even to ±0), so S = [sign bit clear] is exact; and where g′(H − θ)
    matters (H near θ) the stored H − θ keeps full relative precision, which a rounded H would lose to
    cancellation. H = (H − θ) + θ serves the reset terms. Measured against the float64 reference on
    [T=16, N=1024], sigmoid α=4, κ=0.2, hard/soft, with and without the noise mask (max error / scale):
        grad_x    fp16 4.3–4.9e-4 (saving H in fp32: 3.9–4.7e-4; plain fp16 torch 0.07–0.30)
                  bf16 5.5–6.5e-3 (fp32 H: 4.9–5.6e-3; plain bf16 torch 0.10–0.57)
        grad_τ,θ,α  within 1e-4…2e-2 of the truth, below plain torch's error in 23 of 24 cases
    Storing H itself with the spike bit in the mantissa LSB gives grad_x errors 2–3× larger (fp16
    1.1–1.7e-3) and grad_α off by 3.3e-2 in bf16, from cancellation in H − θ.

Bytes per element of [T, N] (storage size b; mask 1 B when given):
  forward   read x, write s, write H (H − θ)                  3b   (+ b v_seq, + 1 mask)
  inference read x, write s                                   2b   (SAVE_H off)
  backward  read grad_s, read H, write grad_x                 3b   (+ b grad_v_seq, + 1 mask)
            + read x when learning k with decay_input         +b
  fwd+bwd = 6b, one pass above the 5-pass floor. The backward needs neither V_{t−1} nor x unless the
  leak k is learned: V_{t−1} = reset(H_{t−1}) comes from the H it loads anyway one step ahead.

save="recompute" (``CHUNK`` = K > 0): the forward writes s and, instead of H, V after steps K, 2K, …
in the compute dtype; ``lif_bwd_rc_kernel`` re-runs the forward per K-step segment from x and those V
with the forward's own step (``lif_step``: the same H and spikes bit for bit), the segment's H in
registers (a tuple unrolled by ``tl.static_range``: Triton has no indexable register arrays), and walks
it back. Re-running all T steps through a per-program scratch in global memory would write and read
T·BLOCK values per program back (the 6th pass again); checkpoints every K steps with the segment in
registers cost:
  forward   read x, write s                                   2b  (+ 4·(ceil(T/K) − 1)/T B of V)
  backward  read x, read grad_s, write grad_x                 3b  (+ the same V read)
so fwd+bwd = 5b + 8/K B at most. The price is registers: K values of H per neuron (and of V_{t−1} and
X with parameter gradients), so this backward runs one neuron per thread (``BWD_RC_CONFIGS``).

Parameter gradients: each program sums its lanes over all its steps into one row of a [programs, 3]
buffer, summed by torch afterwards (deterministic, no atomics), and the whole path is compiled out
(``NEED_PARAM_GRAD`` constexpr) when no parameter needs a gradient.

Variants: every option is a constexpr (surrogate id, hard/soft, decay_input, detach, mask, v_seq,
grad inputs present, parameter gradients, dtype, the firing rule ``STRICT`` and the reset timing
``TIMING``), so each variant compiles only its own code. T is
not specialised (``do_not_specialize``: a new length reuses the binary); N only by Triton's
divisible-by-16 rule (≤ 2 binaries, and aligned vector loads). ``N_BUCKET`` is the autotuning key.

float64 (``WIDE``): v_r and κ are read from ``wide_ptr`` (float64 [2]), since a float argument would be
rounded to fp32; otherwise they come as float arguments and ``wide_ptr`` is never read.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import _triton
from ..common import triton_surrogate as tsg

# Decided by triton.jit when the kernels below are decorated; snn_fast._triton reads it the same way.
INTERPRETED = _triton.interpreted()
# PTX inline asm pins the charge's rounding on NVIDIA; elsewhere (interpreter, ROCm) a plain product.
EXACT_MUL = not INTERPRETED and torch.version.hip is None


@triton.jit
def _mul_rn(a, b, EXACT: tl.constexpr):
    """a·b rounded on its own, never contracted into an FMA with the add that follows it.

    The charge must round exactly like the reference (separate torch mul and add), or H moves by an
    ulp and spikes near θ flip between backends. Triton contracts mul+add by default, so on NVIDIA
    the product is pinned with ``mul.rn`` (ptxas never fuses an explicitly rounded op). The
    interpreter (numpy) never contracts and has no inline asm, so there it is a plain product.
    """
    if EXACT:
        bb = tl.zeros_like(a) + b
        if a.dtype == tl.float64:
            r = tl.inline_asm_elementwise("mul.rn.f64 $0, $1, $2;", "=d,d,d", [a, bb], dtype=tl.float64,
                                          is_pure=True, pack=1)
        else:
            r = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, bb], dtype=tl.float32,
                                          is_pure=True, pack=1)
    else:
        r = a * b
    return r


@triton.jit
def _ld(p, m, STREAM: tl.constexpr):
    """A load of a [T, N] stream (0 where masked); STREAM: marked first to evict from L2 (read once)."""
    if STREAM:
        r = tl.load(p, mask=m, other=0.0, eviction_policy="evict_first")
    else:
        r = tl.load(p, mask=m, other=0.0)
    return r


@triton.jit
def _st(p, v, m, STREAM: tl.constexpr):
    """A store to a [T, N] stream; STREAM: streaming store (``.cs``: not kept in L1/L2 for reuse)."""
    if STREAM:
        tl.store(p, v, mask=m, cache_modifier=".cs")
    else:
        tl.store(p, v, mask=m)


@triton.jit
def _load_state(hp, mp, m, theta, alpha, SG: tl.constexpr, HAS_MASK: tl.constexpr, H_MINUS_THETA: tl.constexpr,
                SGF: tl.constexpr = None, STREAM: tl.constexpr = False, STRICT: tl.constexpr = False):
    """Saved state at one step → (H, H − θ, emitted S) in the compute dtype of θ."""
    return _decode_state(_ld(hp, m, STREAM), mp, m, theta, alpha, SG, HAS_MASK, H_MINUS_THETA, SGF, STRICT)


@triton.jit
def _decode_state(hv, mp, m, theta, alpha, SG: tl.constexpr, HAS_MASK: tl.constexpr, H_MINUS_THETA: tl.constexpr,
                  SGF: tl.constexpr = None, STRICT: tl.constexpr = False):
    """The saved value ``hv`` of one step (as stored) → (H, H − θ, emitted S) in the compute dtype of θ."""
    if H_MINUS_THETA:  # D = H − θ with its sign bit = "no spike" (see the forward's store), so S is exact
        xs = hv.to(theta.dtype)
        h = xs + theta
        s = tl.where(hv.to(tl.int16, bitcast=True) >= 0, 1.0, 0.0).to(theta.dtype)
    else:  # H itself: the same H − θ and the same spike as the forward
        h = hv.to(theta.dtype)
        xs = h - theta
        s = _fires(xs, STRICT).to(theta.dtype)
    if HAS_MASK:
        mk = tl.load(mp, mask=m, other=1) != 0
        s = tl.where(mk, s, tsg.sg_prim(xs, alpha, SG, SGF))
    return h, xs, s


@triton.jit
def _fires(xs, STRICT: tl.constexpr):
    """Θ(H − θ) as 0/1 (lif_step.h lif_fires): Θ(0) = 1, or 0 when STRICT; NaN: 0."""
    if STRICT:
        return tl.where(xs > 0.0, 1.0, 0.0)
    else:
        return tl.where(xs >= 0.0, 1.0, 0.0)


@triton.jit
def _pending_hard(v, theta, vr, STRICT: tl.constexpr):
    """The pending hard reset of TIMING 1 (lif_step.h lif_pending_hard): R·v_r + (1 − R)·V, R = Θ(V − θ)."""
    r = _fires(v - theta, STRICT).to(v.dtype)
    return r * vr + (1.0 - r) * v


@triton.jit
def _lif_step(v, xv, mk, k, theta, alpha, vr, SG: tl.constexpr, HARD_RESET: tl.constexpr,
              DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr, EXACT: tl.constexpr, SGF: tl.constexpr = None,
              STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0):
    """One forward step (lif_step.h: lif_charge, lif_fire, lif_reset) → (H, H − θ, emitted S, V_t).

    The one copy of the step: the forward kernel runs it, and the recompute backward re-runs it from
    the same x and V, so its H and spikes are the forward's bit for bit (same operations, same order).
    ``mk``: the noise mask (True = spike), read only when HAS_MASK. TIMING (args.RESET_TIMINGS'
    index): 0 reset after the spike; 1 delayed (V = H carried, its pending reset R = Θ(V − θ) applied
    here: hard before the charge, soft after it); 2 no reset."""
    if TIMING == 1:
        r = _fires(v - theta, STRICT).to(k.dtype)
        if HARD_RESET:
            v = r * vr + (1.0 - r) * v
    # Charge in the reference's operation order (lif_step.h lif_charge).
    if DECAY_INPUT:
        h = v + _mul_rn(xv - (v - vr), k, EXACT)
    else:
        h = (v - _mul_rn(v - vr, k, EXACT)) + xv
    if TIMING == 1:
        if not HARD_RESET:
            h = h - r * theta
    xs = h - theta
    spike = _fires(xs, STRICT).to(k.dtype)
    if HAS_MASK:
        s = tl.where(mk, spike, tsg.sg_prim(xs, alpha, SG, SGF))
    else:
        s = spike
    if TIMING != 0:
        v = h
    elif HARD_RESET:
        v = s * vr + (1.0 - s) * h
    else:
        v = h - s * theta
    return h, xs, s, v


@triton.jit
def _bwd_step(h, xs, s, g_s, dvt, theta, alpha, vr, kap, SG: tl.constexpr, HARD_RESET: tl.constexpr,
              DETACH_RESET: tl.constexpr, SGF: tl.constexpr = None, TIMING: tl.constexpr = 0):
    """One backward step (lif_step.h lif_step_backward): → (ε = ∂L/∂H_t, ∂L/∂S_t, g′(H − θ)).
    ``dvt``: ∂L/∂V_t from every path (the later step and v_seq)."""
    gp = tsg.sg_grad(xs, alpha, SG, SGF)
    # ∂V/∂S (not detached); zeros_like − θ, not 0·h − θ, which is NaN where H = ±inf
    if HARD_RESET:
        reset_coef = vr - h
    else:
        reset_coef = tl.zeros_like(h) - theta
    if DETACH_RESET or TIMING != 0:  # TIMING 1, 2: V = H, no reset that depends on S
        # lif_step.h lif_grad_s: with κ = 0 the reference's ∂L/∂S never sees dv (0·dv: NaN after a NaN step)
        ds = tl.where(kap != 0.0, g_s + dvt * kap, g_s)
    else:
        ds = g_s + dvt * (reset_coef + kap)
    if HARD_RESET and TIMING == 0:
        eps = dvt * (1.0 - s) + ds * gp
    else:
        eps = dvt + ds * gp
    return eps, ds, gp


@triton.jit
def _param_terms(eps, ds, gp, dvt, s, xs, xv, v_prev, vr, alpha, SG: tl.constexpr, HARD_RESET: tl.constexpr,
                 DECAY_INPUT: tl.constexpr, SGF: tl.constexpr = None, theta=None, STRICT: tl.constexpr = False,
                 TIMING: tl.constexpr = 0):
    """One step's contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α (V_{t−1} = ``v_prev``; ``xv`` read only with
    DECAY_INPUT; ``theta`` only with TIMING 1)."""
    if TIMING != 0:
        dth = -ds * gp
        if TIMING == 1:
            if HARD_RESET:
                v_prev = _pending_hard(v_prev, theta, vr, STRICT)  # the charge starts from V′
            else:
                dth = dth - eps * _fires(v_prev - theta, STRICT).to(eps.dtype)  # H − R·θ
    elif HARD_RESET:
        dth = -ds * gp
    else:
        dth = -ds * gp - dvt * s
    dal = ds * tsg.sg_dalpha(xs, alpha, SG, SGF)
    if DECAY_INPUT:
        dk = eps * (xv - (v_prev - vr))
    else:
        dk = eps * (0.0 - (v_prev - vr))
    return dk, dth, dal


@triton.jit
def _load_start(v0_ptr, start, lane, m, k, UNIFORM_V0: tl.constexpr, BLOCK: tl.constexpr):
    """V_0 of the program's neurons in k's dtype. UNIFORM_V0: v0 is [1], every neuron's start
    (contract.uniform_v0), one load instead of a row of N."""
    if UNIFORM_V0:
        v = tl.load(v0_ptr).to(k.dtype) + tl.zeros([BLOCK], dtype=k.dtype)
    else:
        v = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    return v


@triton.jit
def _store_grad_start(gv0_ptr, dv, start, lane, m, k, UNIFORM_V0: tl.constexpr, BLOCK: tl.constexpr):
    """∂L/∂V_0; for a uniform start ([1]) none is computed: its one element gets NaN, never a number."""
    if UNIFORM_V0:
        nan = tl.full([BLOCK], float("nan"), k.dtype)  # made in k's dtype: bf16 has no such constant
        tl.store(gv0_ptr + start + lane, nan.to(gv0_ptr.dtype.element_ty), mask=m & (start + lane == 0))
    else:
        tl.store(gv0_ptr + start + lane, dv.to(gv0_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["T", "N_BUCKET"])
def lif_fwd_kernel(
    x_ptr, v0_ptr, params_ptr, wide_ptr, mask_ptr, s_ptr, vlast_ptr, vseq_ptr, h_ptr, ck_ptr,
    T, N, v_reset, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr,
    STORE_VSEQ: tl.constexpr, SAVE_H: tl.constexpr, H_MINUS_THETA: tl.constexpr, WIDE: tl.constexpr,
    EXACT: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
    STREAM: tl.constexpr = False, STAGES: tl.constexpr = None, PREFETCH2: tl.constexpr = False,
    STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0, UNIFORM_V0: tl.constexpr = False,
):
    # Per element and step: read x (b), write s (b), write H (b, training only) [+ v_seq b, + mask 1 B].
    # Knobs (defaults off; the GPU check's lab times them): STREAM, the streams' loads evict-first and
    # their stores streaming (.cs); STAGES, the time loop's num_stages (Triton's software pipeliner);
    # PREFETCH2, x loaded two steps ahead instead of one (twice the loads in flight, one more register
    # per neuron).
    # Addressing: one int64 scalar row offset t·N + start (N·T may exceed 2^31) plus int32 lanes,
    # so the loop carries 2 registers of address instead of a 64-bit pointer per neuron and tensor.
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k = tl.load(params_ptr)
    theta = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    if WIDE:  # float64: v_reset from the buffer (a float argument would be rounded to fp32)
        vr = tl.load(wide_ptr)
    else:
        vr = v_reset + 0.0 * k
    if not HARD_RESET:
        vr = 0.0 * k  # soft reset charges towards 0
    v = _load_start(v0_ptr, start, lane, m, k, UNIFORM_V0, BLOCK)
    row = start
    # x is prefetched one step ahead: its load does not wait on the recurrence, so issuing it before
    # step t's arithmetic doubles the loads in flight when few warps share an SM (small N, long T).
    x_next = _ld(x_ptr + row + lane, m, STREAM)
    if PREFETCH2:
        x_next2 = _ld(x_ptr + row + N + lane, m & ((lane * 0 + 1) < T), STREAM)
    for t in tl.range(0, T, num_stages=STAGES):
        sp = s_ptr + row + lane
        hp = h_ptr + row + lane
        vp = vseq_ptr + row + lane
        mp = mask_ptr + row + lane
        xv = x_next.to(k.dtype)
        if PREFETCH2:
            x_next = x_next2
            x_next2 = _ld(x_ptr + row + 2 * tl.cast(N, tl.int64) + lane, m & ((lane * 0 + t) < T - 2), STREAM)
        else:
            x_next = _ld(x_ptr + row + N + lane, m & ((lane * 0 + t) < T - 1), STREAM)
        if HAS_MASK:
            mk = tl.load(mp, mask=m, other=1) != 0
        else:
            mk = m  # unread
        h, xs, s, v = _lif_step(v, xv, mk, k, theta, alpha, vr, SG, HARD_RESET, DECAY_INPUT, HAS_MASK, EXACT, SGF,
                                STRICT, TIMING)
        _st(sp, s.to(sp.dtype.element_ty), m, STREAM)
        if SAVE_H:
            if H_MINUS_THETA:  # the one fp16/bf16 encoding, shared with CUDA: csrc/include/snn_fast/lif_step.h
                # Sign bit set to "no spike" explicitly: rounding alone would mark NaN (sign arbitrary)
                # or H − θ = −0 (a spike: Θ(0) = 1) wrongly.
                d = tl.where(_fires(xs, STRICT) != 0.0, tl.abs(xs), -tl.abs(xs))
                _st(hp, d.to(hp.dtype.element_ty), m, STREAM)
            else:
                _st(hp, h.to(hp.dtype.element_ty), m, STREAM)
        if STORE_VSEQ:
            tl.store(vp, v.to(vp.dtype.element_ty), mask=m)
        if CHUNK > 0:  # save="recompute": V after steps K, 2K, … (not after the last step: v_last has it)
            tc = (lane * 0 + t) + 1
            tl.store(ck_ptr + tl.cast(t // CHUNK, tl.int64) * N + start + lane, v,
                     mask=m & (tc % CHUNK == 0) & (tc < T))
        row += N
    tl.store(vlast_ptr + start + lane, v.to(vlast_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_prologue(params_ptr, wide_ptr, gvlast_p, m, v_reset, kappa, HARD_RESET: tl.constexpr,
                  DECAY_INPUT: tl.constexpr, HAS_GVLAST: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """Both backward kernels' start: k, θ, α, v_r, κ (from the param buffer; v_r and κ as scalars unless
    WIDE), cx = ∂H/∂X (k under decay_input, else 1) and the incoming ∂L/∂V_T."""
    k = tl.load(params_ptr)
    theta = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    if WIDE:
        vr = tl.load(wide_ptr)
        kap = tl.load(wide_ptr + 1)
    else:
        vr = v_reset + 0.0 * k
        kap = kappa + 0.0 * k
    if not HARD_RESET:
        vr = 0.0 * k
    if DECAY_INPUT:
        cx = k
    else:
        cx = 1.0 + 0.0 * k
    if HAS_GVLAST:
        dv = tl.load(gvlast_p, mask=m, other=0.0).to(k.dtype)
    else:
        dv = tl.zeros([BLOCK], dtype=k.dtype)
    return k, theta, alpha, vr, kap, cx, dv


@triton.jit(do_not_specialize=["T", "N_BUCKET"])
def lif_bwd_kernel(
    gs_ptr, gvlast_ptr, gvseq_ptr, x_ptr, v0_ptr, params_ptr, wide_ptr, mask_ptr, h_ptr,
    gx_ptr, gv0_ptr, pgrad_ptr,
    T, N, v_reset, kappa, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, H_MINUS_THETA: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
    STREAM: tl.constexpr = False, STAGES: tl.constexpr = None, PREFETCH2: tl.constexpr = False,
    STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0, UNIFORM_V0: tl.constexpr = False,
):
    # Per element and step: read grad_s (b), read H (b), write grad_x (b)
    # [+ grad_v_seq b, + mask 1 B, + x b when NEED_PARAM_GRAD and DECAY_INPUT].
    pid = tl.program_id(0).to(tl.int64)
    start = pid * BLOCK  # addressing as in the forward: int64 scalar row offset + int32 lanes
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr, kap, cx, dv = _bwd_prologue(params_ptr, wide_ptr, gvlast_ptr + start + lane, m, v_reset,
                                                     kappa, HARD_RESET, DECAY_INPUT, HAS_GVLAST, WIDE, BLOCK)
    # V_{t−1} is needed for the parameter gradients and for a pending hard reset (TIMING 1: ∂L/∂V_{t−1}
    # is scaled by 1 − R)
    if NEED_PARAM_GRAD or (TIMING == 1 and HARD_RESET):
        v0 = _load_start(v0_ptr, start, lane, m, k, UNIFORM_V0, BLOCK)
    if NEED_PARAM_GRAD:
        acc_k = tl.zeros([BLOCK], dtype=k.dtype)
        acc_th = tl.zeros([BLOCK], dtype=k.dtype)
        acc_al = tl.zeros([BLOCK], dtype=k.dtype)
    last = tl.cast(T - 1, tl.int64) * N
    row = last + start
    h, xs, s = _load_state(h_ptr + row + lane, mask_ptr + row + lane, m, theta, alpha, SG, HAS_MASK, H_MINUS_THETA,
                           SGF, STREAM, STRICT)
    gs_next = _ld(gs_ptr + row + lane, m, STREAM)  # prefetched a step ahead, as x in the forward
    if PREFETCH2:  # and the saved state and grad_s two steps ahead (raw: decoded when used)
        ahead = m & ((lane * 0 + 1) < T)
        hv_next = _ld(h_ptr + row - N + lane, ahead, STREAM)
        gs_next2 = _ld(gs_ptr + row - N + lane, ahead, STREAM)
    for i in tl.range(0, T, num_stages=STAGES):
        t = T - 1 - i
        gsp = gs_ptr + row + lane
        gxp = gx_ptr + row + lane
        xp = x_ptr + row + lane
        gvp = gvseq_ptr + row + lane
        prev = row - N
        # Step t − 1's state, needed next iteration (and now for V_{t−1} when learning k).
        t_pos = (lane * 0 + t) > 0  # as a tensor (t may be a plain int in the interpreter)
        has_prev = m & t_pos
        g_s = gs_next.to(k.dtype)
        if PREFETCH2:
            h_prev, xs_prev, s_prev = _decode_state(hv_next, mask_ptr + prev + lane, has_prev, theta, alpha, SG,
                                                    HAS_MASK, H_MINUS_THETA, SGF, STRICT)
            two = m & ((lane * 0 + t) > 1)
            hv_next = _ld(h_ptr + prev - N + lane, two, STREAM)
            gs_next = gs_next2
            gs_next2 = _ld(gsp - 2 * tl.cast(N, tl.int64), two, STREAM)  # 2·N: 64-bit past 2³⁰
        else:
            h_prev, xs_prev, s_prev = _load_state(h_ptr + prev + lane, mask_ptr + prev + lane, has_prev, theta,
                                                  alpha, SG, HAS_MASK, H_MINUS_THETA, SGF, STREAM, STRICT)
            gs_next = _ld(gsp - N, has_prev, STREAM)
        dvt = dv
        if HAS_GVSEQ:
            dvt += tl.load(gvp, mask=m, other=0.0).to(k.dtype)
        eps, ds, gp = _bwd_step(h, xs, s, g_s, dvt, theta, alpha, vr, kap, SG, HARD_RESET, DETACH_RESET, SGF,
                                TIMING)
        _st(gxp, (eps * cx).to(gxp.dtype.element_ty), m, STREAM)
        # ε − ε·k as lif_step.h lif_grad_v_prev (autograd adds the paths through V and V − vr): ε·(1 − k)
        # gives ±inf where the reference has inf − inf = NaN (straight_through + hard reset at H = ±max)
        dv = eps - eps * k
        if NEED_PARAM_GRAD or (TIMING == 1 and HARD_RESET):
            if TIMING != 0:  # the pre-reset membrane was carried
                v_prev = tl.where(t_pos, h_prev, v0)
            elif HARD_RESET:
                v_prev = tl.where(t_pos, s_prev * vr + (1.0 - s_prev) * h_prev, v0)
            else:
                v_prev = tl.where(t_pos, h_prev - s_prev * theta, v0)
        if TIMING == 1 and HARD_RESET:
            dv = dv * (1.0 - _fires(v_prev - theta, STRICT).to(k.dtype))
        if NEED_PARAM_GRAD:
            if DECAY_INPUT:
                xv = tl.load(xp, mask=m, other=0.0).to(k.dtype)
            else:
                xv = v_prev  # unread
            g_k, g_th, g_al = _param_terms(eps, ds, gp, dvt, s, xs, xv, v_prev, vr, alpha, SG, HARD_RESET,
                                           DECAY_INPUT, SGF, theta, STRICT, TIMING)
            acc_k += g_k
            acc_th += g_th
            acc_al += g_al
        h = h_prev
        xs = xs_prev
        s = s_prev
        row = prev
    _store_grad_start(gv0_ptr, dv, start, lane, m, k, UNIFORM_V0, BLOCK)
    if NEED_PARAM_GRAD:
        zero = 0.0 * k
        acc_k = tl.where(m, acc_k, zero)
        acc_th = tl.where(m, acc_th, zero)
        acc_al = tl.where(m, acc_al, zero)
        tl.store(pgrad_ptr + pid * 3, tl.sum(acc_k, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 1, tl.sum(acc_th, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 2, tl.sum(acc_al, axis=0))


@triton.jit(do_not_specialize=["T", "N_BUCKET"])
def lif_bwd_rc_kernel(
    gs_ptr, gvlast_ptr, gvseq_ptr, x_ptr, v0_ptr, params_ptr, wide_ptr, mask_ptr, ck_ptr,
    gx_ptr, gv0_ptr, pgrad_ptr,
    T, N, v_reset, kappa, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK: tl.constexpr, STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0, UNIFORM_V0: tl.constexpr = False,
):
    # save="recompute": nothing of the forward but V every CHUNK steps (ck, [ceil(T/CHUNK) − 1, N] in
    # the compute dtype). Segments of CHUNK steps, last first: re-run the forward over the segment from
    # its first V (v0 or a checkpoint) with H in registers (a tuple, unrolled by static_range: Triton
    # has no indexable register arrays), then walk the segment back. Per element and step: read x (b),
    # read grad_s (b), write grad_x (b) [+ grad_v_seq b, + mask 1 B] and 4/CHUNK B of checkpoint
    # (8/CHUNK for float64): the 5-pass floor with the forward's read x, write s.
    pid = tl.program_id(0).to(tl.int64)
    start = pid * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr, kap, cx, dv = _bwd_prologue(params_ptr, wide_ptr, gvlast_ptr + start + lane, m, v_reset,
                                                     kappa, HARD_RESET, DECAY_INPUT, HAS_GVLAST, WIDE, BLOCK)
    if NEED_PARAM_GRAD:
        acc_k = tl.zeros([BLOCK], dtype=k.dtype)
        acc_th = tl.zeros([BLOCK], dtype=k.dtype)
        acc_al = tl.zeros([BLOCK], dtype=k.dtype)
    v_init = _load_start(v0_ptr, start, lane, m, k, UNIFORM_V0, BLOCK)
    nseg = (T + CHUNK - 1) // CHUNK
    n64 = tl.cast(N, tl.int64)
    for i in range(nseg):
        c = nseg - 1 - i
        first = (lane * 0 + c) == 0  # as a tensor (c may be a plain int in the interpreter)
        t0 = c * CHUNK
        row0 = tl.cast(t0, tl.int64) * N + start
        vck = tl.load(ck_ptr + tl.cast(c - 1, tl.int64) * N + start + lane, mask=m & ~first, other=0.0)
        v = tl.where(first, v_init, vck)
        # Re-run the forward over the segment: the forward's own step (``_lif_step``), so the same H and S.
        hs = ()
        vs = ()  # V_{t−1} of each step (parameter gradients)
        xvs = ()  # X_t of each step (∂H/∂k under decay_input)
        for j in tl.static_range(CHUNK):
            ok = m & ((lane * 0 + t0 + j) < T)
            rowj = row0 + j * n64  # 64-bit: j·N in 32 bits wraps past 2³¹
            xv = tl.load(x_ptr + rowj + lane, mask=ok, other=0.0).to(k.dtype)
            if HAS_MASK:
                mk = tl.load(mask_ptr + rowj + lane, mask=ok, other=1) != 0
            else:
                mk = ok  # unread
            if NEED_PARAM_GRAD or (TIMING == 1 and HARD_RESET):  # V_{t−1}: also a pending hard reset's R
                vs = vs + (v,)
            if NEED_PARAM_GRAD:
                if DECAY_INPUT:
                    xvs = xvs + (xv,)
            h, xs, s, v = _lif_step(v, xv, mk, k, theta, alpha, vr, SG, HARD_RESET, DECAY_INPUT, HAS_MASK, EXACT,
                                    SGF, STRICT, TIMING)
            hs = hs + (h,)
        # Walk it back. Steps past T (last segment only) leave ∂L/∂V and the sums unchanged.
        for j in tl.static_range(CHUNK - 1, -1, -1):
            ok = m & ((lane * 0 + t0 + j) < T)
            off = row0 + j * n64 + lane
            h = hs[j]
            xs = h - theta
            s = _fires(xs, STRICT).to(k.dtype)
            if HAS_MASK:  # the emitted value, as the forward (mask reread: 1 B, just loaded above)
                mk = tl.load(mask_ptr + off, mask=ok, other=1) != 0
                s = tl.where(mk, s, tsg.sg_prim(xs, alpha, SG, SGF))
            g_s = tl.load(gs_ptr + off, mask=ok, other=0.0).to(k.dtype)
            dvt = dv
            if HAS_GVSEQ:
                dvt += tl.load(gvseq_ptr + off, mask=ok, other=0.0).to(k.dtype)
            eps, ds, gp = _bwd_step(h, xs, s, g_s, dvt, theta, alpha, vr, kap, SG, HARD_RESET, DETACH_RESET,
                                    SGF, TIMING)
            tl.store(gx_ptr + off, (eps * cx).to(gx_ptr.dtype.element_ty), mask=ok)
            # ε − ε·k as the state kernel and lif_step.h lif_grad_v_prev (NaN where autograd has inf − inf)
            dvp = eps - eps * k
            if TIMING == 1 and HARD_RESET:
                dvp = dvp * (1.0 - _fires(vs[j] - theta, STRICT).to(k.dtype))
            dv = tl.where(ok, dvp, dv)
            if NEED_PARAM_GRAD:
                if DECAY_INPUT:
                    xv = xvs[j]
                else:
                    xv = vs[j]  # unread
                g_k, g_th, g_al = _param_terms(eps, ds, gp, dvt, s, xs, xv, vs[j], vr, alpha, SG, HARD_RESET,
                                               DECAY_INPUT, SGF, theta, STRICT, TIMING)
                zero = 0.0 * k
                acc_k += tl.where(ok, g_k, zero)
                acc_th += tl.where(ok, g_th, zero)
                acc_al += tl.where(ok, g_al, zero)
    _store_grad_start(gv0_ptr, dv, start, lane, m, k, UNIFORM_V0, BLOCK)
    if NEED_PARAM_GRAD:
        tl.store(pgrad_ptr + pid * 3, tl.sum(acc_k, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 1, tl.sum(acc_th, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 2, tl.sum(acc_al, axis=0))


# Elementwise recurrence: each thread owns BLOCK / (32·num_warps) neurons for all T steps. Small
# blocks keep enough programs in flight for small N (W2: N = 16·4096); big ones amortise the
# per-program prologue for W1 (N = 4M). Registers (sm_90, sigmoid, hard reset, no mask, from
# tests/test_triton_aot.py's cuobjdump): 4 neurons per thread: fwd 32, bwd 48 (64 with parameter
# gradients), fp32 and bf16 alike; 8 per thread (1024 × 4 warps, 16-byte bf16 vectors): fwd 106–140,
# so only the forward offers it and the autotuner weighs the occupancy it costs. Keyed on a coarse
# N bucket (plus the arguments' dtypes, which the autotuner adds itself): a new batch size neither
# re-tunes nor recompiles.
FWD_CONFIGS = [
    triton.Config({"BLOCK": 128}, num_warps=1),
    triton.Config({"BLOCK": 256}, num_warps=2),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 1024}, num_warps=4),  # 8 per thread: 16-byte bf16/fp16 vectors
]
# The backward holds ~2× the live state (H_t and H_{t−1}, S, three partial sums); at 8 neurons per
# thread it reached 168 registers and an 8-byte stack frame (fp16 q_pseudo_spike with mask and
# parameter gradients, sm_90; no alignment assumed), so it stays at 4 per thread. At W1's alignment
# (N % 16 == 0: tests/test_triton_aot.py's W1 rows) the same 8 per thread takes 40 registers in bf16
# with 16-byte loads instead of 8-byte ones; the GPU check's lab stage times it ("bwd-npt8").
BWD_CONFIGS = FWD_CONFIGS[:4]
# The recompute backward holds a segment's H (and, for parameter gradients, V_{t−1} and X) in
# registers, CHUNK values per neuron and tensor, and the compiler hoists the segment's loads of x and
# grad_s ahead of the arithmetic. Registers at CHUNK = 8, sm_90 (AOT, cuobjdump): 4 neurons per thread
# 149 (fp32 sigmoid, no mask, no parameter gradients) and spills with parameter gradients (24 B fp32,
# 232 B fp16/bf16 q_pseudo_spike, 1648 B fp64); 2 per thread 77 / 154–207, fp64 still spills (248 B);
# 1 per thread 48 / 88–111, fp64 194, no spills. So one neuron per thread: a warp still reads 32
# contiguous elements per tensor and step (128 B fp32, 64 B bf16: whole 32-byte sectors). At most 8
# warps: 512 threads per program cap a thread at 128 registers, where fp64 with parameter gradients
# spilled 224 B (BLOCK 512, 16 warps, sm_90).
BWD_RC_CONFIGS = [
    triton.Config({"BLOCK": 128}, num_warps=4),
    triton.Config({"BLOCK": 256}, num_warps=8),
]
