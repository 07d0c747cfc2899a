"""The seed's Tempotron MNIST experiment (SpikingJelly event_driven/examples/tempotron_mnist.py) on
scikit-learn's bundled 8×8 digits (1797 images, no download).

Each pixel (scaled to [0, 1]) is encoded by m = 16 Gaussian tuning curves into spike times in
[0, T), T = 100 (−1 = no spike); one Tempotron layer of 10 neurons reads the 64·16 = 1024 spike
times, is trained with the seed's mse_loss on v_max (Adam, lr 1e-3, batch 64) and classifies by
argmax v_max. Prints train/test accuracy per epoch and saves the accuracy curve as a PNG.

    PYTHONPATH=. python examples/tempotron_digits.py --epochs 20
"""
from __future__ import annotations

import argparse
import time

import torch

from snn_fast.nn.tempotron import GaussianTuning, Tempotron

try:
    from tqdm import tqdm
except ImportError:  # plain fallback: print a line every few batches
    def tqdm(it, desc="", total=None, **_):
        total = total if total is not None else len(it)
        for j, x in enumerate(it):
            if j % max(1, total // 4) == 0:
                print(f"{desc} {j}/{total}", flush=True)
            yield x


class Net(torch.nn.Module):
    def __init__(self, m, T, backend):
        super().__init__()
        self.tempotron = Tempotron(64 * m, 10, T, backend=backend)

    def forward(self, x):
        return self.tempotron(x, "v_max")


def load_digits_split(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # [N, 64] in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    i_tr, i_te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=d.target)
    return x[i_tr], y[i_tr], x[i_te], y[i_te]


def encode(encoder, x, T):
    # The seed: img.view(B, -1).unsqueeze(1) → [B, 1, 784]; encode → [B, 1, 784, m]; flatten.
    s = encoder.encode(x.unsqueeze(1), T)
    return s.reshape(s.shape[0], -1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("-m", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto", help="auto, cpu, reference, triton, cuda")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--plot", default="tempotron_digits_accuracy.png", help="PNG path ('' to skip)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    x_tr, y_tr, x_te, y_te = load_digits_split(args.seed)
    encoder = GaussianTuning(n=1, m=args.m, x_min=torch.zeros(1, device=dev), x_max=torch.ones(1, device=dev))
    s_tr, s_te = encode(encoder, x_tr.to(dev), args.T), encode(encoder, x_te.to(dev), args.T)
    y_tr, y_te = y_tr.to(dev), y_te.to(dev)
    net = Net(args.m, args.T, args.backend).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    print(f"train {len(y_tr)}, test {len(y_te)}, inputs {s_tr.shape[1]}, T {args.T}, device {dev}")

    def accuracy(s, y):
        net.eval()
        with torch.no_grad():
            return sum((net(s[j:j + 512]).argmax(1) == y[j:j + 512]).sum().item()
                       for j in range(0, len(y), 512)) / len(y)

    hist = []
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(y_tr), device=dev)
        batches = [perm[j:j + args.batch_size] for j in range(0, len(perm), args.batch_size)]
        loss_sum = 0.0
        for idx in tqdm(batches, desc=f"epoch {epoch}", leave=False):
            v_max = net(s_tr[idx])
            loss = Tempotron.mse_loss(v_max, net.tempotron.v_threshold, y_tr[idx], 10)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
        tr, te = accuracy(s_tr, y_tr), accuracy(s_te, y_te)
        hist.append((tr, te))
        print(f"epoch {epoch:3d}  loss {loss_sum / len(batches):.4f}  train_acc {tr:.4f}  test_acc {te:.4f}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    best = max(h[1] for h in hist)
    print(f"final test accuracy {hist[-1][1]:.4f} (best {best:.4f})")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot")
        else:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot([h[0] for h in hist], label="train")
            ax.plot([h[1] for h in hist], label="test")
            ax.set_xlabel("epoch")
            ax.set_ylabel("accuracy")
            ax.set_title(f"Tempotron, 8×8 digits, m={args.m}, T={args.T}")
            ax.legend()
            fig.tight_layout()
            fig.savefig(args.plot, dpi=120)
            print(f"saved {args.plot}")
    return hist


if __name__ == "__main__":
    main()
