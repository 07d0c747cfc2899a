"""Triton kernels for the Tempotron (docs/spec.md §6), as the custom op pair
``snn_fast::tempotron_fwd_triton`` / ``snn_fast::tempotron_bwd_triton`` with the contract of
``function.py``, whose table imports this module on the backend's first use and registers the ops'
autograd for torch.compile. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.

The math (the stable form V = scale·Σ W·K̃, its filters and their reverse) is the C++ kernels',
csrc/include/snn_fast/tempotron.h, operation for operation.

Forward, three launches, none touching a [B, I, T] tensor:
  _tempotron_entry_kernel    per (b, i): k = ⌈t⌉, u = k − t, ea = e^{−u/τ_slow}, es = e^{−u/τ_fast},
                             kt = K̃(u) = ea·u·φ(u·δ)   (the only exps)
  _tempotron_scatter_kernel  per (b, i-tile, o-tile): atomic-add W[o,i]·ea (·kt) into the
                             histograms Ha, Hd [B, O, T] (fp32; atomics make the fp32 sum order,
                             hence the last bits, run-dependent)
  _tempotron_filter_kernel   per tile of (b, o) rows: the two first-order filters along t → V
Backward: _tempotron_reverse_kernel (reverse filters of grad_V → Gs, Gl) and
_tempotron_gather_kernel per (i-tile, o-tile): ∂W summed over b in registers (deterministic),
∂t partial sums per o-tile (summed over o-tiles afterwards).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ..common import consts
from . import args as psp
from . import contract


@triton.jit
def _phi_series(z):
    """Σ_{n=0}^{14} (−z)^n/(n+1)!, Horner's scheme (the Taylor series of −expm1(−z)/z)."""
    s = 1.0 / 1307674368000.0  # 1/15!
    s = 1.0 / 87178291200.0 - z * s  # 1/14!
    s = 1.0 / 6227020800.0 - z * s  # 1/13!
    s = 1.0 / 479001600.0 - z * s  # 1/12!
    s = 1.0 / 39916800.0 - z * s  # 1/11!
    s = 1.0 / 3628800.0 - z * s  # 1/10!
    s = 1.0 / 362880.0 - z * s  # 1/9!
    s = 1.0 / 40320.0 - z * s  # 1/8!
    s = 1.0 / 5040.0 - z * s  # 1/7!
    s = 1.0 / 720.0 - z * s  # 1/6!
    s = 1.0 / 120.0 - z * s  # 1/5!
    s = 1.0 / 24.0 - z * s  # 1/4!
    s = 1.0 / 6.0 - z * s  # 1/3!
    s = 1.0 / 2.0 - z * s  # 1/2!
    s = 1.0 / 1.0 - z * s  # 1/1!
    return s


@triton.jit(do_not_specialize=["n", "T"])
def _tempotron_entry_kernel(t_ptr, k_ptr, ea_ptr, es_ptr, kt_ptr, c_ptr, n, T, BLOCK: tl.constexpr,
                            ACC: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: B·I may exceed 2^31
    m = offs < n
    inv_slow = tl.load(c_ptr + 0)
    inv_fast = tl.load(c_ptr + 1)
    delta = tl.load(c_ptr + 5)
    t = tl.load(t_ptr + offs, mask=m, other=-1.0).to(ACC)
    kf = tl.math.ceil(t)
    valid = (t >= 0) & (kf < T)
    u = tl.where(valid, kf - t, 0.0)
    ea = tl.where(valid, tl.exp(-u * inv_slow), 0.0)
    es = tl.where(valid, tl.exp(-u * inv_fast), 0.0)
    # φ(z) = −expm1(−z)/z (1 at z = 0), which Triton lacks: below z = 1/2 its Taylor series
    # Σ_{n≤14} (−z)^n/(n+1)! (truncation < 0.5^15/16! = 1.5e-18 relative: exact in fp64 and fp32),
    # above it the quotient (1 − e^{−z})/z (1 − e^{−z} ≥ 0.39 there: no more than ~3 ulp lost).
    z = u * delta
    small = z < 0.5
    zs = tl.where(small, 1.0, z)
    ph = tl.where(small, _phi_series(z), (1.0 - tl.exp(-zs)) / zs)
    kt = ea * (u * ph)
    k = tl.where(valid, kf, 0.0).to(tl.int32)
    tl.store(k_ptr + offs, k, mask=m)
    tl.store(ea_ptr + offs, ea, mask=m)
    tl.store(es_ptr + offs, es, mask=m)
    tl.store(kt_ptr + offs, kt, mask=m)


@triton.jit(do_not_specialize=["I", "O", "T"])
def _tempotron_scatter_kernel(w_ptr, k_ptr, ea_ptr, kt_ptr, ha_ptr, hd_ptr, I, O, T, BLOCK_I: tl.constexpr,
                              BLOCK_O: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    o = tl.program_id(2).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    mi = i < I
    mo = o < O
    k = tl.load(k_ptr + b * I + i, mask=mi, other=0).to(tl.int64)
    ea = tl.load(ea_ptr + b * I + i, mask=mi, other=0.0)
    kt = tl.load(kt_ptr + b * I + i, mask=mi, other=0.0)
    # Silent inputs (ea = 0: typically half or more of a Gaussian-encoded image) issue no atomics;
    # kt ≤ ea·u, so ea = 0 (silent, or e^{−u/τ_slow} underflowed) means no contribution at all.
    m2 = mo[:, None] & (mi & (ea != 0))[None, :]
    w = tl.load(w_ptr + o[:, None] * I + i[None, :], mask=m2, other=0.0).to(ACC)
    dst = (b * O + o[:, None]) * T + k[None, :]
    tl.atomic_add(ha_ptr + dst, w * ea[None, :], mask=m2, sem="relaxed")
    tl.atomic_add(hd_ptr + dst, w * kt[None, :], mask=m2, sem="relaxed")


@triton.jit(do_not_specialize=["R", "T"])
def _tempotron_filter_kernel(ha_ptr, hd_ptr, v_ptr, c_ptr, R, T, BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    da = tl.load(c_ptr + 2)
    ds = tl.load(c_ptr + 3)
    scale = tl.load(c_ptr + 4)
    c1 = tl.load(c_ptr + 6)
    a = tl.zeros([BLOCK_R], dtype=ACC)
    d = tl.zeros([BLOCK_R], dtype=ACC)
    for t in range(0, T):
        d = ds * d + c1 * a + tl.load(hd_ptr + r * T + t, mask=m, other=0.0)  # with the previous a
        a = da * a + tl.load(ha_ptr + r * T + t, mask=m, other=0.0)
        tl.store(v_ptr + r * T + t, (scale * d).to(v_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["R", "T"])
def _tempotron_reverse_kernel(gv_ptr, gs_ptr, gl_ptr, c_ptr, R, T, BLOCK_R: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    da = tl.load(c_ptr + 2)
    ds = tl.load(c_ptr + 3)
    c1 = tl.load(c_ptr + 6)
    ga = tl.zeros([BLOCK_R], dtype=ACC)
    gs = tl.zeros([BLOCK_R], dtype=ACC)
    gl = tl.zeros([BLOCK_R], dtype=ACC)
    for tt in range(0, T):
        t = T - 1 - tt
        g = tl.load(gv_ptr + r * T + t, mask=m, other=0.0).to(ACC)
        gl = ds * gl + c1 * ga  # with the previous Ga
        ga = g + da * ga
        gs = g + ds * gs
        tl.store(gs_ptr + r * T + t, gs, mask=m)
        tl.store(gl_ptr + r * T + t, gl, mask=m)


@triton.jit(do_not_specialize=["B", "I", "O", "T"])
def _tempotron_gather_kernel(w_ptr, k_ptr, ea_ptr, es_ptr, kt_ptr, gs_ptr, gl_ptr, gw_ptr, gtp_ptr, c_ptr, B, I, O, T,
                             NEED_T: tl.constexpr, NEED_W: tl.constexpr, BLOCK_I: tl.constexpr,
                             BLOCK_O: tl.constexpr, ACC: tl.constexpr):
    pid_o = tl.program_id(1)
    i = tl.program_id(0).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    o = pid_o.to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    mi = i < I
    mo = o < O
    m2 = mo[:, None] & mi[None, :]
    inv_slow = tl.load(c_ptr + 0)
    scale = tl.load(c_ptr + 4)
    w = tl.load(w_ptr + o[:, None] * I + i[None, :], mask=m2, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=ACC)
    zero64 = tl.program_id(0).to(tl.int64) * 0  # int64 row index in compiled and interpreted mode alike
    for b in range(0, B):
        bb = zero64 + b
        k = tl.load(k_ptr + bb * I + i, mask=mi, other=0).to(tl.int64)
        ea = tl.load(ea_ptr + bb * I + i, mask=mi, other=0.0)
        es = tl.load(es_ptr + bb * I + i, mask=mi, other=0.0)
        kt = tl.load(kt_ptr + bb * I + i, mask=mi, other=0.0)
        src = (bb * O + o[:, None]) * T + k[None, :]
        gs = tl.load(gs_ptr + src, mask=m2, other=0.0)
        gl = tl.load(gl_ptr + src, mask=m2, other=0.0)
        dw = kt[None, :] * gs + ea[None, :] * gl  # Σ_t g_t·K̃(t − t_i)
        if NEED_W:
            acc += dw
        if NEED_T:
            d = tl.sum(w * (dw * inv_slow - es[None, :] * gs), axis=0)
            tl.store(gtp_ptr + (pid_o * B + bb) * I + i, scale * d, mask=mi)
    if NEED_W:
        tl.store(gw_ptr + o[:, None] * I + i[None, :], (scale * acc).to(gw_ptr.dtype.element_ty), mask=m2)


def _acc(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _consts(tau, tau_s, scale, acc_dtype, device):
    """[1/τ_slow, 1/τ_fast, da, ds, scale, δ, c1] (tempotron_consts in tempotron.h)."""
    inv_slow, inv_fast, delta, da, ds, c1 = psp.kernel_consts(tau, tau_s)
    vals = (inv_slow, inv_fast, da, ds, scale, delta, c1)
    return consts.cached(("tempotron", vals, acc_dtype, device), device, lambda: consts.values(vals, acc_dtype, device))


BLOCK_1D = 256
BLOCK_I = 64
BLOCK_R = 64


def _block_o(O):
    return min(16, triton.next_power_of_2(max(O, 1)))


def _entries(t_in, T, c, acc_t, acc_tl):
    n = t_in.numel()
    k = torch.empty(n, dtype=torch.int32, device=t_in.device)
    ea = torch.empty(n, dtype=acc_t, device=t_in.device)
    es = torch.empty(n, dtype=acc_t, device=t_in.device)
    kt = torch.empty(n, dtype=acc_t, device=t_in.device)
    _tempotron_entry_kernel[(triton.cdiv(n, BLOCK_1D),)](t_in, k, ea, es, kt, c, n, T, BLOCK=BLOCK_1D, ACC=acc_tl)
    return k, ea, es, kt


@torch.library.custom_op("snn_fast::tempotron_fwd_triton", mutates_args=())
def tempotron_fwd_triton(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float, tau_s: float,
                         scale: float) -> torch.Tensor:
    contract.check_op_args("tempotron (triton)", t_in, weight, T, tau, tau_s)
    t_in, weight = t_in.contiguous(), weight.contiguous()
    B, I = t_in.shape
    O = weight.shape[0]
    acc_t, acc_tl = _acc(weight.dtype)
    v = torch.empty(B, O, T, dtype=weight.dtype, device=weight.device)
    if v.numel() == 0:
        return v
    c = _consts(tau, tau_s, scale, acc_t, t_in.device)
    ha = torch.zeros(B, O, T, dtype=acc_t, device=t_in.device)
    hd = torch.zeros_like(ha)
    if I > 0:
        k, ea, _es, kt = _entries(t_in, T, c, acc_t, acc_tl)
        bo = _block_o(O)
        _tempotron_scatter_kernel[(B, triton.cdiv(I, BLOCK_I), triton.cdiv(O, bo))](
            weight, k, ea, kt, ha, hd, I, O, T, BLOCK_I=BLOCK_I, BLOCK_O=bo, ACC=acc_tl)
    R = B * O
    _tempotron_filter_kernel[(triton.cdiv(R, BLOCK_R),)](ha, hd, v, c, R, T, BLOCK_R=BLOCK_R, ACC=acc_tl)
    return v


tempotron_fwd_triton.register_fake(contract.fake_fwd)


@torch.library.custom_op("snn_fast::tempotron_bwd_triton", mutates_args=())
def tempotron_bwd_triton(grad_v: torch.Tensor, t_in: torch.Tensor, weight: torch.Tensor, tau: float, tau_s: float,
                         scale: float, need_t_grad: bool, need_w_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B, I = t_in.shape
    O = weight.shape[0]
    T = grad_v.shape[2]
    contract.check_op_args("tempotron (triton)", t_in, weight, T, tau, tau_s)
    t_in, weight = t_in.contiguous(), weight.contiguous()
    gv = grad_v.contiguous()
    acc_t, acc_tl = _acc(weight.dtype)
    gt = torch.empty_like(t_in) if need_t_grad else t_in.new_empty(0)
    gw = torch.empty_like(weight) if need_w_grad else weight.new_empty(0)
    if B * I == 0 or O == 0 or not (need_t_grad or need_w_grad):
        return gt.zero_(), gw.zero_()
    c = _consts(tau, tau_s, scale, acc_t, t_in.device)
    k, ea, es, kt = _entries(t_in, T, c, acc_t, acc_tl)
    R = B * O
    gs = torch.empty(B, O, T, dtype=acc_t, device=t_in.device)
    gl = torch.empty_like(gs)
    _tempotron_reverse_kernel[(triton.cdiv(R, BLOCK_R),)](gv, gs, gl, c, R, T, BLOCK_R=BLOCK_R, ACC=acc_tl)
    bo = _block_o(O)
    n_ot = triton.cdiv(O, bo)
    gtp = torch.empty(n_ot, B, I, dtype=acc_t, device=t_in.device) if need_t_grad else gs.new_empty(1)
    gw_acc = gw if need_w_grad else weight.new_empty(1)
    _tempotron_gather_kernel[(triton.cdiv(I, BLOCK_I), n_ot)](
        weight, k, ea, es, kt, gs, gl, gw_acc, gtp, c, B, I, O, T, NEED_T=need_t_grad, NEED_W=need_w_grad,
        BLOCK_I=BLOCK_I, BLOCK_O=bo, ACC=acc_tl)
    if need_t_grad:
        gt.copy_(gtp.sum(0))
    return gt, gw


tempotron_bwd_triton.register_fake(contract.fake_bwd)
