"""The Triton LIF backend: launch code and op definitions (docs/spec.md §LIF).

``lif_fwd_triton`` and ``lif_bwd_triton`` (ops ``snn_fast::lif_fwd_triton`` / ``lif_bwd_triton``), with
the schemas of ``contract.py`` (``save``: H, the V checkpoints, or nothing), whose table in
``function.py`` (``BACKENDS["triton"]``) imports this module on the backend's first use and
registers the ops' autograd for torch.compile. The kernels are in ``triton_kernels.py``
(what each saves and moves, per element), the surrogate functions in
``snn_fast/ops/common/triton_surrogate.py``. This module imports nothing of the package but those,
the surrogate registry, the argument checks and the interpreter answer (no import cycle).

Host work per call: every kernel launch goes through ``launch`` (one place to count them). In eager
mode it calls the kernel directly; ``torch.library.wrap_triton`` is used only while torch.compile
traces the op (its tensors are then not plain tensors), where it lets Inductor see the kernel. What
does not change between calls of one variant (the constexpr arguments, the config, the surrogate's
kernel arguments) is made once per (kind, dtype, flags, surrogate) in ``_SPECS``; the float64 constant
buffer once per (v_r, κ, device). A call allocates its outputs and, only when a parameter needs a
gradient, the per-program partial sums.

Runs on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1`` (set before triton is
imported), which is how CI without a GPU tests these kernels.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import torch
import triton

from ... import surrogate as _sg
from ..common import consts as device_consts  # `consts` names the launches' constexprs here
from ..common import triton_surrogate as tsg
from . import contract
from . import triton_kernels as _k

INTERPRETED = _k.INTERPRETED
EXACT_MUL = _k.EXACT_MUL
# Interpreter: one fixed block (no autotuning, nothing to time); small so tests cover several programs.
_INTERPRET_BLOCK = 128
# Smallest BLOCK of any autotuned config: sizes the parameter-gradient partial buffer.
_MIN_BLOCK = min(c.kwargs["BLOCK"] for c in _k.FWD_CONFIGS + _k.BWD_CONFIGS + _k.BWD_RC_CONFIGS)

# SNN_FAST_TRITON_AUTOTUNE=0: one fixed config instead of autotuning, so each kernel variant compiles
# once instead of 4–5 times (~0.6 s each for sm_90): the GPU check's correctness stage runs 46 variants.
FIXED_CONFIG = None if os.environ.get("SNN_FAST_TRITON_AUTOTUNE", "1") != "0" else _k.FWD_CONFIGS[2]
# The recompute backward's fixed config: one neuron per thread as all of BWD_RC_CONFIGS.
_FIXED_RC_CONFIG = None if FIXED_CONFIG is None else _k.BWD_RC_CONFIGS[1]

if INTERPRETED or FIXED_CONFIG is not None:
    _fwd_tuned = _k.lif_fwd_kernel
    _bwd_tuned = _k.lif_bwd_kernel
    _bwd_rc_tuned = _k.lif_bwd_rc_kernel
else:
    # Keyed on a coarse N bucket (plus the arguments' dtypes, which the autotuner adds itself): a new
    # batch size neither re-tunes nor recompiles.
    _fwd_tuned = triton.autotune(_k.FWD_CONFIGS, key=["N_BUCKET"])(_k.lif_fwd_kernel)
    # The backward writes only outputs it fully overwrites, except the partial-sum rows, which a
    # config with fewer programs would leave stale: reset_to_zero clears them around benchmarking.
    _bwd_tuned = triton.autotune(_k.BWD_CONFIGS, key=["N_BUCKET"], reset_to_zero=["pgrad_ptr"])(_k.lif_bwd_kernel)
    _bwd_rc_tuned = triton.autotune(_k.BWD_RC_CONFIGS, key=["N_BUCKET"],
                                    reset_to_zero=["pgrad_ptr"])(_k.lif_bwd_rc_kernel)

# Plain tensors: an eager call. Anything else (FunctionalTensor, FakeTensor) is torch.compile tracing.
_EAGER_TYPES = (torch.Tensor, torch.nn.Parameter)
# The launch path in eager mode: False calls the kernel directly; True goes through wrap_triton as a
# traced call does (only to time the difference: ``lab``).
_EAGER_WRAP = False


def launch(kernel, grid, args: tuple, consts: dict) -> None:
    """Launch ``kernel`` on ``grid``: every launch of this module goes through here. The interpreter's
    kernels always run directly: their ops are opaque custom ops, and wrap_triton refuses them."""
    if not INTERPRETED and (_EAGER_WRAP or type(args[0]) not in _EAGER_TYPES):
        torch.library.wrap_triton(kernel)[grid](*args, **consts)
    else:
        kernel[grid](*args, **consts)


def _n_bucket(n) -> int:
    if not isinstance(n, int):  # symbolic under torch.compile(dynamic=True): Inductor tunes by itself
        return 0
    return min(max(n.bit_length() - 10, 0), 12)  # ≤1K, 2K, 4K, … neurons


def _cdiv(a, b):  # not triton.cdiv: a constexpr function in Triton 3.9, which unwraps its arguments per call
    return (a + b - 1) // b


def _grid(N: int, block: Optional[int]):
    if block is not None:
        return (_cdiv(N, block),)
    return lambda meta: (_cdiv(N, meta["BLOCK"]),)


# --- what one variant needs, made once ---------------------------------------------------------------
# kind → (BLOCK, num_warps) for every launch of that kind ("fwd", "bwd", "bwd_rc"), "chunk" → the
# recompute segment length, "knobs" → kind → extra constexpr arguments of that kind's kernel
# (``triton_kernels.py``: STREAM, STAGES of the forward and the state backward): set only by
# ``lab_variant``, to time variants side by side.
_LAB: dict = {}
# (kind, dtype, device type, surrogate id, flags…) → (kernel, constexpr kwargs, BLOCK or None when
# autotuned); one such table per lab variant (``_SPEC_SETS``), the defaults' under the key ().
_SPEC_SETS: dict = {(): {}}
_SPECS: dict = _SPEC_SETS[()]


def _config_for(kind: str, fixed) -> Tuple[object, dict, Optional[int]]:
    raw, tuned = {"fwd": (_k.lif_fwd_kernel, _fwd_tuned), "bwd": (_k.lif_bwd_kernel, _bwd_tuned),
                  "bwd_rc": (_k.lif_bwd_rc_kernel, _bwd_rc_tuned)}[kind]
    knobs = _LAB.get("knobs", {}).get(kind, {})
    if kind in _LAB:
        block, warps = _LAB[kind]
        return raw, {**knobs, "BLOCK": block, "num_warps": warps}, block
    if INTERPRETED:
        return raw, {**knobs, "BLOCK": _INTERPRET_BLOCK}, _INTERPRET_BLOCK
    if fixed is not None:
        return raw, dict(knobs, **fixed.kwargs, num_warps=fixed.num_warps), fixed.kwargs["BLOCK"]
    return tuned, dict(knobs), None


def _spec(key: tuple, kind: str, fixed, surrogate: int, x: torch.Tensor, flags: dict):
    spec = _SPECS.get(key)
    if spec is not None:
        return spec
    kernel, cfg, block = _config_for(kind, fixed)
    spec = (kernel, {**tsg.surrogate_args(surrogate, x, "lif_triton"), **flags, **cfg}, block)
    # A user's surrogate is looked up (and its Triton functions checked on a new device) on every call:
    # its id may be registered again with other functions.
    if surrogate < _sg.CUSTOM_ID_BASE:
        _SPECS[key] = spec
    return spec


@contextlib.contextmanager
def lab_variant(fwd=None, bwd=None, bwd_rc=None, chunk=None, knobs=None, eager_wrap=False):
    """Run the ops with explicit (BLOCK, num_warps) per kernel kind, another recompute segment length,
    extra constexpr ``knobs`` per kernel kind ({"fwd": {"STREAM": True}, …}) and/or wrap_triton in eager
    mode, instead of the defaults
    (the GPU check's ``lab`` stage). Not thread-safe; a variant's kernels compile on its first use. A
    recompute forward and its backward must run under the same ``chunk``."""
    global _EAGER_WRAP, _SPECS
    saved = dict(_LAB), _EAGER_WRAP, _SPECS
    _LAB.clear()
    _LAB.update({k: v for k, v in (("fwd", fwd), ("bwd", bwd), ("bwd_rc", bwd_rc), ("chunk", chunk),
                                   ("knobs", knobs)) if v is not None})
    _EAGER_WRAP = eager_wrap
    _SPECS = _SPEC_SETS.setdefault(repr(sorted(_LAB.items())), {}) if _LAB else _SPEC_SETS[()]
    try:
        yield
    finally:
        _LAB.clear()
        _LAB.update(saved[0])
        _EAGER_WRAP, _SPECS = saved[1], saved[2]


def _rc_chunk() -> int:
    return _LAB.get("chunk", contract.RECOMPUTE_CHUNK)


# float64: the kernels' float constants (v_r and κ; bn_lif adds tdBN's α, its statistics eps) as a
# float64 buffer (wide_ptr: a float argument reaches a kernel as fp32), one per (values, device), kept
# as the ops' other constants are (snn_fast/ops/common/consts.py: CUDA graphs read them at every replay).
def _wide_buffer(values: Tuple[float, ...], like: torch.Tensor, always: bool = False) -> torch.Tensor:
    """The buffer of ``values`` on ``like``'s device; without ``always``, only for float64 ``like``
    (the kernels read it in float64 only: ``like`` itself stands in, never read)."""
    if like.dtype != torch.float64 and not always:
        return like
    if type(like) not in _EAGER_TYPES:  # traced: a constant of the graph, not a cached tensor
        return torch.tensor(values, dtype=torch.float64, device=like.device)
    dev = like.device
    return device_consts.cached(("wide", values, dev), dev, lambda: device_consts.values(values, torch.float64, dev))


def _saves_h_minus_theta(dtype: torch.dtype) -> bool:
    """fp16/bf16 save H − θ in the storage dtype instead of H (``triton_kernels.py`` says why)."""
    return dtype in (torch.float16, torch.bfloat16)


def _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual, strict_threshold,
         reset_timing, return_v_seq, save_h, chunk=0):
    x = x.contiguous()
    v0 = v0.contiguous()
    params = params.contiguous()
    T, N = x.shape
    s = torch.empty_like(x)
    v_last = x.new_empty(N)
    v_seq = torch.empty_like(x) if return_v_seq else x.new_empty(0)
    if chunk:  # save="recompute": the V checkpoints (contract.checkpoint_rows), in the compute dtype
        saved = torch.empty((contract.checkpoint_rows(T, chunk), N), dtype=params.dtype, device=x.device)
    else:  # H (H − θ for fp16/bf16), or nothing for inference
        saved = torch.empty((T, N) if save_h else (0,), dtype=x.dtype, device=x.device)
    mask = noise_mask.contiguous() if noise_mask is not None else None
    if N > 0:
        uniform = contract.uniform_v0(v0, N)  # v0 [1]: one start for every neuron
        key = ("fwd", x.dtype, x.device.type, surrogate, hard_reset, decay_input, mask is not None, return_v_seq,
               save_h, chunk, strict_threshold, reset_timing, uniform)
        kernel, consts, block = _spec(key, "fwd", FIXED_CONFIG, surrogate, x, dict(
            HARD_RESET=hard_reset, DECAY_INPUT=decay_input, HAS_MASK=mask is not None, STORE_VSEQ=return_v_seq,
            SAVE_H=save_h, H_MINUS_THETA=_saves_h_minus_theta(x.dtype), WIDE=x.dtype == torch.float64,
            EXACT=EXACT_MUL, CHUNK=chunk, STRICT=strict_threshold, TIMING=reset_timing,
            UNIFORM_V0=uniform))
        # saved is both h_ptr and ck_ptr: the flags select the one the kernel writes
        launch(kernel, _grid(N, block),
               (x, v0, params, _wide_buffer((float(v_reset), float(reset_residual)), params),
                mask if mask is not None else x, s, v_last, v_seq, saved, saved,
                T, N, float(v_reset), _n_bucket(N)), consts)
    return s, v_last, v_seq, saved


def lif_fwd_triton(
    x: torch.Tensor, v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], surrogate: int,
    hard_reset: bool, v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float,
    strict_threshold: bool, reset_timing: int, return_v_seq: bool, save: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """save 0 ("state"): also saves H (H − θ for fp16/bf16); 1 ("recompute"): only the membrane every
    ``contract.RECOMPUTE_CHUNK`` steps; 2 (inference): nothing, 2b per element instead of 3b."""
    contract.check_op_args("lif_triton", x, v0, params, surrogate, save, reset_timing=reset_timing)
    return _fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, reset_residual,
                bool(strict_threshold), int(reset_timing), return_v_seq, save == contract.SAVE_STATE, _rc_chunk() if save == contract.SAVE_RECOMPUTE else 0)


def _bwd(kind, grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, surrogate, hard_reset, v_reset,
         decay_input, detach_reset, reset_residual, strict_threshold, reset_timing, need_param_grad, chunk=0):
    T, N = x.shape
    grad_s = grad_s.to(x.dtype).contiguous()
    x = x.contiguous()
    v0 = v0.contiguous()
    params = params.contiguous()
    gvl = grad_v_last.to(x.dtype).contiguous() if grad_v_last is not None else None
    gvs = grad_v_seq.to(x.dtype).contiguous() if grad_v_seq is not None and grad_v_seq.numel() > 0 else None
    mask = noise_mask.contiguous() if noise_mask is not None else None
    gx = torch.empty_like(x)
    gv0 = torch.empty_like(v0)
    partial = None
    if N > 0:
        uniform = contract.uniform_v0(v0, N)  # v0 [1]: one start for every neuron, no ∂L/∂v0 (NaN)
        key = (kind, x.dtype, x.device.type, surrogate, hard_reset, decay_input, detach_reset, mask is not None,
               gvl is not None, gvs is not None, need_param_grad, chunk, strict_threshold, reset_timing, uniform)
        flags = dict(HARD_RESET=hard_reset, DECAY_INPUT=decay_input, DETACH_RESET=detach_reset,
                     HAS_MASK=mask is not None, HAS_GVLAST=gvl is not None, HAS_GVSEQ=gvs is not None,
                     NEED_PARAM_GRAD=need_param_grad, WIDE=x.dtype == torch.float64, STRICT=strict_threshold,
                     TIMING=reset_timing, UNIFORM_V0=uniform)
        if kind == "bwd":
            flags["H_MINUS_THETA"] = _saves_h_minus_theta(x.dtype)
            kernel, consts, block = _spec(key, kind, FIXED_CONFIG, surrogate, x, flags)
        else:
            flags.update(EXACT=EXACT_MUL, CHUNK=chunk)
            kernel, consts, block = _spec(key, kind, _FIXED_RC_CONFIG, surrogate, x, flags)
        if need_param_grad:  # one row per program; zeroed when the autotuner may pick a larger BLOCK
            if block is not None:
                partial = torch.empty((_cdiv(N, block), 3), dtype=params.dtype, device=x.device)
            else:
                partial = torch.zeros((_cdiv(N, _MIN_BLOCK), 3), dtype=params.dtype, device=x.device)
        launch(kernel, _grid(N, block),
               (grad_s, gvl if gvl is not None else grad_s, gvs if gvs is not None else grad_s, x, v0, params,
                _wide_buffer((float(v_reset), float(reset_residual)), params), mask if mask is not None else x,
                saved, gx, gv0, partial if partial is not None else gv0,  # gv0: never written as partial sums
                T, N, float(v_reset), float(reset_residual), _n_bucket(N)), consts)
    grad_params = partial.sum(0) if partial is not None else torch.zeros_like(params)
    return gx, gv0, grad_params


def lif_bwd_triton(
    grad_s: torch.Tensor, grad_v_last: Optional[torch.Tensor], grad_v_seq: Optional[torch.Tensor], x: torch.Tensor,
    v0: torch.Tensor, params: torch.Tensor, noise_mask: Optional[torch.Tensor], saved: torch.Tensor, s: torch.Tensor,
    sg_grad: Optional[torch.Tensor], sg_dalpha: Optional[torch.Tensor], surrogate: int, hard_reset: bool,
    v_reset: float, decay_input: bool, detach_reset: bool, reset_residual: float, strict_threshold: bool,
    reset_timing: int, save: int, need_param_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``saved`` is the forward's H (H − θ for fp16/bf16) for save 0, its V checkpoints for save 1."""
    contract.check_op_args("lif_triton", x, v0, params, surrogate, save, (contract.SAVE_STATE, contract.SAVE_RECOMPUTE),
                           reset_timing)
    firing = (bool(strict_threshold), int(reset_timing))
    torch._check(sg_grad is None and sg_dalpha is None,
                 lambda: "lif_bwd_triton: sg_grad/sg_dalpha (a g′ given per element) run on the CPU kernel only")
    if save == contract.SAVE_STATE:
        T, N = x.shape
        torch._check(saved.shape == x.shape and saved.dtype == x.dtype,
                     lambda: f"lif_bwd_triton: `saved` must be the [T, N] state of lif_fwd_triton with save=0, "
                             f"{tuple(x.shape)} {x.dtype}, got {tuple(saved.shape)} {saved.dtype}")
        return _bwd("bwd", grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, saved, surrogate,
                    hard_reset, v_reset, decay_input, detach_reset, reset_residual, *firing, need_param_grad)
    T, N = x.shape
    chunk = _rc_chunk()
    rows = contract.checkpoint_rows(T, chunk)
    torch._check(saved.dim() == 2 and saved.shape[0] == rows and saved.shape[1] == N and saved.dtype == params.dtype,
                 lambda: f"lif_bwd_triton: `saved` must be the V checkpoints of lif_fwd_triton with save=1, "
                         f"[{rows}, {N}] {params.dtype}, got {tuple(saved.shape)} {saved.dtype}")
    ck = saved.contiguous() if saved.numel() > 0 else v0  # never read for T <= chunk
    return _bwd("bwd_rc", grad_s, grad_v_last, grad_v_seq, x, v0, params, noise_mask, ck, surrogate, hard_reset,
                v_reset, decay_input, detach_reset, reset_residual, *firing, need_param_grad, chunk)


# ---------------------------------------------------------------------------------------------
# Ops. On a GPU, ``triton_op`` + ``wrap_triton``: torch.compile sees through the op to the kernels
# (no graph break, Inductor can schedule them). Under the interpreter the kernels cannot be traced,
# so the same functions become an opaque ``custom_op`` with explicit fake (shape) functions.


def _fake_fwd(x, v0, params, noise_mask, surrogate, hard_reset, v_reset, decay_input, detach_reset,
              reset_residual, strict_threshold, reset_timing, return_v_seq, save):
    return contract.fake_fwd_outputs(x, v0, return_v_seq) + (
        contract.saved_like("triton", x, params, save, chunk=_rc_chunk()),)


FWD_NAME = "snn_fast::lif_fwd_triton"
BWD_NAME = "snn_fast::lif_bwd_triton"

for _name, _fn, _schema, _fake in ((FWD_NAME, lif_fwd_triton, contract.FWD_SCHEMA, _fake_fwd),
                                   (BWD_NAME, lif_bwd_triton, contract.BWD_SCHEMA, contract.fake_bwd)):
    if INTERPRETED:
        torch.library.custom_op(_name, mutates_args=(), schema=_schema)(_fn).register_fake(_fake)
    else:
        torch.library.triton_op(_name, mutates_args=(), schema=_schema)(_fn)
