"""A user-registered surrogate vs the built-in of the same shape, per backend, in the same run.

    python -m pytest benchmarks/test_bench_surrogate.py --benchmark-only -s
    python benchmarks/test_bench_surrogate.py [cpu|cuda]

The user's surrogate is the built-in sigmoid (α = 4) re-registered with ``register_surrogate``: torch
g/g′ (and ``@triton.jit`` versions for the Triton backend), ``scaling=True``. So "user" and "built-in"
do the same arithmetic and every difference is the cost of running a user's surrogate:
  - CPU: 'cpu' runs the C++ forward and the C++ walk with the user's g′ translated to C++ and compiled
    into it (``-user``: native_surrogate.py; built, or loaded from the disk cache, in the warm-up, not
    timed). ``-user-given``: the same with that step off ($SNN_FAST_NATIVE_SURROGATES=0 around the
    call): the forward keeps H − θ, the user's torch g′ runs on it compiled by torch.compile into one
    loop, and the walk reads it (``custom_cpu.py``); ``-user-eager`` (registered with compile=False):
    the torch g′ eager in 1 MiB pieces. The peers are the reference loop with the same user
    surrogate and SpikingJelly 2.0's LIFNode with its own custom surrogate (a
    ``SurrogateFunctionBase`` subclass with its own autograd Function, which is how a SpikingJelly
    user adds a shape; it runs SpikingJelly's torch loop). Measured at 1 and 2 threads
    (``torch.set_num_threads``; CPU_THREADS).
    The ``-learn`` rows: α learnable, the user's surrogate registered with an explicit ``dg_dalpha``
    (``sigmoid_user_da``), SpikingJelly's custom surrogate with α an ``nn.Parameter`` and its own ∂/∂α.
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
from snn_fast.ops.lif.native_surrogate import ENV_NATIVE as NATIVE_ENV  # noqa: E402

USER = "sigmoid_user"
USER_DA = "sigmoid_user_da"  # the same with an explicit ∂g/∂α (not derived by scaling=True)
EAGER = "_eager"  # suffix: the same surrogates registered with compile=False (CPU rows "-user-eager")
GIVEN = "+given"  # suffix: the same surrogate, not compiled into the walk (CPU rows "-user-given")
CPU_THREADS = (1, 2)


def _sig_g(x, a):
    return torch.sigmoid(a * x)


def _sig_dg(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


def _sig_da(x, a):
    s = torch.sigmoid(a * x)
    return x * s * (1 - s)


def register():
    """The built-in sigmoid as a user would register it (with Triton versions when triton imports),
    and once more with its own ∂g/∂α (torch only); each also with compile=False (``EAGER``)."""
    if USER_DA not in sgm.names():
        sgm.register_surrogate(USER_DA, g=_sig_g, dg=_sig_dg, dg_dalpha=_sig_da, alpha=4.0)
        sgm.register_surrogate(USER_DA + EAGER, g=_sig_g, dg=_sig_dg, dg_dalpha=_sig_da, alpha=4.0, compile=False)
        sgm.register_surrogate(USER + EAGER, g=_sig_g, dg=_sig_dg, alpha=4.0, scaling=True, compile=False)
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
    """(built-in Sigmoid node, node with a custom surrogate written as a SpikingJelly user would, the
    same with a learnable α)."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception:  # not installed (a peer, never a dependency)
        return None, None, None

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

    class _UserSigmoidLearnFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha):
            ctx.save_for_backward(x, alpha)
            return (x >= 0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad):
            x, alpha = ctx.saved_tensors
            s = torch.sigmoid(alpha * x)
            gs = grad * s * (1 - s)
            return gs * alpha, (gs * x).sum()

    class UserSigmoidLearn(surrogate.SurrogateFunctionBase):
        def __init__(self, alpha=4.0, spiking=True):
            super().__init__(spiking=spiking, alpha=torch.nn.Parameter(torch.tensor(float(alpha))))

        @staticmethod
        def spiking_function(x, alpha):
            return _UserSigmoidLearnFn.apply(x, alpha)

        @staticmethod
        def primitive_function(x, alpha):
            return (x * alpha).sigmoid()

    builtin = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=surrogate.Sigmoid(alpha=4.0))
    user = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=UserSigmoid(alpha=4.0))
    user_learn = neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=UserSigmoidLearn(alpha=4.0))
    return builtin, user, user_learn


def providers(device):
    """name -> f(x) returning spikes. ``<backend>`` runs the built-in sigmoid, ``<backend>-user`` the
    user's, ``-learn`` with a learnable α (CPU); a fused backend that cannot run here is left out with
    its reason printed."""
    register()
    out = {}
    fused = ["cpu"] if device == "cpu" else ["cuda", "triton"]
    alpha = torch.tensor(4.0, device=device, requires_grad=True)  # learnable α (its gradient is computed)
    for b in fused:
        cpu_only = (("sigmoid", True), (USER_DA, True), (USER + EAGER, False), (USER_DA + EAGER, True),
                    (USER + GIVEN, False), (USER_DA + GIVEN, True))
        for sg, learn in (("sigmoid", False), (USER, False)) + (cpu_only if device == "cpu" else ()):
            try:
                LIF_BACKENDS.select(b, torch.zeros(1, device=device), True, sgm.get(sg.removesuffix(GIVEN)))
            except (RuntimeError, ValueError) as e:
                print(f"snn_fast-{b} with {sg}: {e}")
                continue
            name = (f"snn_fast-{b}" + ("-user" if sg != "sigmoid" else "") + ("-eager" if sg.endswith(EAGER) else "")
                    + ("-given" if sg.endswith(GIVEN) else "") + ("-learn" if learn else ""))
            base = sg.removesuffix(GIVEN)
            out[name] = lambda x, b=b, sg=base, a=(alpha if learn else 4.0): snn_fast.lif_multistep(
                x, backend=b, surrogate=sg, alpha=a)[0]
    sj, sj_user, sj_learn = _spikingjelly_nodes()
    sj_nodes = (("spikingjelly", sj), ("spikingjelly-user", sj_user))
    if device == "cpu":
        sj_nodes += (("spikingjelly-user-learn", sj_learn),)
    for name, node in sj_nodes:
        if node is None:
            print("spikingjelly not installed: its rows are skipped")
            continue
        node = node.to(device)

        def run_sj(x, node=node):
            node.reset()
            return node(x)

        out[name] = run_sj
    out["reference-user"] = lambda x: snn_fast.lif_multistep(x, backend="reference", surrogate=USER)[0]
    if device == "cpu":
        out["reference-user-learn"] = lambda x: snn_fast.lif_multistep(x, backend="reference", surrogate=USER_DA,
                                                                       alpha=alpha)[0]
    return out


def cases(device):
    if device == "cpu":
        return [((16, 32, 8192), torch.float32)]
    return [((16, 64, 65536), dt) for dt in (torch.float32, torch.bfloat16)]


def bench_case(device, shape, dtype, rounds=3):
    """Rows of every provider; on the CPU once per thread count of CPU_THREADS (then restored)."""
    if device != "cpu":
        return _bench_case(device, shape, dtype, rounds)
    rows, before = [], torch.get_num_threads()
    try:
        for n in CPU_THREADS:
            torch.set_num_threads(n)
            rows += _bench_case(device, shape, dtype, rounds)
    finally:
        torch.set_num_threads(before)
    return rows


def _bench_case(device, shape, dtype, rounds):
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
        # a learnable α changes only the backward
        fns = {name: (lambda f=f, name=name: _run(name, wrap, f)) for name, f in provs.items()
               if mode != "fwd" or "-learn" not in name}
        tm = common.time_fns(fns, device, rounds=rounds)
        for name in fns:
            peer = tm.get("spikingjelly-user" + ("-learn" if "-learn" in name else ""), (None,))[0]
            rows.append(common.record(
                op="lif-surrogate", provider=name, mode=mode, shape="x".join(map(str, shape)),
                dtype=str(dtype).replace("torch.", ""), device=device, device_name=common.device_name(device),
                threads=torch.get_num_threads(), median_ms=tm[name][0], q20_ms=tm[name][1], q80_ms=tm[name][2],
                bytes=passes * x.numel() * x.element_size(), speedup=(peer / tm[name][0]) if peer else None))
    return rows


def _run(name, wrap, f):
    """wrap(f), with the compiled walk off for the ``-given`` rows (forward and backward)."""
    if "-given" not in name:
        return wrap(f)
    before = os.environ.get(NATIVE_ENV)
    os.environ[NATIVE_ENV] = "0"
    try:
        return wrap(f)
    finally:
        if before is None:
            del os.environ[NATIVE_ENV]
        else:
            os.environ[NATIVE_ENV] = before


# (slower, faster): each ratio is slower's time over faster's
RATIOS = [("snn_fast-cpu-user", "snn_fast-cpu"), ("snn_fast-cpu-user-given", "snn_fast-cpu-user"),
          ("snn_fast-cpu-user-given-learn", "snn_fast-cpu-user-learn"),
          ("snn_fast-cpu-user-eager", "snn_fast-cpu-user"),
          ("snn_fast-cpu-user-eager-learn", "snn_fast-cpu-user-learn"), ("reference-user", "snn_fast-cpu-user"),
          ("spikingjelly-user", "snn_fast-cpu-user"),
          ("snn_fast-cpu-user-learn", "snn_fast-cpu-learn"), ("reference-user-learn", "snn_fast-cpu-user-learn"),
          ("spikingjelly-user-learn", "snn_fast-cpu-user-learn"),
          ("snn_fast-triton-user", "snn_fast-triton"),
          ("reference-user", "snn_fast-triton-user"), ("spikingjelly-user", "snn_fast-triton-user")]


def ratios(rows):
    """[(mode, shape, dtype, threads, a, b, median ratio, low, high)] of a's time over b's, for RATIOS,
    and each provider's time at its most threads over its time at one (``a`` = ``b``)."""
    out = []
    by = {(r["mode"], r["shape"], r["dtype"], r["threads"], r["provider"]): r for r in rows}
    for key in sorted({k[:4] for k in by}, key=str):
        for a, b in RATIOS:
            ra, rb = by.get(key + (a,)), by.get(key + (b,))
            if ra and rb:
                out.append(key + (a, b, ra["median_ms"] / rb["median_ms"], ra["q20_ms"] / rb["q80_ms"],
                                  ra["q80_ms"] / rb["q20_ms"]))
    threads = sorted({k[3] for k in by})
    if len(threads) > 1:
        for (mode, shape, dtype, t, p) in sorted(by, key=str):
            if t == threads[-1] and (mode, shape, dtype, threads[0], p) in by:
                ra, rb = by[(mode, shape, dtype, t, p)], by[(mode, shape, dtype, threads[0], p)]
                out.append((mode, shape, dtype, f"{t} over {threads[0]}", p, p, ra["median_ms"] / rb["median_ms"],
                            ra["q20_ms"] / rb["q80_ms"], ra["q80_ms"] / rb["q20_ms"]))
    return out


def print_rows(rows):
    print()
    print(common.markdown_table(rows))
    print("\n| mode | shape | dtype | threads | time of | over time of | ratio (median) | q20–q80 range |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, shape, dtype, th, a, b, med, lo, hi in ratios(rows):
        print(f"| {mode} | {shape} | {dtype} | {th} | {a} | {b} | {med:.2f} | {lo:.2f}–{hi:.2f} |")


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
