"""W1s: the host time of one small LIF forward+backward, beside plain torch in the same run.

    python -m pytest benchmarks/test_bench_overhead.py --benchmark-only -s     # or: make bench

A layer of a few thousand neurons moves kilobytes: its kernels take microseconds, so what a step
costs is the host work around them (Python, dispatch, autograd). Rows, fwd+bwd of ``[4, 2, 64]`` on
the CPU with one thread (the shape and thread count of the guard in tests/test_host_work.py):

- ``snn_fast-module``: ``snn_fast.nn.LIF`` (the drop-in module, its state reset every call);
- ``snn_fast-functional``: ``snn_fast.lif_multistep``;
- ``torch-4ops``: ``sigmoid(2x)·x + x − 1``, four elementwise torch ops and their autograd;
- ``torch-sigmoid``: ``sigmoid(2x)``, the smallest autograd graph worth the name.

On a GPU the same rows at ``[4, 65536]`` per GPU backend: wall time per call with the queue kept
busy (host-bound at this size) and ``torch.cuda`` events (GPU-timed).
"""
from __future__ import annotations

import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402
from snn_fast import nn as snn  # noqa: E402

SHAPE = {"cpu": (4, 2, 64), "cuda": (4, 65536)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _providers(device, x, g):
    def fwd_bwd(run):
        def f():
            x.grad = None
            run(x).backward(g)
        return f

    backends = ["cpu"] if device == "cpu" else [n for n in ("cuda", "triton")
                                                 if snn_fast.backends.select(n, x, op=_lif_table()) == n]
    fns = {}
    for b in backends:
        m = snn.LIF(tau=2.0, backend=b).to(device)

        def module(x, m=m):
            m.reset()
            return m(x)

        tag = "" if device == "cpu" else f"-{b}"
        fns[f"snn_fast-module{tag}"] = fwd_bwd(module)
        fns[f"snn_fast-functional{tag}"] = fwd_bwd(lambda x, b=b: snn_fast.lif_multistep(x, backend=b)[0])
    fns["torch-4ops"] = fwd_bwd(lambda x: torch.sigmoid(x * 2.0) * x + x - 1.0)
    fns["torch-sigmoid"] = fwd_bwd(lambda x: torch.sigmoid(2.0 * x))
    return fns


def _lif_table():
    from snn_fast.ops.lif.function import BACKENDS

    return BACKENDS


def _host_ms(fn, device, n=200, rounds=5):
    if rounds <= 1:  # the plumbing test: one short round
        n = 20
    """Wall time per call of ``n`` back-to-back calls (median and 20/80 % of ``rounds``): on a GPU the
    host, not the kernels, is the bottleneck at these sizes, so this is the host time per call."""
    import numpy as np

    for _ in range(20):
        fn()
    ts = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) / n * 1e3)
    return tuple(float(q) for q in np.quantile(ts, [0.5, 0.2, 0.8]))


def bench(device, threads=1, rounds=5):
    prev = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        x = torch.randn(SHAPE[device], device=device).requires_grad_(True)
        g = torch.randn_like(x)
        fns = _providers(device, x, g)
        host = {name: _host_ms(fn, device, rounds=rounds) for name, fn in fns.items()}
        gpu = common.time_fns(fns, device) if device == "cuda" else {}
    finally:
        torch.set_num_threads(prev)
    rows = []
    base = host["torch-4ops"][0]
    for name in fns:
        med, q20, q80 = host[name]
        rows.append(common.record(op="lif-host", provider=name, mode="fwd+bwd (host)",
                                  shape=str(list(SHAPE[device])), dtype="float32", device=common.device_name(device),
                                  median_ms=med, q20_ms=q20, q80_ms=q80, speedup=base / med, threads=threads))
        if name in gpu:
            med, q20, q80 = gpu[name]
            rows.append(common.record(op="lif-host", provider=name, mode="fwd+bwd (GPU-timed)",
                                      shape=str(list(SHAPE[device])), dtype="float32",
                                      device=common.device_name(device), median_ms=med, q20_ms=q20, q80_ms=q80,
                                      threads=threads))
    return rows


@pytest.mark.parametrize("device", DEVICES)
def test_bench_overhead(benchmark, device):
    rows = bench(device)
    print()
    print(common.markdown_table(rows))
    assert any(r["provider"].startswith("snn_fast") for r in rows)
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("provider", "mode", "median_ms")} for r in rows]
    x = torch.randn(SHAPE[device], device=device).requires_grad_(True)
    benchmark.pedantic(lambda: snn_fast.lif_multistep(x)[0].sum().backward(), rounds=10, warmup_rounds=2)


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    print(common.markdown_table(bench(dev)))
