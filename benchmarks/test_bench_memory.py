"""Activation memory per LIF layer: the bytes autograd keeps for the backward, per save mode, against
SpikingJelly 2.0 in the same run.

    python benchmarks/test_bench_memory.py            # the table (CPU: Triton under its interpreter)
    python -m pytest benchmarks/test_bench_memory.py -s

The honest measure on any device: every tensor autograd packs for the backward of one LIF layer
(``torch.autograd.graph.saved_tensors_hooks``), each storage counted once, minus the layer's input x
(kept by the layer before it anyway). Peak allocator figures would add the outputs and the time of
the measurement; this is what a deep network pays per layer and per step of T. Shapes: W1's
[T, 64, 65536] at 1/512 of its width here, [T, 64, 128] (bytes scale with the width; the table gives
bytes per element of x too), and W2's Linear(n, n) + LIF at batch 16, T = 500 (n = 256 here), the neuron alone.
``snn_fast.ops.lif.memory.saved_bytes`` predicts our rows; the test checks that.
"""
from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():  # Triton on CPU tensors: its interpreter, chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402
from snn_fast.ops.lif import memory  # noqa: E402


def saved_bytes(fn, x: torch.Tensor, exclude=()) -> int:
    """Bytes autograd keeps for the backward of ``fn(x)`` beyond x and the output spikes (each storage
    once; the next layer keeps its input anyway), ``exclude`` (the carried-in membrane) and tensors of
    <= 64 B (the [3] parameters)."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    for t in (x, out) + tuple(exclude):
        seen.pop(t.untyped_storage().data_ptr(), None)
    return sum(n for n in seen.values() if n > 64)


_V0 = {}


def _v0(x):
    key = (tuple(x.shape[1:]), x.dtype)
    if key not in _V0:
        _V0[key] = torch.zeros(x.shape[1:], dtype=x.dtype)
    return _V0[key]


def _sj_node():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:
        return None
    return neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))


def providers():
    """name -> (fn(x) -> spikes, our backend or None, save or None)."""
    out = {}
    for b in ("triton", "cpu"):
        for save in ("recompute", "state"):
            # v0 given as a tensor that x's producer would hold (the state carried in): not counted
            out[f"snn_fast-{b}-{save}"] = ((lambda x, b=b, save=save: snn_fast.lif_multistep(
                x, _v0(x), backend=b, save=save)[0]), b, save)
    sj = _sj_node()
    if sj is not None:
        def run_sj(x, sj=sj):
            sj.reset()
            return sj(x)

        out["spikingjelly"] = (run_sj, None, None)
    else:
        print("spikingjelly not installed: its rows are skipped")
    out["reference"] = (lambda x: snn_fast.lif_multistep(x, backend="reference")[0], None, None)
    return out


def rows_for(shape, dtype, workload):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 2).to(dtype).requires_grad_(True)
    T, N = shape[0], x[0].numel()
    rows = []
    for name, (fn, b, save) in providers().items():
        got = saved_bytes(fn, x, exclude=(_v0(x),))
        row = dict(op="lif-memory", workload=workload, provider=name, shape="x".join(map(str, shape)),
                   dtype=str(dtype).replace("torch.", ""), device="cpu", saved_bytes=got,
                   saved_per_elem=got / (T * N))
        if b is not None:
            row["predicted_bytes"] = memory.saved_bytes(T, N, dtype, save, backend=b)
            row["design_bytes_fwd_bwd"] = memory.bytes_moved(T, N, dtype, save)["total"] if b != "cpu" else None
        rows.append(common.record(**row))
    return rows


def cases():
    w1 = [((T, 64, 128), dt, "W1") for dt in (torch.float32, torch.bfloat16) for T in (4, 8, 16, 32, 64)]
    return w1 + [((500, 16, 256), torch.float32, "W2")]


def table(rows):
    lines = ["| workload | shape | dtype | provider | saved B/layer | B per element of x | vs SpikingJelly |",
             "|---|---|---|---|---:|---:|---:|"]
    sj = {(r["shape"], r["dtype"]): r["saved_bytes"] for r in rows if r["provider"] == "spikingjelly"}
    for r in rows:
        peer = sj.get((r["shape"], r["dtype"]))
        ratio = f"{r['saved_bytes'] / peer:.3f}" if peer else ""
        lines.append(f"| {r['workload']} | {r['shape']} | {r['dtype']} | {r['provider']} | {r['saved_bytes']} | "
                     f"{r['saved_per_elem']:.3f} | {ratio} |")
    return "\n".join(lines)


def test_bench_memory():
    rows = []
    for shape, dtype, w in cases():
        rows += rows_for(shape, dtype, w)
    print()
    print(table(rows))
    for r in rows:
        if "predicted_bytes" in r:
            assert r["saved_bytes"] == r["predicted_bytes"], r  # memory.py counts what autograd keeps


if __name__ == "__main__":
    rows = []
    for shape, dtype, w in cases():
        rows += rows_for(shape, dtype, w)
    print(table(rows))
