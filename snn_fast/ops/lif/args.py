"""The user-facing arguments of every LIF entry point (reference and fused): their checks, and their
translation into the kernels' parametrisation. What the fused ops themselves take and return is
``contract.py``.

Turns the user-facing arguments (τ or decay, θ, α, v_reset, …) into the kernel's parametrisation:
``k`` = 1/τ = 1 − λ (the leak), ``theta``, ``alpha``, plus plain-Python flags. Each of k, θ, α stays
a Python float or a tensor that may require grad, so autograd carries parameter gradients through
whatever function of a learnable parameter the caller used (1/τ, 1 − λ, sigmoid(w)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ... import surrogate as _sg
from ..common import consts

Scalar = Union[float, int, torch.Tensor]


@dataclass(frozen=True)
class LIFFlags:
    """The non-learnable options; hashable, so kernels can specialise on them."""

    surrogate_id: int
    hard_reset: bool
    v_reset: float  # used only when hard_reset; soft reset charges towards 0
    decay_input: bool  # False for IF (k = 0)
    detach_reset: bool
    reset_residual: float  # κ
    fire_at_threshold: bool = True  # Θ(0) = 1 (fire on H ≥ θ); False: fire on H > θ only
    reset_timing: str = "after_fire"  # one of RESET_TIMINGS

    # ``op_kwargs``: the flags by the fused ops' argument names; ``op_args``: the same values in the
    # schema's order (contract.FLAG_ARGS), for the eager call. Made once per flags object as plain
    # attributes (not fields: equality and hashing ignore them; not cached_property: its lock is a
    # context manager torch.compile cannot trace).
    def __post_init__(self):
        self._derive()

    def __setstate__(self, state):  # unpickling skips __post_init__ (and older pickles lack op_args)
        self.__dict__.update(state)
        self._derive()

    def _derive(self) -> None:
        kw = dict(surrogate=self.surrogate_id, hard_reset=self.hard_reset, v_reset=self.v_reset,
                  decay_input=self.decay_input, detach_reset=self.detach_reset, reset_residual=self.reset_residual,
                  strict_threshold=not self.fire_at_threshold,
                  reset_timing=RESET_TIMINGS.index(self.reset_timing))
        object.__setattr__(self, "op_kwargs", kw)
        object.__setattr__(self, "op_args", tuple(kw.values()))


# When the reset happens (docs/spec.md §2 reset; reference.py is the definition):
#   "after_fire"  V_t = reset(H_t, S_t) right after the spike (SpikingJelly, Norse).
#   "delayed"     the membrane carried is the pre-reset H; at the next step the pending reset
#                 R = Θ(V_{t−1} − θ) (recomputed from it, detached) is applied: soft H = charge(V) − R·θ
#                 (after the decay), hard V ← R·V_r + (1 − R)·V before the charge (snnTorch reset_delay=True).
#   "none"        no reset at all: V_t = H_t (snnTorch reset_mechanism="none").
#   "after_fire_pending"  snnTorch reset_delay=False: R applied as in "delayed", and after the spike
#                 the reset of S_t − R ("avoid a double reset"); reference backend only.
# The pending R never carries a gradient; detach_reset applies to the after-fire reset.
# The op's reset_timing is the index here (contract.RESET_AFTER_FIRE, …).
RESET_TIMINGS = ("after_fire", "delayed", "none", "after_fire_pending")
# the timings the fused kernels run: the C++ CPU kernel and Triton all three; the CUDA kernel
# "after_fire" only (csrc/cuda/lif_common.cuh load_params says why). The others: backend='reference'.
KERNEL_RESET_TIMINGS = ("after_fire", "delayed", "none")
CUDA_RESET_TIMINGS = ("after_fire",)


_is_compiling = consts.compiling


def _check_scalar(name: str, value, lo=None, hi=None, lo_open=True, hi_open=True, allow_inf=False):
    """Validate a scalar parameter (float or 0-d/1-element tensor) and return it unchanged."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if _is_compiling() or consts.capturing(value.device):
            return value  # its value check would sync: a graph break, or torch's error inside a CUDA graph capture
        v = float(value.detach().reshape(()).item())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    elif _is_compiling() and isinstance(value, torch.SymFloat):  # dynamic=True traces floats symbolically
        return value
    else:
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    # comparisons rather than math.isnan/isinf: torch.compile(dynamic=True) traces them on symbolic floats
    if v != v or (abs(v) == math.inf and not allow_inf):
        raise ValueError(f"{name} must be finite, got {v}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {v}")
    return value


def resolve(
    tau: Optional[Scalar],
    decay: Optional[Scalar],
    decay_input: bool,
    v_threshold: Scalar,
    v_reset: Optional[float],
    detach_reset: bool,
    surrogate,
    alpha: Optional[Scalar],
    reset_residual: float,
    fire_at_threshold: bool = True,
    reset_timing: str = "after_fire",
):
    """Return ``(k, theta, alpha, flags, surrogate)`` after checking every argument."""
    sg = _sg.get(surrogate)
    for name, flag in (("decay_input", decay_input), ("detach_reset", detach_reset),
                       ("fire_at_threshold", fire_at_threshold)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    if tau is not None and decay is not None:
        raise ValueError("give either tau or decay, not both")
    if decay is not None:
        _check_scalar("decay", decay, lo=0.0, hi=1.0)
        k = 1.0 - decay
    else:
        if tau is None:
            tau = 2.0  # the default when neither τ nor decay is given (SpikingJelly's)
        # IF is a structural choice (no leak, decay_input ignored): only a float inf selects it
        _check_scalar("tau", tau, lo=1.0, allow_inf=not isinstance(tau, torch.Tensor))
        if not isinstance(tau, torch.Tensor) and tau == math.inf:
            k = 0.0
        else:
            k = 1.0 / tau
    is_if = not isinstance(k, torch.Tensor) and k == 0.0
    _check_scalar("v_threshold", v_threshold)
    if v_reset is not None:
        if isinstance(v_reset, torch.Tensor):
            raise TypeError("v_reset must be a float or None (soft reset), not a tensor")
        _check_scalar("v_reset", v_reset)
    if alpha is None:
        alpha = sg.alpha if sg.alpha is not None else 1.0
    else:  # surrogates without a width (straight_through, spike_gate) accept and ignore α
        _check_scalar("alpha", alpha, lo=sg.alpha_min)
    if isinstance(reset_residual, torch.Tensor):
        raise TypeError("reset_residual must be a float")
    _check_scalar("reset_residual", reset_residual)
    if reset_timing not in RESET_TIMINGS:
        raise ValueError(f"reset_timing must be one of {RESET_TIMINGS}, got {reset_timing!r}")
    if reset_timing == "delayed" and not detach_reset:
        raise ValueError("reset_timing='delayed' needs detach_reset=True: its reset is recomputed from the "
                         "carried membrane without a gradient (as snnTorch's)")
    if reset_timing == "none" and v_reset is not None:
        raise ValueError("reset_timing='none' has no reset: pass v_reset=None")
    flags = LIFFlags(
        surrogate_id=sg.id,
        hard_reset=v_reset is not None,
        v_reset=float(v_reset) if v_reset is not None else 0.0,
        decay_input=bool(decay_input) and not is_if,
        detach_reset=bool(detach_reset),
        reset_residual=float(reset_residual),
        fire_at_threshold=bool(fire_at_threshold),
        reset_timing=reset_timing,
    )
    return k, v_threshold, alpha, flags, sg


def check_x(x: torch.Tensor, allow_float64: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    ok = (torch.float32, torch.float16, torch.bfloat16) + ((torch.float64,) if allow_float64 else ())
    if x.dtype not in ok:
        raise TypeError(f"x must have dtype in {[str(d) for d in ok]}, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must be time-first [T, *] with at least one dimension")
    if x.shape[0] == 0:
        raise ValueError("x has T = 0 time steps; need T >= 1")


def check_param_devices(x: torch.Tensor, **params) -> None:
    """Tensor τ/decay/θ/α: on x's device, or on the CPU (moved to x's device at each call), but not on
    the CPU inside a CUDA graph capture, where that copy from the host cannot be captured."""
    for name, p in params.items():
        if isinstance(p, torch.Tensor) and p.device != x.device:
            if p.device.type != "cpu":
                raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
            if consts.capturing(x.device):
                raise ValueError(f"{name} is on the CPU and x on {x.device}: inside a CUDA graph capture its copy "
                                 f"to {x.device} cannot be captured; put {name} on {x.device}")


def initial_state(x: torch.Tensor, v0, flags: LIFFlags) -> torch.Tensor:
    """Broadcast ``v0`` (None, float or tensor) to ``x[0]``'s shape, dtype and device."""
    shape = x.shape[1:]
    if v0 is None:
        return torch.full(shape, flags.v_reset if flags.hard_reset else 0.0, dtype=x.dtype, device=x.device)
    if isinstance(v0, (int, float)) and not isinstance(v0, bool):
        if v0 != v0 or abs(v0) == math.inf:
            raise ValueError(f"v0 must be finite, got {v0}")
        return torch.full(shape, float(v0), dtype=x.dtype, device=x.device)
    if not isinstance(v0, torch.Tensor):
        raise TypeError(f"v0 must be None, a float or a tensor, got {type(v0).__name__}")
    if v0.device != x.device:
        raise ValueError(f"v0 is on {v0.device} but x is on {x.device}; put them on the same device")
    if not v0.is_floating_point():
        raise TypeError(f"v0 must be a floating-point tensor, got {v0.dtype}")
    try:
        torch.broadcast_shapes(v0.shape, shape)
        ok = torch.broadcast_shapes(v0.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"v0 of shape {tuple(v0.shape)} does not broadcast to x[0]'s shape {tuple(shape)}")
    return v0.to(x.dtype).expand(shape)


def check_noise_mask(x: torch.Tensor, noise_mask) -> Optional[torch.Tensor]:
    if noise_mask is None:
        return None
    if not isinstance(noise_mask, torch.Tensor):
        raise TypeError("noise_mask must be a bool tensor or None")
    if noise_mask.shape != x.shape:
        raise ValueError(f"noise_mask has shape {tuple(noise_mask.shape)}, x has {tuple(x.shape)}; they must match")
    if noise_mask.device != x.device:
        raise ValueError(f"noise_mask is on {noise_mask.device} but x is on {x.device}")
    if noise_mask.dtype != torch.bool:
        raise TypeError(f"noise_mask must be torch.bool (True = emit the spike), got {noise_mask.dtype}")
    return noise_mask


def noise_mask_like(x: torch.Tensor, p: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ASGL mask m ~ Bernoulli(1 − p): True = emit the spike, False = emit the analog value (docs/spec.md §4)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise probability p must be in [0, 1], got {p}")
    return torch.rand(x.shape, device=x.device, generator=generator) >= p
