"""LIF as custom ops with autograd, and the public ``lif_multistep``.

Every fused backend exposes the same pair of ops (schemas in ``csrc/ops.cpp``):

    fwd(x [T,N], v0 [N], params [3]=(k, θ, α), noise_mask?, surrogate, hard_reset, v_reset,
        decay_input, detach_reset, reset_residual, return_v_seq) -> (s, v_last, v_seq, saved)
    bwd(grad_s, grad_v_last?, grad_v_seq?, x, v0, params, noise_mask?, saved, s, <same flags>,
        need_param_grad) -> (grad_x, grad_v0, grad_params [3])

``saved`` is whatever that backend keeps for its backward (the C++ CPU kernel keeps nothing). The
CPU and CUDA kernels are ``torch.ops.snn_fast.lif_fwd/lif_bwd``; Triton registers its own pair.
``register_lif_autograd`` wires any such pair into autograd, so all backends share one backward
contract, and the learnable parameters get their gradients through ``params``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ... import _ext, backends
from ... import surrogate as _sg
from . import config
from .reference import lif_reference_k


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, return_v_seq):
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    # `saved`: the CUDA kernel keeps H ([T, N], x.dtype); the CPU kernel recomputes and keeps nothing.
    saved = torch.empty_like(x) if x.device.type == "cuda" else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(v0), v_seq, saved


def _fake_bwd(grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, surrogate, hard_reset,
              v_reset, decay_input, detach_reset, reset_residual, need_param_grad):
    return torch.empty_like(x), torch.empty_like(v0), torch.empty_like(params)


def _refuse_double_backward(*tensors) -> None:
    """The backward kernels have no backward of their own: under create_graph=True their result would
    silently carry no graph (a second grad of 0). Say so instead."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise NotImplementedError(
            "double backward (create_graph=True) through the fused LIF kernels is not supported; "
            "use backend='reference' for higher-order gradients")


def _shared_backward(ctx, bwd_op, grad_s, grad_v_last, grad_v_seq):
    """The one LIF backward: (grad_x, grad_v0, grad_params or None) from the saved tensors."""
    x, v0, params, noise_mask, saved, s = ctx.saved_tensors
    _refuse_double_backward(grad_s, grad_v_last, grad_v_seq, x, v0, params)
    if grad_s is None:
        grad_s = torch.zeros_like(x)
    if grad_v_seq is not None and grad_v_seq.numel() == 0:
        grad_v_seq = None
    gx, gv0, gp = bwd_op(grad_s.contiguous(), grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s,
                         *ctx.flags, ctx.need_param_grad)
    return gx, gv0, (gp if ctx.need_param_grad else None)


class _EagerLIF(torch.autograd.Function):
    """Eager autograd for the C++ ops (CPU/CUDA): the same ops and the same backward as the
    registration below, without torch.library's per-call Python wrapper around the op (argument
    normalisation on every call: ~0.3 ms of a forward+backward at any size, measured). The ops are
    called below the autograd key; under torch.compile the registered path is used instead."""

    @staticmethod
    def forward(ctx, x, v0, params, noise_mask, flags, return_v_seq):
        with torch._C._AutoDispatchBelowAutograd():
            s, v_last, v_seq, saved = torch.ops.snn_fast.lif_fwd.default(x, v0, params, noise_mask, *flags,
                                                                         return_v_seq)
        ctx.flags = flags
        ctx.need_param_grad = bool(ctx.needs_input_grad[2])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, v0, params, noise_mask, saved, s)
        return s, v_last, v_seq

    @staticmethod
    def backward(ctx, grad_s, grad_v_last, grad_v_seq):
        with torch._C._AutoDispatchBelowAutograd():
            gx, gv0, gp = _shared_backward(ctx, torch.ops.snn_fast.lif_bwd.default, grad_s, grad_v_last,
                                           grad_v_seq)
        return gx, gv0, gp, None, None, None


def register_lif_autograd(fwd_op, bwd_op) -> None:
    """Attach the shared backward to a ``fwd`` op whose backward is the matching ``bwd`` op."""

    def setup_context(ctx, inputs, output):
        x, v0, params, noise_mask = inputs[:4]
        ctx.flags = tuple(inputs[4:10])  # surrogate … reset_residual
        ctx.need_param_grad = bool(ctx.needs_input_grad[2])
        s, _, _, saved = output
        ctx.save_for_backward(x, v0, params, noise_mask, saved, s)

    def backward(ctx, grad_s, grad_v_last, grad_v_seq, _grad_saved):
        gx, gv0, gp = _shared_backward(ctx, bwd_op, grad_s, grad_v_last, grad_v_seq)
        return gx, gv0, gp, None, None, None, None, None, None, None, None

    torch.library.register_autograd(fwd_op, backward, setup_context=setup_context)


if _ext.HAS_C:
    torch.library.register_fake("snn_fast::lif_fwd")(_fake_fwd)
    torch.library.register_fake("snn_fast::lif_bwd")(_fake_bwd)
    register_lif_autograd("snn_fast::lif_fwd", torch.ops.snn_fast.lif_bwd)

# backend name -> fwd op with the contract above.
_FWD_OPS: Dict[str, Callable] = {}
if _ext.HAS_C:
    _FWD_OPS["cpu"] = torch.ops.snn_fast.lif_fwd
    _FWD_OPS["cuda"] = torch.ops.snn_fast.lif_fwd


def register_fwd_op(backend: str, op: Callable) -> None:
    _FWD_OPS[backend] = op


def _fwd_op(backend: str) -> Callable:
    if backend == "triton" and "triton" not in _FWD_OPS:
        from . import triton as _  # noqa: F401  registers itself on import
    return _FWD_OPS[backend]


# Small constant inputs of the fused ops, made once per key instead of on every call: the [3] params
# of float (k, θ, α) and the [N] initial state of v0=None or a float (a fill of N elements, ~0.1 ms
# at W4's N = 262144). The ops never write their inputs, so sharing one tensor is safe. Keyed on
# inference mode too: an inference tensor cannot be saved for a later backward.
_CONST_CACHE: Dict[tuple, torch.Tensor] = {}
_CONST_CACHE_SIZE = 32


def _cached_const(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    if config._is_compiling():
        return make()
    key = key + (torch.is_inference_mode_enabled(),)
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) >= _CONST_CACHE_SIZE:
            _CONST_CACHE.pop(next(iter(_CONST_CACHE)))  # oldest first
        with torch.no_grad():
            t = _CONST_CACHE[key] = make()
    return t


def _initial_state_flat(x, v0, flags: config.LIFFlags) -> torch.Tensor:
    """``config.initial_state`` flattened to [N], from the cache when v0 is None or a float."""
    if v0 is None or (isinstance(v0, (int, float)) and not isinstance(v0, bool) and v0 == v0
                      and abs(v0) != float("inf")):
        value = float(v0) if v0 is not None else (flags.v_reset if flags.hard_reset else 0.0)
        n = x.numel() // x.shape[0]
        return _cached_const(("v0", n, value, x.dtype, x.device),
                             lambda: torch.full((n,), value, dtype=x.dtype, device=x.device))
    return config.initial_state(x, v0, flags).reshape(-1)


def _as_param(v, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.reshape(()).to(device=device, dtype=dtype)
    return torch.tensor(float(v), dtype=dtype, device=device)


def lif_apply(x, v0, k, theta, alpha, flags: config.LIFFlags, sg: _sg.Surrogate, noise_mask=None,
              return_v_seq=False, backend="auto"):
    """Run the LIF family on already-checked arguments (``k`` = 1/τ; see ``config.resolve``).

    The modules call this directly so that learnable parameters are not re-validated (no device
    sync) on every step.
    """
    name = backends.select(backend, x, sg.has_kernel)
    if name == "reference":
        return lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
    T = x.shape[0]
    shape = x.shape[1:]
    x2 = x.reshape(T, -1)
    v0_t = _initial_state_flat(x, v0, flags)
    pdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(k, torch.Tensor) or isinstance(theta, torch.Tensor) or isinstance(alpha, torch.Tensor):
        params = torch.stack([_as_param(k, pdtype, x.device), _as_param(theta, pdtype, x.device),
                              _as_param(alpha, pdtype, x.device)])
    else:
        kf, tf, af = float(k), float(theta), float(alpha)
        params = _cached_const(("params", kf, tf, af, pdtype, x.device),
                               lambda: torch.tensor([kf, tf, af], dtype=pdtype, device=x.device))
    mask2 = None if noise_mask is None else noise_mask.reshape(T, -1)
    flag_args = (flags.surrogate_id, flags.hard_reset, flags.v_reset, flags.decay_input, flags.detach_reset,
                 flags.reset_residual)
    if name in ("cpu", "cuda") and not config._is_compiling():
        s, v_last, v_seq = _EagerLIF.apply(x2, v0_t, params, mask2, flag_args, return_v_seq)
    else:
        s, v_last, v_seq, _ = _fwd_op(name)(x2, v0_t, params, mask2, *flag_args, return_v_seq)
    out = (s.view(x.shape), v_last.view(shape))
    return out + (v_seq.view(x.shape),) if return_v_seq else out


def lif_multistep(
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
    backend: str = "auto",
):
    """Multi-step LIF neuron over ``x`` of shape ``[T, *]`` (SPEC §2–§4), fused over T.

    Args:
        x: input current, time first. float32/float16/bfloat16 (float64 on CPU and the reference).
        v0: membrane before the first step: None (``v_reset``, or 0 for soft reset), a float, or a
            tensor broadcastable to ``x[0]``.
        tau: membrane time constant (> 1; a float ``math.inf`` gives IF); 2.0 when neither ``tau`` nor
            ``decay`` is given. Mutually exclusive with ``decay``.
        decay: λ = 1 − 1/τ in (0, 1), the form of the CSBP/STBP write-ups.
        decay_input: charge ``V + (X − (V − V_r))/τ`` (True) or ``V − (V − V_r)/τ + X`` (False).
        v_threshold: θ. v_reset: hard reset value, or None for soft reset (V − θ·S).
        detach_reset: stop the gradient through the reset's dependence on the spike.
        surrogate: a name of ``snn_fast.surrogate.names()`` (or a registered one). alpha: its width.
        reset_residual: κ, the BPSA temporal term (forward-neutral, adds κ·g′ to ∂V/∂H).
        noise_mask: bool ``[T, *]``; False emits the analog value g(H − θ) (ASGL noisy spike).
        return_v_seq: also return the membrane after every step.
        backend: 'auto', 'reference', 'cpu', 'cuda' or 'triton'.
    τ, decay, θ and α may be tensors that require grad; gradients are summed over steps and neurons.

    Returns:
        ``(s, v_T)`` or ``(s, v_T, v_seq)``; ``s`` in ``x.dtype``.
    """
    config.check_x(x)
    k, theta, alpha, flags, sg = config.resolve(
        tau, decay, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, reset_residual
    )
    noise_mask = config.check_noise_mask(x, noise_mask)
    if isinstance(v0, torch.Tensor) and v0.device != x.device:
        raise ValueError(f"v0 is on {v0.device} but x is on {x.device}; put them on the same device")
    for name, p in (("tau", tau), ("decay", decay), ("v_threshold", v_threshold), ("alpha", alpha)):
        if isinstance(p, torch.Tensor) and p.device != x.device and p.device.type != "cpu":
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    return lif_apply(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq, backend)
