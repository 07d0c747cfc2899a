"""The GPU check (scripts/gpu_check.sh) works before a GPU ever sees it: its dry run on this CPU machine
runs every stage's code on tiny sizes and leaves at most 8 files in $OUT (all the device tool returns);
its case list covers every option in few Triton compilations; its default run fits its 8-minute budget.
"""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STAGE_NAMES = ["env", "triton-lif", "w1-triton", "build", "cuda-lif", "w1-cuda", "autotable", "tempotron",
               "memcheck", "models", "overhead"]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def check_mod():
    return _load("gpu_check_runner", os.path.join(ROOT, "scripts", "gpu", "check.py"))


@pytest.fixture(scope="module")
def stages_mod():
    return _load("gpu_check_stages", os.path.join(ROOT, "scripts", "gpu", "stages.py"))


def test_default_run_fits_the_budget(check_mod):
    """Estimated seconds per stage on the H200 (measured inputs: README "Running the GPU check") sum to
    less than the 480 s budget, which leaves a 600 s device call room for start-up and file transfer."""
    stages = check_mod.stage_list("python3", "/tmp/w", dry=False, full=False, nproc=16)
    assert [s[0] for s in stages] == STAGE_NAMES + ["bn-lif", "bn-lif-bytes", "swap-in", "cuda-graphs", "lab"]
    stages = [s for s in stages if s[0] not in check_mod.OPT_IN]  # the default run
    est = {s[0]: s[4] for s in stages}
    assert sum(est.values()) <= 480, est
    assert all(s[1] >= s[4] for s in stages), "a timeout below its own estimate"


def test_case_list_covers_every_option_in_few_compilations(stages_mod):
    cases = stages_mod.lif_cases(dry=False)
    keys = {k for c in cases for k in stages_mod.variant_keys(c)}
    assert len(keys) <= 60, f"{len(keys)} Triton variants: each costs a compilation (~0.6 s)"
    from snn_fast import surrogate as sgm

    sgs = sgm.names()[: sgm.NUM_KERNEL_SURROGATES]
    for sg in sgs:
        for dt in (torch.float32, torch.bfloat16):
            assert any(c["surrogate"] == sg and c["dtype"] == dt and c["grad"] for c in cases), (sg, dt)
    for opt in ("detach_reset", "decay_input", "learn", "mask", "v_seq", "grad"):
        assert {c[opt] for c in cases} == {True, False}, opt
    assert {c["v_reset"] for c in cases} == {0.0, -0.3, None}
    assert {c["T"] for c in cases} == {1, 4, 64}
    assert all(c["N"] % 2 == 1 for c in cases)
    assert any(math.isinf(c["tau"]) for c in cases) and any(c["kappa"] for c in cases)
    assert len({stages_mod.case_id(c) for c in cases}) == len(cases)
    assert {c["save"] for c in cases if c["grad"]} == {"state", "recompute"}
    assert {c["save"] for c in cases if c["grad"] and c["T"] == 64} == {"state", "recompute"}


def _interpreter_breaks_on_this_numpy() -> bool:
    """Triton 3.6's interpreter int()s one-element arrays, an error from numpy 2.4 on (the Makefile's
    compat venv pins numpy < 2.4 for it). The GPU image has triton 3.6 with numpy 2.5: there the dry
    run's interpreted stages all fail with "only 0-dimensional arrays can be converted to Python
    scalars" (seen on the H200, 2026-11-30); the real run's stages use the GPU, not the interpreter."""
    try:
        import numpy
        import triton
    except ImportError:  # no Triton: the dry run's Triton stages report it themselves
        return False
    ver = lambda v: tuple(int(p) for p in v.split(".")[:2])  # noqa: E731
    return ver(triton.__version__) < (3, 7) and ver(numpy.__version__) >= (2, 4)


@pytest.mark.skipif(_interpreter_breaks_on_this_numpy(),
                    reason="triton < 3.7's interpreter fails with numpy >= 2.4 (int() of a 1-element array)")
def test_dry_run(tmp_path):
    """Every stage of the check, on this machine: Triton interpreted, 'cpu' standing in for 'cuda', the
    build reduced to an nvcc compile, tiny benchmarks. Checks the files a GPU run would send back."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, WHL_DIR=str(tmp_path / "no-wheels"))
    r = subprocess.run(["bash", SCRIPT, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"dry run failed:\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files
    assert all(os.path.isfile(out / f) for f in files), files
    summary = (out / "summary.md").read_text()
    for name in STAGE_NAMES:
        line = next((ln for ln in summary.splitlines() if ln.startswith(f"| {name} |")), None)
        assert line is not None, f"stage {name} missing from the summary:\n{summary}"
        assert "| ok |" in line, line
    with open(out / "correctness.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["backend"] for r in rows} == {"triton", "cpu"}
    assert all(r["ok"] == "True" for r in rows), [r for r in rows if r["ok"] != "True"]
    bench = [f for f in files if f.endswith(".csv") and f != "correctness.csv"]
    assert len(bench) == 1 and bench[0].startswith("cpu-"), files
    assert any(f.endswith(".md") and f != "summary.md" for f in files)
    with open(out / bench[0]) as f:
        brows = list(csv.DictReader(f))
    provs = {(r["op"], r["provider"]) for r in brows}
    assert {("lif", "snn_fast-triton"), ("lif", "snn_fast-cpu"), ("tempotron", "cpu")} <= provs, provs
    assert all(float(r["median_ms"]) > 0 for r in brows)
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = set(tar.getnames())
    assert {f"{n}.log" for n in STAGE_NAMES} <= logs and "env.json" in logs, logs


@pytest.mark.parametrize("only, rc", [("autotable", 0), ("autotable,labb", 2)], ids=["ok", "unknown-stage"])
def test_check_leaves_nothing_in_the_temporary_directory(tmp_path, only, rc):
    """scripts/gpu_check.sh, however the check ends (here a cheap stage that passes, and an unknown stage
    that argparse refuses), removes the folders it made in $TMPDIR: the wheels' folder (snn_fast_site.*,
    left by every run while the script exec'd the check) and the check's work folder
    (snn_fast_gpu_check_*, left when argparse refused a stage). Its own $TMPDIR, so nothing else's
    folders count (a PYTHON that records its PYTHONPATH shows the wheels' folder was made there); the
    results in $OUT stay."""
    out, tmp, seen = tmp_path / "out", tmp_path / "tmp", tmp_path / "pythonpath.txt"
    tmp.mkdir()
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" >> "{seen}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, OUT=str(out), PYTHON=str(python), WHL_DIR=str(tmp_path / "no-wheels"), TMPDIR=str(tmp))
    env.pop("SNN_FAST_GPU_CHECK_KEEP_WORK", None)
    r = subprocess.run(["bash", SCRIPT, "--dry-run", "--only", only], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == rc, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    sites = {p for line in seen.read_text().splitlines() for p in line.split(os.pathsep) if "snn_fast_site." in p}
    assert len(sites) == 1 and os.path.dirname(sites.pop()) == str(tmp), seen.read_text()
    assert not os.listdir(tmp), os.listdir(tmp)
    if rc == 0:
        assert "| autotable | ok |" in (out / "summary.md").read_text()
        assert (out / "logs.tar.gz").is_file()
    else:
        assert "unknown stage(s) labb" in r.stderr, r.stderr[-3000:]


def test_a_failing_stage_fails_the_run(tmp_path, check_mod, monkeypatch):
    """A stage that exits non-zero is reported as FAILED and makes the whole run fail; the later stages
    still run (--only picks two cheap ones)."""
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    real = check_mod.stage_list

    def broken(*a, **k):
        st = real(*a, **k)
        return [(n, t, (["bash", "-c", "echo boom; exit 3"] if n == "env" else c), e, est) for n, t, c, e, est in st]

    monkeypatch.setattr(check_mod, "stage_list", broken)
    rc = check_mod.main(["--dry-run", "--only", "env,autotable"])
    assert rc == 1
    summary = (out / "summary.md").read_text()
    assert "| env | FAILED rc=3 |" in summary and "| autotable | ok |" in summary, summary


def test_full_adds_the_ddp_and_w2_stages(check_mod):
    """--full runs the distributed stage and W2 after the others (the default run stays within its
    budget)."""
    stages = check_mod.stage_list("python3", "/tmp/w", dry=False, full=True, nproc=16)
    assert [s[0] for s in stages] == STAGE_NAMES + ["bn-lif", "bn-lif-bytes", "swap-in", "cuda-graphs", "lab",
                                                    "ddp", "w2"]
    assert all(s[1] >= s[4] for s in stages), "a timeout below its own estimate"


@pytest.mark.slow
def test_ddp_stage_dry_run(tmp_path, check_mod, monkeypatch):
    """The --full DDP stage on this machine: gloo on the CPU for both its parts, 'cpu' standing in for
    'cuda', Triton interpreted, aot_eager for Inductor. Every case equals one process on the global
    batch (tests/test_distributed.py checks the same runs in detail). 44-61 s here (4 process starts,
    the interpreter, a compile; load average 12-18): marked ``slow``, which CI runs."""
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = check_mod.main(["--dry-run", "--full", "--only", "ddp"])
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| ddp | ok |" in summary, summary
    with open(out / "correctness.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f) if r["stage"] == "ddp"}
    want = {"gloo 2 ranks ddp-cpu", "gloo 2 ranks ddp-reference", "gloo 1 rank ddp-auto", "gloo 1 rank fsdp-auto",
            "gloo 1 rank ddp_compile-auto"}
    assert want <= rows.keys(), sorted(rows)
    assert "gloo 2 ranks ddp-triton" in rows, sorted(rows)
    for r in rows.values():  # Triton: run when it is installed, else a skipped row
        assert r["ok"] == "True" or (r["backend"] == "triton" and r["detail"].startswith("skipped:")), r


@pytest.mark.slow
def test_w2_and_models_stages_dry_run(tmp_path, check_mod, monkeypatch):
    """The W2 (--full) and W5 'models' stages on this machine, at their dry-run sizes: each finishes and
    its benchmark rows reach the results files (every provider of W2 that is installed here, the three
    of W5 when SpikingJelly is)."""
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = check_mod.main(["--dry-run", "--full", "--only", "models,w2"])
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| w2 | ok |" in summary and "| models | ok |" in summary, summary
    csvs = [p for p in os.listdir(out) if p.endswith(".csv") and p != "correctness.csv"]
    assert len(csvs) == 1, os.listdir(out)
    with open(out / csvs[0]) as f:
        rows = list(csv.DictReader(f))
    w2 = {r["provider"] for r in rows if r["op"] == "on-w2"}
    assert "snn_fast-cpu" in w2 and "reference" in w2, w2
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        return
    assert "spikingjelly" in w2, w2
    assert {r["provider"] for r in rows if r["op"] == "train_step:spikformer"} == {
        "spikingjelly", "snn_fast", "snn_fast-fused", "no-neurons"}


def test_gpu_tests_script_runs_and_reports(tmp_path):
    """scripts/gpu_tests.sh (the second call on a warm GPU machine): runs the pytest arguments it is
    given under its cap and leaves the log and the junit file in $OUT. Here on a few CPU tests."""
    out = tmp_path / "out"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, CAP="300", WORKERS="1",
               WHL_DIR=str(tmp_path / "no-wheels"), TMPDIR=str(tmp))
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_tests.sh"), "tests/test_errors.py", "-k",
                        "backend"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    log = (out / "pytest.log").read_text()
    assert r.returncode == 0, log[-3000:]
    # its wheels' folder (snn_fast_site.*) is gone: every run used to leave one (the tests it ran may
    # leave their own temporary files there: pytest's tmp_path folders)
    assert not [p for p in os.listdir(tmp) if p.startswith("snn_fast_")], os.listdir(tmp)
    assert "passed" in log and "gpu_tests: pytest exit 0 (finished)" in log, log[-3000:]
    junit = (out / "junit.xml").read_text()
    assert "<testsuite" in junit and 'failures="0"' in junit, junit[:500]


@pytest.mark.slow
@pytest.mark.skipif(_interpreter_breaks_on_this_numpy(),
                    reason="triton < 3.7's interpreter fails with numpy >= 2.4 (int() of a 1-element array)")
def test_lab_stage_dry_run(tmp_path, check_mod, stages_mod, monkeypatch):
    """The opt-in 'lab' stage, alone (``--stages lab``): every variant of LAB_VARIANTS runs on the dry
    run's shapes under the interpreter, agrees with its save mode's default, and its timed rows reach
    the results file with the default's time over its own."""
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = check_mod.main(["--dry-run", "--stages", "lab"])
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| lab | ok |" in summary, summary
    assert "| env |" not in summary  # only the named stage ran
    csvs = [p for p in os.listdir(out) if p.endswith(".csv")]
    assert len(csvs) == 1, os.listdir(out)
    with open(out / csvs[0]) as f:
        rows = [r for r in csv.DictReader(f) if r["op"] == "lif-lab"]
    names = [v[0] for v in stages_mod.LAB_VARIANTS]
    assert len(rows) == 2 * len(names)  # fp32 and bf16
    for dtype in ("float32", "bfloat16"):
        got = [r for r in rows if r["dtype"] == dtype]
        assert [r["provider"] for r in got] == [f"triton:{n}" for n in names]
        assert all(r["note"] == "" and float(r["median_ms"]) > 0 and float(r["speedup"]) > 0 for r in got), got
        assert {r["save"] for r in got} == {"state", "recompute"}
        assert all(float(r["speedup"]) == 1.0 for r in got if r["variant"] in ("default", "rc-default"))


def test_unknown_stage_is_refused(check_mod, tmp_path, monkeypatch):
    """argparse's refusal leaves no work folder behind (it used to leave snn_fast_gpu_check_*/logs)."""
    import tempfile

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.delenv("SNN_FAST_GPU_CHECK_KEEP_WORK", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(SystemExit):
        check_mod.main(["--dry-run", "--only", "overhead,labb"])
    assert not os.listdir(tmp_path / "tmp")


def test_bn_lif_stage_dry_run(tmp_path, check_mod, stages_mod, monkeypatch):
    """The opt-in bn-lif stage on this machine at its dry-run size: its tests pass and its benchmark
    rows (the fused op, batch norm + snn_fast LIF, each with a user's surrogate too, and the Triton
    backward's variants) reach the results file; the run's work folder is gone afterwards (its logs
    are in $OUT)."""
    import tempfile

    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.delenv("SNN_FAST_GPU_CHECK_KEEP_WORK", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    rc = check_mod.main(["--dry-run", "--only", "bn-lif"])
    assert not os.listdir(tmp_path / "tmp")
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| bn-lif | ok |" in summary, summary
    csvs = [p for p in os.listdir(out) if p.endswith(".csv") and p != "correctness.csv"]
    assert len(csvs) == 1, os.listdir(out)
    with open(out / csvs[0]) as f:
        rows = list(csv.DictReader(f))
    provs = {r["provider"] for r in rows if r["op"] == "bn_lif"}
    assert {"snn_fast-bn_lif", "bn+snn_fast-lif", "snn_fast-bn_lif-user", "bn+snn_fast-lif-user"} <= provs, provs
    # the Triton backward's segment and warps variants: each agrees with the default and is timed
    lab = [r for r in rows if r["op"] == "bn_lif-lab"]
    assert [r["provider"] for r in lab] == [f"triton:{n}" for n, _ in stages_mod.BN_LIF_VARIANTS]
    for r in lab:
        assert r["note"] == "" and float(r["median_ms"]) > 0 and float(r["speedup"]) > 0, r


def test_swap_in_stage_dry_run(tmp_path, check_mod, monkeypatch):
    """The opt-in swap-in stage at its dry-run size: snnTorch's loop and its conversion agree (the
    benchmark exits 1 when spikes differ) and the stage passes."""
    pytest.importorskip("snntorch")
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = check_mod.main(["--dry-run", "--only", "swap-in"])
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| swap-in | ok |" in summary, summary


def test_cuda_graphs_stage_dry_run(tmp_path, check_mod, monkeypatch):
    """The opt-in cuda-graphs stage without a GPU: no timing, and tests/test_cuda_graphs.py's simulated
    captures pass (its GPU rows skip); the stage's log shows the file ran."""
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    rc = check_mod.main(["--dry-run", "--only", "cuda-graphs"])
    summary = (out / "summary.md").read_text()
    assert rc == 0 and "| cuda-graphs | ok |" in summary, summary
    assert "tests/test_cuda_graphs.py: rc 0" in summary, summary


def test_bn_lif_bytes_stage_commands(check_mod):
    """The opt-in bn-lif-bytes stage: on the GPU benchmarks/bytes_bn_lif.py under ncu at both shapes,
    strict (the stage fails where the fused op moves more than 15 % over 9 passes), then the larger
    shape with L2 left as the previous kernel left it; both run, either failing fails the stage. Dry run:
    the CPU measurement of the fused op (tests/test_bytes_bn_lif.py runs the measurement itself)."""
    cmd = dict((s[0], s[2]) for s in check_mod.stage_list("python3", "/tmp/w", dry=False, full=False, nproc=16))
    line = cmd["bn-lif-bytes"][-1]
    first, second = line.split("; a=$?; ")
    assert first.endswith("bytes_bn_lif.py cuda --strict")
    assert "bytes_bn_lif.py cuda --cache-control none --shape 4,32,64,56,56" in second
    assert second.endswith("exit $(( a || b ))")
    dry = dict((s[0], s[2]) for s in check_mod.stage_list("python3", "/tmp/w", dry=True, full=False, nproc=16))
    assert "bytes_bn_lif.py cpu" in dry["bn-lif-bytes"][-1] and "snn_fast-bn_lif" in dry["bn-lif-bytes"][-1]
