"""The GPU check: stages in priority order, each under its own timeout, results in $OUT after every
stage, at most 8 files, a summary table last. Called by scripts/gpu_check.sh (which installs the
carried wheels first); see README "Running the GPU check".

    OUT=/some/dir python scripts/gpu/check.py [--dry-run] [--full] [--budget S] [--only a,b] [--lab]

--only (alias --stages, --stage) runs the named stages only, e.g. ``--only overhead,lab``. The ``lab``
stage (Triton kernel variants side by side on W1) is opt-in: named by --only, added by --lab, part of
--full; so are ``bn-lif`` (fused batch norm + LIF: its CUDA tests and benchmark; ``--only
env,build,bn-lif``), ``bn-lif-bytes`` (its DRAM bytes from ncu; ``--only build,bn-lif-bytes``),
``swap-in`` (snnTorch's W2 against its conversion) and ``cuda-graphs`` (a captured training step
replayed, timed against eager, and tests/test_cuda_graphs.py). The default run's estimate already
fills its budget without them.

Files in $OUT (the device tool returns at most 8):
    summary.md                  environment, one line per stage (status, seconds, its last words)
    correctness.csv             one row per (backend, case) of the LIF correctness stages
    <device>-<date>.csv/.md/.png  the benchmark rows (W1, W3, W5; W2 under --full), benchmarks/common.py's format
    autotable.json              the measured cuda-vs-triton table (stage autotable)
    logs.tar.gz                 every stage's full log and env.json
A stage that times out or fails leaves the others running; the budget (default 480 s) caps the sum,
so a call with a 600 s limit always gets its files back.
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES_PY = os.path.join(ROOT, "scripts", "gpu", "stages.py")
MAX_FILES = 8
# Stages the default run leaves out (its estimate fills the budget): --only names them, --full adds
# both, --lab adds lab. bn-lif needs the build: --only env,build,bn-lif.
OPT_IN = {"lab", "bn-lif", "bn-lif-bytes", "swap-in", "cuda-graphs"}


def stage_list(py, work, dry, full, nproc):
    """(name, timeout s, argv or callable, extra env, estimate s on the H200). Estimates: the first
    run's times on the H200 (2026-11-30, benchmarks/results/NVIDIA_H200-2026-11-30-summary.md) with
    ~20 % room, 384 s in all; see README."""
    st = [py, STAGES_PY]
    d = ["--dry-run"] if dry else []
    w = ["--work", work]
    w1_T = "4,8,16,32,64"
    if dry:
        build = ["bash", "-c", "nvcc --version >/dev/null 2>&1 || { echo 'nvcc not found: compile step skipped'; "
                 "exit 0; }; time nvcc -std=c++17 -O3 -arch=sm_90 -c csrc/cuda/lif_fwd.cu -I csrc/include "
                 "-I csrc/cuda -o \"$WORK/lif_fwd.o\""]
    else:
        # The library carried in .gpu_ext/ (scripts/gpu_build_ext.sh, built on the CPU machine) when it
        # matches the tree and loads; else the build here (255 s on the H200's 16 cores).
        build = ["bash", "-c", f"{py} scripts/gpu/use_prebuilt_ext.py || {{ rm -f snn_fast/_C*.so; "
                 f"time env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${{MAX_JOBS:-{nproc}}} {py} setup.py build_ext --inplace; }}"]
    one_config = {"SNN_FAST_TRITON_AUTOTUNE": "0"}
    return [
        ("env", 60, st + ["env"] + w + d, {}, 15),
        ("triton-lif", 180, st + ["lif", "--backend", "triton", "--stage-name", "triton-lif"] + w + d, one_config, 45),
        ("w1-triton", 180, st + ["w1", "--providers", "snn_fast-triton,spikingjelly,reference-compiled",
                                 "--T", w1_T, "--compiled-T", w1_T if full else "4",
                                 "--other-save-T", w1_T if full else "8,64",
                                 "--stage-name", "w1-triton"] + w + d, {}, 70),
        # Started in the background before 'env' and waited for before 'w1-triton'. Measured on the
        # H200 (16 cores, 2026-11-30): 255 s from its start, 206 s beyond env + triton-lif.
        ("build", 400, build, {}, 210),
        ("cuda-lif", 90, st + ["lif", "--backend", "cuda", "--stage-name", "cuda-lif"] + w + d, {}, 10),
        # w1-triton and w1-cuda: ours in both save modes, the non-default one at T = 8 and 64 (one T within
        # the 8-step chunk, one beyond; every T under --full); the reference's Inductor compile (~20–60 s
        # each) at T = 4 only, to pay for them.
        ("w1-cuda", 120, st + ["w1", "--providers", "snn_fast-cuda", "--T", w1_T,
                               "--other-save-T", w1_T if full else "8,64", "--stage-name", "w1-cuda"] + w + d, {}, 25),
        ("autotable", 120, "autotable", {}, 20),
        ("tempotron", 90, st + ["tempotron", "--stage-name", "tempotron"] + w + d, {}, 10),
        # Before the new stages, which the budget would cut first. The caching allocator would hide an
        # out-of-bounds access inside one of its blocks: off.
        ("memcheck", 120, "memcheck", dict(one_config, PYTORCH_NO_CUDA_MEMORY_CACHING="1"), 15),
        # W5: zoo models' training step, SpikingJelly vs converted (needs the wheels; skips without).
        # Estimate: 3 models × 3 providers × 2 rounds of do_bench (~0.2 s each), model builds, cuDNN.
        ("models", 120, st + ["models", "--stage-name", "models"] + w + d, {}, 30),
        # Host time of a small fwd+bwd per backend and save mode, with cProfile and torch.profiler
        # tables in its log: the first check found ~0.5 ms of host work in Triton's backward. Then the
        # fused batch norm + LIF's (its Triton kernels compile here if the bn-lif stage did not run).
        ("overhead", 150, st + ["overhead", "--stage-name", "overhead"] + w + d, {}, 30),
        # Opt-in (OPT_IN): fused batch norm + LIF (docs/spec.md §12): tests/test_bn_lif.py's every CUDA row
        # (the C++ binding's and Triton's: no GPU has run Triton's channel and statistics kernels yet)
        # against the reference, then the two shapes of benchmarks/test_bench_bn_lif.py (with the
        # user-surrogate rows: Triton's user variant compiles too). Estimate: ~130 Triton compiles
        # (~0.5 s), 2 × 6 do_bench rounds; the H100's run of the C++ rows and a Triton subset took 56 s.
        ("bn-lif", 300, st + ["bn_lif", "--stage-name", "bn-lif"] + w + d, {}, 130),
        # Opt-in (OPT_IN): the bytes of one fused batch norm + LIF forward+backward (cuda and triton) and of
        # batch norm + snn_fast LIF, from Nsight Compute's DRAM counters, against memory.py's count
        # (issue 24: within 15 % of 9 passes; --strict fails the stage otherwise). Needs the build:
        # --only build,bn-lif-bytes. Estimate: 9 children under ncu (~15 s each).
        ("bn-lif-bytes", 300, bytes_cmd(py, dry), {}, 150),
        # Opt-in (OPT_IN): coming from snnTorch (benchmarks/swap_in.py): W2 written the snnTorch way vs its
        # conversion, per-step and multistep, n 512 and 4096, T 500 (needs snnTorch among the wheels).
        ("swap-in", 150, st + ["swap_in", "--stage-name", "swap-in"] + w + d, {}, 60),
        # Opt-in (OPT_IN): a small training step eager vs captured in a CUDA graph and replayed (cuda and
        # triton), then tests/test_cuda_graphs.py (capture/replay vs eager, reduce-overhead compile).
        # Estimate: 2 × (3 warm-up steps, 6 do_bench rounds, 3 × 400 steps), pytest's start, 6 Inductor
        # compiles (reduce-overhead: LIF inference and training, bn_lif training; ~10 s each).
        ("cuda-graphs", 240, st + ["cuda_graphs", "--stage-name", "cuda-graphs"] + w + d, {}, 100),
        # Opt-in (OPT_IN): named variants of the Triton kernels side by side on W1 (launch path, BLOCK,
        # warps, neurons per thread, kernel knobs, recompute segment). Estimate: 19 variants × 6 shapes,
        # two kernel compiles per variant and dtype (~1 s each), two do_bench rounds (~0.3 s); it
        # starts no new shape after --budget seconds (T = 16 and 64 first: the bandwidth questions).
        ("lab", 150, st + ["lab", "--stage-name", "lab", "--T", "16,64,4", "--budget", "100"] + w + d, {}, 110),
    ] + ([
        # --full only: DDP on 2 ranks sharing the GPU (gloo), then DDP, FSDP2 and Inductor-compiled DDP
        # on 1 rank (NCCL), one launch per case. Estimate: 9 process starts (~5 s each), the Triton
        # fp64 variants, Inductor (~30 s).
        ("ddp", 420, st + ["ddp", "--stage-name", "ddp"] + w + d, one_config, 120),
        # --full only: W2 at the GPU sizes (the n² Linear is most of a step there; docs/spec.md §10).
        ("w2", 420, st + ["w2", "--stage-name", "w2"] + w + d, {}, 120),
    ] if full else [])


def bytes_cmd(py, dry):
    """benchmarks/bytes_bn_lif.py: on the GPU under ncu, both shapes with the caches flushed before each
    kernel (an upper bound), then the larger one with L2 left as the previous kernel left it. Dry run:
    the CPU measurement (callgrind) of the fused op at a small size, where valgrind is (plumbing only:
    its passes fit in the cache; tests/test_bytes_bn_lif.py measures one that does not)."""
    script = os.path.join(ROOT, "benchmarks", "bytes_bn_lif.py")
    if dry:
        return ["bash", "-c", "command -v valgrind >/dev/null || { echo 'dry run: no valgrind; skipped'; exit 0; }; "
                f"exec {py} {script} cpu --shape 4,2,4,16,16 --provider snn_fast-bn_lif"]
    return ["bash", "-c", f"{py} {script} cuda --strict; a=$?; {py} {script} cuda --cache-control none "
            "--shape 4,32,64,56,56; b=$?; exit $(( a || b ))"]


def autotable_cmd(py, work, dry, full):
    if dry:
        return ["bash", "-c", "echo 'dry run: the autotable needs a CUDA device; skipped'"]
    args = ["--dtypes", "float32,bfloat16", "--T", "4,16,64", "--N", "65536,4194304"]
    if full:
        args = []
    return [py, os.path.join(ROOT, "benchmarks", "gpu_autotable.py"), "--out", os.path.join(work, "autotable.json"),
            "--csv", os.path.join(work, "autotable.csv")] + args


def memcheck_cmd(py, work, dry):
    tiny = [py, STAGES_PY, "tiny", "--backends", "cuda,triton", "--work", work] + (["--dry-run"] if dry else [])
    san = shutil.which("compute-sanitizer")
    if san is None or dry:
        why = "dry run" if dry else "compute-sanitizer not found"
        return ["bash", "-c", f"echo '{why}: the tiny cases run without the sanitizer'; exec \"$@\"", "_"] + tiny
    return [san, "--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "20"] + tiny


class Runner:
    def __init__(self, out, work, budget, dry):
        self.out, self.work, self.budget, self.dry = out, work, budget, dry
        self.t0 = time.monotonic()
        self.rows = []  # (name, status, seconds, timeout, note)
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)

    def left(self):
        return self.budget - (time.monotonic() - self.t0)

    def start(self, name, cmd, env_extra):
        env = dict(os.environ, PYTHONUNBUFFERED="1", WORK=self.work, **env_extra)
        log = open(os.path.join(self.logs, f"{name}.log"), "w")
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        # Own process group: a timeout kills the stage and everything it started (compilers, workers).
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return proc, log, time.monotonic()

    def finish(self, name, started, timeout):
        proc, log, t_start = started
        try:
            rc = proc.wait(timeout=max(1.0, min(timeout, self.left()) - (time.monotonic() - t_start)))
            status = "ok" if rc == 0 else f"FAILED rc={rc}"
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"TIMEOUT after {time.monotonic() - t_start:.0f} s"
        log.close()
        secs = time.monotonic() - t_start
        self.rows.append((name, status, secs, timeout, _last_words(os.path.join(self.logs, f"{name}.log"))))
        print(f"=== {name}: {status} ({secs:.1f} s)", flush=True)
        self.publish()
        return status == "ok"

    def skip(self, name, why, timeout):
        self.rows.append((name, "skipped", 0.0, timeout, why))
        print(f"=== {name}: skipped ({why})", flush=True)
        self.publish()

    def env(self):
        p = os.path.join(self.work, "env.json")
        if not os.path.exists(p):
            return {}
        with open(p) as f:
            return json.load(f)

    def publish(self):
        """Rewrite every file of $OUT from what the stages have left in the work folder so far."""
        env = self.env()
        for src in ("correctness.csv", "autotable.json"):
            p = os.path.join(self.work, src)
            if os.path.exists(p):
                shutil.copy(p, os.path.join(self.out, src))
        rows = []
        for p in sorted(glob.glob(os.path.join(self.work, "bench-*.json"))):
            with open(p) as f:
                rows += json.load(f)
        if rows:
            sys.path.insert(0, ROOT)
            from benchmarks import common

            common.ROWS[:] = [dict(r, copy_gbps=r.get("copy_gbps") or env.get("copy_gbps")) for r in rows]
            try:
                common.write_results(self.out)
            except Exception as e:  # noqa: BLE001 - a plot failure must not lose the CSV
                print(f"writing benchmark results: {e}")
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(self.summary())
        with tarfile.open(os.path.join(self.out, "logs.tar.gz"), "w:gz") as tar:
            for p in sorted(glob.glob(os.path.join(self.logs, "*.log"))) + [os.path.join(self.work, "env.json"),
                                                                            os.path.join(self.work, "autotable.csv")]:
                if os.path.exists(p):
                    tar.add(p, arcname=os.path.basename(p))
        n = len([p for p in os.listdir(self.out) if os.path.isfile(os.path.join(self.out, p))])
        assert n <= MAX_FILES, f"{n} files in {self.out}: the device tool returns only {MAX_FILES}"

    def summary(self):
        env = self.env()
        lines = [f"# GPU check {'(DRY RUN on the CPU) ' if self.dry else ''}"
                 f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}", ""]
        for k in ("device_name", "sm", "torch", "cuda", "triton", "python", "nvcc", "copy_gbps"):
            if k in env:
                lines.append(f"- {k}: {env[k]:.1f}" if isinstance(env[k], float) else f"- {k}: {env[k]}")
        lines += ["", f"Total {time.monotonic() - self.t0:.0f} s of a {self.budget:.0f} s budget.", "",
                  "| stage | status | seconds | timeout | last words |", "|---|---|---|---|---|"]
        for name, status, secs, timeout, note in self.rows:
            lines.append(f"| {name} | {status} | {secs:.1f} | {timeout} | {note.replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def _last_words(path, n=400):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return (lines[-1] if lines else "")[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="run the stages on this CPU machine, tiny sizes")
    ap.add_argument("--full", action="store_true", help="compiled reference at every T, whole autotable grid, "
                    "the DDP/FSDP2 stage, then the whole test suite (no default budget)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all stages (default 480; --full 1800)")
    ap.add_argument("--only", "--stages", "--stage", dest="only", default=None,
                    help="comma-separated stage names (only these run)")
    ap.add_argument("--lab", action="store_true", help="add the opt-in 'lab' stage to the default run")
    args = ap.parse_args(argv)
    out = os.path.abspath(os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out"))
    os.makedirs(out, exist_ok=True)
    for p in os.listdir(out):  # $OUT holds this run's files only
        if os.path.isfile(os.path.join(out, p)):
            os.remove(os.path.join(out, p))
    # In $TMPDIR (tempfile honours it); removed however main() ends (ap.error on an unknown stage used to
    # leave it behind, logs/ and all), unless SNN_FAST_GPU_CHECK_KEEP_WORK asks to keep it.
    work = tempfile.mkdtemp(prefix="snn_fast_gpu_check_")
    try:
        return _run(args, ap, out, work)
    finally:
        # Everything the stages left there is in $OUT now (logs.tar.gz and the tables): each run used to
        # leave its ~1 MB folder in the temporary directory (every dry run of the test suite, on every CI run).
        if not os.environ.get("SNN_FAST_GPU_CHECK_KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)


def _run(args, ap, out, work):
    py = os.environ.get("PYTHON") or sys.executable
    nproc = os.cpu_count() or 2
    budget = args.budget or (1800.0 if args.full else 480.0)
    r = Runner(out, work, budget, args.dry_run)
    stages = stage_list(py, work, args.dry_run, args.full, nproc)
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - {s[0] for s in stages})
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(s[0] for s in stages)}")
    default_out = set() if (args.full or args.lab) else OPT_IN
    selected = [s for s in stages if (s[0] in only if only is not None else s[0] not in default_out)]
    print(f"GPU check{' (dry run)' if args.dry_run else ''}: out {out}, work {work}, budget {budget:.0f} s; "
          f"stages {', '.join(s[0] for s in selected)}; estimated {sum(s[4] for s in selected)} s on the H200",
          flush=True)
    build_stage = next((s for s in selected if s[0] == "build"), None)
    build = None  # the background build: started with 'env', overlapping it and the Triton correctness stage

    def wait_build():
        nonlocal build
        if build is not None:
            r.finish("build", build, build_stage[1])
            build = None

    for name, timeout, cmd, env_extra, _est in selected:
        if cmd == "autotable":
            cmd = autotable_cmd(py, work, args.dry_run, args.full)
        elif cmd == "memcheck":
            cmd = memcheck_cmd(py, work, args.dry_run)
        if name == "build":
            if build is None and not any(row[0] == "build" for row in r.rows):
                build = r.start("build", cmd, {})
            wait_build()
            continue
        if name not in ("env", "triton-lif"):
            wait_build()  # time nothing while the compilers share the CPU
        if r.left() < 5:
            r.skip(name, "budget spent", timeout)
            continue
        if name in ("cuda-lif", "w1-cuda") and not any(row[0] == "build" and row[1] == "ok" for row in r.rows):
            r.skip(name, "the CUDA extension was not built", timeout)
            continue
        if name == "env" and build_stage is not None:
            build = r.start("build", build_stage[2], {"MAX_JOBS": str(max(nproc - 1, 1))})
        r.finish(name, r.start(name, cmd, env_extra), timeout)
    wait_build()
    if args.full and not args.dry_run and r.left() > 60:
        r.finish("pytest-full", r.start("pytest-full", [py, "-m", "pytest", "tests", "-q", "-x", "-rs", "-n", "8"], {}),
                 r.left())
    r.publish()
    print()
    print(r.summary())
    print(f"files in {out}: {sorted(os.listdir(out))}")
    failed = [row for row in r.rows if row[1] not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
