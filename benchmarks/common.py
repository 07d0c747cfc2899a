"""Shared benchmark helpers: timers, copy bandwidth, and the row recorder behind the results files.

Every row is one (op, provider, mode, shape, dtype) measurement. ``record(**row)`` collects it; at
the end of a pytest session ``benchmarks/conftest.py`` writes ``benchmarks/results/<device>-<date>.csv``
plus a markdown table and a PNG plot. Timing: CUDA events via ``triton.testing.do_bench`` on a GPU,
``torch.utils.benchmark`` on the CPU; median and 20/80 % quantiles, warm-up first, providers
interleaved round by round so drift on a shared machine hits all of them alike.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import weakref
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROWS: List[dict] = []
COLUMNS = ["op", "provider", "mode", "shape", "dtype", "device", "median_ms", "q20_ms", "q80_ms", "bytes",
           "gbps", "copy_gbps", "bw_frac", "peak_bytes", "speedup", "mem_ratio", "threads", "torch", "triton",
           "snn_fast", "git_sha", "timestamp"]


def full() -> bool:
    """``make bench FULL=1`` (env SNN_FAST_BENCH_FULL=1): the long sizes too. The default run keeps the
    same tables with the sizes that finish in minutes on a 2-core CPU."""
    return os.environ.get("SNN_FAST_BENCH_FULL", "0").lower() in ("1", "true", "yes")


def record(**row) -> dict:
    row.setdefault("timestamp", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    row.setdefault("torch", torch.__version__)
    row.setdefault("triton", _version("triton"))
    row.setdefault("snn_fast", _version("snn_fast"))
    row.setdefault("git_sha", git_sha())
    if row.get("bytes") and row.get("median_ms"):
        row.setdefault("gbps", row["bytes"] / (row["median_ms"] * 1e-3) / 1e9)
    if row.get("gbps") and row.get("copy_gbps"):
        row.setdefault("bw_frac", row["gbps"] / row["copy_gbps"])
    ROWS.append(row)
    return row


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception:
        return ""


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__),
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except Exception:
        return ""


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "_")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"


def time_fns(fns: Dict[str, Callable[[], object]], device: str, rounds: int = 3, min_run_time: float = 0.5):
    """{name: (median, q20, q80) in ms}, providers interleaved round by round."""
    import numpy as np

    for fn in fns.values():  # warm-up: lazy init, autotune, allocator
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device == "cuda":
                from triton.testing import do_bench

                times[name].append(do_bench(fn, warmup=25, rep=100, return_mode="median"))
            else:
                from torch.utils import benchmark as tb

                m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
                    min_run_time=min_run_time)
                times[name] += [t * 1e3 for t in m.times]
    return {k: tuple(float(q) for q in np.quantile(v, [0.5, 0.2, 0.8])) for k, v in times.items()}


_COPY_GBPS: Dict[str, float] = {}


def copy_gbps(device: str) -> float:
    """Achieved bandwidth of a large copy_ (read + write bytes): the roofline every row is compared to."""
    if device not in _COPY_GBPS:
        # 1 GiB: far beyond any GPU L2 and any CPU L3 (a 32 MiB copy fits a 32 MiB L3 and measured
        # 31–53 GB/s run to run on the dev machine, which made the ratio meaningless).
        n = 1 << 28
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        t = time_fns({"copy": lambda: dst.copy_(src)}, device)["copy"][0]
        _COPY_GBPS[device] = 2 * src.numel() * 4 / (t * 1e-3) / 1e9
    return _COPY_GBPS[device]


class _LiveTensorBytes(TorchDispatchMode):
    """The running total of tensor storage that ops allocate under it, and its peak: each op's output
    whose storage is not one of the op's inputs' (a view or an in-place result) is counted until
    Python frees that storage (storage objects are preserved while any tensor holds them)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.tracked = weakref.WeakSet()

    def _freed(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            if id(st) in inputs or st in self.tracked or st.nbytes() == 0:
                continue
            self.tracked.add(st)
            self.live += st.nbytes()
            weakref.finalize(st, self._freed, st.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak memory a call allocates beyond what was live before it (CUDA: the caching allocator's
    peak; CPU: the peak of live tensor storage the call's ops allocated, ``_LiveTensorBytes``)."""
    if device == "cuda":
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # Not torch.profiler's allocation events: reading them back cost ~85 KB per event (a snnTorch
    # fwd+bwd over 500 steps at n = 512: 91k events, 7.7 GB resident) and killed W2 at n = 1024.
    # Where both ran (W2 at n = 256) they agree exactly for snn_fast, SpikingJelly and the reference;
    # for snnTorch and Norse (Python loops over h[t]) this counts one [T, B, n] tensor more (8.2 MB),
    # an autograd gradient buffer the profiler saw freed earlier.
    fn()
    with _LiveTensorBytes() as m:
        fn()
    return int(m.peak)


def write_results(out_dir: str) -> List[str]:
    """Write the CSV, a markdown table and a PNG plot of the collected rows; return the paths."""
    if not ROWS:
        return []
    import csv

    os.makedirs(out_dir, exist_ok=True)
    dev = ROWS[0].get("device_name") or ROWS[0].get("device", "device")
    stem = os.path.join(out_dir, f"{dev}-{_dt.date.today().isoformat()}")
    cols = COLUMNS + sorted({k for r in ROWS for k in r} - set(COLUMNS))
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in ROWS:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(ROWS))
    paths = [stem + ".csv", stem + ".md"]
    try:
        paths.append(plot(ROWS, stem + ".png"))
    except ImportError:
        pass
    return paths


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else (v or "")


def markdown_table(rows: List[dict]) -> str:
    head = "| op | mode | shape | dtype | provider | median ms (20–80 %) | GB/s | % copy BW | peak MB | vs peer |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        q = f"{_fmt(r.get('median_ms'), '.3f')} ({_fmt(r.get('q20_ms'), '.3f')}–{_fmt(r.get('q80_ms'), '.3f')})"
        bw = r.get("bw_frac")
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['shape']} | {r['dtype']} | {r['provider']} | {q} | "
            f"{_fmt(r.get('gbps'), '.1f')} | {_fmt(bw * 100 if bw else None, '.0f')} | "
            f"{_fmt(r['peak_bytes'] / 2**20 if r.get('peak_bytes') else None, '.1f')} | "
            f"{_fmt(r.get('speedup'), '.2f')}{'×' if r.get('speedup') else ''} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"], r["dtype"]), []).append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, ((op, mode, dt), rs) in zip(axes[0], groups.items()):
        shapes = list(dict.fromkeys(r["shape"] for r in rs))
        provs = list(dict.fromkeys(r["provider"] for r in rs))
        width = 0.8 / len(provs)
        for i, p in enumerate(provs):
            ys = [next((r["median_ms"] for r in rs if r["shape"] == s and r["provider"] == p), 0) for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.5 * min(r["median_ms"] for r in rs))  # log bars start at the axis floor
        ax.set_ylabel("median ms")
        ax.set_title(f"{op} {mode} {dt}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
