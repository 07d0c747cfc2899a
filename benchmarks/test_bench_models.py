"""W5 widened (docs/spec.md §10): a training step of SpikingJelly zoo models, original vs ``snn_fast.convert``.

    python -m pytest benchmarks/test_bench_models.py --benchmark-only -s     # or: make bench

One step = forward over T, cross-entropy on the time-averaged output, backward, SGD step, and
SpikingJelly's ``functional.reset_net``. Providers, timed in the same run and interleaved round by
round (``common.time_fns``): ``spikingjelly`` (the zoo model as built), ``snn_fast`` (the same model
after ``snn_fast.convert``, same weights), ``snn_fast-fused`` (``convert(fuse=True)``: each batch norm
feeding a neuron alone fused with it into one ``bn_lif`` op, docs/spec.md §12; the ResNets' blocks are
read by torch.fx) and ``no-neurons`` (the converted model with every neuron replaced by
``nn.Identity``: the rest of the model alone). The neurons' share of a step is
``1 − t(no-neurons) / t(provider)``: by substitution, since the profiler cannot attribute
SpikingJelly's autograd ops in the backward to the neuron that made them. "vs peer" is SpikingJelly's
median over the provider's. Peak memory: ``common.peak_bytes`` (CPU: live tensor storage).

Sizes: CPU T = 4, batch 4, 32×32×3 (ResNets) and a 1-block Spikformer at 32×32, patch 4, 64 dims, to
run in seconds; GPU T = 4, batch 32, 224² ResNets and SpikingJelly's CIFAR-10 Spikformer (32², 384
dims, 4 blocks). Float32. SpikingJelly is a peer: the test skips when it is not installed. Its zoo
imports torchvision only for ``load_state_dict_from_url``; when torchvision is absent a stub that
raises on use stands in while the zoo is imported.
"""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402

sj = pytest.importorskip("spikingjelly.activation_based")


def _zoo():
    stub = {}
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv, tvm, tvu = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.utils"))

        def load_state_dict_from_url(*a, **k):
            raise RuntimeError("torchvision stub (benchmarks/test_bench_models.py): no pretrained weights")

        tvu.load_state_dict_from_url = load_state_dict_from_url
        tv.models, tvm.utils = tvm, tvu
        stub = {"torchvision": tv, "torchvision.models": tvm, "torchvision.models.utils": tvu}
        sys.modules.update(stub)
    try:
        from spikingjelly.activation_based.model import sew_resnet, spikformer, spiking_resnet
    finally:
        for k in stub:
            sys.modules.pop(k, None)
    return spiking_resnet, sew_resnet, spikformer


def build(name: str, device: str):
    """(model, input [T, B, 3, H, W], shape label): the zoo model at this device's size."""
    from spikingjelly.activation_based import functional, neuron, surrogate

    spiking_resnet, sew_resnet, spikformer = _zoo()
    gpu = device == "cuda"
    T, B, R = (4, 32, 224) if gpu else (4, 4, 32)
    if name == "spiking_resnet18":
        net = spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(),
                                              detach_reset=True, num_classes=10)
    elif name == "sew_resnet18":
        net = sew_resnet.sew_resnet18(spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(),
                                      detach_reset=True, cnf="ADD", num_classes=10)
    else:
        R = 32
        net = (spikformer.spikformer_cifar10() if gpu else
               spikformer.Spikformer(in_channels=3, img_size_h=R, img_size_w=R, patch_size=4, num_classes=10,
                                     embed_dims=64, num_heads=4, depths=1))
    functional.set_step_mode(net, "m")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, 3, R, R, generator=g)
    return net.to(device), x.to(device), f"T{T}xB{B}x3x{R}x{R}"


def _strip_neurons(m: torch.nn.Module) -> torch.nn.Module:
    for n, c in m.named_children():
        if isinstance(c, snn_fast.nn.BaseLIF):
            setattr(m, n, torch.nn.Identity())
        else:
            _strip_neurons(c)
    return m


def providers(name: str, device: str):
    """name -> one training step (closure over its own model and optimizer), and the shape label."""
    import copy

    from spikingjelly.activation_based import functional

    net, x, shape = build(name, device)
    conv = snn_fast.convert(net)  # a converted deep copy: the same weights
    fused = snn_fast.convert(net, fuse=True)
    bare = _strip_neurons(copy.deepcopy(conv))
    y = torch.randint(0, 10, (x.shape[1],), device=device)

    def make_step(model):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x).mean(0), y)
            loss.backward()
            opt.step()
            functional.reset_net(model)

        return step

    return {"spikingjelly": make_step(net), "snn_fast": make_step(conv), "snn_fast-fused": make_step(fused),
            "no-neurons": make_step(bare)}, shape


MODELS = ("spiking_resnet18", "sew_resnet18", "spikformer")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def bench_model(name: str, device: str, rounds: int = 3):
    fns, shape = providers(name, device)
    tm = common.time_fns(fns, device, rounds=rounds, min_run_time=1.0)
    peer, rest = tm["spikingjelly"][0], tm["no-neurons"][0]
    rows = []
    for prov, (med, q20, q80) in tm.items():
        rows.append(common.record(
            op=f"train_step:{name}", provider=prov, mode="fwd+bwd+sgd", shape=shape, dtype="float32", device=device,
            device_name=common.device_name(device), threads=torch.get_num_threads(), median_ms=med, q20_ms=q20,
            q80_ms=q80, peak_bytes=common.peak_bytes(fns[prov], device),
            speedup=peer / med if prov != "no-neurons" else None,
            neuron_share=(1.0 - rest / med) if prov != "no-neurons" else None))
    return rows


def print_rows(rows):
    print()
    print(common.markdown_table(rows))
    for r in rows:
        if r["neuron_share"] is not None:
            print(f"{r['op']} {r['provider']}: neurons {100 * r['neuron_share']:.0f} % of the step (by substitution)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MODELS)
def test_bench_model(benchmark, name, device):
    rows = bench_model(name, device)
    print_rows(rows)
    benchmark.extra_info["rows"] = [{k: r[k] for k in ("provider", "shape", "median_ms", "speedup", "neuron_share")}
                                    for r in rows]
    fns, _ = providers(name, device)
    benchmark.pedantic(fns["snn_fast"], rounds=2, warmup_rounds=1)


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    for m in (sys.argv[2:] or MODELS):
        print_rows(bench_model(m, dev))
