"""Tempotron as custom ops with autograd, and the public ``tempotron`` functional.

Design: every fused backend implements one op pair (schemas in ``csrc/ops.cpp``)

    fwd(t_in [B,I], weight [O,I], T, tau, tau_s, v0) -> V [B, O, T]
    bwd(grad_V, t_in, weight, tau, tau_s, v0, need_t_grad, need_w_grad) -> (grad_t_in, grad_weight)

and ``'v_max'`` / ``'spikes'`` are computed from V with the reference's own torch formulas
(``reference.outputs_from_v``). Why V and not a kernel returning only (v_max, argmax): V costs
B·O·T elements (B = 32, O = 10, T = 100: 32 000, 125 KB in fp32), less than the input t_in itself
(B·I = 401 408 for MNIST with m = 16), so a v_max-only kernel would save nothing measurable, while
one op pair serves all three return types, keeps the seed's exact tie-breaking of max/argmax and
the soft-argmax of ``'spikes'``, and gives ``'v'`` its full gradient. The backward of ``v_max``
still costs only O(B·I·O + B·O·T): the gradient of max is one-hot in t, and the reverse filter
turns it into the kernel K(t* − t_i) the SPEC's formula gathers.

The C++ CPU and CUDA kernels are ``torch.ops.snn_fast.tempotron_fwd/_bwd``; Triton registers its
own pair (``snn_fast::tempotron_fwd_triton``). ``register_tempotron_autograd`` wires either.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ... import _ext, backends
from . import config
from .reference import membrane_reference, outputs_from_v


def _fake_fwd(t_in, weight, T, tau, tau_s, v0):
    torch._check(t_in.shape[1] == weight.shape[1])
    return weight.new_empty(t_in.shape[0], weight.shape[0], T)


def _fake_bwd(grad_v, t_in, weight, tau, tau_s, v0, need_t_grad, need_w_grad):
    gt = torch.empty_like(t_in) if need_t_grad else t_in.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w_grad else weight.new_empty(0)
    return gt, gw


def register_tempotron_autograd(fwd_op, bwd_op) -> None:
    def setup_context(ctx, inputs, output):
        t_in, weight, _T, tau, tau_s, v0 = inputs
        ctx.consts = (tau, tau_s, v0)
        ctx.save_for_backward(t_in, weight)

    def backward(ctx, grad_v):
        t_in, weight = ctx.saved_tensors
        if torch.is_grad_enabled() and any(t.requires_grad for t in (grad_v, t_in, weight)):
            raise NotImplementedError("double backward (create_graph=True) through the fused Tempotron kernels "
                                      "is not supported; use backend='reference' for higher-order gradients")
        need_t, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        gt, gw = bwd_op(grad_v.contiguous(), t_in, weight, *ctx.consts, need_t, need_w)
        return (gt if need_t else None), (gw if need_w else None), None, None, None, None

    torch.library.register_autograd(fwd_op, backward, setup_context=setup_context)


if _ext.HAS_C and hasattr(torch.ops.snn_fast, "tempotron_fwd"):
    torch.library.register_fake("snn_fast::tempotron_fwd")(_fake_fwd)
    torch.library.register_fake("snn_fast::tempotron_bwd")(_fake_bwd)
    register_tempotron_autograd("snn_fast::tempotron_fwd", torch.ops.snn_fast.tempotron_bwd)

_FWD_OPS: Dict[str, Callable] = {}
if _ext.HAS_C and hasattr(torch.ops.snn_fast, "tempotron_fwd"):
    _FWD_OPS["cpu"] = torch.ops.snn_fast.tempotron_fwd
    _FWD_OPS["cuda"] = torch.ops.snn_fast.tempotron_fwd


def register_fwd_op(backend: str, op: Callable) -> None:
    _FWD_OPS[backend] = op


def _fwd_op(backend: str) -> Callable:
    if backend == "triton" and "triton" not in _FWD_OPS:
        from . import triton as _  # noqa: F401  registers itself on import
    return _FWD_OPS[backend]


# --- backend choice: backend= argument, then SNN_FAST_BACKEND, then automatic ----------------------
# Kernel availability is fixed once the extension is loaded; read it once, so that choosing a
# backend is plain Python that torch.compile can trace without a graph break.
_HAS_KERNEL = {key: _ext.has_kernel("tempotron_fwd", key) for key in ("CPU", "CUDA")}

def _unavailable(name: str, x: torch.Tensor) -> Optional[str]:
    if name == "reference":
        return None
    if name == "cpu":
        if x.device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, t_in is on {x.device}"
        if not _HAS_KERNEL["CPU"]:
            return _ext.missing_message("the 'cpu' Tempotron backend")
        return None
    if name == "cuda":
        if x.device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, t_in is on {x.device}"
        if not _HAS_KERNEL["CUDA"]:
            return _ext.missing_message("the 'cuda' Tempotron backend (built with a CUDA torch and nvcc)")
        return None
    if name == "triton":
        try:
            from . import triton as _tt
        except ImportError as e:
            return f"the 'triton' backend needs triton (`pip install triton`): {e}"
        return _tt.unavailable_reason(x)
    raise AssertionError(name)


def select_backend(backend: Optional[str], x: torch.Tensor) -> str:
    name = backends.requested(backend)
    if name != "auto":
        why = _unavailable(name, x)
        if why is not None:
            raise RuntimeError(why)
        return name
    order = ("cuda", "triton") if x.device.type == "cuda" else ("cpu",)
    for cand in order:
        if _unavailable(cand, x) is None:
            return cand
    return "reference"


def tempotron_membrane(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0,
                       tau_s: float = 15.0 / 4, v0: Optional[float] = None, v_threshold: float = 1.0,
                       backend: str = "auto") -> torch.Tensor:
    """V [B, O, T] (SPEC §5); ``v0`` defaults to the seed's normalisation for (τ, τ_s, θ)."""
    config.check_constants(T, tau, tau_s, v_threshold)
    config.check_inputs(t_in, weight)
    t_in = config.as_times(t_in, weight)
    if v0 is None:
        v0 = config.v0_of(tau, tau_s, v_threshold)
    name = select_backend(backend, t_in)
    if name == "reference":
        return membrane_reference(t_in, weight, T, tau, tau_s, v0)
    return _fwd_op(name)(t_in, weight, int(T), float(tau), float(tau_s), float(v0))


def tempotron(t_in: torch.Tensor, weight: torch.Tensor, T: int, tau: float = 15.0, tau_s: float = 15.0 / 4,
              v_threshold: float = 1.0, ret_type: str = "v_max", backend: str = "auto") -> torch.Tensor:
    """Tempotron layer (Gütig & Sompolinsky 2006; SpikingJelly's ``neuron.Tempotron``), fused.

    Args:
        t_in: ``[B, I]`` input spike times, real or integer valued (any real/integer dtype; cast to
            ``weight.dtype``); negative = no spike. Gradients flow to it when it requires grad.
        weight: ``[O, I]`` float16/bfloat16/float32 (float64 on CPU and the reference).
        T: number of time steps t = 0 … T − 1. tau, tau_s: PSP time constants (> 0, different).
        v_threshold: θ; the PSP is normalised so that a single input of weight 1 peaks at θ.
        ret_type: ``'v'`` → V ``[B, O, T]``; ``'v_max'`` → ``[B, O]``; ``'spikes'`` → ``[B, O]``
            straight-through spike times (negated where the peak stays below θ). The batch
            dimension is kept for B = 1.
        backend: 'auto', 'reference', 'cpu', 'cuda' or 'triton' (then ``SNN_FAST_BACKEND``).
    """
    config.check_ret_type(ret_type)
    v = tempotron_membrane(t_in, weight, T, tau, tau_s, None, v_threshold, backend)
    return outputs_from_v(v, T, v_threshold, ret_type)
