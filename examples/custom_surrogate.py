"""Your own surrogate gradient, running inside the fused kernels: a two-scale sigmoid mixture with a
learnable width α, registered in ten lines and trained on scikit-learn's 8×8 digits.

The shape: g(x; α) = ½·σ(α·x) + ½·σ(α·x/4), so g′ = a sharp sigmoid bump (width 1/α) on a four times
wider one: neurons far from threshold still get some gradient, as with a heavy-tailed surrogate,
while those near it get a sharp one. It is a function of α·x (``scaling=True``), so ∂g/∂α = x·g′/α
follows and α can be learned without writing it out. ``register_surrogate`` checks g′ and ∂g/∂α
against finite differences of g before accepting it.

It runs on backend 'cpu' (the C++ forward, and a backward that evaluates the torch ``dg`` on H − θ:
compiled by torch.compile for a layer of 1 MiB or more, eagerly for this example's smaller ones)
and, through the ``@triton.jit`` versions, in the Triton kernels as a variant of its own (on a GPU,
or on the CPU under TRITON_INTERPRET=1); ``backend='auto'`` picks the fastest that runs it.

Here: an MLP (Linear → LIF → Linear → LIF → Linear, T = 4, direct encoding), once with the built-in
sigmoid (α = 4 fixed) and once with the mixture (α learnable from 4), same seeds. Prints the test
accuracy and the learned α, and plots the training loss.

    python examples/custom_surrogate.py                 # 3 seeds × 6 epochs
    python examples/custom_surrogate.py --quick         # CI: 1 seed, 2 epochs
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import accuracy, add_threads_arg, default_device, load_digits_split, pyplot, set_threads, sweep, train_epoch  # noqa: E402

import snn_fast.nn as snn  # noqa: E402
from snn_fast import surrogate  # noqa: E402

try:
    import triton
    import triton.language as tl
except ImportError:  # the surrogate then runs on the CPU backend and the reference only
    triton = None


# ---- the surrogate: torch versions (every backend), Triton versions (the Triton kernels) -------------
def mix_g(x, a):
    return 0.5 * torch.sigmoid(a * x) + 0.5 * torch.sigmoid(a * x / 4)


def mix_dg(x, a):
    s1, s4 = torch.sigmoid(a * x), torch.sigmoid(a * x / 4)
    return 0.5 * a * s1 * (1 - s1) + 0.125 * a * s4 * (1 - s4)


if triton is not None:
    @triton.jit
    def mix_g_tl(x, a):
        return 0.5 / (1.0 + tl.exp(-(a * x))) + 0.5 / (1.0 + tl.exp(-(a * x) * 0.25))

    @triton.jit
    def mix_dg_tl(x, a):
        s1 = 1.0 / (1.0 + tl.exp(-(a * x)))
        s4 = 1.0 / (1.0 + tl.exp(-(a * x) * 0.25))
        return 0.5 * a * s1 * (1.0 - s1) + 0.125 * a * s4 * (1.0 - s4)


def register():
    if "sigmoid_mix" not in surrogate.names():
        surrogate.register_surrogate("sigmoid_mix", g=mix_g, dg=mix_dg, alpha=4.0, scaling=True,
                                     triton=(mix_g_tl, mix_dg_tl) if triton is not None else None)
# ------------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, neuron, width=128, d_in=64, classes=10):
        super().__init__()
        self.net = nn.Sequential(snn.MultiStep(nn.Linear(d_in, width)), neuron(),
                                 snn.MultiStep(nn.Linear(width, width)), neuron(),
                                 snn.MultiStep(nn.Linear(width, classes)))

    def forward(self, x):  # [T, B, 64] -> logits [B, 10] (mean over T)
        return self.net(x).mean(0)


def make_neuron(name, backend):
    if name == "sigmoid":
        return lambda: snn.LIF(tau=2.0, surrogate="sigmoid", alpha=4.0, backend=backend)
    return lambda: snn.LIF(tau=2.0, surrogate="sigmoid_mix", alpha=4.0, learnable_alpha=True, backend=backend)


def run(name, seed, args, data, losses, alphas):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = MLP(make_neuron(name, args.backend), args.width).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        losses.setdefault((name, seed), []).append(train_epoch(model, opt, x_tr, y_tr, args.T, args.batch_size,
                                                               bar=False))
    alphas[(name, seed)] = [float(torch.as_tensor(m.alpha).detach()) for m in model.modules() if isinstance(m, snn.LIF)]
    return accuracy(model, x_te, y_te, args.T)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=default_device())
    add_threads_arg(ap)
    ap.add_argument("--plot", default="custom_surrogate.png")
    ap.add_argument("--quick", action="store_true", help="CI: one seed, two epochs")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.seeds, args.epochs = "0", 2
    register()
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_digits_split(0, device=args.device)
    from snn_fast.ops.lif.function import BACKENDS

    ran_on = BACKENDS.select(args.backend, data[0], True, surrogate.get("sigmoid_mix"))
    print(f"digits: train {len(data[1])}, test {len(data[3])}; MLP width {args.width}, T {args.T}, "
          f"{args.epochs} epochs, Adam lr {args.lr}, seeds {seeds}, device {args.device}; "
          f"sigmoid_mix runs on backend {ran_on!r}")
    losses, alphas = {}, {}
    acc = sweep(["accuracy"], ("sigmoid", "sigmoid_mix"), seeds,
                lambda m, _, s: run(m, s, args, data, losses, alphas),
                "| | sigmoid (α = 4) | sigmoid_mix (learnable α) |",
                fmt_x=str)
    learned = [a for (n, _), v in alphas.items() if n == "sigmoid_mix" for a in v]
    print(f"learned α of sigmoid_mix (per LIF layer, all seeds): {', '.join(f'{a:.3f}' for a in learned)}")

    if args.plot:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for (name, seed), ls in losses.items():
            ax.plot(range(1, len(ls) + 1), ls, marker="o", color="C0" if name == "sigmoid" else "C1",
                    label=name if seed == seeds[0] else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title("built-in sigmoid vs a registered surrogate (learnable α)", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")
    return acc


if __name__ == "__main__":
    main()
