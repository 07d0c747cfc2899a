"""Which GPU backend runs the LIF op faster, from a checked-in table of measured times.

``snn_fast.backends`` asks :func:`preference` for the order in which to try the GPU backends when
``backend="auto"`` and ``x`` is a CUDA tensor. The table, ``autotable.json`` beside this file (or
the file named by ``SNN_FAST_AUTOTABLE``), holds forward+backward times measured by
``benchmarks/gpu_autotable.py`` per (dtype, T bucket, N bucket) for the 'cuda' and 'triton' backends:

    {"version": 1, "entries": [{"device": "NVIDIA H100 80GB HBM3", "dtype": "float32", "T": 16,
      "N": 4194304, "cuda_ms": ..., "triton_ms": ...}, ...], ...}

Lookup: the entries of the same dtype (those measured on the same GPU model when there are any),
then the one nearest in (log2 T, log2 N); the faster backend of that entry comes first.

Default when the table has no entry for the case (as checked in: no GPU was available to measure
on, so the table is empty and no numbers were invented): ``DEFAULT`` = ("cuda", "triton"). Reason,
not measurement: the CUDA kernels are compiled ahead of time (no JIT compile on the first call of
each new configuration) and move the same bytes as the Triton design (6 passes over [T, N]), so
neither is expected to be faster a priori; the order only decides who runs when both are present.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, Optional, Tuple

import torch

BACKENDS = ("cuda", "triton")
DEFAULT: Tuple[str, ...] = ("cuda", "triton")
ENV_VAR = "SNN_FAST_AUTOTABLE"
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autotable.json")

_tables: Dict[str, list] = {}
_decisions: Dict[tuple, Tuple[str, ...]] = {}


def table_path() -> str:
    return os.environ.get(ENV_VAR) or TABLE_PATH


def load(path: Optional[str] = None) -> list:
    """The table's entries (cached per path). A missing file is an empty table; a malformed one warns."""
    path = path or table_path()
    if path in _tables:
        return _tables[path]
    entries = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            for e in data.get("entries", []):
                if all(k in e for k in ("dtype", "T", "N", "cuda_ms", "triton_ms")):
                    entries.append(e)
        except (OSError, ValueError, AttributeError) as err:
            warnings.warn(f"snn_fast: ignoring the LIF autotable {path}: {err}", stacklevel=2)
            entries = []
    _tables[path] = entries
    return entries


def clear_cache() -> None:
    _tables.clear()
    _decisions.clear()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _device_name(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return None
    try:
        return torch.cuda.get_device_name(x.device)
    except Exception:  # noqa: BLE001 - a name is only a preference among entries
        return None


def order_for(entries: list, dtype: str, T: int, N: int, device: Optional[str] = None) -> Tuple[str, ...]:
    """Faster-first order from the entry nearest to (T, N) among those of ``dtype``; DEFAULT if none."""
    cands = [e for e in entries if e["dtype"] == dtype]
    same_gpu = [e for e in cands if device is not None and e.get("device") == device]
    cands = same_gpu or cands
    if not cands:
        return DEFAULT
    lt, ln = math.log2(max(T, 1)), math.log2(max(N, 1))
    best = min(cands, key=lambda e: ((math.log2(max(e["T"], 1)) - lt) ** 2 + (math.log2(max(e["N"], 1)) - ln) ** 2,
                                     e["T"], e["N"]))
    c, t = float(best["cuda_ms"]), float(best["triton_ms"])
    if not (math.isfinite(c) and c > 0):
        return ("triton", "cuda") if math.isfinite(t) and t > 0 else DEFAULT
    if not (math.isfinite(t) and t > 0):
        return ("cuda", "triton")
    return ("cuda", "triton") if c <= t else ("triton", "cuda")


def preference(x: torch.Tensor) -> Tuple[str, ...]:
    """Order in which to try the GPU backends for ``x`` ([T, *]); cached per (device, dtype, T, N)."""
    if not load(table_path()):
        return DEFAULT  # nothing measured: no need to read (and, under torch.compile, specialise) sizes
    T = int(x.shape[0]) if x.dim() else 1
    N = int(x[0].numel()) if x.dim() else 1
    key = (table_path(), str(x.device), x.dtype, T, N)
    hit = _decisions.get(key)
    if hit is None:
        hit = _decisions[key] = order_for(load(key[0]), _dtype_name(x.dtype), T, N, _device_name(x))
    return hit
