"""bn_lif: its table of backends, its one autograd, and the public ``bn_lif`` (docs/spec.md §12).

The op is the LIF op of ``snn_fast.ops.lif`` charging with the per-channel affine of batch norm,
X' = (x − μ)·a + b: the statistics are taken first (one read of x: the C++ ``bn_lif_stats`` on the CPU
and CUDA, ``torch.var_mean`` without it), the running statistics updated as ``nn.BatchNorm`` updates them, and
the fused forward normalises and fires in one pass. Its backward walks the LIF backward, summing
batch norm's per-channel terms on the way, and finishes with one elementwise pass for the gradient
through the batch statistics (``contract.py`` has the schemas). One autograd (``_save``/``_backward``,
a ``backends.FusedAutograd``) serves the Triton backend (and a build of ``_C`` without the C++
autograd kernel), eager and compiled; the C++ op (CPU and CUDA) has the same contract in C++
(``csrc/autograd/bn_lif_autograd.cpp``): one dispatcher call.
"""
from __future__ import annotations

from typing import Optional

import torch

from ... import _ext, backends
from ... import surrogate as _sg
from ..lif import args as lif_args
from ..lif import contract as lif_contract
from ..common import consts
from ..lif.function import _as_param, _initial_state_flat
from . import args as bn_args
from . import contract
from .reference import bn_lif_reference_k


def _save(ctx, a, out, needs) -> None:
    s, _, _, saved = out
    if needs[1]:  # as the C++ autograd (bn_lif_autograd.cpp)
        lif_contract.refuse_uniform_v0_grad("bn_lif", a.v0, a.x.shape[1])
    ctx.flags = {n: getattr(a, n) for n in contract.FLAG_ARGS}
    ctx.flags["save"] = a.save
    ctx.bn = dict(tdbn_alpha=a.tdbn_alpha, inner=a.inner, batch_stats=a.batch_stats)
    ctx.return_v_seq = a.return_v_seq
    ctx.need_param_grad = bool(needs[2])
    ctx.need_v0_grad = bool(needs[1])
    ctx.save_for_backward(a.x, a.v0, a.params, a.weight, a.bias, a.mean, a.rstd, a.noise_mask, saved, s)


def _backward(ctx, grad_s, grad_v_last, grad_v_seq, _grad_saved=None):
    """(grad_x, grad_v0, grad_params, grad_weight, grad_bias) from the saved tensors."""
    x, v0, params, weight, bias, mean, rstd, noise_mask, saved, s = ctx.saved_tensors
    backends.refuse_double_backward("BN-LIF", grad_s, grad_v_last, grad_v_seq, x, v0, params, weight, bias)
    if grad_s is None:
        grad_s = torch.zeros_like(x)
    if grad_v_seq is not None and (grad_v_seq.numel() == 0 or not ctx.return_v_seq):
        grad_v_seq = None
    gx, gv0, gp, gw, gb = ctx.bwd(grad_s.contiguous(), grad_v_last, grad_v_seq, x, v0, params, weight, bias, mean,
                                  rstd, **ctx.bn, noise_mask=noise_mask, saved=saved, s=s, **ctx.flags,
                                  need_param_grad=ctx.need_param_grad)
    # no grad_v0 where v0 needs none: a [1] start's is NaN, and anomaly mode checks every output for NaN
    return gx, (gv0 if ctx.need_v0_grad else None), (gp if ctx.need_param_grad else None), gw, gb


AUTOGRAD = backends.FusedAutograd("BN-LIF", ("x", "v0", "params", "weight", "bias"), _save, _backward,
                                  nondiff_outputs=(3,), materialize_grads=False)


def _register_fakes(e: backends.Backend) -> None:
    torch.library.register_fake(e.fwd)(contract.fake_fwd_cpp)
    torch.library.register_fake(e.bwd)(contract.fake_bwd)


def _cpu_runs(sg) -> Optional[str]:  # any user surrogate: custom_cpu.py (within the limits _route applies)
    return None


def _triton_runs(sg) -> Optional[str]:
    return None if sg.triton is not None else (
        "it was registered without triton=(g, dg[, dg_dalpha]) @triton.jit functions")


_CPU = backends.cpp_probe("bn_lif_fwd", "CPU")

# A user-registered surrogate runs on Triton (with its @triton.jit functions), on the CPU (custom_cpu.py:
# compiled into the walk, or its torch g′ around the LIF op's backward) and on the reference.
BACKENDS = backends.OpBackends(
    "x",
    {
        "cpu": backends.Backend(
            fwd="snn_fast::bn_lif_fwd", bwd="snn_fast::bn_lif_bwd", probe=_CPU, surrogates=_cpu_runs,
            custom=backends.Backend(fwd="snn_fast::bn_lif_fwd_custom_cpu", bwd="snn_fast::bn_lif_bwd_custom_cpu",
                                    module="snn_fast.ops.bn_lif.custom_cpu", probe=_CPU, surrogates=_cpu_runs)),
        "cuda": backends.Backend(fwd="snn_fast::bn_lif_fwd", bwd="snn_fast::bn_lif_bwd",
                                 probe=backends.cpp_probe("bn_lif_fwd", "CUDA")),
        "triton": backends.Backend(fwd="snn_fast::bn_lif_fwd_triton", bwd="snn_fast::bn_lif_bwd_triton",
                                   module="snn_fast.ops.bn_lif.triton", probe=backends.triton_probe,
                                   surrogates=_triton_runs),
    },
    autograd=AUTOGRAD,
    register_fakes=_register_fakes,
    # 'auto' on a GPU: the CUDA kernels first. The first GPU run (H100, 2026-12-06, fwd+bwd fp32):
    # 1.02 / 1.14 ms against Triton's 1.80 / 2.00 ms at [4,32,64,56,56] / [4,32,512,7,7]
    # (benchmarks/results/NVIDIA_H100_80GB_HBM3-2026-12-06-bn-lif.md). Triton where _C has no CUDA kernel.
    gpu_order=("cuda", "triton"),
)

# The CPU ops outside the table's pairs: their fakes, registered once at import.
if _ext.HAS_C and _ext.has_kernel("bn_lif_fwd", "CPU"):  # an older build of _C may lack the op
    BACKENDS.load("cpu")
    torch.library.register_fake("snn_fast::bn_lif_stats")(contract.fake_stats)
    if _ext.has_kernel("bn_lif_bwd_native", "CPU"):
        torch.library.register_fake("snn_fast::bn_lif_bwd_native")(contract.fake_bwd_native)


# The device types whose statistics the C++ op takes in this build (the Triton backend runs without
# it); decided once, a constant under torch.compile.
_STATS_OP = frozenset(d for d, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                      if _ext.HAS_C and _ext.has_kernel("bn_lif_stats", key))


def _batch_stats(name: str, x2: torch.Tensor, C: int, inner: int, n: int, eps: float):
    """(mean, rstd = 1/√(biased var + eps), unbiased var) per channel of x2 [T, N], in params' dtype:
    one read of x, one op in float64: the C++ ``bn_lif_stats`` for the C++ backends where this build
    has the kernel, the Triton one for Triton (loaded with the backend), else torch."""
    if name == "triton":
        return torch.ops.snn_fast.bn_lif_stats_triton(x2, C, inner, eps)  # triton.py, loaded with the backend
    if name in ("cpu", "cuda") and x2.device.type in _STATS_OP:
        return torch.ops.snn_fast.bn_lif_stats(x2, C, inner, eps)
    p = contract.pdtype(x2)
    # in float32 at least, as F.batch_norm and the C++ op (double) keep them: var_mean in bf16 would
    # round the mean and variance to 8 bits (Σ(x − m) = 0 of the backward's algebra with it)
    v, m = torch.var_mean(x2.reshape(-1, C, inner).to(p), dim=(0, 2), correction=0)
    return m, torch.rsqrt(v + eps), v * (n / (n - 1))


def _update_running(running_mean, running_var, mean, var_unbiased, momentum: float) -> None:
    """nn.BatchNorm's update r ← (1 − m)·r + m·batch (the unbiased variance in running_var), as a
    lerp: one op for both buffers when their dtype is the statistics' (the usual case)."""
    with torch.no_grad():
        if running_mean.dtype == mean.dtype and running_var.dtype == mean.dtype:
            torch._foreach_lerp_((running_mean, running_var), (mean, var_unbiased), momentum)
        else:
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_(var_unbiased.to(running_var.dtype), momentum)


def _route(name: str, backend, sg: _sg.Surrogate, flags: lif_args.LIFFlags, noise_mask) -> str:
    """``name``, or the reference where it cannot run: a reset timing other than after the spike (the
    bn_lif kernels run that one only; the strict threshold they all run), and for a user surrogate on
    the CPU (custom_cpu.py) a noise mask or the strict threshold. A kernel asked for by name is an error."""
    if name == "reference":
        return name
    why = None
    if flags.reset_timing != "after_fire":
        why = f"reset_timing={flags.reset_timing!r} (the fused kernels reset after the spike only)"
    elif name == "cpu" and sg.name not in _sg.BUILTIN_NAMES and (noise_mask is not None or not flags.fire_at_threshold):
        why = f"the user surrogate {sg.name!r} with a noise mask or fire_at_threshold=False"
    if why is None:
        return name
    if backend is not None and backend.lower() != "auto":
        raise ValueError(f"bn_lif: backend={backend!r} cannot run {why}; use backend='auto' or 'reference'")
    return "reference"


def bn_lif_apply(x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float, v0, k,
                 theta, alpha, flags: lif_args.LIFFlags, sg: _sg.Surrogate, noise_mask=None, return_v_seq=False,
                 tdbn_alpha: Optional[float] = None, backend="auto", save=lif_contract.DEFAULT_SAVE):
    """``bn_lif`` on checked arguments (``k`` = 1/τ; ``args.resolve``'s results). The modules call this."""
    name = _route(BACKENDS.select(backend, x, sg.id >= 0, sg), backend, sg, flags, noise_mask)
    if name == "reference":
        return bn_lif_reference_k(x, weight, bias, running_mean, running_var, training, momentum, eps, v0, k, theta,
                                  alpha, flags, sg, noise_mask, return_v_seq, tdbn_alpha)
    # a user's surrogate: the backend's ops that run it (by name: a constant under torch.compile)
    custom = sg.name not in _sg.BUILTIN_NAMES
    if custom and sg.dg_dalpha is None and isinstance(alpha, torch.Tensor) and alpha.requires_grad:
        raise ValueError(f"surrogate {sg.name!r} has no dg_dalpha: alpha cannot be learned")
    T = x.shape[0]
    C, inner = bn_args.layout(x)
    x2 = x.reshape(T, -1)
    pd = contract.pdtype(x)
    batch = bn_args.uses_batch_stats(training, running_mean)
    compiling = lif_args._is_compiling()
    # the backend's ops (and, for Triton, its statistics op) loaded before the statistics are taken
    fwd = BACKENDS.compiled_fwd(name, custom) if compiling else None
    bk = None if compiling else BACKENDS.load(name, custom)
    with torch.no_grad():  # the backward differentiates through the statistics itself
        if batch:
            n = bn_args.check_count(x, C)
            mean, rstd, var_unbiased = _batch_stats(name, x2.detach(), C, inner, n, eps)
            if training and running_mean is not None:
                _update_running(running_mean, running_var, mean, var_unbiased, momentum)
        else:
            mean = running_mean.to(pd, copy=True)  # a copy: saved for the backward
            rstd = torch.rsqrt(running_var.to(pd) + eps)
    w = weight.to(pd) if weight is not None else consts.cached(("ones", C, pd, x.device), x.device,
                                                               lambda: torch.ones(C, dtype=pd, device=x.device))
    b = bias.to(pd) if bias is not None else consts.cached(("zeros", C, pd, x.device), x.device,
                                                           lambda: torch.zeros(C, dtype=pd, device=x.device))
    # a start every neuron shares (None: the reset value, or a float; no gradient) as v0 [1]: no row of
    # N read for it, twice, nor ∂L/∂v0 written (docs/spec.md §12.3); a tensor v0 as [N]
    v0_t = _initial_state_flat(x, v0, flags)
    if isinstance(k, torch.Tensor) or isinstance(theta, torch.Tensor) or isinstance(alpha, torch.Tensor):
        params = torch.stack([_as_param(k, pd, x.device), _as_param(theta, pd, x.device),
                              _as_param(alpha, pd, x.device)])
    else:
        kf, tf, af = float(k), float(theta), float(alpha)
        params = consts.cached(("params", kf, tf, af, pd, x.device), x.device,
                               lambda: consts.values((kf, tf, af), pd, x.device))
    mask2 = None if noise_mask is None else noise_mask.reshape(T, -1)
    ta = float(tdbn_alpha) if tdbn_alpha is not None else 0.0
    train = backends.needs_grad(x2, v0_t, params, w, b)
    code = lif_contract.SAVE[save] if train else lif_contract.SAVE_NONE
    fargs = (x2, v0_t, params, w, b, mean, rstd, ta, inner, batch, mask2, *flags.op_args, return_v_seq, code)
    if compiling:
        s, v_last, v_seq, _ = fwd(*fargs)
    else:
        if bk.cpp_autograd:  # one dispatcher call; the C++ autograd kernel records the backward when needed
            s, v_last, v_seq, _ = bk.fwd(*fargs)
        elif train:
            s, v_last, v_seq, _ = AUTOGRAD.apply(bk, *fargs)
        else:
            with torch._C._AutoDispatchBelowAutograd():
                s, v_last, v_seq, _ = bk.fwd(*fargs)
    out = (s.view(x.shape), v_last.view(x.shape[1:]))
    return out + (v_seq.view(x.shape),) if return_v_seq else out


def bn_lif(
    x: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    v0=None,
    tau=None,
    decay=None,
    decay_input: bool = True,
    v_threshold=1.0,
    v_reset: Optional[float] = 0.0,
    detach_reset: bool = False,
    surrogate="sigmoid",
    alpha=None,
    reset_residual: float = 0.0,
    fire_at_threshold: bool = True,
    reset_timing: str = "after_fire",
    noise_mask: Optional[torch.Tensor] = None,
    return_v_seq: bool = False,
    tdbn_alpha: Optional[float] = None,
    backend: str = "auto",
    save: str = lif_contract.DEFAULT_SAVE,
):
    """Batch norm then the multi-step LIF neuron, fused (docs/spec.md §12).

    ``x`` is ``[T, B, C, *]``; batch norm per channel over (T, B, spatial), as ``nn.TDBatchNorm`` and
    SpikingJelly's multi-step ``BatchNorm2d`` compute it, with ``F.batch_norm``'s arguments and
    behaviour: ``training`` normalises with the batch's statistics and updates ``running_mean`` /
    ``running_var`` in place (momentum, unbiased variance); otherwise the running statistics are used
    (a per-channel affine folded into the charge). ``tdbn_alpha``: tdBN, y = weight·α·θ·x̂ + bias with
    θ = ``v_threshold`` (learnable θ gets the gradient of both uses). The LIF arguments are
    ``lif_multistep``'s (``fire_at_threshold``, ``reset_timing`` included: the kernels run every
    firing rule and the reset after the spike; other timings run on the reference). Under DDP each
    rank normalises over its own batch, as ``nn.BatchNorm`` does (no SyncBatchNorm). A user-registered
    surrogate runs on the CPU kernel (compiled into its walk where it translates: custom_cpu.py; with
    a noise mask or ``fire_at_threshold=False`` on the reference), on Triton where it has @triton.jit
    functions, and on the reference.

    Returns ``(s, v_T)`` or ``(s, v_T, v_seq)``, as ``lif_multistep``.
    """
    bn_args.check(x, weight, bias, running_mean, running_var, training, momentum, eps, tdbn_alpha)
    k, theta, alpha, flags, sg = lif_args.resolve(tau, decay, decay_input, v_threshold, v_reset, detach_reset,
                                                  surrogate, alpha, reset_residual, fire_at_threshold, reset_timing)
    noise_mask = lif_args.check_noise_mask(x, noise_mask)
    lif_contract.check_save(save)
    if isinstance(v0, torch.Tensor) and v0.device != x.device:
        raise ValueError(f"v0 is on {v0.device} but x is on {x.device}; put them on the same device")
    lif_args.check_param_devices(x, tau=tau, decay=decay, v_threshold=v_threshold, alpha=alpha)
    return bn_lif_apply(x, weight, bias, running_mean, running_var, training, float(momentum), float(eps), v0, k,
                        theta, alpha, flags, sg, noise_mask, return_v_seq, tdbn_alpha, backend, save)
