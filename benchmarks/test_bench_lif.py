"""LIF forward and forward+backward: snn_fast vs SpikingJelly 2.0 vs our reference (docs/spec.md §10).

    python -m pytest benchmarks/test_bench_lif.py --benchmark-only -s     # or: make bench

W4 on the CPU: [16, 32, 8192] float32. W1 on a GPU: [T, 64, 65536], T ∈ {4, 8, 16, 32, 64}, float32
and bfloat16, with the CUDA and Triton backends, SpikingJelly's best GPU path and torch.compile of
our reference. Default LIF: τ = 2, sigmoid α = 4, hard reset to 0, decay_input.

GB/s counts the bytes of the 5-pass floor (docs/spec.md §10: fwd reads x and writes s; bwd reads
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
from snn_fast.ops.lif.function import BACKENDS as LIF_BACKENDS  # noqa: E402


def _spikingjelly_node():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # not installed (it is a peer, never a dependency)
        return None
    return neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))


PROVIDERS = ("snn_fast-cpu", "snn_fast-cuda", "snn_fast-triton", "spikingjelly", "reference", "reference-compiled")
# Ours with an explicit save mode (docs/spec.md §8): "snn_fast-<backend>-<save>"; plain "snn_fast-<backend>" is
# the default (contract.DEFAULT_SAVE, "state").
SAVES = ("recompute", "state")


def _ours(name):
    """(backend, save or None) of an "snn_fast-…" provider name, or None."""
    if not name.startswith("snn_fast-"):
        return None
    parts = name.split("-")
    return parts[1], (parts[2] if len(parts) > 2 else None)


def _known(name):
    o = _ours(name)
    if o is None:
        return name in PROVIDERS
    return f"snn_fast-{o[0]}" in PROVIDERS and (o[1] is None or o[1] in SAVES)


def default_providers(device):
    """CPU: the C++ kernel (required). GPU: every fused GPU backend that can run here, at least one
    (a missing one is printed with the reason), then the peers and both references."""
    if device == "cpu":
        return ["snn_fast-cpu", "spikingjelly", "reference"]
    fused = []
    for b in ("cuda", "triton"):
        try:
            LIF_BACKENDS.select(b, torch.zeros(1, device=device))
            fused.append(f"snn_fast-{b}")
        except (RuntimeError, ValueError) as e:
            print(f"snn_fast {b} unavailable: {e}")
    if not fused:
        raise RuntimeError(f"no fused snn_fast backend can run on {device}: nothing of ours to benchmark")
    return fused + ["spikingjelly", "reference", "reference-compiled"]


def providers(device, names=None, compile_backend="inductor"):
    """name -> f(x) returning spikes, for the default LIF.

    Our fused backends are required: one that is asked for (``names``, or on a GPU the default list)
    and cannot run raises instead of being left out, so a table never shows the reference's time
    under a fused backend's name or silently lacks a row. A peer that is not installed is reported
    and left out (peers are never dependencies)."""
    names = list(names or default_providers(device))
    unknown = [n for n in names if not _known(n)]
    if unknown:
        raise ValueError(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS} (ours also as "
                         f"snn_fast-<backend>-<save>, save in {SAVES})")
    out = {}
    for name in names:
        if name.startswith("snn_fast-"):
            b, save = _ours(name)
            LIF_BACKENDS.select(b, torch.zeros(1, device=device))  # raises, saying how to get it
            kw = {} if save is None else {"save": save}
            out[name] = lambda x, b=b, kw=kw: snn_fast.lif_multistep(x, backend=b, **kw)[0]
        elif name == "spikingjelly":
            sj = _spikingjelly_node()
            if sj is None:
                print("spikingjelly not installed: its rows are skipped")
                continue
            sj = sj.to(device)

            def run_sj(x, sj=sj):
                sj.reset()
                return sj(x)

            out[name] = run_sj
        elif name == "reference":
            out[name] = lambda x: snn_fast.lif_multistep(x, backend="reference")[0]
        else:  # reference-compiled
            out[name] = torch.compile(lambda x: snn_fast.lif_multistep_reference(x)[0], backend=compile_backend)
    return out


def cases(device):
    if device == "cpu":
        return [((16, 32, 8192), torch.float32)]
    return [((T, 64, 65536), dt) for dt in (torch.float32, torch.bfloat16) for T in (4, 8, 16, 32, 64)]


def bench_case(device, shape, dtype, names=None, rounds=3, compile_backend="inductor"):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=g) * 2
    gs = torch.randn(shape, device=device, dtype=dtype, generator=g)
    provs = providers(device, names, compile_backend)
    with torch.no_grad():
        ref_s = snn_fast.lif_multistep(x, backend="reference")[0]
    for name, f in provs.items():  # every provider computes the same spikes before it is timed
        with torch.no_grad():
            agree = (f(x) == ref_s).float().mean().item()
        # float32/float64: not one spike may flip for ours (they charge in the reference's operation
        # order), nor for any provider on the CPU (W4: SpikingJelly's eager torch ops round like the
        # reference; measured 0 flips of 4 194 304). On a GPU a peer's generated code (SpikingJelly's
        # CUDA kernels, inductor's Triton for reference-compiled) may contract a·b + c into an FMA,
        # one rounding fewer than the reference: a few flips near θ are then rounding, not error; the
        # same holds for every provider in 16-bit storage, where the reference rounds each step.
        exact = dtype in (torch.float32, torch.float64) and (name.startswith("snn_fast") or device == "cpu")
        if exact:
            assert agree == 1.0, f"{name} disagrees with the reference on {1 - agree:.4%} of spikes"
        else:
            assert agree > 0.999, f"{name} disagrees with the reference on {1 - agree:.4%} of spikes"
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
        tm = common.time_fns(fns, device, rounds=rounds)
        peer = tm.get("spikingjelly", (None,))[0]
        for name in fns:
            ours = _ours(name)
            if ours is not None and mode == "fwd+bwd":  # what the design moves and keeps
                from snn_fast.ops.lif import memory
                from snn_fast.ops.lif.contract import DEFAULT_SAVE

                save = ours[1] or DEFAULT_SAVE
                T, N = shape[0], n_elem // shape[0]
                moved = memory.bytes_moved(T, N, dtype, save, backend=ours[0], uniform_start=True)  # v0=None
                extra = dict(save=save, design_bytes=moved["total"],
                             saved_bytes=memory.saved_bytes(T, N, dtype, save, backend=ours[0]))
            else:
                extra = {}
            row = dict(op="lif", provider=name, mode=mode, shape="x".join(map(str, shape)),
                       dtype=str(dtype).replace("torch.", ""), device=device,
                       device_name=common.device_name(device), threads=torch.get_num_threads(),
                       median_ms=tm[name][0], q20_ms=tm[name][1], q80_ms=tm[name][2], bytes=passes * n_elem * esize,
                       copy_gbps=copy, peak_bytes=common.peak_bytes(fns[name], device),
                       speedup=(peer / tm[name][0]) if peer else None, **extra)
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
    assert ours, f"no fused snn_fast backend ran on {device}"  # never time the reference under our name
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("provider", "mode", "shape", "dtype", "median_ms")}
                                    for r in rows]
    shape, dtype = cases(device)[0]
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
    name = ours[0]["provider"].split("-", 1)[1]
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
