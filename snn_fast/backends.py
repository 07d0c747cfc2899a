"""Backend choice for every op: the ``backend=`` argument, then ``SNN_FAST_BACKEND``, then automatic.

Automatic: a CUDA tensor gets the fastest GPU backend that is available (see ``_gpu_preference``);
a CPU tensor gets the C++ kernel; anything else (or a user surrogate, which has no kernel) gets the
reference. A backend asked for by name that cannot run raises an error saying how to get it; only
``auto`` falls back.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _ext

NAMES = ("auto", "reference", "cpu", "cuda", "triton")
ENV_VAR = "SNN_FAST_BACKEND"

# name -> probe(x) returning None when the backend can run on x, else the reason it cannot.
_PROBES: Dict[str, Callable[[torch.Tensor], Optional[str]]] = {}


def register_probe(name: str, probe: Callable[[torch.Tensor], Optional[str]]) -> None:
    _PROBES[name] = probe


def _probe_reference(x):
    return None


def _probe_cpu(x):
    if x.device.type != "cpu":
        return f"the 'cpu' backend runs on CPU tensors, x is on {x.device}"
    if not _ext.has_kernel("lif_fwd", "CPU"):
        return _ext.missing_message("the 'cpu' backend")
    return None


def _probe_cuda(x):
    if x.device.type != "cuda":
        return f"the 'cuda' backend runs on CUDA tensors, x is on {x.device}"
    if not _ext.has_kernel("lif_fwd", "CUDA"):
        return _ext.missing_message("the 'cuda' backend (built with a CUDA torch and nvcc)")
    return None


def _probe_triton(x):
    try:
        from .ops.lif import triton as _lt  # noqa: F401
    except ImportError as e:
        return f"the 'triton' backend needs triton (`pip install triton`): {e}"
    return _lt.unavailable_reason(x)


register_probe("reference", _probe_reference)
register_probe("cpu", _probe_cpu)
register_probe("cuda", _probe_cuda)
register_probe("triton", _probe_triton)


def _gpu_preference(x: torch.Tensor) -> Tuple[str, ...]:
    """Order to try GPU backends in; refined by a measured table once GPU timings exist."""
    try:
        from .ops.lif import autotable

        return autotable.preference(x)
    except ImportError:
        return ("cuda", "triton")


def requested(backend: Optional[str]) -> str:
    name = backend if backend not in (None, "auto") else os.environ.get(ENV_VAR, "auto")
    name = (name or "auto").lower()
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {NAMES}")
    return name


def select(backend: Optional[str], x: torch.Tensor, has_kernel: bool = True) -> str:
    """Resolve ``backend`` for input ``x``. ``has_kernel=False`` (a user surrogate) forces the reference."""
    name = requested(backend)
    if name != "auto":
        if name != "reference" and not has_kernel:
            raise ValueError(
                f"backend {name!r} cannot run a user-registered surrogate (it has no kernel); "
                "use backend='reference' or 'auto'"
            )
        why = _PROBES[name](x)
        if why is not None:
            raise RuntimeError(why)
        return name
    if not has_kernel:
        return "reference"
    order = _gpu_preference(x) if x.device.type == "cuda" else ("cpu",)
    for cand in order:
        if _PROBES[cand](x) is None:
            return cand
    return "reference"
