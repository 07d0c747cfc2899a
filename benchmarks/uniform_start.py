"""The LIF op's start, A against B in the same run: v0=None (one start for every neuron: v0 [1] to the
kernels, no row of N read for it and no ∂L/∂v0 written; docs/spec.md §2.4) against the same start given
per neuron (``torch.zeros(N)``, no gradient: the [N] path), forward+backward, interleaved, medians.

    python benchmarks/uniform_start.py            # CPU kernel
    python benchmarks/uniform_start.py cuda       # the CUDA and Triton kernels (a GPU; also in the GPU
                                                  # check's bn-lif stage)

The bytes it saves: 3 rows of N (v0 read by the forward and by the backward, ∂L/∂v0 written), against
5 passes over [T, N] plus those rows: 3/(5·T + 4) of the traffic, 12.5 % at T = 4 and 3.6 % at T = 16.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402

SHAPES = [((4, 32, 64, 56, 56), 8), ((16, 32, 8192), 30), ((4, 32, 512, 7, 7), 40)]  # (shape, rounds)


def main(device: str = "cpu", shapes=SHAPES) -> None:
    backends = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    for shape, rounds in shapes:
        x = torch.randn(shape, device=device).requires_grad_(True)
        g = torch.randn(shape, device=device)
        starts = {"v0=None ([1])": None, "v0=zeros ([N])": torch.zeros(shape[1:], device=device)}
        for backend in backends:
            def step(v0):
                snn_fast.lif_multistep(x, v0, tau=2.0, backend=backend)[0].backward(g)

            times = {name: [] for name in starts}
            for v0 in starts.values():  # compilation, caches
                step(v0)
                step(v0)
            for _ in range(rounds):
                for name, v0 in starts.items():
                    sync()
                    t0 = time.perf_counter()
                    step(v0)
                    sync()
                    times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) for name, t in times.items()}
            a, b = med.values()
            row = "  ".join(f"{n}: {1e3 * m:.2f} ms (min {1e3 * min(times[n]):.2f})" for n, m in med.items())
            print(f"{backend:<7}{str(list(shape)):<22}{row}  [N]/[1] = {b / a:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
