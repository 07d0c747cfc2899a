"""BPSA (seed 003, Shen, Zhao & Zeng, Patterns 2022 / BrainCog): backpropagation with spatial and
temporal adjustment against plain surrogate BPTT, test accuracy against the number of time steps
T ∈ {2, 4, 8}, on scikit-learn's 8×8 digits.

The document's claim (its Figure 3 and Table 6, numbers not in the text we have): without the
adjustments accuracy drops as T shrinks; with them it holds.

Here: an MLP 64 → ``--hidden`` → ``--hidden`` → 10, each hidden layer Linear → ReLU → IF neuron
(θ = 0.5, hard reset to 0: the BrainCog node), direct encoding, logits = mean over T of the readout.
- BPSA: ``presets.lif("bpsa")``: spatial adjustment = the ``spike_gate`` surrogate (a gradient only
  where the neuron fired), temporal adjustment = ``detach_reset`` with the residual κ = 0.2 (the
  error crosses a spike through κ).
- plain: the same IF neuron with the sigmoid surrogate (α = 4), reset not detached, κ = 0.
Adam, a few epochs, several seeds; prints a T × method table and plots accuracy against T.

    python examples/bpsa_timesteps.py                    # default: T 2,4,8 × 2 methods × 3 seeds
    python examples/bpsa_timesteps.py --quick            # CI: T 2,4, one seed, 1 epoch
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


class ReLU_IF_MLP(nn.Module):
    def __init__(self, neuron, hidden, d_in=64, classes=10):
        super().__init__()
        self.body = nn.Sequential(
            snn.MultiStep(nn.Linear(d_in, hidden)), nn.ReLU(), neuron(),
            snn.MultiStep(nn.Linear(hidden, hidden)), nn.ReLU(), neuron(),
        )
        self.head = snn.MultiStep(nn.Linear(hidden, classes))

    def forward(self, x):
        return self.head(self.body(x)).mean(0)


def make_neuron(method, backend):
    if method == "BPSA":
        return lambda: presets.lif("bpsa", backend=backend)
    return lambda: presets.lif("bpsa", surrogate="sigmoid", alpha=4.0, detach_reset=False, reset_residual=0.0,
                               backend=backend)


def run(method, T, seed, args, data):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = ReLU_IF_MLP(make_neuron(method, args.backend), args.hidden).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for _ in range(args.epochs):
        train_epoch(model, opt, x_tr, y_tr, T, args.batch_size, bar=False)
    return accuracy(model, x_te, y_te, T)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--Ts", default="2,4,8")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=default_device())
    add_threads_arg(ap)
    ap.add_argument("--plot", default="bpsa_timesteps.png")
    ap.add_argument("--quick", action="store_true", help="CI: T 2 and 4, one seed, 1 epoch")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.Ts, args.seeds, args.epochs = "2,4", "0", 1
    Ts = [int(t) for t in args.Ts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_digits_split(0, device=args.device)
    print(f"digits: train {len(data[1])}, test {len(data[3])}; MLP 64-{args.hidden}-{args.hidden}-10 (ReLU → IF θ=0.5), "
          f"{args.epochs} epochs, Adam lr {args.lr}, seeds {seeds}, device {args.device}")

    acc = sweep(Ts, ("plain", "BPSA"), seeds, lambda m, T, s: run(m, T, s, args, data),
                "| T | plain surrogate BPTT | BPSA (spike_gate + κ = 0.2) |", fmt_x=str)

    if args.plot:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m in ("plain", "BPSA"):
            ms = [mean_std(acc[(m, T)]) for T in Ts]
            ax.errorbar(Ts, [100 * v[0] for v in ms], yerr=[100 * v[1] for v in ms], marker="o", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ts, [str(T) for T in Ts])
        ax.set_xlabel("time steps T")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("plain surrogate BPTT vs BPSA, digits, ReLU→IF MLP", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")
    return acc


if __name__ == "__main__":
    main()
