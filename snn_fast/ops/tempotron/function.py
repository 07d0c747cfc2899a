"""Tempotron: its table of backends, its one autograd, and the public ``tempotron`` functional.

Design: every fused backend implements one op pair (``contract.py``), computing V = scale·Σ_i
W[o,i]·K̃(t − t_i), K̃ = K/(1/τ_s − 1/τ) the PSP shape that stays accurate as τ_s → τ (``args``;
csrc/include/snn_fast/tempotron.h), t_in in ``args.times_dtype(weight.dtype)`` (float32, or float64
with a float64 weight: half precision would round spike times).

and ``'v_max'`` / ``'spikes'`` are computed from V with the reference's own torch formulas
(``reference.outputs_from_v``). Why V and not a kernel returning only (v_max, argmax): V costs
B·O·T elements (B = 32, O = 10, T = 100: 32 000, 125 KB in fp32), less than the input t_in itself
(B·I = 401 408 for MNIST with m = 16), so a v_max-only kernel would save nothing measurable, while
one op pair serves all three return types, keeps the seed's exact tie-breaking of max/argmax and
the soft-argmax of ``'spikes'``, and gives ``'v'`` its full gradient. The backward of ``v_max``
still costs only O(B·I·O + B·O·T): the gradient of max is one-hot in t, and the reverse filter
turns it into the kernel K(t* − t_i) the SPEC's formula gathers.

The wiring is the LIF op's (``ops/lif/function.py``): ``BACKENDS`` lists the backends and is chosen
from by ``snn_fast.backends``; one autograd (``_save``/``_backward``, a ``backends.FusedAutograd``)
serves every backend, in eager mode around the raw ops below the autograd key and under
torch.compile registered on each fwd op. The forward saves only its inputs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ... import _ext, backends
from . import args, contract
from .reference import membrane_reference, outputs_from_v


def _save(ctx, a, v, needs) -> None:
    ctx.need = (bool(needs[0]), bool(needs[1]))
    ctx.consts = (a.tau, a.tau_s, a.scale)
    ctx.save_for_backward(a.t_in, a.weight)


def _backward(ctx, grad_v):
    """The one Tempotron backward: (grad_t_in or None, grad_weight or None)."""
    t_in, weight = ctx.saved_tensors
    backends.refuse_double_backward("Tempotron", grad_v, t_in, weight)
    need_t, need_w = ctx.need
    gt, gw = ctx.bwd(grad_v.contiguous(), t_in, weight, *ctx.consts, need_t, need_w)
    return (gt if need_t else None), (gw if need_w else None)


AUTOGRAD = backends.FusedAutograd("Tempotron", ("t_in", "weight"), _save, _backward)


def _register_fakes(e: backends.Backend) -> None:
    torch.library.register_fake(e.fwd)(contract.fake_fwd)
    torch.library.register_fake(e.bwd)(contract.fake_bwd)


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
    autograd=AUTOGRAD,
    register_fakes=_register_fakes,
)

# The C++ ops exist once snn_fast._C is loaded: complete their Python side now (see ops/lif/function.py).
if _ext.HAS_C and hasattr(torch.ops.snn_fast, "tempotron_fwd"):
    BACKENDS.load("cpu")


def select_backend(backend: Optional[str], x: torch.Tensor) -> str:
    """The backend= argument, then SNN_FAST_BACKEND, then automatic (``snn_fast.backends``)."""
    return BACKENDS.select(backend, x)


def _membrane(name: str, t_in, weight, T, tau, tau_s, scale):
    if torch.compiler.is_compiling():  # the dispatcher, traced with the registered fake and autograd
        return BACKENDS.compiled_fwd(name)(t_in, weight, T, tau, tau_s, scale)
    b = BACKENDS.load(name)
    if backends.needs_grad(t_in, weight):
        return AUTOGRAD.apply(b, t_in, weight, T, tau, tau_s, scale)
    with torch._C._AutoDispatchBelowAutograd():
        return b.fwd(t_in, weight, T, tau, tau_s, scale)


def tempotron_membrane(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0,
                       tau_s: float = 15.0 / 4, v0: Optional[float] = None, v_threshold: float = 1.0,
                       backend: str = "auto") -> torch.Tensor:
    """V [B, O, T] (docs/spec.md §6); ``v0`` defaults to the seed's normalisation for (τ, τ_s, θ),
    evaluated in the stable form ``args.scale_of`` (defined at τ = τ_s too, where v0 itself is infinite).
    A given ``v0`` means V = v0·Σ W·K (so 0 at τ = τ_s, where K ≡ 0)."""
    args.check_constants(T, tau, tau_s, v_threshold)
    args.check_inputs(t_in, weight)
    if v0 is not None and (isinstance(v0, bool) or not isinstance(v0, (int, float)) or not math.isfinite(v0)):
        raise ValueError(f"v0 must be a finite number or None, got {v0!r}")
    t_in = args.as_times(t_in, weight)
    if v0 is None:
        scale = args.scale_of(tau, tau_s, v_threshold)
    else:
        scale = args.scale_from_v0(float(v0), tau, tau_s)
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
    args.check_ret_type(ret_type)
    v = tempotron_membrane(t_in, weight, T, tau, tau_s, None, v_threshold, backend)
    return outputs_from_v(v, T, v_threshold, ret_type)
