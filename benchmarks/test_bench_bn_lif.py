"""Batch norm + LIF, forward+backward, training mode, float32 on the CPU (docs/spec.md §12):
the fused ``snn_fast.bn_lif`` against batch norm followed by snn_fast's LIF op, and batch norm followed
by SpikingJelly's multi-step ``LIFNode`` (its torch backend).

    python -m pytest benchmarks/test_bench_bn_lif.py --benchmark-only -s     # or: make bench

Shapes [T, B, C, H, W]: [4, 32, 64, 56, 56] (a ResNet's first stage) and [4, 32, 512, 7, 7] (its last).
Default LIF (τ = 2, sigmoid α = 4, hard reset to 0). "MB moved" is the memory model's count
(``snn_fast/ops/bn_lif/memory.py``: 9 passes fused, 6 for the CPU kernel where its backward goes channel
by channel and a channel fits the cache, 13 for BN + LIF, each plus 1 row of N for v0=None;
``benchmarks/bytes_bn_lif.py`` measures them); "vs BN+LIF" is the median of
batch norm + snn_fast LIF over the row's.

The ``-user`` rows (CPU): the same sigmoid registered by a user (benchmarks/test_bench_surrogate.py's
``sigmoid_user``), "vs BN+LIF" against ``bn+snn_fast-lif-user`` (batch norm + the LIF op with it;
on a GPU ``snn_fast-bn_lif-triton-user``, its @triton.jit functions in the fused Triton kernel):
``snn_fast-bn_lif-user`` with its g′ compiled into bn_lif's walk (built in the warm-up, not timed),
``-user-unfused`` the same with that step off ($SNN_FAST_NATIVE_SURROGATES=0 around the call: batch
norm's affine in torch around the LIF op's backward), ``bn_lif-reference-user`` what ran before the CPU
kernel took user surrogates (batch norm, then the LIF reference loop), ``bn+spikingjelly-user``
SpikingJelly's LIFNode with the surrogate written as its users write one.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.test_bench_surrogate import USER, _run as _with_switch, _spikingjelly_nodes  # noqa: E402
from benchmarks.test_bench_surrogate import register as register_user  # noqa: E402
from snn_fast.ops.bn_lif import memory  # noqa: E402

SHAPES = [(4, 32, 64, 56, 56), (4, 32, 512, 7, 7)]
# `python benchmarks/test_bench_bn_lif.py cpu layers`: the batch norm + neuron pairs of spiking
# ResNet-18 at 32², T 4, batch 4 (W5's model), where the host work per call is most of a step; the
# fused op, batch norm + snn_fast LIF and batch norm + SpikingJelly only.
LAYER_SHAPES = [(4, 4, 64, 16, 16), (4, 4, 64, 8, 8), (4, 4, 128, 4, 4), (4, 4, 256, 2, 2), (4, 4, 512, 1, 1)]
LAYER_PROVIDERS = ("snn_fast-bn_lif", "snn_fast-bn_lif-triton", "bn+snn_fast-lif", "bn+spikingjelly")


def _sj_node():
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # a peer, never a dependency
        return None
    return neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))


def make(shape, device="cpu"):
    g = torch.Generator().manual_seed(0)
    C = shape[2]
    x = (torch.randn(shape, generator=g) + 0.5).to(device).requires_grad_(True)
    w = (torch.rand(C, generator=g) + 0.5).to(device).requires_grad_(True)
    b = (torch.randn(C, generator=g) * 0.2 + 0.8).to(device).requires_grad_(True)
    grad = torch.randn(shape, generator=g).to(device)
    return x, w, b, grad


def fused_backends(device):
    """The fused backends timed on ``device``: the C++ kernel ('cpu' / 'cuda'), and Triton on a GPU."""
    return ["cpu"] if device == "cpu" else ["cuda", "triton"]


def steps(shape, device="cpu"):
    """provider → one forward+backward (training: batch statistics, running statistics updated)."""
    x, w, b, grad = make(shape, device)
    C = shape[2]
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    lif_backend = "cpu" if device == "cpu" else "auto"

    def bn(v):
        return F.batch_norm(v.flatten(0, 1), rm, rv, w, b, True, 0.1, 1e-5).view(v.shape)

    def step(f):  # f() -> spikes; the gradients of x, w, b from zero
        def run():
            x.grad = w.grad = b.grad = None
            s = f()
            s.backward(grad)
            return s
        return run

    def fused(backend, sg="sigmoid"):
        return step(lambda: snn_fast.bn_lif(x, w, b, rm, rv, True, 0.1, 1e-5, backend=backend, surrogate=sg)[0])

    def pair(sg="sigmoid"):
        return step(lambda: snn_fast.lif_multistep(bn(x), backend=lif_backend, surrogate=sg)[0])

    def sj_pair(node):
        def f():
            node.reset()
            return node(bn(x))
        return step(f)

    fns = {_name(be, device): fused(be) for be in fused_backends(device)}
    fns["bn+snn_fast-lif"] = pair()
    sj = _sj_node()
    if sj is not None:
        fns["bn+spikingjelly"] = sj_pair(sj)
    register_user()  # the -user rows (module docstring)
    if device != "cpu":
        fns.update({"snn_fast-bn_lif-triton-user": fused("triton", USER), "bn+snn_fast-lif-user": pair(USER)})
    else:
        unfused = fused("cpu", USER)
        fns.update({"snn_fast-bn_lif-user": fused("cpu", USER),
                    "snn_fast-bn_lif-user-unfused": lambda: _with_switch("-given", lambda f: f(), unfused),
                    "bn_lif-reference-user": fused("reference", USER), "bn+snn_fast-lif-user": pair(USER)})
        sj_user = _spikingjelly_nodes()[1]
        if sj_user is not None:
            fns["bn+spikingjelly-user"] = sj_pair(sj_user)
    return fns, (x, w, b)


def _name(backend, device):
    """The fused op's provider name: 'snn_fast-bn_lif' for the C++ kernel of the device, else with the backend."""
    return "snn_fast-bn_lif" if backend in ("cpu", "cuda") else f"snn_fast-bn_lif-{backend}"


def check(fns, tensors, device="cpu"):
    """Each fused row's spikes and gradients against batch norm + snn_fast LIF with the same surrogate,
    before timing."""
    x, w, b = tensors
    refs = {}
    for name in [p for p in fns if p.startswith("snn_fast-bn_lif")]:
        base = "bn+snn_fast-lif-user" if "-user" in name else "bn+snn_fast-lif"
        if base not in refs:
            refs[base] = fns[base](), [t.grad.clone() for t in (x, w, b)]
        s_ref, ref = refs[base]
        s = fns[name]()
        flips = (s != s_ref).float().mean().item()
        assert flips < 1e-4, (name, flips)
        if flips == 0:
            for t, r in zip((x, w, b), ref):
                torch.testing.assert_close(t.grad, r, rtol=1e-3, atol=1e-4 * r.abs().max().item())


def _channels_cached(shape, device) -> bool:
    """Whether the CPU kernel's backward goes channel by channel here (memory.py cpu_backward_by_channel)
    and every thread's channel fits half of this host's last-level cache: the model's 6 passes, else 9."""
    if device != "cpu":
        return False
    from benchmarks.bytes_bn_lif import host_ll_bytes

    try:
        ll = host_ll_bytes()
    except RuntimeError:
        return False
    T, N, inner = shape[0], int(torch.Size(shape[1:]).numel()), int(torch.Size(shape[3:]).numel())
    channel = memory.cpu_channel_bytes(T, N, shape[2], inner, torch.float32)
    return 0 < channel and channel * torch.get_num_threads() <= ll // 2


def run(shapes=SHAPES, device="cpu", rounds=3, providers=None):
    """Rows of every provider (or of ``providers`` only) at each shape, checked before timing."""
    rows = []
    for shape in shapes:
        fns, tensors = steps(shape, device)
        if providers is not None:
            fns = {k: f for k, f in fns.items() if k in providers}
        check(fns, tensors, device)
        tm = common.time_fns(fns, device, rounds=rounds, min_run_time=1.0)
        T, N = shape[0], int(torch.Size(shape[1:]).numel())
        for p, (med, q20, q80) in tm.items():
            base = tm["bn+snn_fast-lif-user" if "-user" in p else "bn+snn_fast-lif"][0]
            fused = p.startswith("snn_fast-bn_lif") and not p.endswith("-unfused")
            nbytes = memory.fused_bytes(T, N, torch.float32, by_channel=_channels_cached(shape, device)) if fused else (
                memory.unfused_bytes(T, N, torch.float32))
            rows.append(dict(op="bn_lif", provider=p, mode="fwd+bwd", shape="x".join(map(str, shape)),
                             dtype="float32", device=device, threads=torch.get_num_threads(), median_ms=med,
                             q20_ms=q20, q80_ms=q80, bytes=nbytes, vs_bn_lif=base / med))
    return rows


def print_table(rows):
    print(f"\n{'provider':<28} {'shape':<18} {'median ms':>10} {'q20':>9} {'q80':>9} {'MB moved':>9} {'vs BN+LIF':>9}")
    for r in rows:
        d = 3 if r["median_ms"] < 1 else 1  # the small layers' rows in µs resolution
        print(f"{r['provider']:<28} {r['shape']:<18} {r['median_ms']:>10.{d}f} {r['q20_ms']:>9.{d}f} "
              f"{r['q80_ms']:>9.{d}f} {r['bytes'] / 1e6:>9.1f} {r['vs_bn_lif']:>9.2f}")


def test_bench_bn_lif(benchmark):
    if not snn_fast.HAS_C:
        pytest.skip("needs the C++ extension")
    rows = run()
    print_table(rows)
    for r in rows:
        common.record(device_name=common.device_name("cpu"), **r)
    benchmark.extra_info.update({f"{r['provider']}@{r['shape']}": r["median_ms"] for r in rows})
    fns, _ = steps(SHAPES[1])
    benchmark.pedantic(fns["snn_fast-bn_lif"], rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if "layers" in sys.argv[2:]:
        print_table(run(LAYER_SHAPES, dev, providers=LAYER_PROVIDERS))
    else:
        print_table(run(device=dev))
