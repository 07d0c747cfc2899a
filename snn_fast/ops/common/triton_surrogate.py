"""Surrogate functions for Triton kernels (docs/spec.md §Surrogates), shared by every op that fires spikes.

``sg_prim`` (g), ``sg_grad`` (g′) and ``sg_dalpha`` (∂g/∂α) take the surrogate as the constexpr ``SG``,
one of the named ids below (read from ``snn_fast.surrogate``'s registry, whose ids are the kernel ABI
shared with csrc/include/snn_fast/surrogate.h), so each kernel variant compiles one surrogate only.
A user-registered surrogate (``register_surrogate(..., triton=...)``) runs as ``SG = USER`` with
``SGF`` = its ``@triton.jit`` functions (g, g′, ∂g/∂α): a constexpr tuple, inlined into a kernel
variant of its own. ``surrogate_args`` maps an op's surrogate id to these two arguments and checks a
user's Triton functions against its torch ones once per device type.

x = H − θ and a = α share the compute dtype. Runs compiled on a GPU and under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from ... import surrogate as _sg


def _id(name: str) -> tl.constexpr:
    return tl.constexpr(_sg.get(name).id)


SIGMOID = _id("sigmoid")
ATAN = _id("atan")
RECTANGLE = _id("rectangle")
TRIANGLE = _id("triangle")
PIECEWISE_EXP = _id("piecewise_exp")
SOFT_SIGN = _id("soft_sign")
SUPER_SPIKE = _id("super_spike")
ERF = _id("erf")
Q_PSEUDO_SPIKE = _id("q_pseudo_spike")
STRAIGHT_THROUGH = _id("straight_through")
SPIKE_GATE = _id("spike_gate")
USER = tl.constexpr(-1)  # a user-registered surrogate: its functions come as SGF

# Every built-in has a branch below (a new registry entry without one fails here, at import).
_BRANCHES = (SIGMOID, ATAN, RECTANGLE, TRIANGLE, PIECEWISE_EXP, SOFT_SIGN, SUPER_SPIKE, ERF, Q_PSEUDO_SPIKE,
             STRAIGHT_THROUGH, SPIKE_GATE)
assert sorted(int(c.value) for c in _BRANCHES) == list(range(_sg.NUM_KERNEL_SURROGATES)), \
    "snn_fast/ops/common/triton_surrogate.py has no branch for some built-in surrogate"

_PI = tl.constexpr(math.pi)
_HALF_PI = tl.constexpr(math.pi / 2)
_QUARTER_PI = tl.constexpr(math.pi / 4)
_INV_SQRT_PI = tl.constexpr(1.0 / math.sqrt(math.pi))


@triton.jit
def atan(z):
    """arctan (Cephes atan: range reduction + rational 4/5), max error 2.2e-16 in float64 and 1 ulp
    in float32 vs numpy. Own code because the interpreter has no libdevice."""
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
def sg_grad(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """g′(x; a), the surrogate gradient."""
    if SG == USER:
        r = SGF[1](x, a).to(x.dtype)
    elif SG == SIGMOID:
        s = 1.0 / (1.0 + tl.exp(-(a * x)))
        r = a * s * (1.0 - s)
    elif SG == ATAN:
        u = a * x * _HALF_PI
        r = a / (2.0 * (1.0 + u * u))
    elif SG == RECTANGLE:
        r = tl.where(tl.abs(x) < 0.5 / a, a, 0.0 * a)
    elif SG == TRIANGLE:
        d = a - a * a * tl.abs(x)
        r = tl.where(d < 0.0, tl.zeros_like(d), d)  # clamp(d, min=0): −inf → 0, NaN stays NaN
    elif SG == PIECEWISE_EXP:
        r = a / 2.0 * tl.exp(-a * tl.abs(x))
    elif SG == SOFT_SIGN:
        u = 1.0 + tl.abs(a * x)
        r = a / (2.0 * u * u)
    elif SG == SUPER_SPIKE:
        u = 1.0 + a * tl.abs(x)
        r = 1.0 / (u * u)
    elif SG == ERF:
        r = a * tl.exp(-(a * x) * (a * x)) * _INV_SQRT_PI
    elif SG == Q_PSEUDO_SPIKE:
        u = 1.0 + 2.0 * tl.abs(x) / (a - 1.0)
        r = tl.exp(-a * tl.log(u))
    elif SG == STRAIGHT_THROUGH:
        r = tl.zeros_like(x) + 1.0  # not 0·x + 1: that is NaN at x = ±inf, where g′ = 1
    else:  # SPIKE_GATE
        r = tl.where(x >= 0.0, 1.0, 0.0).to(x.dtype)
    return r


@triton.jit
def sg_prim(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """g(x; a), emitted by the noisy spike where the mask is False."""
    if SG == USER:
        r = SGF[0](x, a)
    elif SG == SIGMOID:
        r = 1.0 / (1.0 + tl.exp(-(a * x)))
    elif SG == ATAN:
        r = 0.5 + atan(a * x * _HALF_PI) / _PI
    elif SG == RECTANGLE:
        # propagate_nan: clamp(NaN) is NaN in the reference (torch.clamp) and in C++; Triton's default drops it
        r = tl.minimum(tl.maximum(a * x + 0.5, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif SG == TRIANGLE:
        ax = a * x
        r = tl.where(ax < 0.0, 0.5 * (ax + 1.0) * (ax + 1.0), 1.0 - 0.5 * (1.0 - ax) * (1.0 - ax))
        r = tl.where(ax <= -1.0, 0.0, r)
        r = tl.where(ax >= 1.0, 1.0, r)
    elif SG == PIECEWISE_EXP:
        e = 0.5 * tl.exp(-a * tl.abs(x))
        r = tl.where(x < 0.0, e, 1.0 - e)
    elif SG == SOFT_SIGN:
        ax = a * x
        r = 0.5 * (ax / (1.0 + tl.abs(ax)) + 1.0)
    elif SG == SUPER_SPIKE:
        r = 0.5 + x / (1.0 + a * tl.abs(x))
    elif SG == ERF:
        r = 0.5 * (1.0 + tl.math.erf(a * x))  # = ½·erfc(−αx); abs. error ≤ 1 ulp of 1
    elif SG == Q_PSEUDO_SPIKE:
        u = 1.0 + 2.0 * tl.abs(x) / (a - 1.0)
        h = 0.5 * tl.exp((1.0 - a) * tl.log(u))
        r = tl.where(x >= 0.0, 1.0 - h, h)
    elif SG == STRAIGHT_THROUGH:
        r = x + 0.5
    else:  # SPIKE_GATE
        r = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)  # relu(NaN) = NaN, as the reference
    return r.to(x.dtype)


@triton.jit
def sg_dalpha(x, a, SG: tl.constexpr, SGF: tl.constexpr = None):
    """∂g/∂a. Scaling family: x·g′(x)/a; no width (straight_through, spike_gate): 0."""
    if SG == USER:
        if SGF[2] is None:  # registered with scaling=True
            r = x * sg_grad(x, a, SG, SGF) / a
        else:
            r = SGF[2](x, a).to(x.dtype)
    elif SG == SUPER_SPIKE:
        u = 1.0 + a * tl.abs(x)
        r = -x * tl.abs(x) / (u * u)
    elif SG == Q_PSEUDO_SPIKE:
        ax = tl.abs(x)
        u = 1.0 + 2.0 * ax / (a - 1.0)
        lu = tl.log(u)
        dh = 0.5 * tl.exp((1.0 - a) * lu) * (-lu + 2.0 * ax / ((a - 1.0) * u))
        r = tl.where(x >= 0.0, -dh, dh)
    elif SG == STRAIGHT_THROUGH or SG == SPIKE_GATE:
        r = tl.zeros_like(x)
    else:
        r = x * sg_grad(x, a, SG) / a
    return r


@triton.jit
def _sg_zero(x, a):  # ∂g/∂α of a user surrogate without a width
    return tl.zeros_like(x)


# Builtin ids → their (SG, SGF) arguments, made once: a call looks one up instead of building a dict.
_BUILTIN_ARGS = {i: {"SG": i, "SGF": None} for i in range(_sg.NUM_KERNEL_SURROGATES)}


def surrogate_args(surrogate: int, x: torch.Tensor = None, op: str = "triton") -> dict:
    """The kernels' SG and SGF for an op's surrogate id: a built-in's id, or USER and a user's
    functions (checked against the user's torch ones on x's device the first time, ``verify_user``).
    The returned dict is shared: do not modify it."""
    args = _BUILTIN_ARGS.get(surrogate)
    if args is not None:
        return args
    if surrogate < _sg.CUSTOM_ID_BASE:
        raise ValueError(f"{op}: surrogate id {surrogate} is not a kernel surrogate (0 to "
                         f"{_sg.NUM_KERNEL_SURROGATES - 1}, or a registered id from {_sg.CUSTOM_ID_BASE})")
    try:
        sg = _sg.by_id(surrogate)
    except KeyError:
        raise ValueError(f"{op}: no registered surrogate has id {surrogate} (unregistered?)") from None
    if sg.triton is None:
        raise ValueError(f"backend 'triton' cannot run the user-registered surrogate {sg.name!r}: it was registered "
                         "without triton=(g, dg[, dg_dalpha]) @triton.jit functions")
    g, dg, da = sg.triton
    if da is None and not sg.scaling:  # no width: ∂g/∂α = 0
        da = _sg_zero
    sgf = (g, dg, da)
    if x is not None:
        verify_user(sg, sgf, x)
    return {"SG": int(USER.value), "SGF": sgf}


@triton.jit
def _sg_eval_kernel(x_ptr, out_ptr, alpha_ptr, N, SGF: tl.constexpr, BLOCK: tl.constexpr):
    """g, g′ and ∂g/∂α of a user's Triton functions on a grid, as the kernels evaluate them."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    x = tl.load(x_ptr + i, mask=m, other=0.0)
    a = tl.load(alpha_ptr)
    tl.store(out_ptr + i, sg_prim(x, a, USER, SGF), mask=m)
    tl.store(out_ptr + N + i, sg_grad(x, a, USER, SGF), mask=m)
    tl.store(out_ptr + 2 * N + i, sg_dalpha(x, a, USER, SGF), mask=m)


# A user's Triton g/g′/∂g/∂α must agree with the torch ones the registration checked (else the GPU
# trains with another surrogate than the CPU): compared once per surrogate and device type, in
# float32 on the registration's grid, against torch in float64 on the same float32 points. 1e-4 of
# (1 + the largest magnitude): float32 evaluation is good to a few ulp (~1e-6) of that, a wrong factor,
# sign or term is off by far more.
VERIFIED: set = set()
_VERIFY_RTOL = 1e-4


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def verify_user(sg, sgf, x: torch.Tensor) -> None:
    device = x.device
    key = (sg.id, device.type)
    # not while tracing (torch.compile, fake tensors): the first eager run checks
    if key in VERIFIED or _is_compiling() or is_fake(x):
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
    VERIFIED.add(key)
