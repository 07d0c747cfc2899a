"""Per-call latency of tiny LIF calls on the CPU, idle and with a competing busy process.

    python -m pytest benchmarks/test_bench_latency.py --benchmark-only -s     # or: make bench
    python benchmarks/test_bench_latency.py                                   # the table alone

Shapes [T, B, N] = [4, 2, 64] and [4, 32, 1024] float32, the default LIF of test_bench_lif.py
(τ = 2, sigmoid α = 4, hard reset to 0), forward and forward+backward, snn_fast's C++ kernel against
SpikingJelly 2.0 in the same run. "busy": another process spins on CPU 0 for the whole measurement
(on a 2-core machine that leaves one core free, as on a shared workstation or a CI runner). Work
this small must not open a parallel region: waking the pool costs tens of µs, and when a core is
busy the pool's second thread waits for a scheduler time slice (a parallel region turned 0.44 ms into
1–16 ms).

Timing is per call (perf_counter around each call, not a block average), because contention shows
up as a tail: median and 20/80 % quantiles as everywhere, plus the 95 % quantile (``p95_ms``).
Providers and conditions are interleaved round by round so drift hits all alike. "vs peer" is
SpikingJelly's median over ours.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from benchmarks.test_bench_lif import providers  # noqa: E402

SHAPES = [(4, 2, 64), (4, 32, 1024)]
CONDITIONS = ("idle", "busy")
_SPIN = "import os\ntry:\n    os.sched_setaffinity(0, {0})\nexcept Exception:\n    pass\nwhile True:\n    pass\n"


class BusyCore:
    """A subprocess spinning on CPU 0 while the block runs."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", _SPIN])
        time.sleep(0.2)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def per_call_ms(fn, calls):
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_latency(rounds=5, calls=200):
    import numpy as np

    rows = []
    g = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        x = torch.randn(shape, generator=g) * 2
        gs = torch.randn(shape, generator=g)
        xg = x.clone().requires_grad_(True)
        provs = providers("cpu", ["snn_fast-cpu", "spikingjelly"])

        def fwd(f):
            with torch.no_grad():
                return f(x)

        def fwd_bwd(f):
            xg.grad = None
            f(xg).backward(gs)

        for mode, wrap in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            fns = {name: (lambda f=f: wrap(f)) for name, f in provs.items()}
            for fn in fns.values():  # warm-up
                per_call_ms(fn, 20)
            times = {(c, n): [] for c in CONDITIONS for n in fns}
            for _ in range(rounds):
                for cond in CONDITIONS:
                    if cond == "busy":
                        with BusyCore():
                            for name, fn in fns.items():
                                times[(cond, name)] += per_call_ms(fn, calls)
                    else:
                        for name, fn in fns.items():
                            times[(cond, name)] += per_call_ms(fn, calls)
            for cond in CONDITIONS:
                q = {n: np.quantile(times[(cond, n)], [0.5, 0.2, 0.8, 0.95]) for n in fns}
                peer = q["spikingjelly"][0] if "spikingjelly" in q else None
                for name in fns:
                    med, q20, q80, p95 = (float(v) for v in q[name])
                    rows.append(common.record(
                        op="lif-latency", provider=name, mode=f"{mode} {cond}", shape="x".join(map(str, shape)),
                        dtype="float32", device="cpu", device_name=common.device_name("cpu"),
                        threads=torch.get_num_threads(), median_ms=med, q20_ms=q20, q80_ms=q80, p95_ms=p95,
                        speedup=(peer / med) if peer else None))
    return rows


def print_rows(rows):
    print()
    print("| mode | shape | provider | median ms (20–80 %) | p95 ms | vs peer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sp = f"{r['speedup']:.2f}×" if r.get("speedup") else ""
        print(f"| {r['mode']} | {r['shape']} | {r['provider']} | {r['median_ms']:.3f} ({r['q20_ms']:.3f}–"
              f"{r['q80_ms']:.3f}) | {r['p95_ms']:.3f} | {sp} |")


def test_bench_latency(benchmark):
    import snn_fast

    if not snn_fast.HAS_C:
        pytest.skip("snn_fast._C not built: no C++ CPU kernel to time")
    rows = bench_latency()
    print_rows(rows)
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("provider", "mode", "shape", "median_ms", "p95_ms")}
                                    for r in rows]
    x = torch.randn(SHAPES[0])
    benchmark.pedantic(lambda: snn_fast.lif_multistep(x, backend="cpu"), rounds=50, warmup_rounds=5)


if __name__ == "__main__":
    print_rows(bench_latency())
