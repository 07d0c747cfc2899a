"""Bytes a batch norm + LIF forward+backward moves, measured, against the count of
``snn_fast/ops/bn_lif/memory.py``: 9 passes over [T, N] fused (6 for the CPU kernel where its backward goes
channel by channel and a channel stays in the cache), 13 for batch norm + the LIF op, plus
rows of N (v_T: 1/T of a pass from v0=None, as here, for either; v0 read twice and ∂L/∂v0 written
besides for a v0 tensor: 4/T). Issue 24's target: the fused op within 15 % of its 9 passes.

    python benchmarks/bytes_bn_lif.py cpu  [--shape 4,32,64,56,56 ...] [--ll BYTES]   # valgrind
    python benchmarks/bytes_bn_lif.py cuda [--shape ...] [--cache-control all|none]     # Nsight Compute

Each provider's step (``benchmarks/test_bench_bn_lif.py``'s: training, batch statistics, running
statistics updated, forward + backward) runs in a child process twice before it is measured once:

- **cpu**: under valgrind's callgrind with its cache simulation (``--cache-sim=yes --simulate-wb=yes``),
  instrumented only around the measured call (a client request from a small C library this script
  compiles against valgrind's ``callgrind.h``; two calls uninstrumented, one instrumented to fill the
  simulated cache, then the measured one). One thread. Data only: read = last-level read misses × the line,
  written = dirty lines evicted × the line, write-allocated = write misses × the line (a store to a
  line not in the cache reads it first; the model, as a GPU, writes whole lines without reading them,
  so these are their own column, not in "passes"). The last level is this host's L3 (sysfs; a power
  of two, as callgrind needs), or ``--ll``. A simulation of one cache level below L1, not the machine's
  counters (none on this VM).
- **cuda**: Nsight Compute's counters of every kernel between ``cudaProfilerStart`` and
  ``cudaProfilerStop``, summed: read = ``dram__bytes_read.sum``; written = the stores reaching L2
  (``lts__t_sectors_srcunit_tex_op_write.sum`` × 32 B), since L2 is write-back and a kernel's last
  stores leave it after the kernel (``dram__bytes_write.sum``, kept beside, misses them: a lower bound).
  ``--cache-control all`` (the default) flushes the caches before each kernel, so data a kernel leaves
  in L2 for the next one is read again: the reads are an upper bound; ``none`` leaves L2 as the previous
  kernel left it.

"passes" = (read + written) / (T·N·element size), as the model counts them: each stream over [T, N]
once, read or written; the [N] and [C] vectors the model leaves out are in the measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(4, 32, 64, 56, 56), (4, 32, 512, 7, 7)]
UNFUSED = "bn+snn_fast-lif"
TOLERANCE = 0.15  # the issue's: within 15 % of the 9-pass count
# Reads from DRAM; writes as they reach L2 (32-byte sectors from the SMs): L2 is write-back, so a
# kernel's stores still dirty in L2 when it ends are in no DRAM write count of its own (the flush
# before the next kernel writes them back outside any measurement); DRAM writes are kept beside.
NCU_METRICS = ("dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_write.sum", "dram__bytes_write.sum")
SECTOR = 32

# The client requests of valgrind's callgrind.h, callable from Python through ctypes.
_CG_SOURCE = r"""
#include <valgrind/callgrind.h>
void snn_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void snn_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void snn_cg_zero(void) { CALLGRIND_ZERO_STATS; }
void snn_cg_dump(const char *what) { CALLGRIND_DUMP_STATS_AT(what); }
"""


def providers(device: str) -> List[str]:
    from benchmarks import test_bench_bn_lif as bb

    return [bb._name(be, device) for be in bb.fused_backends(device)] + [UNFUSED]


def model_passes(provider: str, shape, device: str = "cpu", ll: Optional[int] = None, training: bool = True) -> float:
    """memory.py's count in passes over [T, N], its rows of N included (the steps start from v0=None). On
    the CPU the fused op's backward goes channel by channel where the shape allows (memory.py
    cpu_backward_by_channel); the model counts its 3 passes where a channel takes at most half of the
    last-level cache ``ll`` (the measurement runs one thread), else 6."""
    from snn_fast.ops.bn_lif import memory

    f32 = _torch().float32
    T, C, inner = shape[0], shape[2], 1
    for d in shape[3:]:
        inner *= d
    N = 1
    for d in shape[1:]:
        N *= d
    if provider == UNFUSED:
        return memory.unfused_bytes(T, N, f32, training) / (T * N * 4)
    channel = memory.cpu_channel_bytes(T, N, C, inner, f32) if device == "cpu" else 0
    cached = 0 < channel and ll is not None and 2 * channel <= ll
    return memory.fused_bytes(T, N, f32, training, by_channel=cached) / (T * N * 4)


def _target(provider: str) -> int:
    from snn_fast.ops.bn_lif import memory

    return sum((memory.FUSED_PASSES if provider != UNFUSED else memory.UNFUSED_PASSES).values())


def _path():
    # appended: under `make compat` snn_fast comes from PYTHONPATH's build, not from this checkout
    if ROOT not in sys.path:
        sys.path.append(ROOT)


def _torch():
    import torch

    return torch


# ---------------------------------------------------------------------------------------------------
# Parsers (tests/test_bytes_bn_lif.py checks them on real and canned outputs)


def parse_callgrind(text: str) -> Dict[str, int]:
    """{event: count} of a callgrind output file: its ``events:`` line and its ``totals:`` (or
    ``summary:``) line."""
    events, totals = None, None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:") or (totals is None and line.startswith("summary:")):
            totals = [int(v) for v in line.split()[1:]]
    if events is None or totals is None:
        raise ValueError("not a callgrind output file (no 'events:' or no 'totals:'/'summary:' line)")
    totals += [0] * (len(events) - len(totals))  # trailing zero counts may be left out
    return dict(zip(events, totals))


def callgrind_bytes(counts: Dict[str, int], line: int = 64) -> Dict[str, int]:
    """Data bytes a callgrind cache simulation moved between its last level and memory: ``read`` (read
    misses), ``written`` (dirty lines evicted) and ``allocated`` (write misses: the line a store
    allocates is read first; the model, as a GPU, writes full lines without reading them)."""
    for e in ("DLmr", "DLmw", "DLdmr", "DLdmw"):
        if e not in counts:
            raise ValueError(f"no {e} event: was callgrind run with --cache-sim=yes --simulate-wb=yes?")
    # data only: the instruction misses (ILmr, ILdmr) are code, ~0.07 of a pass at a 1 MiB last level
    return dict(read=counts["DLmr"] * line, allocated=counts["DLmw"] * line,
                written=(counts["DLdmr"] + counts["DLdmw"]) * line)


_UNITS = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
          "kibyte": 1024, "mibyte": 1024 ** 2, "gibyte": 1024 ** 3, "sector": SECTOR}


def parse_ncu_csv(text: str) -> Dict[str, object]:
    """Each NCU_METRICS summed over the kernels of an ``ncu --csv`` (details page) output, in bytes
    (sectors × 32), and the kernels' names: ``read`` (DRAM), ``written`` (stores reaching L2),
    ``dram_written``. Lines before the CSV header (ncu's ``==PROF==`` lines, the program's output) are
    skipped."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no CSV header ('\"ID\",…') in the ncu output: did any kernel run between "
                         "cudaProfilerStart and cudaProfilerStop?")
    sums = {m: 0.0 for m in NCU_METRICS}
    seen = set()
    kernels = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        name = row.get("Metric Name")
        if name not in sums:
            continue
        # an empty unit is the metric's own: sectors for a sector count (never read as bytes: 32× off)
        unit = (row.get("Metric Unit") or "").strip().lower() or ("sector" if "__t_sectors" in name else "byte")
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} of {name}")
        value = (row.get("Metric Value") or "").replace(",", "").strip()
        if not re.fullmatch(r"[0-9.eE+-]+", value):
            raise ValueError(f"{name} of kernel {row.get('ID')} is {value!r}, not a number")
        sums[name] += float(value) * _UNITS[unit]
        seen.add(name)
        kernels[row.get("ID")] = row.get("Kernel Name", "")
    missing = [m for m in NCU_METRICS if m not in seen]
    if missing:
        raise ValueError(f"no {' or '.join(missing)} row in the ncu output")
    read, written, dram_written = (int(round(sums[m])) for m in NCU_METRICS)
    return dict(read=read, written=written, dram_written=dram_written, kernels=[kernels[k] for k in kernels])


# ---------------------------------------------------------------------------------------------------
# The child: one provider's step, warmed up, then one call inside the measured region


def _child(args) -> int:
    _path()
    import snn_fast  # noqa: F401 - first: the benchmark module puts the checkout ahead (make compat's build wins)

    torch = _torch()
    from benchmarks import test_bench_bn_lif as bb

    shape = tuple(int(v) for v in args.shape.split(","))
    if args.device == "cpu":
        torch.set_num_threads(1)  # valgrind runs one thread at a time anyway; the bytes do not depend on it
    fns, _ = bb.steps(shape, args.device)
    step = fns[args.provider]
    for _ in range(2):  # compilations, allocator caches, first-call work
        step()
    if args.device == "cpu":
        import ctypes

        cg = ctypes.CDLL(args.cg_lib)
        cg.snn_cg_start()
        step()  # the simulated cache as a run leaves it, not empty
        cg.snn_cg_zero()
        step()
        cg.snn_cg_dump(b"measured")
        cg.snn_cg_stop()
    else:
        cudart = torch.cuda.cudart()
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        step()
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: each provider in a child under the tool


def host_ll_bytes() -> int:
    """This host's last-level cache (sysfs), rounded down to a power of two (callgrind's sets must be)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for d in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, d, "size")) as f:
                s = f.read().strip()
        except OSError:
            continue
        n = int(s[:-1]) * {"K": 1024, "M": 1024 ** 2}[s[-1]] if s[-1] in "KM" else int(s)
        best = max(best, n)
    if best == 0:
        raise RuntimeError("no cache sizes in sysfs: give --ll")
    return 1 << (best.bit_length() - 1)


def build_cg_lib(dirname: str) -> str:
    """Compile the client-request library; RuntimeError (with what is missing) if it cannot."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if shutil.which("valgrind") is None or cc is None:
        raise RuntimeError("needs valgrind and a C compiler")
    src, lib = os.path.join(dirname, "cg.c"), os.path.join(dirname, "libsnn_cg.so")
    with open(src, "w") as f:
        f.write(_CG_SOURCE)
    p = subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", lib, src], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"cannot build the callgrind client-request library (valgrind's callgrind.h?): "
                           f"{p.stderr.strip()[-300:]}")
    return lib


def _child_cmd(provider: str, shape, device: str, extra=()) -> List[str]:
    return [sys.executable, os.path.abspath(__file__), device, "--child", "--provider", provider,
            "--shape", ",".join(map(str, shape)), *extra]


def measure_cpu(provider: str, shape, workdir: str, cg_lib: str, ll: int, timeout: float = 1800):
    out = os.path.join(workdir, f"cg.{provider}.{'x'.join(map(str, shape))}.out")
    for f in os.listdir(workdir):  # a kept folder's earlier run
        if f.startswith(os.path.basename(out)):
            os.remove(os.path.join(workdir, f))
    cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--simulate-wb=yes", "--instr-atstart=no",
           "--I1=32768,8,64", "--D1=32768,8,64", f"--LL={ll},16,64", f"--callgrind-out-file={out}",
           *_child_cmd(provider, shape, "cpu", ("--cg-lib", cg_lib))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    dumps = sorted(f for f in os.listdir(workdir) if f.startswith(os.path.basename(out)))
    for f in dumps:
        with open(os.path.join(workdir, f)) as fh:
            text = fh.read()
        if "desc: Trigger: Client Request: measured" in text.splitlines():  # the dump our request named
            return callgrind_bytes(parse_callgrind(text))
    raise RuntimeError(f"{provider} {shape}: no 'measured' dump (valgrind rc {p.returncode}): "
                       f"{p.stderr.strip()[-800:]}")


def measure_cuda(provider: str, shape, workdir: str, cache_control: str = "all", timeout: float = 600):
    newest = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu") + glob.glob("/usr/local/cuda*/bin/ncu"),
                    reverse=True)
    ncu = shutil.which("ncu") or (os.path.exists("/usr/local/cuda/bin/ncu") and "/usr/local/cuda/bin/ncu") or next(
        iter(newest), None)
    if ncu is None:
        raise RuntimeError("needs Nsight Compute's ncu (not on PATH, /opt/nvidia/nsight-compute or CUDA's bin)")
    log = os.path.join(workdir, f"ncu.{provider}.{'x'.join(map(str, shape))}.csv")
    cmd = [ncu, "--profile-from-start", "off", "--metrics", ",".join(NCU_METRICS), "--csv",
           "--print-units", "base", "--clock-control", "none", "--cache-control", cache_control,
           "--target-processes", "all", "--log-file", log, *_child_cmd(provider, shape, "cuda")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    text = open(log).read() if os.path.exists(log) else ""
    if '"ID"' not in text:  # an ncu that printed its CSV to stdout after all
        text = p.stdout
    try:
        return parse_ncu_csv(text)
    except ValueError as e:
        raise RuntimeError(f"{provider} {shape}: {e} (ncu rc {p.returncode}): {p.stderr.strip()[-800:]}"
                           f" {text[-800:]}") from None


def run(device: str, shapes=SHAPES, ll: Optional[int] = None, cache_control: str = "all",
        only: Optional[List[str]] = None, keep: Optional[str] = None) -> List[dict]:
    """One row per (shape, provider): bytes read and written, passes, the model's passes. ``keep``: a
    folder that keeps the tools' outputs (``callgrind_annotate`` on a ``cg.*`` file says which function
    moved what)."""
    rows = []
    unknown = sorted(set(only or ()) - set(providers(device)))
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown} on {device}: {providers(device)}")
    if keep:
        os.makedirs(keep, exist_ok=True)
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="snn_fast_bytes.")) as work:
        if device == "cpu":
            cg_lib = build_cg_lib(work)
            ll = ll or host_ll_bytes()
        for shape in shapes:
            T, N = shape[0], 1
            for d in shape[1:]:
                N *= d
            for p in providers(device):
                if only and p not in only:
                    continue
                m = measure_cpu(p, shape, work, cg_lib, ll) if device == "cpu" else (
                    measure_cuda(p, shape, work, cache_control))
                unit = T * N * 4  # float32
                # reads + writes, as the model counts; a CPU's write-allocate reads are their own column
                passes = (m["read"] + m["written"]) / unit
                model = model_passes(p, shape, device, ll if device == "cpu" else None)
                target = _target(p)  # the [T, N] passes alone: 9 and 13
                rows.append(dict(op="bn_lif-bytes", provider=p, shape="x".join(map(str, shape)), device=device,
                                 dtype="float32", read_bytes=m["read"], written_bytes=m["written"],
                                 allocated_bytes=m.get("allocated"), dram_written_bytes=m.get("dram_written"),
                                 passes=passes, model_passes=model, vs_model=passes / model,
                                 target_passes=target, vs_target=passes / target,
                                 tool=(f"callgrind LL {ll >> 20} MiB" if device == "cpu" else
                                       f"ncu cache-control {cache_control}"),
                                 kernels=len(m.get("kernels", ())) or None))
                print(_fmt_row(rows[-1]), flush=True)
    return rows


def _fmt_row(r) -> str:
    alloc = "" if r["allocated_bytes"] is None else f"  write-allocated {r['allocated_bytes'] / 1e6:8.1f} MB"
    return (f"{r['provider']:<24} {r['shape']:<16} read {r['read_bytes'] / 1e6:9.1f} MB  written "
            f"{r['written_bytes'] / 1e6:9.1f} MB{alloc}  passes {r['passes']:5.2f}  model {r['model_passes']:5.2f}  "
            f"measured/model {r['vs_model']:.3f}  measured/{r['target_passes']:.0f} {r['vs_target']:.3f}  "
            f"({r['tool']})")


def markdown(rows: List[dict]) -> str:
    out = ["| provider | shape | MB read | MB written | MB write-allocated | passes | model | measured / model "
           "| measured / 9 (13) | tool |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alloc = "—" if r["allocated_bytes"] is None else f"{r['allocated_bytes'] / 1e6:.1f}"
        out.append(f"| {r['provider']} | {r['shape']} | {r['read_bytes'] / 1e6:.1f} | {r['written_bytes'] / 1e6:.1f}"
                   f" | {alloc} | {r['passes']:.2f} | {r['model_passes']:.2f} | {r['vs_model']:.3f}"
                   f" | {r['vs_target']:.3f} | {r['tool']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device", choices=("cpu", "cuda"))
    ap.add_argument("--shape", action="append", help="T,B,C,H,W (repeatable; default the issue's two)")
    ap.add_argument("--provider", action="append", help="only these providers (repeatable)")
    ap.add_argument("--ll", type=int, help="cpu: the simulated last-level cache in bytes (a power of two)")
    ap.add_argument("--cache-control", default="all", choices=("all", "none"), help="cuda: ncu's")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--keep", help="keep the tools' outputs in this folder")
    ap.add_argument("--strict", action="store_true",
                    help=f"exit 1 where a fused row moves more than {TOLERANCE:.0%} over 9 passes (issue 24's target)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cg-lib", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.provider = args.provider[0]
        args.shape = args.shape[0]
        return _child(args)
    if args.ll is not None and args.ll & (args.ll - 1):
        ap.error(f"--ll must be a power of two, got {args.ll}")
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape else SHAPES
    _path()
    import snn_fast  # noqa: F401 - before the benchmark module, which puts the checkout ahead
    try:
        rows = run(args.device, shapes, args.ll, args.cache_control, args.provider, args.keep)
    except (RuntimeError, ValueError) as e:  # a tool missing or refusing, a name unknown: one line, not a trace
        print(f"bytes_bn_lif: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    # more bytes than counted is what the target is about; fewer is a cache keeping passes (a shape
    # whose pass fits in the last level)
    over = [r for r in rows if r["provider"] != UNFUSED and r["vs_target"] > 1 + TOLERANCE]
    for r in over:
        print(f"{r['provider']} {r['shape']}: {r['passes']:.2f} passes, more than {TOLERANCE:.0%} over "
              f"{r['target_passes']:.0f}")
    if over and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
