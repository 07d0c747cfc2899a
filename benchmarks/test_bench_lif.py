"""LIF forward and forward+backward: snn_fast vs SpikingJelly 2.0 vs our reference (BENCHMARKS.md).

    python -m pytest benchmarks/test_bench_lif.py --benchmark-only -s     # or: make bench

W4 on the CPU: [16, 32, 8192] float32. W1 on a GPU: [T, 64, 65536], T ∈ {4, 8, 16, 32, 64}, float32
and bfloat16, with the CUDA and Triton backends, SpikingJelly's best GPU path and torch.compile of
our reference. Default LIF: τ = 2, sigmoid α = 4, hard reset to 0, decay_input.

GB/s counts the bytes of the 5-pass floor (BENCHMARKS.md: fwd reads x and writes s; bwd reads
grad_s and x or a saved state, writes grad_x), 2 passes for the forward alone, whatever a provider
actually moves; it is compared with a large copy_ measured in the same run. "vs peer" is
SpikingJelly's median over ours.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402


def _spikingjelly_node():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # not installed (it is a peer, never a dependency)
        return None
    return neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))


def providers(device):
    """name -> f(x) returning spikes, for the default LIF."""
    out = {}
    if device == "cpu":
        if snn_fast.HAS_C:
            out["snn_fast-cpu"] = lambda x: snn_fast.lif_multistep(x, backend="cpu")[0]
    else:
        for b in ("cuda", "triton"):
            try:
                snn_fast.backends.select(b, torch.zeros(1, device=device))
                out[f"snn_fast-{b}"] = lambda x, b=b: snn_fast.lif_multistep(x, backend=b)[0]
            except Exception as e:  # a backend not built here is reported, not fatal
                print(f"snn_fast {b} unavailable: {e}")
    sj = _spikingjelly_node()
    if sj is not None:
        sj = sj.to(device)

        def run_sj(x):
            sj.reset()
            return sj(x)

        out["spikingjelly"] = run_sj
    out["reference"] = lambda x: snn_fast.lif_multistep(x, backend="reference")[0]
    if device == "cuda":
        ref_c = torch.compile(lambda x: snn_fast.lif_multistep_reference(x)[0])
        out["reference-compiled"] = ref_c
    return out


def cases(device):
    if device == "cpu":
        return [((16, 32, 8192), torch.float32)]
    return [((T, 64, 65536), dt) for dt in (torch.float32, torch.bfloat16) for T in (4, 8, 16, 32, 64)]


def bench_case(device, shape, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=g) * 2
    gs = torch.randn(shape, device=device, dtype=dtype, generator=g)
    provs = providers(device)
    ref_s = provs["reference"](x)
    for name, f in provs.items():  # every provider computes the same spikes before it is timed
        agree = (f(x) == ref_s).float().mean().item()
        assert agree > 0.999, f"{name} disagrees with the reference on {1 - agree:.2%} of spikes"
    xg = x.clone().requires_grad_(True)

    def fwd(f):
        with torch.no_grad():
            return f(x)

    def fwd_bwd(f):
        xg.grad = None
        f(xg).backward(gs)

    n_elem = x.numel()
    esize = x.element_size()
    copy = common.copy_gbps(device)
    rows = []
    for mode, wrap, passes in (("fwd", fwd, 2), ("fwd+bwd", fwd_bwd, 5)):
        fns = {name: (lambda f=f: wrap(f)) for name, f in provs.items()}
        tm = common.time_fns(fns, device)
        peer = tm.get("spikingjelly", (None,))[0]
        for name in fns:
            row = dict(op="lif", provider=name, mode=mode, shape="x".join(map(str, shape)),
                       dtype=str(dtype).replace("torch.", ""), device=device,
                       device_name=common.device_name(device), threads=torch.get_num_threads(),
                       median_ms=tm[name][0], q20_ms=tm[name][1], q80_ms=tm[name][2], bytes=passes * n_elem * esize,
                       copy_gbps=copy, peak_bytes=common.peak_bytes(fns[name], device),
                       speedup=(peer / tm[name][0]) if peer else None)
            rows.append(common.record(**row))
    return rows


def print_rows(rows):
    print()
    print(common.markdown_table(rows))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bench_lif(benchmark, device):
    rows = []
    for shape, dtype in cases(device):
        rows += bench_case(device, shape, dtype)
    print_rows(rows)
    ours = [r for r in rows if r["provider"].startswith("snn_fast") and r["mode"] == "fwd+bwd"]
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("provider", "mode", "shape", "dtype", "median_ms")}
                                    for r in rows]
    shape, dtype = cases(device)[0]
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
    name = ours[0]["provider"].split("-", 1)[1] if ours else "reference"
    benchmark.pedantic(lambda: snn_fast.lif_multistep(x, backend=name)[0].sum().backward(), rounds=10,
                       warmup_rounds=2)


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for shape, dtype in cases(dev):
        rows += bench_case(dev, shape, dtype)
    print_rows(rows)
    if os.environ.get("SNN_FAST_BENCH_OUT"):
        print("\n".join(common.write_results(os.environ["SNN_FAST_BENCH_OUT"])))
