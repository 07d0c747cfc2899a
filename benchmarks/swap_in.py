"""Coming from snnTorch: the Open Neuromorphic W2 model (Linear(n, n) + LIF, batch 16, T = 500, loss
``out.sum()``) written the snnTorch way, against its ``snn_fast.convert`` in the same run.

    python benchmarks/swap_in.py [--n 512] [--T 500] [--rounds 5] [--threads k] [--device cuda]

Rows (float32; CPU by default, the GPU check's opt-in ``swap-in`` stage runs it on a GPU):
- ``snntorch``: ``snntorch.Leaky(beta=0.5)`` (its defaults: subtract reset, reset_delay=True, ATan)
  called once per step from the loop, a Linear per step, as the tutorials write it.
- ``converted per-step``: ``snn_fast.convert(model)``, the same loop unchanged (one fused op per step).
- ``converted multistep``: the converted neuron's ``multistep`` on the Linear of all T steps at once
  (one matmul, one kernel): the one-line change ``spk, mem = model.lif.multistep(model.fc(x), mem)``.
  Its Linear runs over all T·B rows at once, which may round differently from T matmuls of B rows:
  its spikes are checked against the converted per-step loop given the same Linear output.

Spikes are checked before anything is timed: the converted per-step loop against snnTorch's (equal),
the multistep call against the converted per-step loop; a difference is printed with its count, the
timings still run, and the exit status is 1. Modes: ``fwd``
(no autograd) and ``fwd+bwd`` (then ``out.sum().backward()``). The three are interleaved round by
round; the median and the 20/80 % quantiles over the rounds are printed, in ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402


class W2Snntorch(nn.Module):
    """Linear(n, n) + Leaky, the loop over T written by the user."""

    def __init__(self, n):
        super().__init__()
        import snntorch

        self.fc = nn.Linear(n, n)
        self.lif = snntorch.Leaky(beta=0.5)

    def forward(self, x):  # x [T, B, n]
        mem = self.lif.init_leaky()
        spk = []
        for t in range(x.shape[0]):
            s, mem = self.lif(self.fc(x[t]), mem)
            spk.append(s)
        return torch.stack(spk)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--T", type=int, default=500)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    peer = W2Snntorch(a.n).to(dev)
    conv = snn_fast.convert(peer)
    x = (torch.rand(a.T, a.B, a.n) < 0.3).float().to(dev)

    fns = {
        "snntorch": lambda: peer(x),
        "converted per-step": lambda: conv(x),
        "converted multistep": lambda: conv.lif.multistep(conv.fc(x), conv.lif.init_leaky())[0],
    }
    # Spikes must be equal; a difference is reported (how many differ) and the run goes on, so one
    # flipped spike on a new device still gives its timings, and the exit status is 1.
    with torch.no_grad():
        want = fns["snntorch"]()
        h = conv.fc(x)
        mem, loop = conv.lif.init_leaky(), []
        for t in range(a.T):
            s, mem = conv.lif(h[t], mem)
            loop.append(s)
        checks = {"converted per-step vs snnTorch": (fns["converted per-step"](), want),
                  "converted multistep vs its per-step loop": (conv.lif.multistep(h, conv.lif.init_leaky())[0],
                                                               torch.stack(loop))}
        differ = {k: int((got != ref).sum()) for k, (got, ref) in checks.items()}
    agree = "spikes equal" if not any(differ.values()) else "SPIKES DIFFER: " + ", ".join(
        f"{k}: {d} of {want.numel()}" for k, d in differ.items() if d)
    print(f"W2 the snnTorch way, {dev.type} float32, n={a.n}, T={a.T}, B={a.B}, threads={torch.get_num_threads()}, "
          f"rounds={a.rounds}; {agree} ({int(want.sum())} spikes of {want.numel()})")
    for mode in ("fwd", "fwd+bwd"):
        times = {k: [] for k in fns}
        for _ in range(a.rounds + 1):  # the first round warms up
            for name, f in fns.items():
                for m in (peer, conv):
                    m.zero_grad(set_to_none=True)
                sync()
                t0 = time.perf_counter()
                if mode == "fwd":
                    with torch.no_grad():
                        f()
                else:
                    f().sum().backward()
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
        base = statistics.median(times["snntorch"][1:])
        for name, ts in times.items():
            ts = sorted(ts[1:])
            q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
            med = statistics.median(ts)
            print(f"{mode:8s} {name:20s} median {med:9.1f} ms  (q20 {q[0]:.1f}, q80 {q[3]:.1f})  "
                  f"{base / med:5.2f}x vs snnTorch")
    return 1 if any(differ.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
