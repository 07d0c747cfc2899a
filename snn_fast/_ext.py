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


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch.ops.snn_fast.<op> has a kernel for CPU or CUDA in this build."""
    if not HAS_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"snn_fast::{op}", dispatch_key)


def missing_message(what: str) -> str:
    why = f" (import failed: {C_IMPORT_ERROR})" if C_IMPORT_ERROR else ""
    return f"{what} needs the compiled extension snn_fast._C, which is not available{why}; {BUILD_HINT}"
