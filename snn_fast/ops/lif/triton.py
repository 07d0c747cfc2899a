"""Triton kernels for the fused LIF op (SPEC §2–§4): kernels, launchers, op definitions.

``_lif_fwd_kernel`` → ``lif_fwd_triton`` (op ``snn_fast::lif_fwd_triton``) and ``_lif_bwd_kernel`` →
``lif_bwd_triton`` (op ``snn_fast::lif_bwd_triton``), with the contract of ``function.py``, whose
table (``BACKENDS["triton"]``) imports this module on the backend's first use and registers the
ops' autograd for torch.compile; this module imports nothing of the package but the surrogate ids,
the argument checks and the interpreter answer (no import cycle). One program
owns BLOCK neurons and walks all T steps with the membrane in registers; the math of a step is the
port of ``csrc/include/snn_fast/lif_step.h`` (same formulas, same operation order, so fp32 states
match the fp32 reference bit for bit and spikes do not flip).

What the forward saves for the backward (``saved``, [T, N]):
  - float32/float64: H in the storage dtype; S = Θ(H − θ) is recomputed exactly from it.
  - float16/bfloat16: H − θ rounded to the storage dtype. Rounding to nearest never changes the sign
    bit (not even to ±0), so S = [sign bit clear] is exact; and where g′(H − θ) matters (H near θ)
    the stored H − θ keeps full relative precision, which a rounded H would lose to cancellation.
    H = (H − θ) + θ serves the reset terms. Measured against the float64 reference on [T=16,
    N=1024], sigmoid α=4, κ=0.2, hard/soft, with and without the noise mask (max error / scale):
        grad_x    fp16 4.3–4.9e-4 (saving H in fp32: 3.9–4.7e-4; plain fp16 torch 0.07–0.30)
                  bf16 5.5–6.5e-3 (fp32 H: 4.9–5.6e-3; plain bf16 torch 0.10–0.57)
        grad_τ,θ,α  within 1e-4…2e-2 of the truth, below plain torch's error in 23 of 24 cases
    A first version stored H itself with the spike bit in the mantissa LSB: grad_x errors were
    2–3× larger (fp16 1.1–1.7e-3) and grad_α off by 3.3e-2 in bf16, from cancellation in H − θ.
    Saving H in fp32 instead (the "fp32 H" column) would cost 2 B/elem more in each direction.

Bytes per element of [T, N] (storage size b; mask 1 B when given):
  forward   read x, write s, write H (H − θ)                  3b   (+ b v_seq, + 1 mask)
  inference read x, write s                                   2b   (``lif_fwd_triton_infer``)
  backward  read grad_s, read H, write grad_x                 3b   (+ b grad_v_seq, + 1 mask)
            + read x when learning k with decay_input         +b
  fwd+bwd = 6b (fp32 24 B, bf16/fp16 12 B per element): one pass above the 5-pass floor. The floor (save nothing, re-run the forward inside
  the backward as the CPU kernel does) needs the whole [T, BLOCK] history of V_{t−1} on chip while
  walking back, which a GPU program cannot hold for general T; re-running it through global memory
  costs more than saving H once. Same pass count as SpikingJelly 2.0, whose H is fp32 even for
  fp16/bf16 storage (this saves H − θ in b: 12 B instead of 16 B per element for bf16).
The backward needs neither V_{t−1} nor x unless the leak k is learned: V_{t−1} = reset(H_{t−1}) comes
from the H it loads anyway one step ahead.

save="recompute" (issue 16; not the default: slower than "state" on the H200, config.DEFAULT_SAVE): ``lif_fwd_triton_recompute`` writes
s (v_last, v_seq) and, instead of H, V after steps K, 2K, … (K = ``config.RECOMPUTE_CHUNK`` = 8) in the
compute dtype; ``_lif_bwd_rc_kernel`` re-runs the forward per K-step segment from x and those V with
the forward's own step (``_lif_step``: the same H and spikes bit for bit), the segment's H in
registers (a tuple unrolled by ``tl.static_range``: Triton has no indexable register arrays), and
walks it back. The options considered: (a) re-run all T steps through a per-program scratch in
global memory: T·BLOCK values per program that a GPU's L2 does not hold for W1 (4M neurons: a
T·N·4-byte scratch is written and read back, the 6th pass again); (b) checkpoints every K steps, the
segment in registers: what is kept. Bytes per element of [T, N] (memory.py counts them):
  forward   read x, write s                                   2b  (+ 4·(ceil(T/K) − 1)/T B of V)
  backward  read x, read grad_s, write grad_x                 3b  (+ the same V read)
so fwd+bwd = 5b + 8/K B at most (fp32 21 B at T = 64 instead of 24; bf16 11 B instead of 12) and a
layer keeps 0 bytes for T ≤ 8, 4·N·(ceil(T/8) − 1) beyond (T·N·b with save="state"). The price is
registers: K values of H per neuron (and of V_{t−1} and X with parameter gradients), so this backward
runs one neuron per thread (``_BWD_RC_CONFIGS``). fp16/bf16: the re-run H is the exact float32 H,
where the state path reads H − θ rounded to b: the gradients are at least as close to the truth.

Parameter gradients: each program sums its lanes over all its steps into one row of a
[programs, 3] buffer, summed by torch afterwards (deterministic, no atomics), and the whole path is
compiled out (``NEED_PARAM_GRAD`` constexpr) when no parameter needs a gradient.

Variants: every option is a constexpr (surrogate id, hard/soft, decay_input, detach, mask, v_seq,
grad inputs present, parameter gradients, dtype), so each variant compiles only its own code. T is
not specialised (``do_not_specialize``: a new length reuses the binary); N only by Triton's
divisible-by-16 rule (≤ 2 binaries, and aligned vector loads). Autotuned per (dtypes, N bucket).

Inference: backend 'triton' runs ``snn_fast::lif_fwd_triton_infer`` (no H write: 2b per element)
when no input requires grad (``function.fused_forward``), and the training op otherwise.

Runs on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1`` (set before triton is
imported), which is how CI without a GPU tests these kernels.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from ... import _triton
from ... import surrogate as _sg
from . import config

# Decided by triton.jit when the kernels below are decorated; snn_fast._triton reads it the same way.
INTERPRETED = _triton.interpreted()
# Interpreter: one fixed block (no autotuning, nothing to time); small so tests cover several programs.
_INTERPRET_BLOCK = 128
_MIN_BLOCK = 128  # smallest BLOCK of any config: sizes the parameter-gradient partial buffer

_PI = tl.constexpr(math.pi)
_HALF_PI = tl.constexpr(math.pi / 2)
_QUARTER_PI = tl.constexpr(math.pi / 4)
_INV_SQRT_PI = tl.constexpr(1.0 / math.sqrt(math.pi))


# ---------------------------------------------------------------------------------------------
# Surrogates (SPEC §3), mirroring csrc/include/snn_fast/surrogate.h. SG is a constexpr, so each
# kernel variant contains one surrogate only. x = H − θ, a = α; x and a share the compute dtype.
# A user-registered surrogate (snn_fast.surrogate.register_surrogate(..., triton=...)) runs as SG = −1
# with SGF = its @triton.jit (g, g′, ∂g/∂α or None): constexpr functions, inlined into a kernel
# variant of their own (the tuple is part of the compile key), so no runtime switch either.


@triton.jit
def _atan(z):
    """arctan (Cephes atan: range reduction + rational 4/5), max error 2.2e-16 in float64 and 1 ulp
    in float32 vs numpy. Own code because the interpreter has no libdevice (CI runs that path)."""
    az = tl.abs(z)
    big = az > 2.414213562373095  # tan(3π/8)
    mid = (az > 0.66) & (az <= 2.414213562373095)
    w = tl.where(big, -1.0 / tl.where(big, az, 1.0), tl.where(mid, (az - 1.0) / (az + 1.0), az))
    y = tl.where(big, 2.0, tl.where(mid, 1.0, 0.0)).to(z.dtype) * _QUARTER_PI  # exact in float64
    q2 = w * w
    p = (((-8.750608600031904122785e-1 * q2 - 1.615753718733365076637e1) * q2 - 7.500855792314704667340e1) * q2
         - 1.228866684490136173410e2) * q2 - 6.485021904942025371773e1
    q = ((((q2 + 2.485846490142306297962e1) * q2 + 1.650270098316988542046e2) * q2 + 4.328810604912902668951e2)
         * q2 + 4.853903996359136964868e2) * q2 + 1.945506571482613964425e2
    r = y + (w * (q2 * p / q) + w)
    return tl.where(z < 0.0, -r, r)


@triton.jit
def _sg_grad(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """g′(x; a), the surrogate gradient."""
    if SG < 0:  # a user's
        r = SGF[1](x, a).to(x.dtype)
    elif SG == 0:  # sigmoid
        s = 1.0 / (1.0 + tl.exp(-(a * x)))
        r = a * s * (1.0 - s)
    elif SG == 1:  # atan
        u = a * x * _HALF_PI
        r = a / (2.0 * (1.0 + u * u))
    elif SG == 2:  # rectangle
        r = tl.where(tl.abs(x) < 0.5 / a, a, 0.0 * a)
    elif SG == 3:  # triangle
        d = a - a * a * tl.abs(x)
        r = tl.where(d < 0.0, tl.zeros_like(d), d)  # clamp(d, min=0): −inf → 0, NaN stays NaN
    elif SG == 4:  # piecewise_exp
        r = a / 2.0 * tl.exp(-a * tl.abs(x))
    elif SG == 5:  # soft_sign
        u = 1.0 + tl.abs(a * x)
        r = a / (2.0 * u * u)
    elif SG == 6:  # super_spike
        u = 1.0 + a * tl.abs(x)
        r = 1.0 / (u * u)
    elif SG == 7:  # erf
        r = a * tl.exp(-(a * x) * (a * x)) * _INV_SQRT_PI
    elif SG == 8:  # q_pseudo_spike
        u = 1.0 + 2.0 * tl.abs(x) / (a - 1.0)
        r = tl.exp(-a * tl.log(u))
    elif SG == 9:  # straight_through
        r = tl.zeros_like(x) + 1.0  # not 0·x + 1: that is NaN at x = ±inf, where g′ = 1
    else:  # spike_gate
        r = tl.where(x >= 0.0, 1.0, 0.0).to(x.dtype)
    return r


@triton.jit
def _sg_prim(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """g(x; a), emitted by the noisy spike where the mask is False."""
    if SG < 0:
        r = SGF[0](x, a)
    elif SG == 0:
        r = 1.0 / (1.0 + tl.exp(-(a * x)))
    elif SG == 1:
        r = 0.5 + _atan(a * x * _HALF_PI) / _PI
    elif SG == 2:
        # propagate_nan: clamp(NaN) is NaN in the reference (torch.clamp) and in C++; Triton's default drops it
        r = tl.minimum(tl.maximum(a * x + 0.5, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif SG == 3:
        ax = a * x
        r = tl.where(ax < 0.0, 0.5 * (ax + 1.0) * (ax + 1.0), 1.0 - 0.5 * (1.0 - ax) * (1.0 - ax))
        r = tl.where(ax <= -1.0, 0.0, r)
        r = tl.where(ax >= 1.0, 1.0, r)
    elif SG == 4:
        e = 0.5 * tl.exp(-a * tl.abs(x))
        r = tl.where(x < 0.0, e, 1.0 - e)
    elif SG == 5:
        ax = a * x
        r = 0.5 * (ax / (1.0 + tl.abs(ax)) + 1.0)
    elif SG == 6:
        r = 0.5 + x / (1.0 + a * tl.abs(x))
    elif SG == 7:
        r = 0.5 * (1.0 + tl.math.erf(a * x))  # = ½·erfc(−αx); abs. error ≤ 1 ulp of 1
    elif SG == 8:
        u = 1.0 + 2.0 * tl.abs(x) / (a - 1.0)
        h = 0.5 * tl.exp((1.0 - a) * tl.log(u))
        r = tl.where(x >= 0.0, 1.0 - h, h)
    elif SG == 9:
        r = x + 0.5
    else:
        r = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as the reference
    return r.to(x.dtype)


@triton.jit
def _sg_dalpha(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """∂g/∂a. Scaling family: x·g′(x)/a; no width (straight_through, spike_gate): 0."""
    if SG < 0:
        if SGF[2] is None:  # registered with scaling=True
            r = x * _sg_grad(x, a, SG, SGF) / a
        else:
            r = SGF[2](x, a).to(x.dtype)
    elif SG == 6:
        u = 1.0 + a * tl.abs(x)
        r = -x * tl.abs(x) / (u * u)
    elif SG == 8:
        ax = tl.abs(x)
        u = 1.0 + 2.0 * ax / (a - 1.0)
        lu = tl.log(u)
        dh = 0.5 * tl.exp((1.0 - a) * lu) * (-lu + 2.0 * ax / ((a - 1.0) * u))
        r = tl.where(x >= 0.0, -dh, dh)
    elif SG == 9 or SG == 10:
        r = tl.zeros_like(x)
    else:
        r = x * _sg_grad(x, a, SG) / a
    return r


# ---------------------------------------------------------------------------------------------
# Kernels


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
def _load_state(hp, mp, m, theta, alpha, SG: tl.constexpr, HAS_MASK: tl.constexpr, SAVE_X: tl.constexpr,
                SGF: tl.constexpr = None, STRICT: tl.constexpr = False):
    """Saved state at one step → (H, H − θ, emitted S) in the compute dtype of θ."""
    hv = tl.load(hp, mask=m, other=0.0)
    if SAVE_X:  # fp16/bf16: D = H − θ with its sign bit = "no spike" (see the forward's store), so S is exact
        xs = hv.to(theta.dtype)
        h = xs + theta
        s = tl.where(hv.to(tl.int16, bitcast=True) >= 0, 1.0, 0.0).to(theta.dtype)
    else:  # H itself: the same H − θ and the same spike as the forward
        h = hv.to(theta.dtype)
        xs = h - theta
        s = _fires(xs, STRICT).to(theta.dtype)
    if HAS_MASK:
        mk = tl.load(mp, mask=m, other=1) != 0
        s = tl.where(mk, s, _sg_prim(xs, alpha, SG, SGF))
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
    ``mk``: the noise mask (True = spike), read only when HAS_MASK. TIMING (config.RESET_TIMINGS'
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
        s = tl.where(mk, spike, _sg_prim(xs, alpha, SG, SGF))
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
    gp = _sg_grad(xs, alpha, SG, SGF)
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
    dal = ds * _sg_dalpha(xs, alpha, SG, SGF)
    if DECAY_INPUT:
        dk = eps * (xv - (v_prev - vr))
    else:
        dk = eps * (0.0 - (v_prev - vr))
    return dk, dth, dal


@triton.jit(do_not_specialize=["T", "N_BUCKET"])
def _lif_fwd_kernel(
    x_ptr, v0_ptr, params_ptr, mask_ptr, s_ptr, vlast_ptr, vseq_ptr, h_ptr, ck_ptr,
    T, N, v_reset, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, HAS_MASK: tl.constexpr,
    STORE_VSEQ: tl.constexpr, SAVE_H: tl.constexpr, SAVE_X: tl.constexpr, WIDE: tl.constexpr,
    EXACT: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, STRICT: tl.constexpr = False,
    TIMING: tl.constexpr = 0,
):
    # Per element and step: read x (b), write s (b), write H (b, training only) [+ v_seq b, + mask 1 B].
    # Addressing: one int64 scalar row offset t·N + start (N·T may exceed 2^31) plus int32 lanes,
    # so the loop carries 2 registers of address instead of a 64-bit pointer per neuron and tensor.
    start = tl.program_id(0).to(tl.int64) * BLOCK
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k = tl.load(params_ptr)
    theta = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    if WIDE:  # float64: v_reset from the buffer (a float argument would be rounded to fp32)
        vr = tl.load(params_ptr + 3)
    else:
        vr = v_reset + 0.0 * k
    if not HARD_RESET:
        vr = 0.0 * k  # soft reset charges towards 0
    v = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    row = start
    # x is prefetched one step ahead: its load does not wait on the recurrence, so issuing it before
    # step t's arithmetic doubles the loads in flight when few warps share an SM (small N, long T).
    x_next = tl.load(x_ptr + row + lane, mask=m, other=0.0)
    for t in range(T):
        sp = s_ptr + row + lane
        hp = h_ptr + row + lane
        vp = vseq_ptr + row + lane
        mp = mask_ptr + row + lane
        xv = x_next.to(k.dtype)
        x_next = tl.load(x_ptr + row + N + lane, mask=m & ((lane * 0 + t) < T - 1), other=0.0)
        if HAS_MASK:
            mk = tl.load(mp, mask=m, other=1) != 0
        else:
            mk = m  # unread
        h, xs, s, v = _lif_step(v, xv, mk, k, theta, alpha, vr, SG, HARD_RESET, DECAY_INPUT, HAS_MASK, EXACT, SGF,
                                STRICT, TIMING)
        tl.store(sp, s.to(sp.dtype.element_ty), mask=m)
        if SAVE_H:
            if SAVE_X:  # the one fp16/bf16 encoding, shared with CUDA: csrc/include/snn_fast/lif_step.h
                # Sign bit set to "no spike" explicitly: rounding alone would mark NaN (sign arbitrary)
                # or H − θ = −0 (a spike: Θ(0) = 1) wrongly.
                d = tl.where(_fires(xs, STRICT) != 0.0, tl.abs(xs), -tl.abs(xs))
                tl.store(hp, d.to(hp.dtype.element_ty), mask=m)
            else:
                tl.store(hp, h.to(hp.dtype.element_ty), mask=m)
        if STORE_VSEQ:
            tl.store(vp, v.to(vp.dtype.element_ty), mask=m)
        if CHUNK > 0:  # save="recompute": V after steps K, 2K, … (not after the last step: v_last has it)
            tc = (lane * 0 + t) + 1
            tl.store(ck_ptr + tl.cast(t // CHUNK, tl.int64) * N + start + lane, v,
                     mask=m & (tc % CHUNK == 0) & (tc < T))
        row += N
    tl.store(vlast_ptr + start + lane, v.to(vlast_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_prologue(params_ptr, gvlast_p, m, v_reset, kappa, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
                  HAS_GVLAST: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    """Both backward kernels' start: k, θ, α, v_r, κ (from the param buffer; v_r and κ as scalars unless
    WIDE), cx = ∂H/∂X (k under decay_input, else 1) and the incoming ∂L/∂V_T."""
    k = tl.load(params_ptr)
    theta = tl.load(params_ptr + 1)
    alpha = tl.load(params_ptr + 2)
    if WIDE:
        vr = tl.load(params_ptr + 3)
        kap = tl.load(params_ptr + 4)
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
def _lif_bwd_kernel(
    gs_ptr, gvlast_ptr, gvseq_ptr, x_ptr, v0_ptr, params_ptr, mask_ptr, h_ptr,
    gx_ptr, gv0_ptr, pgrad_ptr,
    T, N, v_reset, kappa, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr, DETACH_RESET: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, SAVE_X: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr,
    STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0,
):
    # Per element and step: read grad_s (b), read H (b), write grad_x (b)
    # [+ grad_v_seq b, + mask 1 B, + x b when NEED_PARAM_GRAD and DECAY_INPUT].
    pid = tl.program_id(0).to(tl.int64)
    start = pid * BLOCK  # addressing as in the forward: int64 scalar row offset + int32 lanes
    lane = tl.arange(0, BLOCK)
    m = lane < N - start
    k, theta, alpha, vr, kap, cx, dv = _bwd_prologue(params_ptr, gvlast_ptr + start + lane, m, v_reset, kappa,
                                                     HARD_RESET, DECAY_INPUT, HAS_GVLAST, WIDE, BLOCK)
    # V_{t−1} is needed for the parameter gradients and for a pending hard reset (TIMING 1: ∂L/∂V_{t−1}
    # is scaled by 1 − R)
    if NEED_PARAM_GRAD or (TIMING == 1 and HARD_RESET):
        v0 = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    if NEED_PARAM_GRAD:
        acc_k = tl.zeros([BLOCK], dtype=k.dtype)
        acc_th = tl.zeros([BLOCK], dtype=k.dtype)
        acc_al = tl.zeros([BLOCK], dtype=k.dtype)
    last = tl.cast(T - 1, tl.int64) * N
    row = last + start
    h, xs, s = _load_state(h_ptr + row + lane, mask_ptr + row + lane, m, theta, alpha, SG, HAS_MASK, SAVE_X, SGF,
                           STRICT)
    gs_next = tl.load(gs_ptr + row + lane, mask=m, other=0.0)  # prefetched a step ahead, as x in the forward
    for i in range(T):
        t = T - 1 - i
        gsp = gs_ptr + row + lane
        gxp = gx_ptr + row + lane
        xp = x_ptr + row + lane
        gvp = gvseq_ptr + row + lane
        prev = row - N
        # Step t − 1's state, needed next iteration (and now for V_{t−1} when learning k).
        t_pos = (lane * 0 + t) > 0  # as a tensor (t may be a plain int in the interpreter)
        has_prev = m & t_pos
        h_prev, xs_prev, s_prev = _load_state(h_ptr + prev + lane, mask_ptr + prev + lane, has_prev, theta, alpha,
                                              SG, HAS_MASK, SAVE_X, SGF, STRICT)
        g_s = gs_next.to(k.dtype)
        gs_next = tl.load(gsp - N, mask=has_prev, other=0.0)
        dvt = dv
        if HAS_GVSEQ:
            dvt += tl.load(gvp, mask=m, other=0.0).to(k.dtype)
        eps, ds, gp = _bwd_step(h, xs, s, g_s, dvt, theta, alpha, vr, kap, SG, HARD_RESET, DETACH_RESET, SGF,
                                TIMING)
        tl.store(gxp, (eps * cx).to(gxp.dtype.element_ty), mask=m)
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
    tl.store(gv0_ptr + start + lane, dv.to(gv0_ptr.dtype.element_ty), mask=m)
    if NEED_PARAM_GRAD:
        zero = 0.0 * k
        acc_k = tl.where(m, acc_k, zero)
        acc_th = tl.where(m, acc_th, zero)
        acc_al = tl.where(m, acc_al, zero)
        tl.store(pgrad_ptr + pid * 3, tl.sum(acc_k, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 1, tl.sum(acc_th, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 2, tl.sum(acc_al, axis=0))


@triton.jit(do_not_specialize=["T", "N_BUCKET"])
def _lif_bwd_rc_kernel(
    gs_ptr, gvlast_ptr, gvseq_ptr, x_ptr, v0_ptr, params_ptr, mask_ptr, ck_ptr,
    gx_ptr, gv0_ptr, pgrad_ptr,
    T, N, v_reset, kappa, N_BUCKET,
    SG: tl.constexpr, SGF: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GVLAST: tl.constexpr, HAS_GVSEQ: tl.constexpr,
    NEED_PARAM_GRAD: tl.constexpr, WIDE: tl.constexpr, EXACT: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK: tl.constexpr, STRICT: tl.constexpr = False, TIMING: tl.constexpr = 0,
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
    k, theta, alpha, vr, kap, cx, dv = _bwd_prologue(params_ptr, gvlast_ptr + start + lane, m, v_reset, kappa,
                                                     HARD_RESET, DECAY_INPUT, HAS_GVLAST, WIDE, BLOCK)
    if NEED_PARAM_GRAD:
        acc_k = tl.zeros([BLOCK], dtype=k.dtype)
        acc_th = tl.zeros([BLOCK], dtype=k.dtype)
        acc_al = tl.zeros([BLOCK], dtype=k.dtype)
    v_init = tl.load(v0_ptr + start + lane, mask=m, other=0.0).to(k.dtype)
    nseg = (T + CHUNK - 1) // CHUNK
    for i in range(nseg):
        c = nseg - 1 - i
        first = (lane * 0 + c) == 0  # as a tensor (c may be a plain int in the interpreter)
        t0 = c * CHUNK
        row0 = tl.cast(t0, tl.int64) * N + start
        vck = tl.load(ck_ptr + tl.cast(c - 1, tl.int64) * N + start + lane, mask=m & ~first, other=0.0)
        v = tl.where(first, v_init, vck)
        # Re-run the forward over the segment: the forward's own step (_lif_step), so the same H and S.
        hs = ()
        vs = ()  # V_{t−1} of each step (parameter gradients)
        xvs = ()  # X_t of each step (∂H/∂k under decay_input)
        for j in tl.static_range(CHUNK):
            ok = m & ((lane * 0 + t0 + j) < T)
            xv = tl.load(x_ptr + row0 + j * N + lane, mask=ok, other=0.0).to(k.dtype)
            if HAS_MASK:
                mk = tl.load(mask_ptr + row0 + j * N + lane, mask=ok, other=1) != 0
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
            off = row0 + j * N + lane
            h = hs[j]
            xs = h - theta
            s = _fires(xs, STRICT).to(k.dtype)
            if HAS_MASK:  # the emitted value, as the forward (mask reread: 1 B, just loaded above)
                mk = tl.load(mask_ptr + off, mask=ok, other=1) != 0
                s = tl.where(mk, s, _sg_prim(xs, alpha, SG, SGF))
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
    tl.store(gv0_ptr + start + lane, dv.to(gv0_ptr.dtype.element_ty), mask=m)
    if NEED_PARAM_GRAD:
        tl.store(pgrad_ptr + pid * 3, tl.sum(acc_k, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 1, tl.sum(acc_th, axis=0))
        tl.store(pgrad_ptr + pid * 3 + 2, tl.sum(acc_al, axis=0))


# PTX inline asm pins the charge's rounding on NVIDIA; elsewhere (interpreter, ROCm) a plain product.
EXACT_MUL = not INTERPRETED and torch.version.hip is None

# Elementwise recurrence: each thread owns BLOCK / (32·num_warps) neurons for all T steps. Small
# blocks keep enough programs in flight for small N (W2: N = 16·4096); big ones amortise the
# per-program prologue for W1 (N = 4M). Registers (sm_90, sigmoid, hard reset, no mask, from
# tests/test_triton_aot.py's cuobjdump): 4 neurons per thread: fwd 32, bwd 48 (64 with parameter
# gradients), fp32 and bf16 alike; 8 per thread (1024 × 4 warps, 16-byte bf16 vectors): fwd 106–140,
# so only the forward offers it and the autotuner weighs the occupancy it costs. Keyed on a coarse
# N bucket (plus the arguments' dtypes, which the autotuner adds itself): a new batch size neither
# re-tunes nor recompiles.
_FWD_CONFIGS = [
    triton.Config({"BLOCK": 128}, num_warps=1),
    triton.Config({"BLOCK": 256}, num_warps=2),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 1024}, num_warps=4),  # 8 per thread: 16-byte bf16/fp16 vectors
]
# The backward holds ~2× the live state (H_t and H_{t−1}, S, three partial sums); at 8 neurons per
# thread it reached 168 registers and an 8-byte stack frame (fp16 q_pseudo_spike with mask and
# parameter gradients, sm_90), so it stays at 4 per thread.
_BWD_CONFIGS = _FWD_CONFIGS[:4]
# SNN_FAST_TRITON_AUTOTUNE=0: one fixed config instead of autotuning, so each kernel variant compiles
# once instead of 4–5 times (~0.6 s each for sm_90): the GPU check's correctness stage runs 46 variants.
_FIXED_CONFIG = None if os.environ.get("SNN_FAST_TRITON_AUTOTUNE", "1") != "0" else _FWD_CONFIGS[2]
# The recompute backward holds a segment's H (and, for parameter gradients, V_{t−1} and X) in
# registers, CHUNK values per neuron and tensor, and the compiler hoists the segment's loads of x and
# grad_s ahead of the arithmetic. Registers at CHUNK = 8, sm_90 (AOT, cuobjdump): 4 neurons per thread
# 149 (fp32 sigmoid, no mask, no parameter gradients) and spills with parameter gradients (24 B fp32,
# 232 B fp16/bf16 q_pseudo_spike, 1648 B fp64); 2 per thread 77 / 154–207, fp64 still spills (248 B);
# 1 per thread 48 / 88–111, fp64 194, no spills. So one neuron per thread: a warp still reads 32
# contiguous elements per tensor and step (128 B fp32, 64 B bf16: whole 32-byte sectors). At most 8
# warps: 512 threads per program cap a thread at 128 registers, where fp64 with parameter gradients
# spilled 224 B (BLOCK 512, 16 warps, sm_90).
_BWD_RC_CONFIGS = [
    triton.Config({"BLOCK": 128}, num_warps=4),
    triton.Config({"BLOCK": 256}, num_warps=8),
]
if INTERPRETED or _FIXED_CONFIG is not None:
    _fwd_launch = _lif_fwd_kernel
    _bwd_launch = _lif_bwd_kernel
    _bwd_rc_launch = _lif_bwd_rc_kernel
else:
    _fwd_launch = triton.autotune(_FWD_CONFIGS, key=["N_BUCKET"])(_lif_fwd_kernel)
    # The backward writes only outputs it fully overwrites, except the partial-sum rows, which a
    # config with fewer programs would leave stale: reset_to_zero clears them around benchmarking.
    _bwd_launch = triton.autotune(_BWD_CONFIGS, key=["N_BUCKET"], reset_to_zero=["pgrad_ptr"])(_lif_bwd_kernel)
    _bwd_rc_launch = triton.autotune(_BWD_RC_CONFIGS, key=["N_BUCKET"],
                                     reset_to_zero=["pgrad_ptr"])(_lif_bwd_rc_kernel)


def _n_bucket(n) -> int:
    if not isinstance(n, int):  # symbolic under torch.compile(dynamic=True): Inductor tunes by itself
        return 0
    return min(max(n.bit_length() - 10, 0), 12)  # ≤1K, 2K, 4K, … neurons


# The recompute backward's fixed config: one neuron per thread as all of _BWD_RC_CONFIGS.
_FIXED_RC_CONFIG = None if _FIXED_CONFIG is None else _BWD_RC_CONFIGS[1]


def _block_kw(fixed=_FIXED_CONFIG) -> dict:
    if INTERPRETED:
        return {"BLOCK": _INTERPRET_BLOCK}
    if fixed is not None:
        return dict(fixed.kwargs, num_warps=fixed.num_warps)
    return {}


def _grid(N: int, fixed=_FIXED_CONFIG):
    if INTERPRETED:
        return (triton.cdiv(N, _INTERPRET_BLOCK),)
    if fixed is not None:
        return (triton.cdiv(N, fixed.kwargs["BLOCK"]),)
    return lambda meta: (triton.cdiv(N, meta["BLOCK"]),)


def _launcher(kernel):
    """``wrap_triton`` lets torch.compile see the kernel inside the op on a GPU. The interpreter's
    kernels run eagerly inside an opaque op, and torch 2.11's ``wrap_triton`` refuses them."""
    return kernel if INTERPRETED else torch.library.wrap_triton(kernel)


@triton.jit
def _sg_zero(x, a):  # ∂g/∂α of a user surrogate without a width
    return tl.zeros_like(x)


def _sg_args(surrogate: int, x: Optional[torch.Tensor] = None) -> dict:
    """The kernels' SG (and SGF) for an op's surrogate id: a built-in's id, or −1 and a user's
    functions (checked against the user's torch ones on x's device the first time, ``_verify_user``)."""
    if surrogate < _sg.CUSTOM_ID_BASE:
        return {"SG": surrogate, "SGF": None}
    try:
        sg = _sg.by_id(surrogate)
    except KeyError:
        raise ValueError(f"lif_triton: no registered surrogate has id {surrogate} (unregistered?)") from None
    if sg.triton is None:
        raise ValueError(f"backend 'triton' cannot run the user-registered surrogate {sg.name!r}: it was registered "
                         "without triton=(g, dg[, dg_dalpha]) @triton.jit functions")
    g, dg, da = sg.triton
    if da is None and not sg.scaling:  # no width: ∂g/∂α = 0
        da = _sg_zero
    sgf = (g, dg, da)
    if x is not None:
        _verify_user(sg, sgf, x)
    return {"SG": -1, "SGF": sgf}


@triton.jit
def _sg_eval_kernel(x_ptr, out_ptr, alpha_ptr, N, SGF: tl.constexpr, BLOCK: tl.constexpr):
    """g, g′ and ∂g/∂α of a user's Triton functions on a grid, as the LIF kernels evaluate them."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    x = tl.load(x_ptr + i, mask=m, other=0.0)
    a = tl.load(alpha_ptr)
    tl.store(out_ptr + i, _sg_prim(x, a, -1, SGF), mask=m)
    tl.store(out_ptr + N + i, _sg_grad(x, a, -1, SGF), mask=m)
    tl.store(out_ptr + 2 * N + i, _sg_dalpha(x, a, -1, SGF), mask=m)


# A user's Triton g/g′/∂g/∂α must agree with the torch ones the registration checked (else the GPU
# trains with another surrogate than the CPU): compared once per surrogate and device type, in
# float32 on the registration's grid, against torch in float64 on the same float32 points. 1e-4 of
# (1 + the largest magnitude): float32 evaluation is good to a few ulp (~1e-6) of that, a wrong factor,
# sign or term is off by far more.
_VERIFIED: set = set()
_VERIFY_RTOL = 1e-4


def _verify_user(sg, sgf, x: torch.Tensor) -> None:
    device = x.device
    key = (sg.id, device.type)
    # not while tracing (torch.compile, fake tensors): the first eager run checks
    if key in _VERIFIED or config._is_compiling() or is_fake(x):
        return
    xs = _sg._CHECK_X.to(torch.float32)
    a = sg.alpha if sg.alpha is not None else 1.0
    out = torch.empty(3 * xs.numel(), dtype=torch.float32, device=device)
    _sg_eval_kernel[(triton.cdiv(xs.numel(), 512),)](
        xs.to(device), out, torch.tensor([a], dtype=torch.float32, device=device), xs.numel(), SGF=sgf, BLOCK=512)
    got = out.view(3, -1).double().cpu()
    x64, a64 = xs.double(), torch.tensor(a, dtype=torch.float64)
    want = [sg.g(x64, a64), sg.dg(x64, a64), sg.dg_dalpha(x64, a64) if sg.dg_dalpha is not None else None]
    for what, gv, wv in zip(("g", "dg", "dg_dalpha"), got, want):
        if wv is None:
            continue
        err = (gv - wv).abs()
        i = int(torch.nan_to_num(err, nan=math.inf).argmax())
        tol = _VERIFY_RTOL * (1.0 + wv.abs().max().item())
        if not err[i] <= tol:
            raise ValueError(f"surrogate {sg.name!r}: its Triton {what} disagrees with its torch {what}: at "
                             f"x = {xs[i].item():.6g}, a = {a:g} Triton gives {gv[i].item():.9g}, torch "
                             f"{wv[i].item():.9g} (tolerance {tol:.2g})")
    _VERIFIED.add(key)


def _mode_kw(mode: int) -> dict:
    """The op's ``mode`` (config.LIFFlags.mode) as the kernels' STRICT and TIMING constexprs."""
    torch._check(0 <= mode < 2 * len(config.KERNEL_RESET_TIMINGS),
                 lambda: f"lif_triton: mode must be (timing << 1) | strict with timing in 0..2, got {mode}")
    return dict(STRICT=bool(mode & 1), TIMING=mode >> 1)


def _save_x(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _param_buffer(params: torch.Tensor, v_reset: float, kappa: float) -> torch.Tensor:
    """float64 only: (k, θ, α, v_r, κ) so v_r and κ keep double precision inside the kernel."""
    if params.dtype != torch.float64:
        return params
    return torch.cat([params, torch.tensor([v_reset, kappa], dtype=torch.float64, device=params.device)])


def _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual, return_v_seq,
         save_h, chunk=0, mode=0):
    config.check_op_args("lif_triton", x, v0, params, surrogate)
    x = x.contiguous()
    v0 = v0.contiguous()
    T, N = x.shape
    s = torch.empty_like(x)
    v_last = torch.empty_like(v0)
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    saved = torch.empty((T, N) if save_h else (0,), dtype=x.dtype, device=x.device)
    # save="recompute": the V checkpoints (config.checkpoint_rows), in the compute dtype
    ck = torch.empty((config.checkpoint_rows(T, chunk), N), dtype=params.dtype, device=x.device) if chunk else saved
    mask = noise_mask.contiguous() if noise_mask is not None else None
    pbuf = _param_buffer(params.contiguous(), v_reset, reset_residual)
    if N > 0:
        wrap = _launcher(_fwd_launch)
        wrap[_grid(N)](
            x, v0, pbuf, mask if mask is not None else x, s, v_last, v_seq, saved, ck,  # [0]-sized unless stored
            T, N, float(v_reset), _n_bucket(N),
            **_sg_args(surrogate, x), HARD_RESET=hard_reset, DECAY_INPUT=decay_input, HAS_MASK=mask is not None,
            STORE_VSEQ=return_v_seq, SAVE_H=save_h, SAVE_X=_save_x(saved.dtype), WIDE=x.dtype == torch.float64,
            EXACT=EXACT_MUL, CHUNK=chunk, **_mode_kw(mode),
            **_block_kw(),
        )
    return s, v_last, v_seq, (ck if chunk else saved)


def lif_fwd_triton(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    return_v_seq: bool, mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training forward: also saves H (H − θ for fp16/bf16) for ``lif_bwd_triton``."""
    return _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual,
                return_v_seq, True, mode=mode)


def lif_fwd_triton_infer(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    return_v_seq: bool, mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inference forward (no autograd): saves nothing, 2b per element instead of 3b."""
    return _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual,
                return_v_seq, False, mode=mode)


def lif_fwd_triton_recompute(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    return_v_seq: bool, mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training forward of save="recompute": writes s (v_last, v_seq) and saves only the membrane every
    ``config.RECOMPUTE_CHUNK`` steps for ``lif_bwd_triton_recompute``."""
    return _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual,
                return_v_seq, False, config.RECOMPUTE_CHUNK, mode)


def _bwd_prep(grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, surrogate, need_param_grad):
    config.check_op_args("lif_triton", x, v0, params, surrogate)
    T, N = x.shape
    grad_s = grad_s.to(x.dtype).contiguous()
    x = x.contiguous()
    v0 = v0.contiguous()
    gvl = grad_v_last.to(x.dtype).contiguous() if grad_v_last is not None else None
    gvs = grad_v_seq.to(x.dtype).contiguous() if grad_v_seq is not None and grad_v_seq.numel() > 0 else None
    mask = noise_mask.contiguous() if noise_mask is not None else None
    nprog = triton.cdiv(N, _INTERPRET_BLOCK if INTERPRETED else _MIN_BLOCK) if need_param_grad else 1
    partial = torch.zeros((max(nprog, 1), 3), dtype=params.dtype, device=x.device)
    return grad_s, gvl, gvs, x, v0, mask, torch.empty_like(x), torch.empty_like(v0), partial


def lif_bwd_triton_recompute(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    need_param_grad: bool, mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of save="recompute": ``saved`` is the forward's V checkpoints."""
    T, N = x.shape
    chunk = config.RECOMPUTE_CHUNK
    torch._check(saved.dim() == 2 and saved.shape[0] == config.checkpoint_rows(T, chunk) and saved.shape[1] == N
                 and saved.dtype == params.dtype,
                 lambda: f"lif_bwd_triton_recompute: `saved` must be the V checkpoints of lif_fwd_triton_recompute, "
                         f"[{config.checkpoint_rows(T, chunk)}, {N}] {params.dtype}, got {tuple(saved.shape)} "
                         f"{saved.dtype}")
    grad_s, gvl, gvs, x, v0, mask, gx, gv0, partial = _bwd_prep(grad_s, grad_v_last, grad_v_seq, x, v0, params,
                                                                 noise_mask, surrogate, need_param_grad)
    pbuf = _param_buffer(params.contiguous(), v_reset, reset_residual)
    ck = saved.contiguous() if saved.numel() > 0 else v0  # never read for T <= chunk
    if N > 0:
        wrap = _launcher(_bwd_rc_launch)
        wrap[_grid(N, _FIXED_RC_CONFIG)](
            grad_s, gvl if gvl is not None else grad_s, gvs if gvs is not None else grad_s, x, v0, pbuf,
            mask if mask is not None else x, ck, gx, gv0, partial,
            T, N, float(v_reset), float(reset_residual), _n_bucket(N),
            **_sg_args(surrogate, x), HARD_RESET=hard_reset, DECAY_INPUT=decay_input, DETACH_RESET=detach_reset,
            HAS_MASK=mask is not None, HAS_GVLAST=gvl is not None, HAS_GVSEQ=gvs is not None,
            NEED_PARAM_GRAD=need_param_grad, WIDE=x.dtype == torch.float64, EXACT=EXACT_MUL, CHUNK=chunk,
            **_mode_kw(mode), **_block_kw(_FIXED_RC_CONFIG),
        )
    grad_params = partial.sum(0) if need_param_grad else torch.zeros_like(params)
    return gx, gv0, grad_params


def lif_bwd_triton(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    need_param_grad: bool, mode: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, N = x.shape
    grad_s, gvl, gvs, x, v0, mask, gx, gv0, partial = _bwd_prep(grad_s, grad_v_last, grad_v_seq, x, v0, params,
                                                                 noise_mask, surrogate, need_param_grad)
    pbuf = _param_buffer(params.contiguous(), v_reset, reset_residual)
    if N > 0:
        wrap = _launcher(_bwd_launch)
        wrap[_grid(N)](
            grad_s, gvl if gvl is not None else grad_s, gvs if gvs is not None else grad_s, x, v0, pbuf,
            mask if mask is not None else x, saved, gx, gv0, partial,
            T, N, float(v_reset), float(reset_residual), _n_bucket(N),
            **_sg_args(surrogate, x), HARD_RESET=hard_reset, DECAY_INPUT=decay_input, DETACH_RESET=detach_reset,
            HAS_MASK=mask is not None, HAS_GVLAST=gvl is not None, HAS_GVSEQ=gvs is not None,
            NEED_PARAM_GRAD=need_param_grad, SAVE_X=_save_x(saved.dtype), WIDE=x.dtype == torch.float64,
            **_mode_kw(mode), **_block_kw(),
        )
    grad_params = partial.sum(0) if need_param_grad else torch.zeros_like(params)
    return gx, gv0, grad_params


# ---------------------------------------------------------------------------------------------
# Ops. On a GPU, ``triton_op`` + ``wrap_triton``: torch.compile sees through the op to the kernels
# (no graph break, Inductor can schedule them). Under the interpreter the kernels cannot be traced,
# so the same functions become an opaque ``custom_op`` with explicit fake (shape) functions.


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, return_v_seq, mode=0):
    # saves H (fp32/fp64) or H − θ (fp16/bf16): [T, N] in x.dtype
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (torch.empty_like(x),)


def _fake_fwd_infer(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                    reset_residual, return_v_seq, mode=0):
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (x.new_empty(0),)  # saves nothing


def _fake_fwd_recompute(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                        reset_residual, return_v_seq, mode=0):
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (config.checkpoints_like(x, params),)


FWD_NAME = "snn_fast::lif_fwd_triton"
FWD_INFER_NAME = "snn_fast::lif_fwd_triton_infer"
BWD_NAME = "snn_fast::lif_bwd_triton"
FWD_RC_NAME = "snn_fast::lif_fwd_triton_recompute"
BWD_RC_NAME = "snn_fast::lif_bwd_triton_recompute"

for _name, _fn, _fake in ((FWD_NAME, lif_fwd_triton, _fake_fwd),
                          (FWD_INFER_NAME, lif_fwd_triton_infer, _fake_fwd_infer),
                          (BWD_NAME, lif_bwd_triton, config.fake_bwd),
                          (FWD_RC_NAME, lif_fwd_triton_recompute, _fake_fwd_recompute),
                          (BWD_RC_NAME, lif_bwd_triton_recompute, config.fake_bwd)):
    if INTERPRETED:
        torch.library.custom_op(_name, mutates_args=())(_fn).register_fake(_fake)
    else:
        torch.library.triton_op(_name, mutates_args=())(_fn)
