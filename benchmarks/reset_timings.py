"""The CPU LIF op's fwd+bwd per reset timing, against the default timing in the same run.

    python benchmarks/reset_timings.py [threads]

W4's shape ([16, 262144] float32), τ = 2, no parameter gradient, 5 rounds of 10 calls (median per
round), the timings interleaved round by round. 'after_fire soft det' is the baseline: the soft reset
with detach_reset, the walk the soft delayed reset and 'none' share (docs/spec.md §2.3).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402

CASES = {
    "after_fire soft det": dict(v_reset=None, detach_reset=True),
    "delayed soft det": dict(v_reset=None, detach_reset=True, reset_timing="delayed", fire_at_threshold=False),
    "none": dict(v_reset=None, detach_reset=True, reset_timing="none", fire_at_threshold=False),
    "delayed hard det": dict(v_reset=0.0, detach_reset=True, reset_timing="delayed", fire_at_threshold=False),
}


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    x = (torch.randn(16, 32 * 8192) * 1.5 + 0.5).requires_grad_(True)
    g = torch.randn(16, 32 * 8192)

    def fb(kw):
        x.grad = None
        s, _ = snn_fast.lif_multistep(x, tau=2.0, backend="cpu", **kw)
        s.backward(g)

    res = {k: [] for k in CASES}
    for kw in CASES.values():
        for _ in range(3):
            fb(kw)
    for _ in range(5):
        for k, kw in CASES.items():
            ts = []
            for _ in range(10):
                t0 = time.perf_counter()
                fb(kw)
                ts.append(time.perf_counter() - t0)
            res[k].append(sorted(ts)[5] * 1e3)
    base = res["after_fire soft det"]
    print(f"fwd+bwd ms per round, [16, 262144] float32, {torch.get_num_threads()} thread(s); ratio to after_fire")
    for k, v in res.items():
        print(f"{k:22s} " + " ".join(f"{a:6.2f}" for a in v) + "   ratio " + " ".join(f"{a / b:4.2f}" for a, b in
                                                                                     zip(v, base)))


if __name__ == "__main__":
    main()
