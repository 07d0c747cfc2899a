"""Loads the compiled extension snn_fast._C if it was built; the package works without it."""
from __future__ import annotations

import torch

BUILD_HINT = (
    "build it from the repository root with `make build` or "
    "`pip install --no-build-isolation -e .` (CUDA kernels need a CUDA build of torch and nvcc)"
)

try:
    from . import _C  # noqa: F401  (registers torch.ops.snn_fast.*)

    HAS_C = True
    C_IMPORT_ERROR = None
except ImportError as e:  # not built, or built against another torch
    HAS_C = False
    C_IMPORT_ERROR = e


if HAS_C and hasattr(torch.ops.snn_fast, "cpu_cache_empty_like"):
    # The output cache's tensor op (csrc/cpu/output_cache.h): its fake, for torch.compile and opcheck.
    torch.library.register_fake("snn_fast::cpu_cache_empty_like")(
        lambda like: torch.empty_like(like, memory_format=torch.contiguous_format))


def _query(op: str, dispatch_key: str) -> bool:
    if not HAS_C:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"snn_fast::{op}", dispatch_key)
    except RuntimeError:  # an op this build of _C does not define (built from older sources)
        return False


# What this build registered is fixed once _C is loaded. Answering from a dict keeps backend
# selection plain Python that torch.compile traces without a graph break.
_KERNELS = {(op, key): _query(op, key) for op in ("lif_fwd", "tempotron_fwd", "bn_lif_fwd") for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch.ops.snn_fast.<op> has a kernel for CPU or CUDA in this build."""
    if (op, dispatch_key) not in _KERNELS:
        _KERNELS[(op, dispatch_key)] = _query(op, dispatch_key)
    return _KERNELS[(op, dispatch_key)]


def missing_message(what: str) -> str:
    why = f" (import failed: {C_IMPORT_ERROR})" if C_IMPORT_ERROR else ""
    return f"{what} needs the compiled extension snn_fast._C, which is not available{why}; {BUILD_HINT}"
