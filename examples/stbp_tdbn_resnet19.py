"""STBP-tdBN (seed 004): the document's ResNet-19 with threshold-dependent batch norm and the rectangle
surrogate (``examples/models/resnet19.py``, built from ``snn_fast.nn``), trained briefly on
scikit-learn's 8×8 digits, with tdBN and without any normalisation.

The document trains the full-width network on MNIST (28×28, 11 epochs, about 2 hours on a Tesla T4)
to 98.67 % test accuracy and plots the average firing rate of each layer. Here the channel counts are
scaled by ``--width`` (default 1/8: 16/32/64 instead of 128/256/512), the input is the 8×8 digit
itself (1 channel, direct encoding, T = 4) and training is a few epochs of Adam. Prints test accuracy
and the firing rate of every stage (conv1, the three blocks, the FC layer: the mean spike rate of
its LIF outputs on the test set) for each variant, at initialisation and after training, and plots
both side by side — what tdBN is for: firing rates that neither die out nor saturate with depth.

    python examples/stbp_tdbn_resnet19.py               # default: tdBN and none, 4 epochs
    python examples/stbp_tdbn_resnet19.py --quick       # CI: 1 epoch, 128 train / 128 test images
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_threads_arg, set_threads, Timer, default_device, load_digits_split, pyplot, repeat_T, train_epoch  # noqa: E402
from models.resnet19 import ResNet19  # noqa: E402

from snn_fast.nn import reset_net  # noqa: E402


@torch.no_grad()
def evaluate(model, x, y, T, batch_size=256, batch_stats=False):
    """(accuracy, {stage: mean firing rate}) on (x, y).

    ``batch_stats``: normalise with each batch's statistics (train mode, on a copy so the running
    statistics stay untouched) — for the untrained network, whose running statistics are still the
    initial (0, 1) and would not describe its activations."""
    if batch_stats:
        model = copy.deepcopy(model)
    sums, counts, hooks = {}, {}, []
    for stage, neurons in model.stages.items():
        for m in neurons:
            def hook(_m, _inp, out, stage=stage):
                sums[stage] = sums.get(stage, 0.0) + out.float().sum().item()
                counts[stage] = counts.get(stage, 0) + out.numel()
            hooks.append(m.register_forward_hook(hook))
    model.train(batch_stats)
    correct = 0
    try:
        for j in range(0, len(y), batch_size):
            reset_net(model)
            correct += (model(repeat_T(x[j:j + batch_size], T)).argmax(1) == y[j:j + batch_size]).sum().item()
    finally:
        for h in hooks:
            h.remove()
        reset_net(model)
    return correct / len(y), {k: sums[k] / counts[k] for k in model.stages}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--norms", default="tdbn,none", help="comma list of tdbn, bn, none")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=0, help="use only this many training images (0 = all)")
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate on only this many test images (0 = all)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=default_device())
    add_threads_arg(ap)
    ap.add_argument("--plot", default="stbp_tdbn_resnet19.png")
    ap.add_argument("--quick", action="store_true", help="CI: 1 epoch on 128 training images, 128 test images")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.epochs, args.train_limit, args.test_limit = 1, 128, 128
    norms = args.norms.split(",")
    x_tr, y_tr, x_te, y_te = load_digits_split(args.seed, image=True, device=args.device)
    if args.train_limit:
        x_tr, y_tr = x_tr[:args.train_limit], y_tr[:args.train_limit]
    if args.test_limit:
        x_te, y_te = x_te[:args.test_limit], y_te[:args.test_limit]
    print(f"digits 8×8: train {len(y_tr)}, test {len(y_te)}; ResNet-19 width {args.width:g}, T {args.T}, "
          f"{args.epochs} epochs, Adam lr {args.lr}, seed {args.seed}, device {args.device}")

    clock = Timer()
    results = {}
    for norm in norms:
        torch.manual_seed(args.seed)
        model = ResNet19(in_channels=1, num_classes=10, width=args.width, norm=norm, backend=args.backend)
        model = model.to(args.device)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        _, rates0 = evaluate(model, x_te, y_te, args.T, batch_stats=True)
        for ep in range(args.epochs):
            loss = train_epoch(model, opt, x_tr, y_tr, args.T, args.batch_size, desc=f"{norm} epoch {ep}")
            print(f"  {norm:5s} epoch {ep}  loss {loss:.4f}  ({clock():.0f} s)", flush=True)
        acc, rates = evaluate(model, x_te, y_te, args.T)
        results[norm] = (acc, rates0, rates)

    stages = list(next(iter(results.values()))[2])
    print("\ntest accuracy and firing rate per stage (after training; at initialisation, batch statistics, "
          f"in brackets)  [{clock():.0f} s]")
    print("| norm | test acc % | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for norm, (acc, r0, r) in results.items():
        print(f"| {norm} | {100 * acc:.2f} | " + " | ".join(f"{r[s]:.3f} ({r0[s]:.3f})" for s in stages) + " |")

    if args.plot:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
        width = 0.8 / len(results)
        for ax, k, when in ((axes[0], 1, "at initialisation"), (axes[1], 2, f"after {args.epochs} epochs")):
            for i, (norm, res) in enumerate(results.items()):
                ax.bar([j + i * width for j in range(len(stages))], [res[k][s] for s in stages], width,
                       label=f"{norm} (test acc {100 * res[0]:.1f} %)" if k == 2 else norm)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(stages))], stages)
            ax.set_title(f"ResNet-19 (width {args.width:g}), digits, T={args.T}: {when}", fontsize=9)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("mean firing rate (test set)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")
    return results


if __name__ == "__main__":
    main()
