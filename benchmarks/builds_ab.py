"""One build against another, in interleaved processes: the fused batch norm + LIF on the CPU kernel,
float32, forward and backward timed apart (training or eval), medians per process.

    python benchmarks/builds_ab.py --a <checkout A> --b <checkout B> [--shape 4,32,64,56,56]
                                   [--steps 10] [--rounds 5] [--mode train|eval]

Each of A and B is a folder that holds a built ``snn_fast`` (a checkout with its ``_C`` built in place,
or a copy of one): it goes first on the child's PYTHONPATH. The rounds alternate A, B, A, B, … so a
host that slows down for a while slows both. What a kernel change buys where the benchmark's own
providers (batch norm + LIF, SpikingJelly) would not show it: the backward alone, before and after.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

_CHILD = r"""
import statistics, sys, time, torch
import snn_fast
shape, n, training = tuple(int(v) for v in sys.argv[1].split(",")), int(sys.argv[2]), sys.argv[3] == "train"
g = torch.Generator().manual_seed(0)
C = shape[2]
x = (torch.randn(shape, generator=g) + 0.5).requires_grad_(True)
w = (torch.rand(C, generator=g) + 0.5).requires_grad_(True)
b = (torch.randn(C, generator=g) * 0.2 + 0.8).requires_grad_(True)
gr = torch.randn(shape, generator=g)
rm, rv = torch.zeros(C), torch.ones(C)
tf, tb = [], []
for i in range(n + 3):  # 3 warm-up steps
    x.grad = w.grad = b.grad = None
    t0 = time.perf_counter()
    s, _ = snn_fast.bn_lif(x, w, b, rm, rv, training, 0.1, 1e-5, tau=2.0, backend="cpu")
    t1 = time.perf_counter()
    s.backward(gr)
    t2 = time.perf_counter()
    if i >= 3:
        tf.append(t1 - t0)
        tb.append(t2 - t1)
print(f"{snn_fast.__file__}: fwd {1e3 * statistics.median(tf):.2f} ms  bwd {1e3 * statistics.median(tb):.2f} ms "
      f"(min {1e3 * min(tb):.2f})", flush=True)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--shape", default="4,32,64,56,56")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", default="train", choices=("train", "eval"))
    args = ap.parse_args(argv)
    for r in range(args.rounds):
        for name, path in (("A", args.a), ("B", args.b)):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            p = subprocess.run([sys.executable, "-c", _CHILD, args.shape, str(args.steps), args.mode], env=env,
                               capture_output=True, text=True, cwd="/" if os.name != "nt" else None)
            if p.returncode != 0:
                print(p.stderr[-2000:], file=sys.stderr)
                return p.returncode
            print(f"round {r + 1} {name}: {p.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
