"""Which GPU backend runs an op faster, from a checked-in table of measured times.

An op whose table in ``ops/<op>/function.py`` names an :class:`AutoTable` gets its GPU order from it
when ``backend="auto"`` and the input is a CUDA tensor (``snn_fast.backends``). Today the LIF op has
one: ``snn_fast/ops/lif/autotable.json`` (or the file named by ``SNN_FAST_AUTOTABLE``), written by
``benchmarks/gpu_autotable.py``, with forward+backward times per (dtype, T bucket, N bucket) for
each of the backends compared ('cuda' and 'triton'):

    {"version": 1, "entries": [{"device": "NVIDIA H100 80GB HBM3", "dtype": "float32", "T": 16,
      "N": 4194304, "cuda_ms": ..., "triton_ms": ...}, ...], ...}

T is the input's leading (time) dimension and N the number of elements of one step, ``x[0].numel()``.
Lookup: the entries of the same dtype (those measured on the same GPU model when there are any),
then the one nearest in (log2 T, log2 N); the backends by that entry's times, fastest first.

The checked-in table holds 12 entries measured on an H200 (float32 and bfloat16, T ∈ {4, 16, 64},
N ∈ {65536, 4194304}; its ``note`` says how). Another GPU model uses the nearest entry of the same
dtype. Default when the table has no entry of the dtype (or no table): ``DEFAULT`` = ("cuda",
"triton"). Reason, not measurement: the CUDA kernels are compiled ahead of time (no JIT compile on the first call of
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

DEFAULT: Tuple[str, ...] = ("cuda", "triton")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _device_name(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return None
    try:
        return torch.cuda.get_device_name(x.device)
    except Exception:  # noqa: BLE001 - a name is only a preference among entries
        return None


class AutoTable:
    """The measured table of one op: ``path`` (overridden by the environment variable ``env_var``)
    holds ``<backend>_ms`` for each name of ``backends`` (listed in the default order)."""

    def __init__(self, path: str, env_var: Optional[str] = None, backends: Tuple[str, ...] = DEFAULT):
        self.path = path
        self.env_var = env_var
        self.backends = tuple(backends)
        self._tables: Dict[str, list] = {}
        self._decisions: Dict[tuple, Tuple[str, ...]] = {}

    def table_path(self) -> str:
        return (os.environ.get(self.env_var) if self.env_var else None) or self.path

    def load(self, path: Optional[str] = None) -> list:
        """The table's entries (cached per path). A missing file is an empty table; a malformed one warns."""
        path = path or self.table_path()
        hit = self._tables.get(path)  # one read: a concurrent clear_cache cannot make it a KeyError
        if hit is not None:
            return hit
        need = ("dtype", "T", "N") + tuple(f"{b}_ms" for b in self.backends)
        entries = []
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                for e in data.get("entries", []):
                    if all(k in e for k in need):
                        entries.append(e)
            except (OSError, ValueError, AttributeError) as err:
                warnings.warn(f"snn_fast: ignoring the autotable {path}: {err}", stacklevel=2)
                entries = []
        self._tables[path] = entries
        return entries

    def clear_cache(self) -> None:
        self._tables.clear()
        self._decisions.clear()

    def order_for(self, entries: list, dtype: str, T: int, N: int, device: Optional[str] = None) -> Tuple[str, ...]:
        """Fastest-first order from the entry nearest to (T, N) among those of ``dtype``; the default
        order if none. A backend without a finite positive time goes after those measured."""
        cands = [e for e in entries if e["dtype"] == dtype]
        same_gpu = [e for e in cands if device is not None and e.get("device") == device]
        cands = same_gpu or cands
        if not cands:
            return self.backends
        lt, ln = math.log2(max(T, 1)), math.log2(max(N, 1))
        best = min(cands, key=lambda e: ((math.log2(max(e["T"], 1)) - lt) ** 2
                                         + (math.log2(max(e["N"], 1)) - ln) ** 2, e["T"], e["N"]))

        def rank(i_b):
            i, b = i_b
            ms = float(best[f"{b}_ms"])
            ok = math.isfinite(ms) and ms > 0
            return (not ok, ms if ok else 0.0, i)  # ties and unmeasured keep the default order

        return tuple(b for _, b in sorted(enumerate(self.backends), key=rank))

    def preference(self, x: torch.Tensor) -> Tuple[str, ...]:
        """Order in which to try the GPU backends for ``x`` ([T, *]); cached per (device, dtype, T, N)."""
        if not self.load(self.table_path()):
            return self.backends  # nothing measured: no need to read (and, under torch.compile, specialise) sizes
        T = int(x.shape[0]) if x.dim() else 1
        N = int(x[0].numel()) if x.dim() else 1
        key = (self.table_path(), str(x.device), x.dtype, T, N)
        hit = self._decisions.get(key)
        if hit is None:
            hit = self._decisions[key] = self.order_for(self.load(key[0]), _dtype_name(x.dtype), T, N,
                                                        _device_name(x))
        return hit
