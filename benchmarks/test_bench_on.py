"""W2, the Open Neuromorphic framework benchmark: Linear(n, n) + LIF, batch 16, T = 500, loss
``out.sum()`` (docs/spec.md §10). snn_fast vs SpikingJelly 2.0, snnTorch, Norse and our reference loop
(plus its ``torch.compile`` on a GPU).

    python -m pytest benchmarks/test_bench_on.py --benchmark-only -s      # or: make bench
    python benchmarks/test_bench_on.py [cpu|cuda] [n ...] [--threads k] [--rounds r]   # prints the tables
    make bench FULL=1                                                                  # CPU: n = 2048 too
    SNN_FAST_BENCH_ON_N=1024,2048 make bench                                          # sizes of your choice

CPU: n = 1024 (``FULL=1``: 1024 and 2048; 4096 on request); GPU: n ∈ {4096, 8192, 16384}; float32.
Every provider runs the same ``nn.Linear(n, n)`` (one matmul over all T·B rows, as the ON
benchmark's fastest entries do) and its
own neuron on the result; the neurons:

- snn_fast: ``lif_multistep`` with each fused backend present (CPU: the C++ kernel; GPU: CUDA, Triton).
- SpikingJelly 2.0: ``LIFNode(step_mode='m')``, which picks its own best path for the device.
- snnTorch 1.0: ``Leaky(beta=0.5, reset_mechanism='zero')`` looped over T in Python (its API is per
  step), over ``h.unbind(0)`` (see ``run_snntorch``).
- Norse 1.1: ``norse.torch.LIF`` (its sequence module, which loops over T itself; default parameters,
  so it also integrates a synaptic current). Left out with a note when it does not import (it needs
  ``nir``, ``nirtorch`` and ``h5py`` besides ``--no-deps``).
- reference: our plain PyTorch loop; reference-compiled: the same under ``torch.compile``, opt-in
  (``SNN_FAST_BENCH_ON_COMPILE=1``): inductor unrolls all 500 steps, and compiling forward +
  backward had not finished after 9 minutes (n = 64, one thread, on the shared 2-core dev VM,
  2026-11-30) — longer than a whole GPU check may take. When on, it compiles in the warm-up.

snn_fast, SpikingJelly and the reference compute the same LIF (τ = 2, sigmoid α = 4, hard reset to 0,
decay_input): their spikes are checked against the reference before timing. snnTorch's and Norse's
neurons differ in their equations (input scale, reset timing, synaptic current), so their spikes are
only checked for shape.

Modes: ``fwd`` (no autograd), ``fwd+bwd`` (forward then ``out.sum().backward()``); the backward is
their difference. Rows of op ``on-w2`` time the whole Linear + LIF; rows of op ``on-w2-lif`` time the
neuron alone on the Linear's output (fwd+bwd), so the table shows the LIF part's share — at large n
the n² Linear dominates every provider alike. "vs peer" is SpikingJelly's median over the row's.
Providers are interleaved round by round (``benchmarks/common.time_fns``), medians reported.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402
from snn_fast.ops.lif.function import BACKENDS as LIF_BACKENDS  # noqa: E402

T, B = 500, 16


def sizes(device):
    """The sizes of docs/spec.md §10 (CPU: smaller), or SNN_FAST_BENCH_ON_N="1024,2048".

    CPU: n = 1024 by default, 1024 and 2048 with ``SNN_FAST_BENCH_FULL=1`` (``make bench FULL=1``): the
    Python-loop providers take seconds per call at 2048 on a 2-core machine, and ``make bench`` is
    meant to finish in minutes. n = 4096 is opt-in through SNN_FAST_BENCH_ON_N: one round of it took
    50 minutes on the shared 2-core dev VM (niced, under load) and 4.3 GB resident
    (benchmarks/results/cpu-x86_64-1t-2026-11-30-w2-n4096.md)."""
    env = os.environ.get("SNN_FAST_BENCH_ON_N")
    if env:
        return [int(v) for v in env.split(",")]
    if device != "cpu":
        return [4096, 8192, 16384]
    return [1024, 2048] if common.full() else [1024]


def _fused_backends(device):
    """Our fused backends that can run on ``device`` (at least one, else there is nothing to time)."""
    names = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    out = []
    for b in names:
        try:
            LIF_BACKENDS.select(b, torch.zeros(1, device=device))
            out.append(b)
        except (RuntimeError, ValueError) as e:
            print(f"snn_fast {b} unavailable: {e}")
    if not out:
        raise RuntimeError(f"no fused snn_fast backend can run on {device}: nothing of ours to benchmark")
    return out


def neurons(device, compile_ref=None):
    """name -> (f(h) returning spikes [T, B, n], agreement): the fraction of the reference's spikes the
    provider must reproduce (None: only the shape is checked)."""
    out = {}
    for b in _fused_backends(device):
        out[f"snn_fast-{b}"] = (lambda h, b=b: snn_fast.lif_multistep(h, backend=b)[0], 1.0)

    try:
        from spikingjelly.activation_based import neuron, surrogate

        sj = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0)).to(device)

        def run_sj(h, sj=sj):
            sj.reset()
            return sj(h)

        # Its own operation order: a flip near θ is rounding, not error (as in test_bench_lif.py).
        out["spikingjelly"] = (run_sj, 0.999)
    except Exception as e:  # a peer, never a dependency
        print(f"spikingjelly unavailable ({type(e).__name__}: {e}): its rows are skipped")

    try:
        import snntorch
        from snntorch import surrogate as sn_surrogate

        leaky = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero",
                               spike_grad=sn_surrogate.sigmoid(slope=4)).to(device)

        def run_snntorch(h, leaky=leaky):
            # Steps from unbind, not h[t]: each h[t]'s backward allocates a zero [T, B, n] gradient
            # (64 MB at n = 2048, above glibc's 32 MB mmap ceiling, so mmap + page faults + munmap every
            # step): 8 M page faults and ~10 s of system time per call there, a cost of the loop, not of
            # snnTorch. unbind's backward stacks the step gradients once.
            mem = leaky.init_leaky()
            spk = []
            for h_t in h.unbind(0):
                s, mem = leaky(h_t, mem)
                spk.append(s)
            return torch.stack(spk)

        out["snntorch"] = (run_snntorch, None)
    except Exception as e:
        print(f"snntorch unavailable ({type(e).__name__}: {e}): its rows are skipped")

    try:
        import norse.torch as norse

        lif = norse.LIF().to(device)
        out["norse"] = (lambda h, lif=lif: lif(h)[0], None)
    except Exception as e:
        print(f"norse unavailable ({type(e).__name__}: {e}): its rows are skipped")

    out["reference"] = (lambda h: snn_fast.lif_multistep(h, backend="reference")[0], 1.0)
    if compile_ref is None:
        compile_ref = os.environ.get("SNN_FAST_BENCH_ON_COMPILE") == "1"
    if compile_ref:
        out["reference-compiled"] = (torch.compile(lambda h: snn_fast.lif_multistep_reference(h)[0]), 1.0)
    return out


def time_slow(fns, rounds):
    """{name: (median, q20, q80) in ms} for calls of a second or more (W2 on the CPU): one warm-up,
    then ``rounds`` rounds calling every provider once, interleaved. (``common.time_fns`` runs each
    provider at least twice per round to size its blocks: an hour per size for the Python loops.)"""
    import time

    import numpy as np

    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: tuple(float(q) for q in np.quantile(v, [0.5, 0.2, 0.8])) for k, v in times.items()}


def bench_case(device, n, rounds=3, compile_ref=None):
    g = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    lin = torch.nn.Linear(n, n, device=device)
    # Random inputs, never zeros: x ~ N(0, 1.5²) through the default-initialised Linear (weights
    # U(±1/√n), variance 1/(3n)) gives currents of std ≈ √0.75 ≈ 0.87 whatever n, so the neurons fire
    # (the rate is recorded in each row's spike_rate).
    x = torch.randn(T, B, n, device=device, generator=g) * 1.5
    provs = neurons(device, compile_ref)
    with torch.no_grad():
        h = lin(x)
        ref_s = snn_fast.lif_multistep(h, backend="reference")[0]
        rate = ref_s.mean().item()
    for name, (f, need) in provs.items():
        with torch.no_grad():
            s = f(h)
        assert s.shape == ref_s.shape, f"{name}: spikes {tuple(s.shape)}, expected {tuple(ref_s.shape)}"
        if need is not None:  # ours in fp32: not one spike may flip
            agree = (s == ref_s).float().mean().item()
            assert agree >= need, f"{name} disagrees with the reference on {1 - agree:.4%} of spikes"
    hg = h.clone().requires_grad_(True)

    def fwd(f):
        with torch.no_grad():
            return f(lin(x))

    def fwd_bwd(f):
        lin.zero_grad(set_to_none=True)
        f(lin(x)).sum().backward()

    def lif_fwd_bwd(f):
        hg.grad = None
        f(hg).sum().backward()

    rows = []
    for op, mode, wrap in (("on-w2", "fwd", fwd), ("on-w2", "fwd+bwd", fwd_bwd), ("on-w2-lif", "fwd+bwd", lif_fwd_bwd)):
        fns = {name: (lambda f=f: wrap(f)) for name, (f, _) in provs.items()}
        # On the CPU every call is seconds (the Python loops over 500 steps; the 8000×n×n matmuls):
        # one call per provider and round. On a GPU, CUDA-event timing.
        tm = time_slow(fns, rounds) if device == "cpu" else common.time_fns(fns, device, rounds=rounds)
        print(f"  n={n} {op} {mode}: " + ", ".join(f"{k} {v[0]:.0f} ms" for k, v in tm.items()), flush=True)
        peer = tm.get("spikingjelly", (None,))[0]
        for name in fns:
            row = dict(op=op, provider=name, mode=mode, shape=f"T{T}xB{B}xn{n}", dtype="float32", device=device,
                       device_name=common.device_name(device), threads=torch.get_num_threads(),
                       median_ms=tm[name][0], q20_ms=tm[name][1], q80_ms=tm[name][2],
                       peak_bytes=common.peak_bytes(fns[name], device) if mode == "fwd+bwd" else None,
                       speedup=(peer / tm[name][0]) if peer else None, spike_rate=rate)
            rows.append(common.record(**row))
    return rows


def summary(rows):
    """Per n and provider: total fwd+bwd, its LIF part, the LIF's share, and the ratios to SpikingJelly."""
    out = ["| n | provider | fwd ms | fwd+bwd ms | LIF alone fwd+bwd ms | LIF share | total vs SJ | LIF vs SJ "
           "| peak MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    get = {(r["op"], r["mode"], r["shape"], r["provider"]): r for r in rows}
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for p in dict.fromkeys(r["provider"] for r in rows if r["shape"] == shape):
            f = get[("on-w2", "fwd", shape, p)]
            fb = get[("on-w2", "fwd+bwd", shape, p)]
            lif = get[("on-w2-lif", "fwd+bwd", shape, p)]
            sp = lambda r: f"{r['speedup']:.2f}×" if r.get("speedup") else ""  # noqa: E731
            peak = f"{fb['peak_bytes'] / 2**20:.0f}" if fb.get("peak_bytes") else "n/a"
            out.append(f"| {shape.rsplit('n', 1)[1]} | {p} | {f['median_ms']:.1f} | {fb['median_ms']:.1f} | "
                       f"{lif['median_ms']:.1f} | {lif['median_ms'] / fb['median_ms']:.0%} | {sp(fb)} | {sp(lif)} | "
                       f"{peak} |")
    return "\n".join(out) + "\n"


def run(device, ns=None, rounds=3):
    rows = []
    for n in ns or sizes(device):
        rows += bench_case(device, n, rounds=rounds)
    print()
    print(common.markdown_table(rows))
    print(summary(rows))
    return rows


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bench_on(benchmark, device):
    rows = run(device)
    ours = [r for r in rows if r["provider"].startswith("snn_fast") and r["op"] == "on-w2"]
    assert ours, f"no fused snn_fast backend ran on {device}"
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("op", "provider", "mode", "shape", "median_ms")} for r in rows]
    n = sizes(device)[0]
    lin = torch.nn.Linear(n, n, device=device)
    x = torch.randn(T, B, n, device=device)
    b = ours[0]["provider"].split("-", 1)[1]
    benchmark.pedantic(lambda: snn_fast.lif_multistep(lin(x), backend=b)[0].sum().backward(), rounds=3,
                       warmup_rounds=1)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="W2 (Open Neuromorphic) benchmark; prints the tables")
    ap.add_argument("device", nargs="?", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("n", nargs="*", type=int, help="sizes (default: sizes(); CPU 1024, GPU 4096 8192 16384)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a.device, a.n or None, a.rounds)
    if os.environ.get("SNN_FAST_BENCH_OUT"):
        print("\n".join(common.write_results(os.environ["SNN_FAST_BENCH_OUT"])))
