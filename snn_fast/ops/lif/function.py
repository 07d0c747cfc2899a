"""LIF: its table of backends, its one autograd Function, and the public ``lif_multistep``.

Every fused backend implements the same pair of ops (schemas in ``csrc/ops.cpp``; Triton defines
its own pair with the same signature in ``triton.py``):

    fwd(x [T,N], v0 [N], params [3]=(k, θ, α), noise_mask?, surrogate, hard_reset, v_reset,
        decay_input, detach_reset, reset_residual, return_v_seq, mode=0) -> (s, v_last, v_seq, saved)
    bwd(grad_s, grad_v_last?, grad_v_seq?, x, v0, params, noise_mask?, saved, s, <same flags>,
        need_param_grad, mode=0) -> (grad_x, grad_v0, grad_params [3])

``mode`` (``config.LIFFlags.mode``: strict threshold, reset timing) is passed only when nonzero.

``saved`` is whatever that backend keeps for its backward (``Backend.saves`` in ``BACKENDS``). The
GPU backends have two pairs, chosen by ``save=``: "state" (entry "<name>") saves H, [T, N] in the
storage dtype; "recompute" (entry "<name>:recompute") saves only V every ``config.RECOMPUTE_CHUNK``
steps (``config.checkpoints_like``, nothing for T <= K) and its backward re-runs the forward from x.
The CPU kernel saves nothing in either mode (its backward always re-runs the forward). One
backward (``_backward``) serves every backend: in eager mode through ``_LIFFunction``, which calls
the backend's ops below the autograd key; under torch.compile through the same code registered on
each fwd op with ``torch.library.register_autograd``. The learnable parameters get their gradients
through ``params``.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Dict, Optional

import torch

from ... import _ext, backends
from ... import surrogate as _sg
from ...autotable import AutoTable
from . import config
from .reference import lif_reference_k

_FLAGS = 6  # surrogate … reset_residual: the op arguments between noise_mask and the last one


def _fake_fwd_cpp(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                  reset_residual, return_v_seq, mode=0):
    """snn_fast::lif_fwd serves 'cpu' and 'cuda', which save different things: ask the entry of x's
    device (a meta tensor, which no kernel runs on, gets the CPU's answer)."""
    entry = BACKENDS.backends["cuda" if x.device.type == "cuda" else "cpu"]
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (entry.saves(x),)


def _save(ctx, bwd, need_param_grad, x, v0, params, noise_mask, flags, saved, s, tail=()) -> None:
    ctx.bwd = bwd
    ctx.flags = flags
    ctx.tail = tail  # (mode,) when the mode is set, else ()
    ctx.need_param_grad = bool(need_param_grad)
    ctx.save_for_backward(x, v0, params, noise_mask, saved, s)


def _backward(ctx, grad_s, grad_v_last, grad_v_seq):
    """The one LIF backward: (grad_x, grad_v0, grad_params or None) from the saved tensors."""
    x, v0, params, noise_mask, saved, s = ctx.saved_tensors
    backends.refuse_double_backward("LIF", grad_s, grad_v_last, grad_v_seq, x, v0, params)
    if grad_s is None:
        grad_s = torch.zeros_like(x)
    if grad_v_seq is not None and grad_v_seq.numel() == 0:
        grad_v_seq = None
    gx, gv0, gp = ctx.bwd(grad_s.contiguous(), grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s,
                          *ctx.flags, ctx.need_param_grad, *ctx.tail)
    return gx, gv0, (gp if ctx.need_param_grad else None)


class _LIFFunction(torch.autograd.Function):
    """Eager autograd for every fused backend, given its raw (fwd, bwd) ops. The ops are called below
    the autograd key: the same ops and the same backward as the registration for torch.compile
    (``_register_compiled``), without torch.library's per-call Python wrapper around the op (argument
    normalisation on every call: ~0.3 ms of a forward+backward at any size, measured)."""

    @staticmethod
    def forward(ctx, fwd, bwd, x, v0, params, noise_mask, flags, return_v_seq, tail=()):
        with torch._C._AutoDispatchBelowAutograd():
            s, v_last, v_seq, saved = fwd(x, v0, params, noise_mask, *flags, return_v_seq, *tail)
        _save(ctx, bwd, ctx.needs_input_grad[4], x, v0, params, noise_mask, flags, saved, s, tail)
        ctx.set_materialize_grads(False)
        return s, v_last, v_seq

    @staticmethod
    def backward(ctx, grad_s, grad_v_last, grad_v_seq):
        with torch._C._AutoDispatchBelowAutograd():
            gx, gv0, gp = _backward(ctx, grad_s, grad_v_last, grad_v_seq)
        return None, None, gx, gv0, gp, None, None, None, None


def _register_compiled(b: backends.Loaded) -> None:
    """torch.compile's view of a backend's ops: fakes for the ops defined in C++ (Triton's carry
    their own) and, unless the op has its autograd in C++ (csrc/autograd/lif_autograd.cpp), ``_backward``
    as the autograd of the training forward."""
    if b.entry.module is None:  # defined in C++ (ops.cpp)
        torch.library.register_fake(b.entry.fwd)(
            _fake_fwd_cuda_recompute if b.entry.fwd == "snn_fast::lif_fwd_recompute" else _fake_fwd_cpp)
        torch.library.register_fake(b.entry.bwd)(config.fake_bwd)
    if b.cpp_autograd:
        return
    bwd = backends.op(b.entry.bwd)

    def setup_context(ctx, inputs, output):
        s, _, _, saved = output
        _save(ctx, bwd, ctx.needs_input_grad[2], *inputs[:4], tuple(inputs[4:4 + _FLAGS]), saved, s,
              tuple(inputs[5 + _FLAGS:]))
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_s, grad_v_last, grad_v_seq, _grad_saved):
        # x, v0, params get gradients; mask, the flags, return_v_seq (and mode) none
        return _backward(ctx, grad_s, grad_v_last, grad_v_seq) + (None,) * (ctx.n_inputs - 3)

    torch.library.register_autograd(b.entry.fwd, backward, setup_context=setup_context)


def _saves_nothing(x):  # the C++ CPU kernel re-runs the forward inside its backward
    return x.new_empty(0)


def _saves_h(x):  # the CUDA kernel keeps H, [T, N] in x.dtype
    return torch.empty_like(x)


def _cpu_runs(sg) -> Optional[str]:  # any user surrogate: its torch dg runs in custom_cpu.py's backward
    return None


def _triton_runs(sg) -> Optional[str]:
    return None if sg.triton is not None else (
        "it was registered without triton=(g, dg[, dg_dalpha]) @triton.jit functions")


def _saves_checkpoints(x):  # save="recompute": V every K steps, [ceil(T/K) − 1, N] in the compute dtype
    return config.checkpoints_like(x, x.new_empty(0, dtype=torch.float64 if x.dtype == torch.float64
                                                   else torch.float32))


def _fake_fwd_cuda_recompute(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
                             reset_residual, return_v_seq, mode=0):
    return config.fake_fwd_outputs(x, v0, return_v_seq) + (config.checkpoints_like(x, params),)


# The LIF backends. 'reference' is not a table entry: it is plain torch (reference.py) and always runs.
BACKENDS = backends.OpBackends(
    "x",
    {
        "cpu": backends.Backend(fwd="snn_fast::lif_fwd", bwd="snn_fast::lif_bwd", saves=_saves_nothing,
                                probe=backends.cpp_probe("lif_fwd", "CPU"), surrogates=_cpu_runs,
                                custom_entry="cpu_custom"),
        "cuda": backends.Backend(fwd="snn_fast::lif_fwd", bwd="snn_fast::lif_bwd", saves=_saves_h,
                                 probe=backends.cpp_probe("lif_fwd", "CUDA")),
        "triton": backends.Backend(fwd="snn_fast::lif_fwd_triton", bwd="snn_fast::lif_bwd_triton",
                                   infer="snn_fast::lif_fwd_triton_infer", module="snn_fast.ops.lif.triton",
                                   probe=backends.triton_probe, surrogates=_triton_runs),
        # 'cpu' with a user-registered surrogate (not a backend name of its own): custom_cpu.py. Saves
        # H − θ, [T, N] in the compute dtype, for the user's g′; ":recompute" saves nothing (its
        # backward re-runs the forward for it)
        "cpu_custom": backends.Backend(fwd="snn_fast::lif_fwd_custom_cpu", bwd="snn_fast::lif_bwd_custom_cpu",
                                       infer="snn_fast::lif_fwd_custom_cpu_nosave",
                                       module="snn_fast.ops.lif.custom_cpu",
                                       probe=backends.cpp_probe("lif_fwd", "CPU"), surrogates=_cpu_runs),
        "cpu_custom:recompute": backends.Backend(fwd="snn_fast::lif_fwd_custom_cpu_nosave",
                                                 bwd="snn_fast::lif_bwd_custom_cpu",
                                                 module="snn_fast.ops.lif.custom_cpu",
                                                 probe=backends.cpp_probe("lif_fwd", "CPU"), surrogates=_cpu_runs),
        # save="recompute" (lif_apply picks "<name>:recompute" where the table has it; 'cpu' has no
        # such entry: it saves nothing in either mode)
        "cuda:recompute": backends.Backend(fwd="snn_fast::lif_fwd_recompute", bwd="snn_fast::lif_bwd_recompute",
                                           saves=_saves_checkpoints, probe=backends.cpp_probe("lif_fwd_recompute",
                                                                                              "CUDA")),
        "triton:recompute": backends.Backend(fwd="snn_fast::lif_fwd_triton_recompute",
                                             bwd="snn_fast::lif_bwd_triton_recompute",
                                             infer="snn_fast::lif_fwd_triton_infer", module="snn_fast.ops.lif.triton",
                                             probe=backends.triton_probe, surrogates=_triton_runs),
    },
    register=_register_compiled,
    autotable=AutoTable(os.path.join(os.path.dirname(os.path.abspath(__file__)), "autotable.json"),
                        env_var="SNN_FAST_AUTOTABLE"),
)


# The C++ ops exist as soon as snn_fast._C is loaded (snn_fast._ext, at package import): complete their
# Python side (fakes, compiled autograd) here and now, so that torch.ops.snn_fast.lif_fwd is whole for
# any caller. Triton's ops are defined, and completed, when its backend first loads.
if _ext.HAS_C:
    BACKENDS.load("cpu")
    BACKENDS.load("cuda")
    if hasattr(torch.ops.snn_fast, "lif_fwd_recompute"):  # absent from a _C built before issue 16
        BACKENDS.load("cuda:recompute")


def entry_name(name: str, save: str) -> str:
    """The table entry of backend ``name`` for ``save`` ("recompute" | "state")."""
    if save == "recompute":
        key = name + ":recompute"
        if key in BACKENDS.backends:
            return key
    return name


def fused_forward(b: backends.Loaded, x, v0, params, noise_mask, flags, return_v_seq, tail=()):
    """(s, v_last, v_seq, saved) from backend ``b`` in eager mode outside the autograd Function: the
    raw op below the autograd key; the inference forward (no saved state: Triton skips the H write,
    2b instead of 3b per element) when no gradient can flow, else the training one."""
    train = backends.needs_grad(x, v0, params)
    op = b.infer if (b.infer is not None and not train) else b.fwd
    with torch._C._AutoDispatchBelowAutograd():
        return op(x, v0, params, noise_mask, *flags, return_v_seq, *tail)


# Small constant inputs of the fused ops, made once per key instead of on every call: the [3] params
# of float (k, θ, α) and the [N] initial state of v0=None or a float (a fill of N elements, ~0.1 ms
# at W4's N = 262144). The ops never write their inputs, so sharing one tensor is safe. Keyed on
# inference mode too: an inference tensor cannot be saved for a later backward.
# Thread-safe (tests/test_threads.py): a hit is one dict lookup, atomic without a lock; a miss
# makes the tensor, then inserts and evicts under _CONST_LOCK (two threads evicting the same oldest
# key raced: KeyError, issue 14).
_CONST_CACHE: Dict[tuple, torch.Tensor] = {}
_CONST_CACHE_SIZE = 32
_CONST_LOCK = threading.Lock()


def _cached_const(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    if config._is_compiling():
        return make()
    key = key + (torch.is_inference_mode_enabled(),)
    t = _CONST_CACHE.get(key)
    if t is None:
        with torch.no_grad():
            t = make()
        with _CONST_LOCK:
            hit = _CONST_CACHE.get(key)
            if hit is not None:  # another thread made it meanwhile: share one tensor
                return hit
            while len(_CONST_CACHE) >= _CONST_CACHE_SIZE:
                del _CONST_CACHE[next(iter(_CONST_CACHE))]  # oldest first
            _CONST_CACHE[key] = t
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
    f = float(v)
    return _cached_const(("scalar", f, dtype, device), lambda: torch.tensor(f, dtype=dtype, device=device))


def _kernel_for_mode(name: str, backend, x, sg: _sg.Surrogate, flags: config.LIFFlags) -> str:
    """``name``, or where it cannot run the firing and reset of ``flags.mode``, the backend that can:
    reset_timing='after_fire_pending' has no kernel, the CUDA kernel runs 'after_fire' only, and
    custom_cpu.py (a user surrogate on 'cpu') neither the strict threshold nor the reset timings.
    A backend asked for by name that cannot is an error; 'auto' falls back to Triton or the reference."""
    if name == "reference" or not flags.mode:
        return name
    why = None
    if flags.reset_timing not in config.KERNEL_RESET_TIMINGS:
        why = f"reset_timing={flags.reset_timing!r}"
    elif name == "cuda" and flags.reset_timing not in config.CUDA_RESET_TIMINGS:
        why = f"reset_timing={flags.reset_timing!r}"
    elif sg.custom and name == "cpu":
        why = f"the user surrogate {sg.name!r} with fire_at_threshold=False or a reset_timing"
    if why is None:
        return name
    if backend is not None and backend.lower() != "auto":
        raise ValueError(f"backend={backend!r} cannot run {why}; backend='auto' picks one that does")
    if flags.reset_timing in config.KERNEL_RESET_TIMINGS and x.device.type == "cuda":
        try:
            return BACKENDS.select("triton", x, sg.id >= 0, sg)
        except (RuntimeError, ValueError):
            pass
    return "reference"


# (name, loaded backend or None for 'reference') per routing key: the backend choice and the table
# lookups of a call, made once per (backend=, $SNN_FAST_BACKEND, device type, surrogate, save, mode). Not for
# 'auto' on a GPU, whose choice depends on the shape (the measured table). Plain dict: a racing miss
# computes the same value twice.
_ROUTES: Dict[tuple, tuple] = {}


def _route(backend, x, sg: _sg.Surrogate, save: str, flags: config.LIFFlags):
    compiling = config._is_compiling()
    key = None
    if not compiling and (backend is None or type(backend) is str):  # anything else: select's error
        env = os.environ.get(backends.ENV_VAR) if backend is None or backend == "auto" else None
        dev = x.device.type
        if not (dev == "cuda" and backend in (None, "auto") and (env or "auto").lower() == "auto"):
            key = (backend, env, dev, sg.id, sg.custom, save, flags.mode)
            hit = _ROUTES.get(key)
            if hit is not None:
                return hit
    name = _kernel_for_mode(BACKENDS.select(backend, x, sg.id >= 0, sg), backend, x, sg, flags)
    if name == "reference":
        route = ("reference", None)
    else:
        if sg.custom:  # a user's surrogate: the entry whose ops run it
            name = BACKENDS.ops_for(name, sg)
        name = entry_name(name, save)
        route = (name, None if compiling else BACKENDS.load(name))
    if key is not None:
        _ROUTES[key] = route
    return route


def lif_apply(x, v0, k, theta, alpha, flags: config.LIFFlags, sg: _sg.Surrogate, noise_mask=None,
              return_v_seq=False, backend="auto", save=config.DEFAULT_SAVE):
    """Run the LIF family on already-checked arguments (``k`` = 1/τ; see ``config.resolve``; ``save``
    checked by ``config.check_save``).

    The modules call this directly so that learnable parameters are not re-validated (no device
    sync) on every step.
    """
    name, b = _route(backend, x, sg, save, flags)
    if name == "reference":
        return lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
    if sg.custom and sg.dg_dalpha is None and isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        raise ValueError(f"surrogate {sg.name!r} has no dg_dalpha: alpha cannot be learned")
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
    # the ops' trailing `mode` argument, only when set (a user surrogate's ops never get it)
    tail = (flags.mode,) if flags.mode else ()
    if config._is_compiling():  # the dispatcher, traced with the registered fake and autograd
        flag_args = (flags.surrogate_id, flags.hard_reset, flags.v_reset, flags.decay_input, flags.detach_reset,
                     flags.reset_residual)
        op = BACKENDS.compiled_fwd(name, backends.needs_grad(x2, v0_t, params))
        s, v_last, v_seq, _ = op(x2, v0_t, params, mask2, *flag_args, return_v_seq, *tail)
    else:
        flag_args = flags.op_args
        if b is None:  # routed inside a torch.compile trace, run eagerly now
            b = BACKENDS.load(name)
        if b.cpp_autograd:  # one dispatcher call; the C++ autograd kernel records the backward when needed
            s, v_last, v_seq, _ = b.fwd(x2, v0_t, params, mask2, *flag_args, return_v_seq, *tail)
        # backends.needs_grad written out: this runs on every call of every step (~0.2 µs less)
        elif torch.is_grad_enabled() and (x2.requires_grad or v0_t.requires_grad or params.requires_grad):
            s, v_last, v_seq = _LIFFunction.apply(b.fwd, b.bwd, x2, v0_t, params, mask2, flag_args,
                                                  return_v_seq, tail)
        else:
            s, v_last, v_seq, _ = fused_forward(b, x2, v0_t, params, mask2, flag_args, return_v_seq, tail)
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
    save: str = config.DEFAULT_SAVE,
    fire_at_threshold: bool = True,
    reset_timing: str = "after_fire",
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
        save: what the GPU kernels keep for the backward. "state" (default, the faster on the
            H200): H for every step, [T, *] in x's dtype. "recompute": only the membrane every 8
            steps (nothing for T <= 8), 39-47 % less peak memory (H200, W1); the backward re-runs
            the forward from x, with the same spikes, 1.05-1.6x slower there. The results are the same;
            the CPU kernel and the reference ignore it (the CPU kernel saves nothing either way).
        fire_at_threshold: fire on H ≥ θ (True, Θ(0) = 1) or only on H > θ (False: snnTorch, Norse).
        reset_timing: "after_fire" (default), "delayed" (snnTorch reset_delay=True: the membrane
            returned is the pre-reset one and the reset R = Θ(V − θ) is applied at the next step,
            after the decay; needs detach_reset=True), "none" (no reset; v_reset=None) or
            "after_fire_pending" (snnTorch reset_delay=False; runs on the reference backend only).
            ``snn_fast/ops/lif/config.py`` RESET_TIMINGS has the formulas.
    τ, decay, θ and α may be tensors that require grad; gradients are summed over steps and neurons.

    Returns:
        ``(s, v_T)`` or ``(s, v_T, v_seq)``; ``s`` in ``x.dtype``.
    """
    config.check_x(x)
    k, theta, alpha, flags, sg = config.resolve(
        tau, decay, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, reset_residual,
        fire_at_threshold, reset_timing
    )
    noise_mask = config.check_noise_mask(x, noise_mask)
    config.check_save(save)
    if isinstance(v0, torch.Tensor) and v0.device != x.device:
        raise ValueError(f"v0 is on {v0.device} but x is on {x.device}; put them on the same device")
    for name, p in (("tau", tau), ("decay", decay), ("v_threshold", v_threshold), ("alpha", alpha)):
        if isinstance(p, torch.Tensor) and p.device != x.device and p.device.type != "cpu":
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    return lif_apply(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq, backend, save)
