"""Tempotron: its table of backends, its one autograd Function, and the public ``tempotron`` functional.

Design: every fused backend implements one op pair (schemas in ``csrc/ops.cpp``; Triton defines its
own pair with the same signature in ``triton.py``)

    fwd(t_in [B,I], weight [O,I], T, tau, tau_s, scale) -> V [B, O, T]
    bwd(grad_V, t_in, weight, tau, tau_s, scale, need_t_grad, need_w_grad) -> (grad_t_in, grad_weight)

with V = scale·Σ_i W[o,i]·K̃(t − t_i), K̃ = K/(1/τ_s − 1/τ) the PSP shape that stays accurate as
τ_s → τ (``config``; csrc/include/snn_fast/tempotron.h), t_in in ``config.times_dtype(weight.dtype)``
(float32, or float64 with a float64 weight: half precision would round spike times).

and ``'v_max'`` / ``'spikes'`` are computed from V with the reference's own torch formulas
(``reference.outputs_from_v``). Why V and not a kernel returning only (v_max, argmax): V costs
B·O·T elements (B = 32, O = 10, T = 100: 32 000, 125 KB in fp32), less than the input t_in itself
(B·I = 401 408 for MNIST with m = 16), so a v_max-only kernel would save nothing measurable, while
one op pair serves all three return types, keeps the seed's exact tie-breaking of max/argmax and
the soft-argmax of ``'spikes'``, and gives ``'v'`` its full gradient. The backward of ``v_max``
still costs only O(B·I·O + B·O·T): the gradient of max is one-hot in t, and the reverse filter
turns it into the kernel K(t* − t_i) the SPEC's formula gathers.

The wiring is the LIF op's (``ops/lif/function.py``): ``BACKENDS`` lists the backends and is chosen
from by ``snn_fast.backends``; one backward (``_backward``) serves every backend, in eager mode
through ``_TempotronFunction`` (raw ops below the autograd key) and under torch.compile through the
same code registered on each fwd op. The forward saves only its inputs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ... import _ext, backends
from . import config
from .reference import membrane_reference, outputs_from_v


def _save(ctx, bwd, need_t, need_w, t_in, weight, consts) -> None:
    ctx.bwd = bwd
    ctx.need = (bool(need_t), bool(need_w))
    ctx.consts = consts  # (tau, tau_s, scale)
    ctx.save_for_backward(t_in, weight)


def _backward(ctx, grad_v):
    """The one Tempotron backward: (grad_t_in or None, grad_weight or None)."""
    t_in, weight = ctx.saved_tensors
    backends.refuse_double_backward("Tempotron", grad_v, t_in, weight)
    need_t, need_w = ctx.need
    gt, gw = ctx.bwd(grad_v.contiguous(), t_in, weight, *ctx.consts, need_t, need_w)
    return (gt if need_t else None), (gw if need_w else None)


class _TempotronFunction(torch.autograd.Function):
    """Eager autograd for every fused backend, given its raw (fwd, bwd) ops, called below the
    autograd key (no torch.library per-call wrapper; see ``ops/lif/function.py``)."""

    @staticmethod
    def forward(ctx, fwd, bwd, t_in, weight, T, tau, tau_s, v0):
        with torch._C._AutoDispatchBelowAutograd():
            v = fwd(t_in, weight, T, tau, tau_s, v0)
        _save(ctx, bwd, ctx.needs_input_grad[2], ctx.needs_input_grad[3], t_in, weight, (tau, tau_s, v0))
        return v

    @staticmethod
    def backward(ctx, grad_v):
        with torch._C._AutoDispatchBelowAutograd():
            gt, gw = _backward(ctx, grad_v)
        return None, None, gt, gw, None, None, None, None


def _register_compiled(b: backends.Loaded) -> None:
    """torch.compile's view of a backend's ops: fakes for the ops defined in C++ (Triton's carry
    their own) and ``_backward`` as the autograd of the forward."""
    if b.entry.module is None:  # defined in C++ (ops.cpp)
        torch.library.register_fake(b.entry.fwd)(config.fake_fwd)
        torch.library.register_fake(b.entry.bwd)(config.fake_bwd)
    bwd = backends.op(b.entry.bwd)

    def setup_context(ctx, inputs, output):
        t_in, weight, _T, tau, tau_s, v0 = inputs
        _save(ctx, bwd, ctx.needs_input_grad[0], ctx.needs_input_grad[1], t_in, weight, (tau, tau_s, v0))

    def backward(ctx, grad_v):
        return _backward(ctx, grad_v) + (None,) * 4  # T, tau, tau_s, v0

    torch.library.register_autograd(b.entry.fwd, backward, setup_context=setup_context)


# The Tempotron backends ('reference' is plain torch, reference.py). No measured table: GPU order
# is backends.GPU_ORDER.
BACKENDS = backends.OpBackends(
    "t_in",
    {
        "cpu": backends.Backend(fwd="snn_fast::tempotron_fwd", bwd="snn_fast::tempotron_bwd",
                                probe=backends.cpp_probe("tempotron_fwd", "CPU")),
        "cuda": backends.Backend(fwd="snn_fast::tempotron_fwd", bwd="snn_fast::tempotron_bwd",
                                 probe=backends.cpp_probe("tempotron_fwd", "CUDA")),
        "triton": backends.Backend(fwd="snn_fast::tempotron_fwd_triton", bwd="snn_fast::tempotron_bwd_triton",
                                   module="snn_fast.ops.tempotron.triton", probe=backends.triton_probe),
    },
    register=_register_compiled,
)

# The C++ ops exist once snn_fast._C is loaded: complete their Python side now (see ops/lif/function.py).
if _ext.HAS_C and hasattr(torch.ops.snn_fast, "tempotron_fwd"):
    BACKENDS.load("cpu")
    BACKENDS.load("cuda")


def select_backend(backend: Optional[str], x: torch.Tensor) -> str:
    """The backend= argument, then SNN_FAST_BACKEND, then automatic (``snn_fast.backends``)."""
    return BACKENDS.select(backend, x)


def _membrane(name: str, t_in, weight, T, tau, tau_s, scale):
    if torch.compiler.is_compiling():  # the dispatcher, traced with the registered fake and autograd
        return BACKENDS.compiled_fwd(name, True)(t_in, weight, T, tau, tau_s, scale)
    b = BACKENDS.load(name)
    if backends.needs_grad(t_in, weight):
        return _TempotronFunction.apply(b.fwd, b.bwd, t_in, weight, T, tau, tau_s, scale)
    with torch._C._AutoDispatchBelowAutograd():
        return b.fwd(t_in, weight, T, tau, tau_s, scale)


def tempotron_membrane(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0,
                       tau_s: float = 15.0 / 4, v0: Optional[float] = None, v_threshold: float = 1.0,
                       backend: str = "auto") -> torch.Tensor:
    """V [B, O, T] (docs/spec.md §6); ``v0`` defaults to the seed's normalisation for (τ, τ_s, θ),
    evaluated in the stable form ``config.scale_of`` (defined at τ = τ_s too, where v0 itself is infinite).
    A given ``v0`` means V = v0·Σ W·K (so 0 at τ = τ_s, where K ≡ 0)."""
    config.check_constants(T, tau, tau_s, v_threshold)
    config.check_inputs(t_in, weight)
    if v0 is not None and (isinstance(v0, bool) or not isinstance(v0, (int, float)) or not math.isfinite(v0)):
        raise ValueError(f"v0 must be a finite number or None, got {v0!r}")
    t_in = config.as_times(t_in, weight)
    if v0 is None:
        scale = config.scale_of(tau, tau_s, v_threshold)
    else:
        scale = config.scale_from_v0(float(v0), tau, tau_s)
    name = select_backend(backend, t_in)
    if name == "reference":
        return membrane_reference(t_in, weight, T, tau, tau_s, scale=scale)
    return _membrane(name, t_in, weight, int(T), float(tau), float(tau_s), float(scale))


def tempotron(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0, tau_s: float = 15.0 / 4,
              v_threshold: float = 1.0, ret_type: str = "v_max", backend: str = "auto") -> torch.Tensor:
    """Tempotron layer (Gütig & Sompolinsky 2006; SpikingJelly's ``neuron.Tempotron``), fused.

    Args:
        t_in: ``[B, I]`` input spike times, real or integer valued (any real/integer dtype; cast to
            float32, float64 with a float64 weight); negative = no spike. Gradients flow to it when
            it requires grad.
        weight: ``[O, I]`` float16/bfloat16/float32 (float64 on CPU and the reference).
        T: number of time steps t = 0 … T − 1. tau, tau_s: PSP time constants (> 0; equal ones give
            the alpha kernel u·e^{−u/τ}, the limit of the normalised PSP).
        v_threshold: θ; the PSP is normalised so that a single input of weight 1 peaks at θ.
        ret_type: ``'v'`` → V ``[B, O, T]``; ``'v_max'`` → ``[B, O]``; ``'spikes'`` → ``[B, O]``
            straight-through spike times (negated where the peak stays below θ). The batch
            dimension is kept for B = 1.
        backend: 'auto', 'reference', 'cpu', 'cuda' or 'triton' (then ``SNN_FAST_BACKEND``).
    """
    config.check_ret_type(ret_type)
    v = tempotron_membrane(t_in, weight, T, tau, tau_s, None, v_threshold, backend)
    return outputs_from_v(v, T, v_threshold, ret_type)
