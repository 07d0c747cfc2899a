"""ASGL (seed 002, Wang et al., ICML 2023): plain surrogate gradients (SG) against Adaptive Smoothing
Gradient Learning across surrogate widths α ∈ {0.5, 1, 2.5, 5, 10}, on scikit-learn's 8×8 digits.

The document's table (ResNet-18, CIFAR-10/100, T = 2): SG collapses as α grows (CIFAR-100: 75.8 %
at α = 0.5, 6.1 % at α = 10) while ASGL stays flat (76.0–76.7 %). α is the sharpness of the sigmoid
σ(α·x) (ASGL's ``InvSigmoid``), so a large α makes the surrogate gradient α·σ(1 − σ) vanish away
from the threshold — and through depth.

Here: a deep MLP (``--depth`` hidden layers of ``--width`` neurons, each Linear → BatchNorm → LIF,
T = 2, direct encoding), trained with SGD + momentum for a few epochs.
- SG: ``nn.LIF`` with ASGL's neuron (λ = 0.5, θ = 1, hard reset to 0), sigmoid surrogate of fixed α.
- ASGL: ``presets.lif("asgl", learn=True, alpha=α)``: learnable λ, θ and α, and the noisy spike
  (p = 0.5: half the elements emit the analog σ(α·x) in the forward), p halved at each quarter of the
  epochs by ``nn.ASGLSchedule``.
Prints the table in the document's form (mean ± std over seeds) and plots accuracy against α.

    python examples/asgl_width_sweep.py                 # default: 5 widths × 2 methods × 3 seeds
    python examples/asgl_width_sweep.py --quick         # CI: 2 widths, 1 seed, 1 epoch, depth 4
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_threads_arg, set_threads, accuracy, default_device, load_digits_split, mean_std, pyplot, sweep, train_epoch  # noqa: E402

import snn_fast.nn as snn  # noqa: E402
from snn_fast import presets  # noqa: E402


class DeepMLP(nn.Module):
    def __init__(self, neuron, depth, width, d_in=64, classes=10):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [snn.MultiStep(nn.Linear(d_in, width)), snn.MultiStep(nn.BatchNorm1d(width)), neuron()]
            d_in = width
        self.body = nn.Sequential(*layers)
        self.head = snn.MultiStep(nn.Linear(d_in, classes))

    def forward(self, x):  # [T, B, 64] -> logits [B, 10] (mean over T)
        return self.head(self.body(x)).mean(0)


def make_neuron(method, alpha, backend):
    if method == "SG":
        return lambda: snn.LIF(decay=0.5, decay_input=False, v_threshold=1.0, v_reset=0.0, surrogate="sigmoid",
                               alpha=alpha, backend=backend)
    # θ stays fixed at 1 as in the document's runs (--thresh 1.0; --train_width learns α only): a
    # learnable scalar θ sums its gradient over all T·B·width elements, and with SGD at lr 0.1 it ran
    # off to θ = 28 and −110 within four epochs (10 % accuracy at α = 10).
    return lambda: presets.lif("asgl", learn=True, alpha=alpha, learnable_threshold=False, backend=backend)


def run(method, alpha, seed, args, data):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = DeepMLP(make_neuron(method, alpha, args.backend), args.depth, args.width).to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    q = max(1, args.epochs // 4)
    sched = snn.ASGLSchedule(model, gamma=0.5, milestones=range(q, args.epochs, q))
    for _ in range(args.epochs):
        train_epoch(model, opt, x_tr, y_tr, args.T, args.batch_size, bar=False)
        sched.step()
    return accuracy(model, x_te, y_te, args.T)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alphas", default="0.5,1,2.5,5,10")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-T", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=default_device())
    add_threads_arg(ap)
    ap.add_argument("--plot", default="asgl_width_sweep.png")
    ap.add_argument("--quick", action="store_true", help="CI: widths 1 and 10, one seed, 1 epoch, depth 4")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.alphas, args.seeds, args.epochs, args.depth = "1,10", "0", 1, 4
    alphas = [float(a) for a in args.alphas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_digits_split(0, device=args.device)
    print(f"digits: train {len(data[1])}, test {len(data[3])}; MLP depth {args.depth} width {args.width}, "
          f"T {args.T}, {args.epochs} epochs, SGD lr {args.lr}, seeds {seeds}, device {args.device}")

    acc = sweep(alphas, ("SG", "ASGL"), seeds, lambda m, a, s: run(m, a, s, args, data), "| Width (α) | SG | ASGL |")

    if args.plot:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m in ("SG", "ASGL"):
            ms = [mean_std(acc[(m, a)]) for a in alphas]
            ax.errorbar(alphas, [100 * v[0] for v in ms], yerr=[100 * v[1] for v in ms], marker="o", capsize=3,
                        label=m)
        ax.set_xscale("log")
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_xlabel("surrogate width α (sharpness of σ(αx))")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"SG vs ASGL, digits, depth-{args.depth} MLP, T={args.T}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")
    return acc


if __name__ == "__main__":
    main()
