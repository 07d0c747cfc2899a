"""LIF on the CPU with a user-registered surrogate: the ops behind backend 'cpu' for such a surrogate.

The C++ kernels switch on the built-in surrogate ids and cannot call a user's Python function per
element. What they can still do, and what this file uses:

  - forward: the LIF forward does not involve the surrogate at all unless a noise mask is given (the
    spike is Θ(H − θ) whatever g′ is), so the fused C++ forward runs unchanged (any built-in id) and
    also returns V after every step, saved for the backward. With a noise mask the emitted value
    g(H − θ) needs the user's g: the forward is then the reference loop, without autograd.
  - backward: on blocks of neurons small enough to stay in cache (``_BLOCK_ELEMS``), H is rebuilt
    from V_{t−1} and x in the reference's operation order (the same values as the forward's),
    g′(H − θ) comes from the user's torch ``dg`` in one vectorised call per block, and the walk back
    through time is one ``addcmul`` per step:
        ε_t = a_t · (ε_{t+1}·(1 − k) + ∂L/∂Vseq_t) + ∂L/∂S_t · g′_t,
    ε_t = ∂L/∂H_t, a_t = ∂V_t/∂H_t through the reset and the surrogate, the same recurrence as ``lif_step_backward`` in csrc/include/snn_fast/lif_step.h
    (and the Triton backward), with the per-step terms computed for the whole block first.

Measured (benchmarks/test_bench_surrogate.py, W4 [16, 32, 8192] float32, fwd+bwd, 2 threads): see
the README section "Your own surrogate" for the ratios against the reference loop and SpikingJelly
with its own custom surrogate in the same run.

float16/bfloat16: the C++ forward keeps V in float32 and rounds the saved V to the storage dtype, so
H rebuilt here may differ from the forward's by a rounding of V; the spikes come from the forward's
output (exact) and only g′'s argument moves by that rounding.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import _ext
from ... import surrogate as _sg
from . import config
from .reference import lif_reference_k

# Elements of [T, block] per backward block: each block keeps ~10 such arrays live (V_{t−1}, H, g′,
# a, c, ε, …); 32768 float32 elements are 128 KiB each, ~1.3 MiB in all, within a core's L2 on the
# machines measured, while a block is still long enough (≥ 2048 neurons at T = 16) that the per-op
# overhead (~5 µs, ~40 ops per block) stays below the arithmetic.
_BLOCK_ELEMS = 32768


def _surrogate(sid: int) -> _sg.Surrogate:
    try:
        return _sg.by_id(sid)
    except KeyError:
        raise ValueError(f"lif_custom_cpu: no registered surrogate has id {sid} (unregistered?)") from None


def _check(x, v0, params, surrogate):
    torch._check(x.dim() == 2, lambda: f"lif_custom_cpu: x must be [T, N], got {x.dim()} dims")
    torch._check(x.device.type == "cpu", lambda: f"lif_custom_cpu: x must be on the CPU, got {x.device}")
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    torch._check(params.dtype == want and params.numel() == 3,
                 lambda: f"lif_custom_cpu: params must be [3] {want}, got {tuple(params.shape)} {params.dtype}")
    torch._check(v0.dtype == x.dtype, lambda: f"lif_custom_cpu: v0 dtype {v0.dtype} != x dtype {x.dtype}")
    torch._check(surrogate >= _sg.CUSTOM_ID_BASE, lambda: f"lif_custom_cpu: {surrogate} is not a user surrogate id")


def _forward(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
             reset_residual, want_v_seq) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, v_last, v_seq or [0])."""
    _check(x, v0, params, surrogate)
    if noise_mask is None and _ext.HAS_C:
        s, v_last, v_seq, _ = torch.ops.snn_fast.lif_fwd.default(
            x, v0, params, None, 0, hard_reset, v_reset, decay_input, detach_reset, reset_residual, want_v_seq)
        return s, v_last, v_seq
    sg = _surrogate(surrogate)
    k, theta, alpha = params.tolist()
    flags = config.LIFFlags(surrogate, hard_reset, v_reset if hard_reset else 0.0, decay_input, detach_reset,
                            reset_residual)
    with torch.no_grad():
        s, v_last, v_seq = lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, True)
    return s, v_last, (v_seq if want_v_seq else x.new_empty(0))


def lif_fwd_custom_cpu(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    return_v_seq: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training forward: saves V after every step ([T, N], x.dtype) for ``lif_bwd_custom_cpu``."""
    s, v_last, v_seq = _forward(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input,
                                detach_reset, reset_residual, True)
    # An op's outputs may not alias each other: v_seq is returned as a copy when asked for.
    return s, v_last, (v_seq.clone() if return_v_seq else x.new_empty(0)), v_seq


def lif_fwd_custom_cpu_infer(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    return_v_seq: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inference forward: saves nothing (the plain C++ forward without a noise mask)."""
    s, v_last, v_seq = _forward(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input,
                                detach_reset, reset_residual, return_v_seq)
    return s, v_last, v_seq, x.new_empty(0)


def lif_bwd_custom_cpu(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    surrogate: int, hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    need_param_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, v0, params, surrogate)
    sg = _surrogate(surrogate)
    T, N = x.shape
    cd = params.dtype  # compute dtype: float64 for float64 data, else float32 (as the kernels)
    k, theta, alpha = params.unbind()
    vr = float(v_reset) if hard_reset else 0.0
    kappa = float(reset_residual)
    keep = 1.0 - k
    gvs = grad_v_seq if grad_v_seq is not None and grad_v_seq.numel() > 0 else None
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(v0)
    acc = torch.zeros(3, dtype=cd)
    dalpha = sg.dg_dalpha if need_param_grad else None
    bsize = max(16, _BLOCK_ELEMS // max(T, 1))
    for j in range(0, N, bsize):
        sl = slice(j, min(j + bsize, N))
        xb = x[:, sl].to(cd)
        vb = saved[:, sl].to(cd)
        sb = s[:, sl].to(cd)
        v0b = v0[sl].to(cd)
        vp = torch.cat([v0b[None], vb[:-1]])  # V_{t−1}
        # H in the reference's operation order (reference.py), so H − θ is the forward's
        if decay_input:
            h = vp + (xb - (vp - vr)) * k
        else:
            h = vp - (vp - vr) * k + xb
        xs = h - theta
        gp = sg.dg(xs, alpha)
        # ∂L/∂S_t's reset term r_t (+ κ): ∂V_t/∂S_t = V_r − H_t (hard), −θ (soft), 0 (detached)
        if detach_reset:
            rc = torch.full_like(h, kappa)
        elif hard_reset:
            rc = (vr + kappa) - h
        else:
            rc = kappa - theta + torch.zeros_like(h)
        # ε_t = a_t·dV_t + ∂L/∂S_t·g′_t with dV_t = ∂L/∂V_t (from later steps and v_seq), a_t = ∂V_t/∂H_t:
        # (1 − S_t) + r_t·g′_t (hard), 1 + r_t·g′_t (soft)
        a = torch.addcmul(1.0 - sb if hard_reset else torch.ones_like(sb), rc, gp)
        gsb = grad_s[:, sl].to(cd)
        c = gsb * gp
        if gvs is not None:
            c.addcmul_(a, gvs[:, sl].to(cd))
        e = torch.empty_like(c)
        es, cs = e.unbind(0), c.unbind(0)
        if grad_v_last is not None:
            torch.addcmul(cs[T - 1], a[T - 1], grad_v_last[sl].to(cd), out=es[T - 1])
        else:
            es[T - 1].copy_(cs[T - 1])
        if T > 1:
            A = (a * keep).unbind(0)
            for t in range(T - 2, -1, -1):
                torch.addcmul(cs[t], A[t], es[t + 1], out=es[t])
        gx[:, sl] = e * k if decay_input else e
        gv0[sl] = e[0] * keep
        if need_param_grad:
            dv = torch.empty_like(e)  # ∂L/∂V_t entering step t, as in the kernels
            dv[:-1] = e[1:] * keep
            if grad_v_last is not None:
                dv[-1] = grad_v_last[sl].to(cd)
            else:
                dv[-1] = 0.0
            if gvs is not None:
                dv += gvs[:, sl].to(cd)
            ds = torch.addcmul(gsb, dv, rc)  # ∂L/∂S_t
            g_theta = -(ds * gp).sum()
            if not hard_reset:
                g_theta = g_theta - (dv * sb).sum()
            g_alpha = (ds * dalpha(xs, alpha)).sum() if dalpha is not None else acc.new_zeros(())
            if decay_input:
                g_k = (e * (xb - (vp - vr))).sum()
            else:
                g_k = -(e * (vp - vr)).sum()
            acc += torch.stack([g_k, g_theta, g_alpha.to(cd)])
    return gx, gv0, (acc if need_param_grad else torch.zeros_like(params))


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, return_v_seq):
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (torch.empty_like(x),)  # saves V: [T, N]


def _fake_fwd_infer(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                    reset_residual, return_v_seq):
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (x.new_empty(0),)


FWD_NAME = "snn_fast::lif_fwd_custom_cpu"
FWD_INFER_NAME = "snn_fast::lif_fwd_custom_cpu_infer"
BWD_NAME = "snn_fast::lif_bwd_custom_cpu"

for _name, _fn, _fake in ((FWD_NAME, lif_fwd_custom_cpu, _fake_fwd),
                          (FWD_INFER_NAME, lif_fwd_custom_cpu_infer, _fake_fwd_infer),
                          (BWD_NAME, lif_bwd_custom_cpu, config.fake_bwd)):
    torch.library.custom_op(_name, mutates_args=())(_fn).register_fake(_fake)
