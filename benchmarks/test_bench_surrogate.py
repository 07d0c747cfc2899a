"""A user-registered surrogate vs the built-in of the same shape, per backend, in the same run (issue 17).

    python -m pytest benchmarks/test_bench_surrogate.py --benchmark-only -s
    python benchmarks/test_bench_surrogate.py [cpu|cuda]

The user's surrogate is the built-in sigmoid (α = 4) re-registered with ``register_surrogate``: torch
g/g′ (and ``@triton.jit`` versions for the Triton backend), ``scaling=True``. So "user" and "built-in"
do the same arithmetic and every difference is the cost of running a user's surrogate:
  - CPU: 'cpu' runs the C++ forward and ``custom_cpu.py``'s blocked backward (the torch g′ per block);
    the peers are the reference loop with the same user surrogate and SpikingJelly 2.0's LIFNode with
    its own custom surrogate (a ``SurrogateFunctionBase`` subclass with its own autograd Function,
    which is how a SpikingJelly user adds a shape; it runs SpikingJelly's torch loop).
  - GPU: 'triton' with the user's constexpr functions vs the built-in id; 'cuda' cannot run it.
Workloads: W4 on the CPU ([16, 32, 8192] float32), W1 at T = 16 on a GPU ([16, 64, 65536] float32 and
bfloat16); default LIF (τ = 2, hard reset to 0). Timing: ``common.time_fns`` (providers interleaved
round by round; median and 20/80 % quantiles). The summary prints each ratio as median (q20–q80 range:
the ratio of one provider's q20 to the other's q80 and back).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402
from snn_fast import surrogate as sgm  # noqa: E402
from snn_fast.ops.lif.function import BACKENDS as LIF_BACKENDS  # noqa: E402

USER = "sigmoid_user"


def _sig_g(x, a):
    return torch.sigmoid(a * x)


def _sig_dg(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def register():
    """The built-in sigmoid as a user would register it (with Triton versions when triton imports)."""
    if USER in sgm.names():
        return sgm.get(USER)
    fns = None
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def sig_g(x, a):
            return 1.0 / (1.0 + tl.exp(-(a * x)))

        @triton.jit
        def sig_dg(x, a):
            s = 1.0 / (1.0 + tl.exp(-(a * x)))
            return a * s * (1.0 - s)

        fns = (sig_g, sig_dg)
    except ImportError:
        pass
    return sgm.register_surrogate(USER, g=_sig_g, dg=_sig_dg, alpha=4.0, scaling=True, triton=fns)


def _spikingjelly_nodes():
    """(built-in Sigmoid node, node with a custom surrogate written as a SpikingJelly user would)."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # not installed (a peer, never a dependency)
        return None, None

    class _UserSigmoidFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha):
            ctx.save_for_backward(x)
            ctx.alpha = alpha
            return (x >= 0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            s = torch.sigmoid(ctx.alpha * x)
            return grad * ctx.alpha * s * (1 - s), None

    class UserSigmoid(surrogate.SurrogateFunctionBase):
        def __init__(self, alpha=4.0, spiking=True):
            super().__init__(spiking=spiking, alpha=alpha)

        @staticmethod
        def spiking_function(x, alpha):
            return _UserSigmoidFn.apply(x, alpha)

        @staticmethod
        def primitive_function(x, alpha):
            return (x * alpha).sigmoid()

    builtin = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))
    user = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=UserSigmoid(alpha=4.0))
    return builtin, user


def providers(device):
    """name -> f(x) returning spikes. ``<backend>`` runs the built-in sigmoid, ``<backend>-user`` the
    user's; a fused backend that cannot run here is left out with its reason printed."""
    register()
    out = {}
    fused = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    for b in fused:
        for sg in ("sigmoid", USER):
            try:
                LIF_BACKENDS.select(b, torch.zeros(1, device=device), True, sgm.get(sg))
            except (RuntimeError, ValueError) as e:
                print(f"snn_fast-{b} with {sg}: {e}")
                continue
            name = f"snn_fast-{b}" + ("-user" if sg == USER else "")
            out[name] = lambda x, b=b, sg=sg: snn_fast.lif_multistep(x, backend=b, surrogate=sg)[0]
    sj, sj_user = _spikingjelly_nodes()
    for name, node in (("spikingjelly", sj), ("spikingjelly-user", sj_user)):
        if node is None:
            print("spikingjelly not installed: its rows are skipped")
            continue
        node = node.to(device)

        def run_sj(x, node=node):
            node.reset()
            return node(x)

        out[name] = run_sj
    out["reference-user"] = lambda x: snn_fast.lif_multistep(x, backend="reference", surrogate=USER)[0]
    return out


def cases(device):
    if device == "cpu":
        return [((16, 32, 8192), torch.float32)]
    return [((16, 64, 65536), dt) for dt in (torch.float32, torch.bfloat16)]


def bench_case(device, shape, dtype, rounds=3):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype, generator=g) * 2
    gs = torch.randn(shape, device=device, dtype=dtype, generator=g)
    provs = providers(device)
    with torch.no_grad():
        ref_s = snn_fast.lif_multistep(x, backend="reference")[0]
    for name, f in provs.items():  # the same spikes before anything is timed
        with torch.no_grad():
            agree = (f(x) == ref_s).float().mean().item()
        exact = name.startswith("snn_fast") and dtype in (torch.float32, torch.float64)
        assert agree == 1.0 if exact else agree > 0.999, f"{name} disagrees with the reference on {1 - agree:.4%}"
    xg = x.clone().requires_grad_(True)

    def fwd(f):
        with torch.no_grad():
            return f(x)

    def fwd_bwd(f):
        xg.grad = None
        f(xg).backward(gs)

    rows = []
    for mode, wrap, passes in (("fwd", fwd, 2), ("fwd+bwd", fwd_bwd, 5)):
        fns = {name: (lambda f=f: wrap(f)) for name, f in provs.items()}
        tm = common.time_fns(fns, device, rounds=rounds)
        peer = tm.get("spikingjelly-user", (None,))[0]
        for name in fns:
            rows.append(common.record(
                op="lif-surrogate", provider=name, mode=mode, shape="x".join(map(str, shape)),
                dtype=str(dtype).replace("torch.", ""), device=device, device_name=common.device_name(device),
                threads=torch.get_num_threads(), median_ms=tm[name][0], q20_ms=tm[name][1], q80_ms=tm[name][2],
                bytes=passes * x.numel() * x.element_size(), speedup=(peer / tm[name][0]) if peer else None))
    return rows


# (slower, faster): each ratio is slower's time over faster's
RATIOS = [("snn_fast-cpu-user", "snn_fast-cpu"), ("reference-user", "snn_fast-cpu-user"),
          ("spikingjelly-user", "snn_fast-cpu-user"), ("snn_fast-triton-user", "snn_fast-triton"),
          ("reference-user", "snn_fast-triton-user"), ("spikingjelly-user", "snn_fast-triton-user")]


def ratios(rows):
    """[(mode, shape, dtype, a, b, median ratio, low, high)] of a's time over b's, for RATIOS."""
    out = []
    by = {(r["mode"], r["shape"], r["dtype"], r["provider"]): r for r in rows}
    for (mode, shape, dtype, _p) in sorted({k[:3] + (None,) for k in by}, key=str):
        for a, b in RATIOS:
            ra, rb = by.get((mode, shape, dtype, a)), by.get((mode, shape, dtype, b))
            if ra and rb:
                out.append((mode, shape, dtype, a, b, ra["median_ms"] / rb["median_ms"],
                            ra["q20_ms"] / rb["q80_ms"], ra["q80_ms"] / rb["q20_ms"]))
    return out


def print_rows(rows):
    print()
    print(common.markdown_table(rows))
    print("\n| mode | shape | dtype | time of | over time of | ratio (median) | q20–q80 range |")
    print("|---|---|---|---|---|---|---|")
    for mode, shape, dtype, a, b, med, lo, hi in ratios(rows):
        print(f"| {mode} | {shape} | {dtype} | {a} | {b} | {med:.2f} | {lo:.2f}–{hi:.2f} |")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bench_surrogate(benchmark, device):
    rows = []
    for shape, dtype in cases(device):
        rows += bench_case(device, shape, dtype)
    print_rows(rows)
    user = [r for r in rows if r["provider"].startswith("snn_fast") and r["provider"].endswith("-user")]
    assert user, f"no fused backend ran the user surrogate on {device}"
    benchmark.extra_info["ratios"] = [list(r) for r in ratios(rows)]
    shape, dtype = cases(device)[0]
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
    name = user[0]["provider"].split("-")[1]
    benchmark.pedantic(lambda: snn_fast.lif_multistep(x, backend=name, surrogate=USER)[0].sum().backward(),
                       rounds=10, warmup_rounds=2)


if __name__ == "__main__":
    dev = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for shape, dtype in cases(dev):
        rows += bench_case(dev, shape, dtype)
    print_rows(rows)
    if os.environ.get("SNN_FAST_BENCH_OUT"):
        print("\n".join(common.write_results(os.environ["SNN_FAST_BENCH_OUT"])))
