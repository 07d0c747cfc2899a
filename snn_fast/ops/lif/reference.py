"""Pure-PyTorch LIF: the definition every fused backend answers to (docs/spec.md §2–§4).

A plain loop over T; every gradient comes from autograd. The only hand-written derivative is the
surrogate spike itself (forward Θ, backward g′), whose formulas are checked against finite
differences of the primitive g in ``tests/test_surrogate.py``. Nothing here calls a fused kernel.

Special values: whatever these torch operations give in IEEE arithmetic, in this order and dtype, is
the answer every backend returns (ARCHITECTURE.md "Special values"). So Θ(NaN) = 0 and NaN gives
V = NaN; +inf fires, and a hard reset then gives V = 1·V_r + 0·inf = NaN (not V_r: decided, the NaN
marks the bad input), a soft one +inf; −inf gives S = 0, V = −inf; an infinite V turns NaN at the next
charge, so the neuron stays silent at V = NaN from there. Finite inputs near the dtype's max give
NaN/±inf only where these operations overflow; ±0 and subnormals are plain numbers. Gradients:
autograd's, NaN/±inf included, for finite output gradients.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import surrogate as _sg
from . import args as lif_args


class _SurrogateSpike(torch.autograd.Function):
    """out = Θ(x) where mask (Θ(0) = 1, or 0 when strict), g(x) elsewhere;  ∂out/∂x = g′(x),
    ∂out/∂α = ∂g/∂α."""

    @staticmethod
    def forward(ctx, x, alpha, mask, sg, strict=False):
        ctx.sg = sg
        ctx.save_for_backward(x, alpha)
        spike = heaviside(x, strict)
        if mask is None:
            return spike
        return torch.where(mask, spike, sg.g(x, alpha))

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensors
        sg = ctx.sg
        gx = grad * sg.dg(x, alpha) if ctx.needs_input_grad[0] else None
        ga = None
        if ctx.needs_input_grad[1]:
            if sg.dg_dalpha is None:
                raise ValueError(f"surrogate {sg.name!r} has no dg_dalpha: alpha cannot be learned")
            ga = (grad * sg.dg_dalpha(x, alpha)).sum().reshape(alpha.shape)
        return gx, ga, None, None, None


def heaviside(x: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """Θ(x) as 0/1 in x's dtype, without a gradient: Θ(0) = 1, or Θ(0) = 0 when ``strict``."""
    return ((x > 0) if strict else (x >= 0)).to(x.dtype)


def spike(x: torch.Tensor, alpha, surrogate="sigmoid", mask: Optional[torch.Tensor] = None, strict: bool = False):
    sg = _sg.get(surrogate)
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((), float(alpha), dtype=x.dtype, device=x.device)  # no host copy: capturable
    return _SurrogateSpike.apply(x, alpha, mask, sg, strict)


def lif_multistep_reference(
    x: torch.Tensor,
    v0=None,
    *,
    tau=None,
    decay=None,
    decay_input: bool = True,
    v_threshold=1.0,
    v_reset: Optional[float] = 0.0,
    detach_reset: bool = False,
    surrogate="sigmoid",
    alpha=None,
    reset_residual: float = 0.0,
    noise_mask: Optional[torch.Tensor] = None,
    return_v_seq: bool = False,
    fire_at_threshold: bool = True,
    reset_timing: str = "after_fire",
):
    """Same arguments and results as :func:`snn_fast.lif_multistep`, computed in ``x.dtype``."""
    lif_args.check_x(x)
    k, theta, alpha, flags, sg = lif_args.resolve(
        tau, decay, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, reset_residual,
        fire_at_threshold, reset_timing
    )
    noise_mask = lif_args.check_noise_mask(x, noise_mask)
    return lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)


def lif_reference_k(x, v0, k, theta, alpha, flags: lif_args.LIFFlags, sg, noise_mask=None, return_v_seq=False):
    """The loop itself, on checked arguments; ``k`` = 1/τ (0 for IF)."""
    v = lif_args.initial_state(x, v0, flags)
    vr = flags.v_reset  # 0 under soft reset, so the charge leaks towards 0 there
    kappa = flags.reset_residual
    strict = not flags.fire_at_threshold
    timing = flags.reset_timing
    pending = timing in ("delayed", "after_fire_pending")
    spikes, vs = [], []
    for t in range(x.shape[0]):
        if pending:  # the reset still owed by the carried membrane: Θ(V − θ), never differentiated
            r = heaviside((v - theta).detach(), strict)
            if flags.hard_reset:  # before the charge
                v = r * vr + (1 - r) * v
        if flags.decay_input:
            h = v + (x[t] - (v - vr)) * k
        else:
            h = v - (v - vr) * k + x[t]
        if pending and not flags.hard_reset:  # after the decay
            h = h - r * theta
        s = spike(h - theta, alpha, sg, None if noise_mask is None else noise_mask[t], strict)
        if timing in ("delayed", "none"):
            v = h
        else:
            s_reset = s.detach() if flags.detach_reset else s
            if pending:  # the pending reset already happened: reset by S − R, not S
                s_reset = s_reset - r
            if flags.hard_reset:
                v = s_reset * vr + (1 - s_reset) * h
            else:
                v = h - s_reset * theta
        if kappa != 0.0:
            v = v + kappa * (s - s.detach())  # forward-neutral: lets κ·g′ cross the reset
        spikes.append(s)
        vs.append(v)
    out = (torch.stack(spikes), v)
    return out + (torch.stack(vs),) if return_v_seq else out
