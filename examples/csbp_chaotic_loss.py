"""CSBP (seed 000, chaotic spiking backpropagation): the document's single-neuron experiment, then the
chaotic loss on a small classifier (scikit-learn's 8×8 digits).

Part 1, as in the document: one ``Linear(1, 1)`` (w = b = 0.5) feeding a LIF with the CSBP form
mem = 0.2·mem·(1 − spike) + w·x + b, θ = 1, the ZIF (triangle) surrogate γ = 1, T = 10; input x = 1,
target 0, loss MSE(mean spike count, 0); 4000 epochs of SGD.
- plain BPTT: lr 0.001 (the document's); the loss reaches 0 once the neuron stops firing and w stalls.
- CSBP: lr 1, plus the chaotic loss −z·[I0·log σ(h) + (1 − I0)·log(1 − σ(h))] on h = w·x + b
  (``snn_fast.losses.ChaoticLoss(z=10, beta=0.9995, I0=0.65, s=1)``, z ← β·z every epoch): w wanders
  chaotically while z is large, then settles as z anneals.
Both runs go in one figure: w and the MSE loss over epochs.

Part 2: an MLP 64 → ``--hidden`` → 10 with ``presets.lif("csbp")`` neurons (λ = 0.5, θ = 1, ZIF),
T = 4, direct encoding, SGD + momentum; with vs without the chaotic loss on the hidden layer's
pre-activation (s = 10, summed as in the document, z annealed per step to 1 % of its start by the end
of training), over several seeds. Prints both accuracies per seed and their mean.

    python examples/csbp_chaotic_loss.py                # default: 4000 epochs single neuron, 5 seeds
    python examples/csbp_chaotic_loss.py --quick        # CI: 300 epochs, 1 seed, 1 epoch
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    Timer, accuracy, add_threads_arg, default_device, load_digits_split, mean_std, pyplot, set_threads, tqdm,
    train_epoch,
)

import snn_fast.nn as snn  # noqa: E402
from snn_fast import presets  # noqa: E402
from snn_fast.losses import ChaoticLoss  # noqa: E402


# ---------------------------------------------------------------- part 1: the single neuron
class SingleNeuron(nn.Module):
    def __init__(self, T=10, w=0.5, b=0.5, backend="auto"):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        nn.init.constant_(self.layer.weight, w)
        nn.init.constant_(self.layer.bias, b)
        self.T = T
        # The document's mem_update: decay 0.2 (not the preset's 0.5), θ = 1, ZIF with γ = 1.
        self.lif = presets.lif("csbp", decay=0.2, backend=backend)

    def forward(self, x):
        h = self.layer(x)  # [1, 1], the same current at every step
        self.lif.reset()
        s = self.lif(h.unsqueeze(0).expand(self.T, *h.shape))
        return s.mean(0), h  # firing rate, pre-activation


def single_neuron(csbp: bool, epochs: int, device, backend):
    torch.manual_seed(10)  # the document's set_seed(10) (nothing here is random)
    net = SingleNeuron(backend=backend).to(device)
    x = torch.ones(1, 1, device=device)
    tgt = torch.zeros(1, 1, device=device)
    opt = torch.optim.SGD(net.parameters(), lr=1.0 if csbp else 0.001)
    chaos = ChaoticLoss(z=10.0, beta=0.9995, I0=0.65, s=1.0)
    ws, losses = [], []
    for _ in tqdm(range(epochs), desc="CSBP" if csbp else "BPTT", leave=False):
        out, h = net(x)
        mse = F.mse_loss(out, tgt)
        loss = mse + chaos(h) if csbp else mse
        ws.append(net.layer.weight.item())
        losses.append(mse.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        chaos.step()
    return ws, losses


# ---------------------------------------------------------------- part 2: digits classifier
class CSBPNet(nn.Module):
    def __init__(self, hidden, backend, d_in=64, classes=10):
        super().__init__()
        self.fc1 = snn.MultiStep(nn.Linear(d_in, hidden))
        self.lif = presets.lif("csbp", backend=backend)
        self.head = snn.MultiStep(nn.Linear(hidden, classes))
        self.h = None

    def forward(self, x):
        self.h = self.fc1(x)  # the pre-activation the chaotic loss reads
        return self.head(self.lif(self.h)).mean(0)


def classifier(csbp: bool, seed: int, args, data):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = CSBPNet(args.hidden, args.backend).to(args.device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    steps = args.epochs * -(-len(y_tr) // args.batch_size)
    chaos = ChaoticLoss(z=args.z, beta=0.01 ** (1.0 / steps), I0=0.65, s=10.0)

    def extra(m):
        loss = chaos(m.h)
        chaos.step()
        return loss

    for _ in range(args.epochs):
        train_epoch(model, opt, x_tr, y_tr, args.T, args.batch_size, extra_loss=extra if csbp else None, bar=False)
    return accuracy(model, x_te, y_te, args.T)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neuron-epochs", type=int, default=4000)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--z", type=float, default=1e-3,
                    help="initial chaotic-loss weight; the loss is summed over T·B·hidden elements (32768 per "
                         "batch here), and z = 0.01 collapsed training to 10 %% test accuracy on all five seeds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("-T", type=int, default=4)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=default_device())
    add_threads_arg(ap)
    ap.add_argument("--plot", default="csbp_chaotic_loss.png")
    ap.add_argument("--quick", action="store_true", help="CI: 300 single-neuron epochs, one seed, 1 epoch")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.neuron_epochs, args.seeds, args.epochs = 300, "0", 1
    seeds = [int(s) for s in args.seeds.split(",")]
    clock = Timer()

    ws_bp, loss_bp = single_neuron(False, args.neuron_epochs, args.device, args.backend)
    ws_cs, loss_cs = single_neuron(True, args.neuron_epochs, args.device, args.backend)
    tail = max(1, args.neuron_epochs // 10)
    print(f"single neuron, {args.neuron_epochs} epochs  [{clock():.0f} s]")
    print(f"  plain BPTT (lr 0.001): w {ws_bp[0]:.3f} -> {ws_bp[-1]:.3f}, final loss {loss_bp[-1]:.4f}")
    print(f"  CSBP (lr 1, z=10, β=0.9995): w {ws_cs[0]:.3f} -> {ws_cs[-1]:.3f} (range {min(ws_cs):.2f} .. "
          f"{max(ws_cs):.2f}; last {tail} epochs {min(ws_cs[-tail:]):.3f} .. {max(ws_cs[-tail:]):.3f}), "
          f"final loss {loss_cs[-1]:.4f}")

    data = load_digits_split(0, device=args.device)
    print(f"digits: train {len(data[1])}, test {len(data[3])}; MLP 64-{args.hidden}-10 csbp LIF, T {args.T}, "
          f"{args.epochs} epochs, SGD lr {args.lr}, chaotic z {args.z} -> 1 %, device {args.device}")
    acc = {False: [], True: []}
    for s in tqdm(seeds, desc="seeds"):
        for c in (False, True):
            acc[c].append(classifier(c, s, args, data))
    print(f"test accuracy (%) per seed {seeds}  [{clock():.0f} s]")
    for c, name in ((False, "BPTT"), (True, "BPTT + chaotic loss")):
        m, sd = mean_std(acc[c])
        print(f"  {name:20s} " + " ".join(f"{100 * a:.2f}" for a in acc[c]) + f"   mean {100 * m:.2f} ± {100 * sd:.2f}")

    if args.plot:
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        ep = range(args.neuron_epochs)
        axes[0].scatter(ep, ws_bp, s=2, label="plain BPTT (lr 0.001)")
        axes[0].scatter(ep, ws_cs, s=2, label="CSBP (lr 1, chaotic loss)")
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("w")
        axes[0].set_title("single neuron: weight", fontsize=9)
        axes[0].legend(fontsize=7, markerscale=4)
        # scatter: CSBP's loss jumps between 0 and 1 from one epoch to the next (a line is a solid block)
        axes[1].scatter(ep, loss_bp, s=2, label="plain BPTT")
        axes[1].scatter(ep, loss_cs, s=2, label="CSBP")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("MSE loss")
        axes[1].set_title("single neuron: loss", fontsize=9)
        axes[1].legend(fontsize=7, markerscale=4)
        for c, name in ((False, "BPTT"), (True, "+ chaotic loss")):
            axes[2].plot(seeds, [100 * a for a in acc[c]], "o-", label=name)
        axes[2].set_xlabel("seed")
        axes[2].set_ylabel("test accuracy (%)")
        axes[2].set_title(f"digits MLP, csbp LIF, T={args.T}", fontsize=9)
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"saved {args.plot}")
    return (ws_bp, ws_cs), acc


if __name__ == "__main__":
    main()
