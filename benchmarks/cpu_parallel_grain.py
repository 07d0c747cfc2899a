"""Where do threads start to pay off in the CPU LIF kernel? 1 vs 2 threads by T·N.

    PYTHONPATH=. python benchmarks/cpu_parallel_grain.py

Times the fused CPU kernel (forward, and forward+backward) at T·N from 2^13 to 2^22 with
``torch.set_num_threads(1)`` and ``(2)``: best and median of 20–400 single calls each. The best is
what threads can give when every core is free; the kernel's serial thresholds
(``kFwdParallelMinWork`` / ``kBwdParallelMinWork`` in csrc/cpu/lif_cpu_kernels_impl.h) are set from
it. NOTE: below those thresholds the kernel is serial whatever the thread count, so on a build that
has them both columns show the serial time there; measure on a build without them (or read the
numbers in that comment) to see the crossover itself.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402


def best_and_median_us(fn, threads, reps):
    torch.set_num_threads(threads)
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[0] * 1e6, ts[len(ts) // 2] * 1e6


def main():
    n0 = torch.get_num_threads()
    print("| T·N | shape | fwd 1t best/med µs | fwd 2t best/med µs | fwd+bwd 1t | fwd+bwd 2t |")
    print("|---|---|---|---|---|---|")
    try:
        for T, N in [(4, 2048), (4, 8192), (4, 16384), (4, 32768), (4, 65536), (8, 65536), (4, 262144),
                     (16, 262144)]:
            x = torch.randn(T, N)
            xg = x.clone().requires_grad_()

            def fwd():
                snn_fast.lif_multistep(x, tau=2.0, backend="cpu")

            def fwd_bwd():
                snn_fast.lif_multistep(xg, tau=2.0, backend="cpu")[0].sum().backward()

            reps = max(20, min(400, 2_000_000 // (T * N)))
            r = [best_and_median_us(f, nt, reps) for f in (fwd, fwd_bwd) for nt in (1, 2)]
            print(f"| {T * N} | [{T}, {N}] | " + " | ".join(f"{b:.1f}/{m:.1f}" for b, m in r) + " |", flush=True)
    finally:
        torch.set_num_threads(n0)


if __name__ == "__main__":
    main()
