"""Measure the LIF op's forward+backward on the GPU with the 'cuda' and 'triton' backends and write
the table that ``snn_fast.ops.lif.autotable`` reads to choose between them.

    python benchmarks/gpu_autotable.py --out snn_fast/ops/lif/autotable.json [--csv times.csv]

Grid: dtype × T × N (defaults below: the W1 range of docs/spec.md §10 and smaller layers). Each point
runs the default LIF (τ = 2, sigmoid, hard reset to 0) on random inputs, forward + backward of a
fixed upstream gradient, interleaving the backends; times are medians of CUDA-event timings
(``triton.testing.do_bench`` when Triton is installed). A backend that is not available or fails
at a point gets ``null`` there and loses that point. Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import snn_fast  # noqa: E402
from snn_fast.ops.lif.function import BACKENDS  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T_GRID = (4, 8, 16, 32, 64)
N_GRID = (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22)


def bench_ms(fn, warmup=5, rep=25):
    """Median milliseconds of fn() on the current stream."""
    try:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup * 5, rep=rep * 5, return_mode="median"))
    except ImportError:
        pass
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def fwd_bwd(backend, x, grad_s):
    def run():
        x.grad = None
        s, _ = snn_fast.lif_multistep(x, backend=backend)
        s.backward(grad_s)

    return run


def available(backend, x):
    return BACKENDS.unavailable(backend, x) is None


def git_sha():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "snn_fast", "ops", "lif", "autotable.json"))
    ap.add_argument("--csv", default=None, help="also write one row per (point, backend)")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--T", default=",".join(map(str, T_GRID)))
    ap.add_argument("--N", default=",".join(map(str, N_GRID)))
    ap.add_argument("--max-gib", type=float, default=8.0, help="skip points whose tensors exceed this")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_autotable.py needs a CUDA device")
    dev = torch.device("cuda")
    device_name = torch.cuda.get_device_name(dev)
    entries, rows = [], []
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        for T in map(int, args.T.split(",")):
            for N in map(int, args.N.split(",")):
                # x, grad_s, s, saved, grad_x, x.grad: six [T, N] tensors in flight
                gib = 6 * T * N * torch.empty((), dtype=dtype).element_size() / 2**30
                if gib > args.max_gib:
                    continue
                x = torch.randn(T, N, device=dev, dtype=torch.float32).add_(0.5).to(dtype).requires_grad_(True)
                grad_s = torch.randn(T, N, device=dev, dtype=dtype)
                times = {}
                for backend in ("cuda", "triton"):
                    if not available(backend, x):
                        times[backend] = None
                        continue
                    try:
                        times[backend] = bench_ms(fwd_bwd(backend, x, grad_s))
                    except Exception as e:  # noqa: BLE001 - record the failure, keep measuring
                        print(f"{backend} failed at {dname} T={T} N={N}: {e}", file=sys.stderr)
                        times[backend] = None
                bytes_moved = 6 * T * N * x.element_size()  # the 6-pass design, fwd + bwd
                for backend, ms in times.items():
                    gbs = bytes_moved / (ms * 1e-3) / 1e9 if ms else None
                    rows.append(dict(device=device_name, dtype=dname, T=T, N=N, backend=backend, ms=ms, gbs=gbs))
                    print(f"{dname:9s} T={T:<4d} N={N:<9d} {backend:7s} "
                          + (f"{ms:8.3f} ms {gbs:7.1f} GB/s" if ms else "   n/a"), flush=True)
                entries.append(dict(device=device_name, dtype=dname, T=T, N=N,
                                    cuda_ms=times["cuda"] if times["cuda"] is not None else math.inf,
                                    triton_ms=times["triton"] if times["triton"] is not None else math.inf))
                del x, grad_s
                torch.cuda.empty_cache()
    table = {
        "version": 1,
        "note": "Measured by benchmarks/gpu_autotable.py: forward+backward median ms, default LIF. "
                "Infinity = backend unavailable or failed at that point.",
        "device": device_name,
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git": git_sha(),
        "entries": entries,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)  # json writes inf as Infinity, which json.load reads back
    print(f"wrote {len(entries)} entries to {args.out}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["device", "dtype", "T", "N", "backend", "ms", "gbs"])
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
