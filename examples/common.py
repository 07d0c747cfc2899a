"""Helpers shared by the examples: the digits split, direct encoding, a tqdm fallback, training and
evaluation loops for ``[T, B, ...]`` spiking models, and the figure writer.

The data is scikit-learn's bundled 8×8 digits (1797 images, 10 classes, no download): 80/20
stratified split, pixels scaled to [0, 1], fed to the network as a constant current at every step
("direct encoding", the first layer turns it into spikes).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

try:
    from tqdm import tqdm
except ImportError:  # plain fallback (tqdm is optional): a line every quarter of the loop
    def tqdm(it, desc="", total=None, **_):
        total = total if total is not None else len(it)
        for j, x in enumerate(it):
            if j % max(1, total // 4) == 0:
                print(f"{desc} {j}/{total}", flush=True)
            yield x


def add_threads_arg(ap) -> None:
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (default 1; 0 = torch's default)")


def set_threads(n: int) -> None:
    """One CPU thread by default: these models' tensors are small (batch 64, ≤ 128 features, 8×8
    images), so a second thread buys little, and on a shared machine every op waits at a barrier for
    it — measured on the 2-core dev VM under load: a ResNet-19 (width 1/8) training step 20 s with two
    threads, 0.24 s with one."""
    if n > 0:
        torch.set_num_threads(n)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_digits_split(seed: int = 0, image: bool = False, device="cpu"):
    """(x_train, y_train, x_test, y_test); x is [N, 64] (or [N, 1, 8, 8] with ``image``) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    if image:
        x = x.view(-1, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.long)
    i_tr, i_te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=d.target)
    return x[i_tr].to(device), y[i_tr].to(device), x[i_te].to(device), y[i_te].to(device)


def repeat_T(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, ...] → [T, B, ...]: the same input current at every step (direct encoding)."""
    return x.unsqueeze(0).expand(T, *x.shape).contiguous()


def batches(n: int, batch_size: int, device, shuffle: bool = True):
    perm = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    return [perm[j:j + batch_size] for j in range(0, n, batch_size)]


@torch.no_grad()
def accuracy(model, x, y, T, batch_size=512) -> float:
    """Test accuracy of a model mapping [T, B, ...] to logits [B, classes] (rate-decoded inside)."""
    from snn_fast.nn import reset_net

    model.eval()
    correct = 0
    for j in range(0, len(y), batch_size):
        reset_net(model)
        correct += (model(repeat_T(x[j:j + batch_size], T)).argmax(1) == y[j:j + batch_size]).sum().item()
    reset_net(model)
    return correct / len(y)


def train_epoch(model, opt, x, y, T, batch_size, extra_loss=None, desc="", bar=True):
    """One epoch of cross-entropy training; ``extra_loss(model)`` is added to each step's loss (it may
    read what the forward pass left on the model). Returns the mean loss."""
    from snn_fast.nn import reset_net

    model.train()
    total, idxs = 0.0, batches(len(y), batch_size, x.device)
    it = tqdm(idxs, desc=desc, leave=False) if bar else idxs
    for idx in it:
        reset_net(model)
        loss = F.cross_entropy(model(repeat_T(x[idx], T)), y[idx])
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    reset_net(model)
    return total / len(idxs)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def pyplot():
    """matplotlib.pyplot with the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(xs):
    t = torch.tensor(xs, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(xs) > 1 else 0.0)


def sweep(xs, methods, seeds, run_one, header, fmt_x=lambda x: f"{x:g}"):
    """Accuracy of ``run_one(method, x, seed)`` for every x × method × seed (one tqdm bar), then the
    table of mean ± std over seeds in the form the source documents print. Returns {(method, x): [acc]}."""
    clock = Timer()
    acc = {}
    jobs = [(x, m, s) for x in xs for m in methods for s in seeds]
    for x, m, s in tqdm(jobs, desc="runs"):
        acc.setdefault((m, x), []).append(run_one(m, x, s))
    print(f"\ntest accuracy (%), mean ± std over seeds {list(seeds)}  [{clock():.0f} s]")
    print(header)
    print("|---" * (len(methods) + 1) + "|")
    for x in xs:
        cells = ["{:.2f} ± {:.2f}".format(*(100 * v for v in mean_std(acc[(m, x)]))) for m in methods]
        print(f"| {fmt_x(x)} | " + " | ".join(cells) + " |")
    return acc
