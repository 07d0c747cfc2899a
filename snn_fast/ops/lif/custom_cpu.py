"""LIF on the CPU with a user-registered surrogate: the ops behind backend 'cpu' for such a surrogate.

First choice: the user's functions translated to C++ and compiled into the walk (native_surrogate.py):
then the forward keeps nothing and the backward is one call, ``snn_fast::lif_bwd_native``, the
built-in kernel's bytes. Decided at the forward (``_saves_d``; its fake agrees) and again at the
backward. What follows is the path for a surrogate that does not translate, a noise mask, or with
that step off.

The C++ kernels cannot call a user's Python function per element; they do not need to:

  - forward: the LIF forward does not involve the surrogate unless a noise mask is given (the spike
    is Θ(H − θ) whatever g′ is), so the fused C++ forward runs unchanged, with any built-in id. With
    save="state" it also writes D = H − θ for every step, [T, N] in the compute dtype (float32;
    float64 for float64 data), the values the forward's comparison saw, and saves it
    (``snn_fast::lif_fwd`` with ``contract.SAVE_SG_ARG``); with save="recompute" and for inference it
    saves nothing. With a noise mask the emitted value g(H − θ) needs the user's g: the forward is
    then the reference loop, without autograd, and saves nothing.
  - backward, a fixed number of calls:
      1. D saved by the forward, or ``snn_fast::lif_sg_arg``: the forward re-run in C++, returning D
         (under a noise mask the forward's emitted values stand in the reset);
      2. the user's torch ``dg`` (and ``dg_dalpha`` with parameter gradients) on D: compiled by
         torch.compile into one fused loop over all of D that writes g′ (and ∂g/∂α) into two [T, N]
         buffers, one call (``compile=True``, the default, for D of at least ``_COMPILE_MIN_BYTES``;
         compiled once per surrogate, kind and dtype); or eagerly, a few torch calls per
         ``_CHUNK_BYTES`` piece of D (smaller D, ``compile=False``, $SNN_FAST_COMPILE_SURROGATES=0,
         under a TorchDispatchMode, or after a failed compilation);
      3. ``snn_fast::lif_bwd`` given ``sg_grad``/``sg_dalpha``: the C++ backward of every built-in
         surrogate (the same per-element step, csrc/include/snn_fast/lif_step.h, in the same
         operation order) reading g′ and ∂g/∂α from those buffers instead of computing a built-in's.
    Memory: D (kept from the forward with save="state"), g′ (and ∂g/∂α) live during the backward,
    a·T·N bytes each (a = 4, or 8 for float64), plus, on the eager path, the temporaries of the
    user's functions on one piece; ``memory.custom_cpu_bytes`` counts the traffic.

Timings: the README section "Your own surrogate" (benchmarks/test_bench_surrogate.py).

float16/bfloat16: D and g′ are float32, as the kernels' arithmetic. Under a noise mask the forward
is the reference loop in the storage dtype and the re-run takes its emitted values rounded to it, so
H in the backward may differ from the forward's by that rounding (within the low-precision bound).
"""
from __future__ import annotations

import os
import threading
import types
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.utils._python_dispatch

from ... import _ext
from ... import surrogate as _sg
from . import args as lif_args
from . import contract
from . import native_surrogate
from .reference import lif_reference_k

# On the eager path the user's functions see D in pieces of this many bytes, their results copied
# into one [T, N] buffer from the C++ output cache. Why not all of D at once: each of their torch ops
# then allocates a [T, N] temporary, and glibc hands blocks that large back to the OS when they are freed, so every
# call faulted its pages in again: at W4 ([16, 262144] float32, 16 MiB per array) 4,000–8,000 page
# faults per backward and 2–3× the time of the same arithmetic on pieces, whose temporaries are
# reused from the allocator's free lists and stay in cache. Sized by bytes: a few calls per MiB,
# against one per time step and per cache-sized block before (benchmarks/test_bench_surrogate.py).
_CHUNK_BYTES = 1 << 20


def _surrogate(sid: int, op: str = "lif_custom_cpu") -> _sg.Surrogate:
    try:
        return _sg.by_id(sid)
    except KeyError:
        raise ValueError(f"{op}: no registered surrogate has id {sid} (unregistered?)") from None


def _check(x, v0, params, surrogate):
    torch._check(x.dim() == 2, lambda: f"lif_custom_cpu: x must be [T, N], got {x.dim()} dims")
    torch._check(x.device.type == "cpu", lambda: f"lif_custom_cpu: x must be on the CPU, got {x.device}")
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    torch._check(params.dtype == want and params.numel() == 3,
                 lambda: f"lif_custom_cpu: params must be [3] {want}, got {tuple(params.shape)} {params.dtype}")
    torch._check(v0.dtype == x.dtype, lambda: f"lif_custom_cpu: v0 dtype {v0.dtype} != x dtype {x.dtype}")
    torch._check(surrogate >= _sg.CUSTOM_ID_BASE, lambda: f"lif_custom_cpu: {surrogate} is not a user surrogate id")


def _check_firing(strict_threshold, reset_timing):
    # lif_sg_arg re-runs the default firing and reset only: the others run on the reference
    # (function.py routes them there)
    torch._check(not strict_threshold and reset_timing == contract.RESET_AFTER_FIRE,
                 lambda: "lif_custom_cpu: a user surrogate runs strict_threshold=False and reset_timing=0 "
                         f"(after the spike) only, got {strict_threshold}, {reset_timing}; use backend='reference'")


def lif_fwd_custom_cpu(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    strict_threshold: bool, reset_timing: int, return_v_seq: bool, save: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, v_last, v_seq or [0], saved): D [T, N] for save 0 ("state") without a noise mask, else [0]."""
    _check(x, v0, params, surrogate)
    contract.check_op_args("lif_custom_cpu", x, v0, params, surrogate, save)
    _check_firing(strict_threshold, reset_timing)
    if noise_mask is None and _ext.HAS_C:
        keep = contract.SAVE_SG_ARG if _saves_d(surrogate, x.dtype, save, noise_mask) else contract.SAVE_NONE
        return torch.ops.snn_fast.lif_fwd.default(x, v0, params, None, 0, hard_reset, v_reset, decay_input,
                                                  detach_reset, reset_residual, False, contract.RESET_AFTER_FIRE,
                                                  return_v_seq, keep)
    sg = _surrogate(surrogate)
    k, theta, alpha = params.tolist()
    flags = lif_args.LIFFlags(surrogate, hard_reset, v_reset if hard_reset else 0.0, decay_input, detach_reset,
                              reset_residual)
    with torch.no_grad():
        s, v_last, *v_seq = lif_reference_k(x, v0, k, theta, alpha, flags, sg, noise_mask, return_v_seq)
    return s, v_last, (v_seq[0] if return_v_seq else x.new_empty(0)), x.new_empty(0)


def _native(surrogate: int, dtype: torch.dtype, noise_mask) -> Optional[native_surrogate.Native]:
    """The surrogate compiled into the C++ walk (native_surrogate.py), built at the first call, or None."""
    if noise_mask is not None or not _ext.HAS_C:
        return None
    return native_surrogate.lookup(_surrogate(surrogate), dtype)


# (surrogate id, dtype) -> whether the forward keeps D with save="state", fixed at the first forward
# of the process: the fake forward (torch.compile) and every later real one give the saved tensor the
# same shape even if the switches change afterwards (the backward copes either way: without D and
# without the compiled walk it re-runs the forward for D). A compiled graph loaded from torch.compile's
# disk cache by a process that decides otherwise (the compiled walk unavailable there) fails Inductor's
# size check of the saved tensor instead of computing anything wrong.
_FWD_KEEPS_D: Dict[Tuple[int, torch.dtype], bool] = {}


def _saves_d(surrogate: int, dtype: torch.dtype, save: int, noise_mask) -> bool:
    """Whether the forward keeps D: for save="state" without a noise mask, unless the backward computes
    g′ inline (the compiled walk, decided at the first forward for this surrogate and dtype)."""
    if save != contract.SAVE_STATE or noise_mask is not None:
        return False
    key = (surrogate, dtype)
    keeps = _FWD_KEEPS_D.get(key)
    if keeps is None:
        keeps = _FWD_KEEPS_D.setdefault(key, _native(surrogate, dtype, noise_mask) is None)
    return keeps


def _evaluate(fn, d: torch.Tensor, alpha: torch.Tensor, name: str, *more: torch.Tensor) -> torch.Tensor:
    """fn(d, alpha) (fn(d, *more, alpha) with ``more``: tensors like d) as a [T, N] buffer of d's
    dtype, eagerly: one call up to _CHUNK_BYTES, else one per piece of the flattened arrays (the
    functions are elementwise)."""
    def one(part, *rest):
        out = fn(part, *rest, alpha)
        if out.dtype != part.dtype:
            out = out.to(part.dtype)
        torch._check(out.shape == part.shape,
                     lambda: f"surrogate {name!r}: returned shape {tuple(out.shape)} for an input of "
                             f"{tuple(part.shape)}")
        return out

    n = d.numel()
    per = max(1, _CHUNK_BYTES // d.element_size())
    if n <= per:
        return one(d, *more)
    out = torch.ops.snn_fast.cpu_cache_empty_like.default(d)
    flat, d_flat, more_flat = out.view(-1), d.view(-1), [m.view(-1) for m in more]
    for j in range(0, n, per):
        flat[j:j + per].copy_(one(d_flat[j:j + per], *(m[j:j + per] for m in more_flat)))
    return out


def _scaled(x, gp, a):  # ∂g/∂α = x·g′/α of a scaling surrogate, from g′ already computed
    return x * gp / a


# What ∂g/∂α is: KIND_GP none needed (no parameter gradient), KIND_ZERO 0 (no width), KIND_SCALED
# x·g′/α from g′ (scaling=True; derived), KIND_DALPHA the surrogate's own dg_dalpha.
KIND_GP, KIND_ZERO, KIND_SCALED, KIND_DALPHA = "gp", _sg.DALPHA_ZERO, _sg.DALPHA_SCALED, _sg.DALPHA_OWN


def _kind(sg: _sg.Surrogate, need_dalpha: bool) -> str:
    return _sg.dalpha_kind(sg) if need_dalpha else KIND_GP


def _evaluate_eager(sg: _sg.Surrogate, kind: str, d: torch.Tensor, alpha: torch.Tensor):
    """(g′, ∂g/∂α or None) at D with eager torch calls. The derived ∂g/∂α of scaling=True
    (x·g′(x)/α) reuses g′, the values its own call of dg would give again."""
    gp = _evaluate(sg.dg, d, alpha, sg.name)
    if kind == KIND_GP:
        return gp, None
    if kind == KIND_ZERO:
        return gp, torch.ops.snn_fast.cpu_cache_empty_like.default(d).zero_()
    if kind == KIND_SCALED:
        return gp, _evaluate(_scaled, d, alpha, sg.name, gp)
    return gp, _evaluate(sg.dg_dalpha, d, alpha, sg.name)


# --- the compiled path ----------------------------------------------------------------------------
# The user's functions compiled by torch.compile (Inductor) into one loop over all of D that writes
# g′ (and ∂g/∂α) straight into the buffers the C++ walk reads: one read of D, one write per output, no
# [T, N] temporaries (so no pieces: the eager path's reason for them is gone), vectorised, and run on
# torch's threads. At W4 ([16, 262144] float32, 1 thread) the sigmoid's g′ takes ~1.2 ms against
# 3–4 ms eagerly in pieces. Compiled once per (surrogate, kind, dtype) and kept for the process;
# shapes are dynamic (D is passed flattened: one symbolic size). Each entry is the compiled function, or None
# after a failure (then the eager path, with one SurrogateCompileWarning).
ENV_COMPILE = "SNN_FAST_COMPILE_SURROGATES"
_COMPILED: Dict[Tuple[int, str, torch.dtype], Optional[Callable]] = {}
_COMPILED_LOCK = threading.Lock()
# Inductor options: the kernels read the thread count at run time (else they are specialised to the
# count at compile time, and a later torch.set_num_threads would not reach them).
_INDUCTOR_OPTIONS = {"cpp.dynamic_threads": True}


def _torch_compile(fn):  # one place to call torch.compile (the tests replace it)
    return torch.compile(fn, dynamic=True, fullgraph=True, options=dict(_INDUCTOR_OPTIONS))


def compile_enabled(sg: _sg.Surrogate) -> bool:
    """Whether the backward tries the compiled path for ``sg``: its ``compile`` flag, and
    $SNN_FAST_COMPILE_SURROGATES not "0" (unset or empty: on)."""
    return sg.compile and os.environ.get(ENV_COMPILE, "").strip() != "0"


def _kernel(sg: _sg.Surrogate, kind: str) -> Callable:
    """The function to compile: g′ (and ∂g/∂α) at d written into the given buffers (copy_ rounds to
    their dtype, as the eager path's .to does)."""
    dg, da = sg.dg, sg.dg_dalpha
    if kind == KIND_GP:
        def k(d, a, gp):
            gp.copy_(dg(d, a))
    elif kind == KIND_SCALED:
        def k(d, a, gp, ga):  # the same operations as the eager path: x·g′/α from g′ in the output dtype
            g = dg(d, a).to(gp.dtype)
            gp.copy_(g)
            ga.copy_(d * g / a)
    else:
        def k(d, a, gp, ga):
            gp.copy_(dg(d, a))
            ga.copy_(da(d, a))
    # A code object of its own per surrogate and kind: Dynamo keeps its compiled entries (and its
    # recompile limit) per code object, which closures of one def would share.
    code = k.__code__.replace(co_name=f"snn_fast_surrogate_{sg.name}_{kind}")
    return types.FunctionType(code, k.__globals__, code.co_name, k.__defaults__, k.__closure__)


def _compiled(sg: _sg.Surrogate, kind: str, dtype: torch.dtype) -> Callable:
    key = (sg.id, kind, dtype)
    fn = _COMPILED.get(key, _COMPILED)
    if fn is _COMPILED:
        with _COMPILED_LOCK:
            fn = _COMPILED.get(key, _COMPILED)
            if fn is _COMPILED:
                fn = _COMPILED[key] = _torch_compile(_kernel(sg, kind))
    return fn


def _compile_failed(sg: _sg.Surrogate, kind: str, dtype: torch.dtype, err: BaseException) -> None:
    with _COMPILED_LOCK:
        warn = _COMPILED.get((sg.id, kind, dtype), _COMPILED) is not None  # once: the first failure
        _COMPILED[(sg.id, kind, dtype)] = None
    if warn:
        msg = str(err).strip().splitlines()
        why = f"{type(err).__name__}: {msg[0] if msg else ''}"[:300]
        warnings.warn(
            f"snn_fast: torch.compile could not compile the surrogate {sg.name!r} (g′"
            f"{'' if kind == KIND_GP else ' and ∂g/∂α'}, {dtype}) for the CPU backward ({why}); "
            f"its functions run eagerly instead: same results, slower. register_surrogate(..., compile=False) "
            f"or {ENV_COMPILE}=0 skips the attempt.", _sg.SurrogateCompileWarning, stacklevel=2)


# D smaller than this runs eagerly even with compilation on: there the eager path is one piece, a
# few torch calls, and the compiled call's fixed cost (~20 µs: guards, the wrapper) eats the gain.
# Measured for the sigmoid's g′, 1 thread: 32K elements 39 µs compiled vs 25 eager, 128K 69 vs 80,
# 256K (1 MiB) 94 vs 156, 1M 0.3 vs 0.85 ms, 4M 1.5 vs 3–12 ms. A layer below it would need ~10⁵
# backwards to repay a compilation of seconds.
_COMPILE_MIN_BYTES = _CHUNK_BYTES


def _use_compiled(sg: _sg.Surrogate, d: torch.Tensor) -> bool:
    # Also eager under a TorchDispatchMode (Dynamo refuses to compile with one active) and for fewer
    # than two elements (Dynamo specialises sizes 0 and 1: a compilation of their own for nothing).
    return (d.numel() >= 2 and d.numel() * d.element_size() >= _COMPILE_MIN_BYTES and compile_enabled(sg)
            and torch.utils._python_dispatch._get_current_dispatch_mode() is None)


def _evaluate_sg(sg: _sg.Surrogate, d: torch.Tensor, alpha: torch.Tensor, need_dalpha: bool):
    """(g′, ∂g/∂α or None) at D: compiled when it can be, else eagerly."""
    kind = _kind(sg, need_dalpha)
    if _use_compiled(sg, d):
        compiled = KIND_GP if kind == KIND_ZERO else kind  # ∂g/∂α = 0: a fill after g′
        if _COMPILED.get((sg.id, compiled, d.dtype), _COMPILED) is not None:  # None: it failed before
            gp = torch.ops.snn_fast.cpu_cache_empty_like.default(d)
            ga = torch.ops.snn_fast.cpu_cache_empty_like.default(d) if kind != KIND_GP else None
            bufs = (gp.view(-1),) + ((ga.view(-1),) if compiled != KIND_GP else ())
            try:  # torch.compile itself may refuse (an unsupported Python), or the first call fail
                fn = _compiled(sg, compiled, d.dtype)
                with torch.no_grad():
                    fn(d.view(-1), alpha.detach(), *bufs)
            except Exception as e:  # any failure to compile falls back to the eager path
                _compile_failed(sg, compiled, d.dtype, e)
            else:
                if kind == KIND_ZERO:
                    ga.zero_()
                return gp, ga
    return _evaluate_eager(sg, kind, d, alpha)


def lif_bwd_custom_cpu(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    sg_grad: Optional[torch.Tensor], sg_dalpha: Optional[torch.Tensor], surrogate: int, hard_reset: bool,
    v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float, strict_threshold: bool,
    reset_timing: int, save: int, need_param_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's g′ (and ∂g/∂α) at D, then the C++ walk reading them (given ones are used as they are)."""
    _check(x, v0, params, surrogate)
    _check_firing(strict_threshold, reset_timing)
    native = _native(surrogate, x.dtype, noise_mask) if sg_grad is None else None
    if native is not None:  # g′ inline in the walk: D (if the forward kept it) is not needed
        return torch.ops.snn_fast.lif_bwd_native.default(
            grad_s, grad_v_last, grad_v_seq, x, v0, params, native.address, native.abi, hard_reset, v_reset,
            decay_input, detach_reset, reset_residual, need_param_grad)
    return bwd_given(grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, sg_grad, sg_dalpha,
                     surrogate, hard_reset, v_reset, decay_input, detach_reset, reset_residual, save, need_param_grad)


def bwd_given(grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, sg_grad, sg_dalpha, surrogate,
              hard_reset, v_reset, decay_input, detach_reset, reset_residual, save, need_param_grad,
              op: str = "lif_custom_cpu"):
    """The backward without the compiled walk: the user's g′ (and ∂g/∂α) at D, unless given, then the
    C++ walk reading them (also bn_lif's fallback: snn_fast/ops/bn_lif/custom_cpu.py)."""
    if sg_grad is None:
        sg = _surrogate(surrogate, op)
        if saved.numel() > 0:  # D from the forward (save="state")
            d = saved
        else:
            d = torch.ops.snn_fast.lif_sg_arg.default(x, v0, params, noise_mask, s, hard_reset, v_reset, decay_input)
        alpha = params[2]  # a 0-dim tensor of the compute dtype, as the reference passes α
        sg_grad, sg_dalpha = _evaluate_sg(sg, d, alpha, need_param_grad)
        del d
    return torch.ops.snn_fast.lif_bwd.default(
        grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, s, sg_grad, sg_dalpha, 0, hard_reset,
        v_reset, decay_input, detach_reset, reset_residual, False, contract.RESET_AFTER_FIRE, save, need_param_grad)


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, strict_threshold, reset_timing, return_v_seq, save):
    keeps = _saves_d(surrogate, x.dtype, save, noise_mask)
    return contract.fake_fwd_outputs(x, v0, return_v_seq) + (
        x.new_empty(x.shape, dtype=params.dtype) if keeps else x.new_empty(0),)


def _fake_sg_arg(x, v0, params, noise_mask, s, hard_reset, v_reset, decay_input):
    return x.new_empty(x.shape, dtype=params.dtype)


FWD_NAME = "snn_fast::lif_fwd_custom_cpu"
BWD_NAME = "snn_fast::lif_bwd_custom_cpu"

torch.library.custom_op(FWD_NAME, mutates_args=(), schema=contract.FWD_SCHEMA)(lif_fwd_custom_cpu).register_fake(
    _fake_fwd)
torch.library.custom_op(BWD_NAME, mutates_args=(), schema=contract.BWD_SCHEMA)(lif_bwd_custom_cpu).register_fake(
    contract.fake_bwd)
if _ext.HAS_C:
    torch.library.register_fake("snn_fast::lif_sg_arg")(_fake_sg_arg)
    torch.library.register_fake("snn_fast::lif_bwd_native")(
        lambda grad_s, gvl, gvs, x, v0, params, *rest: (torch.empty_like(x), torch.empty_like(v0),
                                                        torch.empty_like(params)))
