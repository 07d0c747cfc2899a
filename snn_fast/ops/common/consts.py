"""The small constant tensors the fused ops pass to their kernels, made once per key and kept.

They are the [3] params (k, θ, α) of float arguments, a start every neuron shares ([1]), batch
norm's missing weight and bias, and the float64 buffer of Triton's float constants. The ops never
write their inputs, so one tensor serves every call. Without the cache, each call would pay a
host-to-device copy for each constant, and on a GPU that copy syncs.

**CUDA graphs.** A captured graph keeps the address of every tensor its kernels read, and it holds
no reference to any of them. So the rules are:

- **A constant is never evicted.** An eviction would free a tensor that a captured call found here.
  Its block would then be reused, and every replay would read whatever was written there, silently.
  There is a bound (``MAX_ENTRIES``): past it, a new key is made for each call and not kept.
- **A missing constant is made differently during a capture.** A host-to-device copy syncs, and
  torch refuses a sync during a capture. So the constant is made by fill kernels instead. Those
  kernels are captured too, which means the values exist only when the graph replays. The tensor is
  therefore not kept for later eager calls. As a temporary of the capture, it lives in the graph's
  memory pool.

Thread-safe (tests/test_threads.py): a hit is one dict lookup, atomic without a lock; a miss makes
the tensor, waits for it on a GPU (another stream or thread may read it next), then inserts it under
``_LOCK``.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, Sequence

import torch

MAX_ENTRIES = 1024  # tiny tensors (a CUDA block is 512 B): a model's constants, or a sweep's first 1024
_CACHE: Dict[tuple, torch.Tensor] = {}
_LOCK = threading.Lock()


def compiling() -> bool:
    """True inside a torch.compile trace, where constants belong to the graph, not to this cache."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def capturing(device: torch.device) -> bool:
    """True while the current CUDA stream is being captured into a graph and ``device`` is a GPU
    (the current device's stream: the one the ops launch on). Never touches CUDA for another device."""
    return device.type == "cuda" and not compiling() and torch.cuda.is_current_stream_capturing()


def values(vals: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``vals`` as a [len(vals)] tensor on ``device``: one copy from the host, or during a CUDA graph
    capture one fill kernel per value (a Python float is a double, so a float64 fill is exact)."""
    if not capturing(device):
        return torch.tensor(list(vals), dtype=dtype, device=device)
    t = torch.empty(len(vals), dtype=dtype, device=device)
    for i, v in enumerate(vals):
        t[i].fill_(float(v))
    return t


def cached(key: tuple, device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``make()`` gives for ``key`` (which names ``device``), made once and kept (see the
    module's docstring). ``make`` must launch no copy from the host: build it with ``values`` or
    ``torch.full``."""
    if compiling():
        return make()
    key = key + (torch.is_inference_mode_enabled(),)  # an inference tensor cannot be saved for a backward
    t = _CACHE.get(key)
    if t is not None:
        return t
    if capturing(device):
        return make()  # filled by the graph's own kernels: not valid outside its replays, so not kept
    with torch.no_grad():
        t = make()
    if device.type == "cuda":  # a fill kernel is asynchronous: done before another stream or thread reads it
        torch.cuda.current_stream(device).synchronize()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:  # another thread made it meanwhile: share one tensor
            return hit
        if len(_CACHE) < MAX_ENTRIES:
            _CACHE[key] = t
    return t
