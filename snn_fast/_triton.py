"""Is Triton usable here, and are its kernels interpreted? The one answer every op's Triton backend uses.

``triton.jit`` decides when a kernel is decorated whether it becomes a compiled ``JITFunction`` or,
under ``TRITON_INTERPRET=1``, an ``InterpretedFunction`` that runs on CPU tensors through numpy. So
"interpreted" is read the same way here: by decorating a no-op and looking at what comes back, once,
on first use (the Triton kernel modules ask when they are imported, so they and this answer agree).
Importing this module does not import triton: the package stays importable without it.
"""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import torch

_STATE: Optional[Tuple[Optional[ImportError], bool]] = None  # (import error, interpreted), once known
_LOCK = threading.Lock()  # the first answer is computed once, by one thread (the others wait for it)


def _noop():
    pass


def _state() -> Tuple[Optional[ImportError], bool]:
    global _STATE
    state = _STATE
    if state is not None:
        return state
    with _LOCK:  # first use may come inside a torch.compile trace: see _import_message, _interpreted
        if _STATE is None:
            try:
                import triton
            except ImportError as e:
                _STATE = (e, False)
            else:
                try:
                    from triton.runtime.interpreter import InterpretedFunction
                except ImportError:  # pragma: no cover - every triton with an interpreter has it here
                    _STATE = (None, False)
                else:
                    _STATE = (None, isinstance(triton.jit(_noop), InterpretedFunction))
        return _STATE


def import_error() -> Optional[ImportError]:
    """Why ``import triton`` failed, or None."""
    return _state()[0]


# Constants of the process, so torch.compile runs them once instead of tracing them (the first
# answer may be asked inside a trace, which cannot follow triton's import or its jit decorator).
@torch.compiler.assume_constant_result
def _import_message() -> str:
    err = import_error()
    return "" if err is None else str(err)


@torch.compiler.assume_constant_result
def _interpreted() -> bool:
    return _state()[1]


def interpreted() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1`` before triton's import)."""
    return _interpreted()


def unavailable_reason(x: torch.Tensor, arg: str = "x") -> Optional[str]:
    """None when a Triton kernel can run on ``x`` (the op's tensor argument named ``arg``), else why not."""
    err = _import_message()
    if err:
        return f"the 'triton' backend needs triton (`pip install triton`): {err}"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreted():
        return None
    hint = ("; for CPU tensors (slow, for testing) set TRITON_INTERPRET=1 before triton is first imported"
            if x.device.type == "cpu" else "")
    return f"the 'triton' backend runs on CUDA tensors, {arg} is on {x.device}{hint}"
