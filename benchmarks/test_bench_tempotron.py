"""W3/W4 (docs/spec.md §10): Tempotron 'v_max' + mse_loss, forward + backward, fused vs the seed's dense
reference, measured in one run on the same inputs, interleaved.

    PYTHONPATH=. python -m pytest benchmarks/test_bench_tempotron.py --benchmark-only -s
    PYTHONPATH=. python benchmarks/test_bench_tempotron.py          # the table alone

Shapes: B = 32 on the CPU (W4), 64 on a GPU (W3); I = 784·16 (MNIST, m = 16), O = 10, T = 100, fp32.
Inputs: spike times like the seed's encoder produces (integers in [0, T), ~half silent = −1),
weights N(0, 1)/√I·3, random labels.

Time: CPU with torch.utils.benchmark (median and 20/80 % quantiles of blocked_autorange runs); GPU
with triton.testing.do_bench (CUDA events).
Peak memory (CPU): torch.profiler with profile_memory=True records every allocation and free of the
c10 CPU allocator with its running total ("Total Allocated"); the peak is the largest total during
one step minus the total before it. Every tensor of both paths, including the fused kernels'
scratch (allocated through ATen for that reason), goes through that allocator; what it does not see
is per-thread stack/std::vector scratch of T floats (0.8 KB per thread). GPU: torch.cuda
max_memory_allocated over the step minus memory allocated before it.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from snn_fast.ops.tempotron import mse_loss, tempotron  # noqa: E402

I, O, T = 784 * 16, 10, 100


def make_inputs(device, B, seed=0, I=I):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (B, I), generator=g).float()
    t[torch.rand(B, I, generator=g) < 0.5] = -1.0
    w = (torch.randn(O, I, generator=g) / I ** 0.5 * 3).to(device).requires_grad_()
    label = torch.randint(0, O, (B,), generator=g).to(device)
    return t.to(device), w, label


def step(t, w, label, backend):
    w.grad = None
    v_max = tempotron(t, w, T, ret_type="v_max", backend=backend)
    loss = mse_loss(v_max, 1.0, label, O)
    loss.backward()
    return loss.detach(), w.grad


def cpu_peak_bytes(fn) -> int:
    return common.peak_bytes(fn, "cpu")


def cuda_peak_bytes(fn) -> int:
    return common.peak_bytes(fn, "cuda")


def time_cpu(fns: dict):
    return common.time_fns(fns, "cpu", rounds=3, min_run_time=1.0)


def time_gpu(fns: dict):
    return common.time_fns(fns, "cuda")


def providers(device):
    if device == "cpu":
        return ["cpu", "reference"]
    from snn_fast.ops.tempotron.function import select_backend

    out = []
    for b in ("cuda", "triton"):
        try:
            select_backend(b, torch.zeros(1, device=device))
            out.append(b)
        except RuntimeError:
            pass
    return out + ["reference"]


def run(device="cpu", B=None, I=I, providers_=None):
    """Rows for each provider (``providers_``, default ``providers(device)``; the last is the reference).
    B defaults to W4's 32 on the CPU and W3's 64 on a GPU; smaller B/I only for plumbing checks."""
    B = B or (32 if device == "cpu" else 64)
    t, w, label = make_inputs(device, B, I=I)
    provs = providers_ or providers(device)
    assert provs[-1] == "reference", provs
    # Same inputs, same loss: the fused result is checked against the reference before timing.
    ref_loss, ref_grad = step(t, w, label, "reference")
    ref_grad = ref_grad.clone()
    for p in provs[:-1]:
        loss, grad = step(t, w, label, p)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-5 * ref_grad.abs().max().item())
    fns = {p: (lambda p=p: step(t, w, label, p)) for p in provs}
    if device == "cpu":
        tm = time_cpu(fns)
        mem = {p: cpu_peak_bytes(fn) for p, fn in fns.items()}
    else:
        tm = time_gpu(fns)
        mem = {p: cuda_peak_bytes(fn) for p, fn in fns.items()}
    rows = []
    ref_ms, ref_mem = tm["reference"][0], mem["reference"]
    for p in provs:
        rows.append(dict(op="tempotron", provider=p, mode="fwd+bwd", shape=f"B{B}-I{I}-O{O}-T{T}", dtype="float32",
                         device=device, threads=torch.get_num_threads(), median_ms=tm[p][0], q20_ms=tm[p][1],
                         q80_ms=tm[p][2], peak_bytes=mem[p], speedup=ref_ms / tm[p][0],
                         mem_ratio=ref_mem / max(mem[p], 1)))
    return rows


def print_table(rows):
    print(f"\n{'provider':<10} {'shape':<24} {'median ms':>10} {'q20':>9} {'q80':>9} {'peak MB':>9} "
          f"{'speedup':>8} {'mem ratio':>9}")
    for r in rows:
        print(f"{r['provider']:<10} {r['shape']:<24} {r['median_ms']:>10.3f} {r['q20_ms']:>9.3f} {r['q80_ms']:>9.3f} "
              f"{r['peak_bytes'] / 2**20:>9.2f} {r['speedup']:>8.1f} {r['mem_ratio']:>9.1f}")


def _record(rows):
    for r in rows:
        common.record(device_name=common.device_name(r["device"]), **r)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_bench_tempotron(benchmark, device):
    rows = run(device)
    print_table(rows)
    _record(rows)
    fused = next(r for r in rows if r["provider"] != "reference")
    benchmark.extra_info.update({r["provider"]: {k: r[k] for k in ("median_ms", "peak_bytes", "speedup", "mem_ratio")}
                                 for r in rows})
    t, w, label = make_inputs(device, 32 if device == "cpu" else 64)
    benchmark.pedantic(lambda: step(t, w, label, fused["provider"]), rounds=20, warmup_rounds=2)
    # The SPEC's targets on this CPU: ≥ 50× faster, ≥ 100× less peak memory than the dense reference.
    if device == "cpu":
        assert fused["mem_ratio"] >= 100, fused
        assert fused["speedup"] >= 50, fused


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print_table(run(dev))
