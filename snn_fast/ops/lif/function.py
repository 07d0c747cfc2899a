"""LIF: its table of backends, its one autograd, and the public ``lif_multistep``.

Every fused backend implements the same pair of ops (``contract.py``: one schema each, ``save`` an
argument of both). ``BACKENDS`` names each backend's pair: 'cpu' and 'cuda' are the C++ kernels of
``snn_fast::lif_fwd``/``lif_bwd``, 'triton' its own pair (``triton.py``), and a user-registered
surrogate on the CPU runs the pair of ``custom_cpu.py``. One autograd (``_save``/``_backward``, a
``backends.FusedAutograd``) serves every pair: in eager mode around the raw ops below the autograd
key, under torch.compile registered on each forward op; the C++ ops carry the same contract in C++
(``csrc/autograd/lif_autograd.cpp``), one dispatcher call in eager mode. The learnable parameters
get their gradients through ``params``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from ... import _ext, backends
from ... import surrogate as _sg
from ...autotable import AutoTable
from ..common import consts
from . import args as lif_args
from . import contract
from .reference import lif_reference_k


def _save(ctx, a, out, needs) -> None:
    """Keep what ``_backward`` needs; ``a`` is the forward's arguments by name."""
    s, _, _, saved = out
    if needs[1]:  # as the C++ autograd (lif_autograd.cpp)
        contract.refuse_uniform_v0_grad("lif", a.v0, a.x.shape[1])
    ctx.flags = {n: getattr(a, n) for n in contract.FLAG_ARGS}
    ctx.flags["save"] = a.save
    ctx.return_v_seq = a.return_v_seq
    ctx.need_param_grad = bool(needs[2])
    ctx.need_v0_grad = bool(needs[1])
    ctx.save_for_backward(a.x, a.v0, a.params, a.noise_mask, saved, s)


def _backward(ctx, grad_s, grad_v_last, grad_v_seq, _grad_saved=None):
    """The one LIF backward: (grad_x, grad_v0, grad_params or None) from the saved tensors."""
    x, v0, params, noise_mask, saved, s = ctx.saved_tensors
    backends.refuse_double_backward("LIF", grad_s, grad_v_last, grad_v_seq, x, v0, params)
    if grad_s is None:
        grad_s = torch.zeros_like(x)
    if grad_v_seq is not None and (grad_v_seq.numel() == 0 or not ctx.return_v_seq):
        grad_v_seq = None  # the placeholder v_seq of return_v_seq=False carries nothing
    gx, gv0, gp = ctx.bwd(grad_s.contiguous(), grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s,
                          None, None, **ctx.flags, need_param_grad=ctx.need_param_grad)
    # no grad_v0 where v0 needs none: a [1] start's is NaN, and anomaly mode checks every output for NaN
    return gx, (gv0 if ctx.need_v0_grad else None), (gp if ctx.need_param_grad else None)


AUTOGRAD = backends.FusedAutograd("LIF", ("x", "v0", "params"), _save, _backward, nondiff_outputs=(3,),
                                   materialize_grads=False)


def _register_fakes(e: backends.Backend) -> None:
    """The fakes of the C++ pair (the Python-defined ones register theirs beside their kernels)."""
    torch.library.register_fake(e.fwd)(contract.fake_fwd_cpp)
    torch.library.register_fake(e.bwd)(contract.fake_bwd)


def _cpu_runs(sg) -> Optional[str]:  # any user surrogate: its torch dg runs in custom_cpu.py's backward
    return None


def _triton_runs(sg) -> Optional[str]:
    return None if sg.triton is not None else (
        "it was registered without triton=(g, dg[, dg_dalpha]) @triton.jit functions")


_CPU = backends.cpp_probe("lif_fwd", "CPU")

# The LIF backends. 'reference' is not a table entry: it is plain torch (reference.py) and always runs.
BACKENDS = backends.OpBackends(
    "x",
    {
        "cpu": backends.Backend(
            fwd="snn_fast::lif_fwd", bwd="snn_fast::lif_bwd", probe=_CPU, surrogates=_cpu_runs,
            # a user's surrogate: its torch g′ between the C++ forward and the C++ backward walk
            custom=backends.Backend(fwd="snn_fast::lif_fwd_custom_cpu", bwd="snn_fast::lif_bwd_custom_cpu",
                                    module="snn_fast.ops.lif.custom_cpu", probe=_CPU, surrogates=_cpu_runs)),
        "cuda": backends.Backend(fwd="snn_fast::lif_fwd", bwd="snn_fast::lif_bwd",
                                 probe=backends.cpp_probe("lif_fwd", "CUDA")),
        "triton": backends.Backend(fwd="snn_fast::lif_fwd_triton", bwd="snn_fast::lif_bwd_triton",
                                   module="snn_fast.ops.lif.triton", probe=backends.triton_probe,
                                   surrogates=_triton_runs),
    },
    autograd=AUTOGRAD,
    register_fakes=_register_fakes,
    autotable=AutoTable(os.path.join(os.path.dirname(os.path.abspath(__file__)), "autotable.json"),
                        env_var="SNN_FAST_AUTOTABLE"),
)


# The C++ ops exist as soon as snn_fast._C is loaded (snn_fast._ext, at package import): complete their
# Python side (fakes) here and now, so that torch.ops.snn_fast.lif_fwd is whole for any caller.
# Triton's ops are defined, and completed, when its backend first loads.
if _ext.HAS_C:
    BACKENDS.load("cpu")


def fused_forward(b: backends.Loaded, x, v0, params, noise_mask, flags, return_v_seq, save=contract.SAVE_STATE):
    """(s, v_last, v_seq, saved) from backend ``b`` in eager mode without autograd: the raw op below the
    autograd key, saving nothing (``contract.SAVE_NONE``) when no gradient can flow."""
    if not backends.needs_grad(x, v0, params):
        save = contract.SAVE_NONE
    with torch._C._AutoDispatchBelowAutograd():
        return b.fwd(x, v0, params, noise_mask, *flags, return_v_seq, save)


def _initial_state_flat(x, v0, flags: lif_args.LIFFlags) -> torch.Tensor:
    """``args.initial_state`` flattened to [N]; v0 None or a float is one start for every neuron, [1]
    for N > 1 (contract.uniform_v0: the kernels read it once per block, and compute no ∂L/∂v0 for it),
    from the cache."""
    if v0 is None or (isinstance(v0, (int, float)) and not isinstance(v0, bool) and v0 == v0
                      and abs(v0) != float("inf")):
        value = float(v0) if v0 is not None else (flags.v_reset if flags.hard_reset else 0.0)
        n = min(x.numel() // x.shape[0], 1)  # [1], or [0] for N = 0
        return consts.cached(("v0", n, value, x.dtype, x.device), x.device,
                             lambda: torch.full((n,), value, dtype=x.dtype, device=x.device))
    return lif_args.initial_state(x, v0, flags).reshape(-1)


def _as_param(v, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.reshape(()).to(device=device, dtype=dtype)
    f = float(v)
    return consts.cached(("scalar", f, dtype, device), device,
                         lambda: torch.full((), f, dtype=dtype, device=device))


def _kernel_for_timing(name: str, backend, x, sg: _sg.Surrogate, flags: lif_args.LIFFlags) -> str:
    """``name``, or where it cannot run the firing and reset of ``flags``, the backend that can:
    reset_timing='after_fire_pending' has no kernel, the CUDA kernel runs 'after_fire' only, and
    custom_cpu.py (a user surrogate on 'cpu') neither the strict threshold nor the reset timings.
    A backend asked for by name that cannot is an error; 'auto' falls back to Triton or the reference."""
    if name == "reference" or (flags.fire_at_threshold and flags.reset_timing == "after_fire"):
        return name
    why = None
    if flags.reset_timing not in lif_args.KERNEL_RESET_TIMINGS:
        why = f"reset_timing={flags.reset_timing!r}"
    elif name == "cuda" and flags.reset_timing not in lif_args.CUDA_RESET_TIMINGS:
        why = f"reset_timing={flags.reset_timing!r}"
    elif sg.custom and name == "cpu":
        why = f"the user surrogate {sg.name!r} with fire_at_threshold=False or a reset_timing"
    if why is None:
        return name
    if backend is not None and backend.lower() != "auto":
        raise ValueError(f"backend={backend!r} cannot run {why}; backend='auto' picks one that does")
    if flags.reset_timing in lif_args.KERNEL_RESET_TIMINGS and x.device.type == "cuda":
        try:
            return BACKENDS.select("triton", x, sg.id >= 0, sg)
        except (RuntimeError, ValueError):
            pass
    return "reference"


# (name, custom, loaded backend or None for 'reference') per routing key: the backend choice and the
# table lookups of a call, made once per (backend=, $SNN_FAST_BACKEND, device type, surrogate, firing
# and reset timing). Not for
# 'auto' on a GPU, whose choice depends on the shape (the measured table). Plain dict: a racing miss
# computes the same value twice.
_ROUTES: Dict[tuple, tuple] = {}


def _route(backend, x, sg: _sg.Surrogate, flags: lif_args.LIFFlags):
    compiling = lif_args._is_compiling()
    key = None
    if not compiling and (backend is None or type(backend) is str):  # anything else: select's error
        env = os.environ.get(backends.ENV_VAR) if backend is None or backend == "auto" else None
        dev = x.device.type
        if not (dev == "cuda" and backend in (None, "auto") and (env or "auto").lower() == "auto"):
            key = (backend, env, dev, sg.id, sg.custom, flags.fire_at_threshold, flags.reset_timing)
            hit = _ROUTES.get(key)
            if hit is not None:
                return hit
    name = _kernel_for_timing(BACKENDS.select(backend, x, sg.id >= 0, sg), backend, x, sg, flags)
    if name == "reference":
        route = ("reference", False, None)
    else:
        # a user's surrogate: the backend's ops that run it (by name: a constant under torch.compile)
        custom = sg.name not in _sg.BUILTIN_NAMES
        route = (name, custom, None if compiling else BACKENDS.load(name, custom))
    if key is not None:
        _ROUTES[key] = route
    return route


def lif_apply(x, v0, k, theta, alpha, flags: lif_args.LIFFlags, sg: _sg.Surrogate, noise_mask=None,
              return_v_seq=False, backend="auto", save=contract.DEFAULT_SAVE):
    """Run the LIF family on already-checked arguments (``k`` = 1/τ; see ``args.resolve``; ``save``
    checked by ``contract.check_save``).

    The modules call this directly so that learnable parameters are not re-validated (no device
    sync) on every step.
    """
    name, custom, b = _route(backend, x, sg, flags)
    if name == "reference":
        return lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
    if custom and sg.dg_dalpha is None and isinstance(alpha, torch.Tensor) and alpha.requires_grad:
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
        params = consts.cached(("params", kf, tf, af, pdtype, x.device), x.device,
                               lambda: consts.values((kf, tf, af), pdtype, x.device))
    mask2 = None if noise_mask is None else noise_mask.reshape(T, -1)
    flag_args = flags.op_args
    # backends.needs_grad written out: this runs on every call of every step (~0.2 µs less)
    train = torch.is_grad_enabled() and (x2.requires_grad or v0_t.requires_grad or params.requires_grad)
    code = contract.SAVE[save] if train else contract.SAVE_NONE
    if lif_args._is_compiling():  # the dispatcher, traced with the registered fake and autograd
        op = BACKENDS.compiled_fwd(name, custom)
        s, v_last, v_seq, _ = op(x2, v0_t, params, mask2, *flag_args, return_v_seq, code)
    else:
        if b is None:  # routed inside a torch.compile trace, run eagerly now
            b = BACKENDS.load(name, custom)
        if b.cpp_autograd:  # one dispatcher call; the C++ autograd kernel records the backward when needed
            s, v_last, v_seq, _ = b.fwd(x2, v0_t, params, mask2, *flag_args, return_v_seq, code)
        elif train:
            s, v_last, v_seq, _ = AUTOGRAD.apply(b, x2, v0_t, params, mask2, *flag_args, return_v_seq, code)
        else:
            with torch._C._AutoDispatchBelowAutograd():
                s, v_last, v_seq, _ = b.fwd(x2, v0_t, params, mask2, *flag_args, return_v_seq, code)
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
    save: str = contract.DEFAULT_SAVE,
    fire_at_threshold: bool = True,
    reset_timing: str = "after_fire",
):
    """Multi-step LIF neuron over ``x`` of shape ``[T, *]`` (docs/spec.md §2–§4), fused over T.

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
            ``snn_fast/ops/lif/args.py`` RESET_TIMINGS has the formulas.
    τ, decay, θ and α may be tensors that require grad; gradients are summed over steps and neurons.

    Returns:
        ``(s, v_T)`` or ``(s, v_T, v_seq)``; ``s`` in ``x.dtype``.
    """
    lif_args.check_x(x)
    k, theta, alpha, flags, sg = lif_args.resolve(
        tau, decay, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha, reset_residual,
        fire_at_threshold, reset_timing
    )
    noise_mask = lif_args.check_noise_mask(x, noise_mask)
    contract.check_save(save)
    if isinstance(v0, torch.Tensor) and v0.device != x.device:
        raise ValueError(f"v0 is on {v0.device} but x is on {x.device}; put them on the same device")
    lif_args.check_param_devices(x, tau=tau, decay=decay, v_threshold=v_threshold, alpha=alpha)
    return lif_apply(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq, backend, save)
