"""The benchmark suite runs: every benchmark module's case function at a tiny size, end to end
(providers built, spikes checked against the reference, timed, peak memory taken, rows written).

`make bench` is not part of CI (minutes to hours on the CPU); without this a benchmark broken by an
API change is found only by the next person who runs it (W2 called ``backends.select`` after its
signature changed, 2026-11-30). Timing here is one short round: these tests check plumbing, never speed.
"""
import os
import sys

import pytest
import torch

# Appended, not prepended: under `make compat` snn_fast must come from .compat/pkg (PYTHONPATH), not
# from the checkout, whose _C is built for the main venv's torch.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import snn_fast  # noqa: E402
from benchmarks import common  # noqa: E402

pytestmark = pytest.mark.skipif(not snn_fast.HAS_C, reason="the CPU benchmarks time the C++ kernel")


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """One short timing round, and a private row list (the suite's rows are not ours to write)."""
    fast = common.time_fns

    def time_fns(fns, device, rounds=3, min_run_time=0.5):
        return fast(fns, device, rounds=1, min_run_time=0.01)

    monkeypatch.setattr(common, "time_fns", time_fns)
    monkeypatch.setattr(common, "ROWS", [])


def _check_rows(rows, providers):
    assert rows, "no rows recorded"
    seen = {r["provider"] for r in rows}
    assert set(providers) <= seen, (providers, seen)
    for r in rows:
        assert r["median_ms"] > 0, r


def test_lif_bench(tmp_path):
    from benchmarks import test_bench_lif as lif

    rows = lif.bench_case("cpu", (4, 2, 64), torch.float32, rounds=1)
    _check_rows(rows, ["snn_fast-cpu", "reference"])
    assert all(r["peak_bytes"] > 0 for r in rows if r["mode"] == "fwd+bwd"), rows
    paths = common.write_results(str(tmp_path))
    assert any(p.endswith(".csv") for p in paths) and all(os.path.exists(p) for p in paths), paths


def test_on_w2_bench(monkeypatch):
    from benchmarks import test_bench_on as on

    monkeypatch.setattr(on, "T", 20)  # docs/spec.md §10's 500 steps: seconds per Python-loop provider
    rows = on.bench_case("cpu", 16, rounds=1)
    _check_rows(rows, ["snn_fast-cpu", "reference"])
    # Every provider's peak memory is measured on the CPU now (the profiler's events, not its JSON).
    assert all(r["peak_bytes"] > 0 for r in rows if r["op"] == "on-w2" and r["mode"] == "fwd+bwd"), rows
    assert "| 16 | snn_fast-cpu |" in on.summary(rows)


def test_tempotron_bench():
    from benchmarks import test_bench_tempotron as tp

    rows = tp.run("cpu", B=2, I=64)
    _check_rows(rows, ["cpu", "reference"])


def test_models_bench(monkeypatch):
    pytest.importorskip("spikingjelly.activation_based")
    from benchmarks import test_bench_models as models

    rows = models.bench_model("spikformer", "cpu", rounds=1)  # the smallest of the three here
    _check_rows(rows, ["spikingjelly", "snn_fast", "no-neurons"])


def test_cpu_peak_bytes_counts_live_tensors():
    """The CPU peak is the largest total of live tensor storage: two 4 KiB tensors at once (ones and
    its product) then a scalar; a view or an in-place result is not a new allocation."""
    assert common.peak_bytes(lambda: (torch.ones(1024) * 2).sum(), "cpu") == 2 * 4096

    def views_and_inplace():
        a = torch.zeros(1024)
        a.add_(1)
        return a.view(2, 512).t()

    assert common.peak_bytes(views_and_inplace, "cpu") == 4096


def test_surrogate_bench():
    from benchmarks import test_bench_surrogate as sg

    rows = sg.bench_case("cpu", (4, 2, 64), torch.float32, rounds=1)
    _check_rows(rows, ["snn_fast-cpu", "snn_fast-cpu-user", "snn_fast-cpu-user-eager", "reference-user"])
    assert {(a, b) for *_, a, b, _r, _lo, _hi in sg.ratios(rows)} >= {("snn_fast-cpu-user", "snn_fast-cpu"),
                                                                      ("snn_fast-cpu-user-eager", "snn_fast-cpu-user")}


def test_w2_sizes_default_and_full(monkeypatch):
    """`make bench` runs W2 at n = 1024 on the CPU; `make bench FULL=1` adds 2048; the GPU sizes stay."""
    from benchmarks import test_bench_on as on

    monkeypatch.delenv("SNN_FAST_BENCH_ON_N", raising=False)
    monkeypatch.delenv("SNN_FAST_BENCH_FULL", raising=False)
    assert on.sizes("cpu") == [1024]
    assert on.sizes("cuda") == [4096, 8192, 16384]
    monkeypatch.setenv("SNN_FAST_BENCH_FULL", "1")
    assert on.sizes("cpu") == [1024, 2048]
    monkeypatch.setenv("SNN_FAST_BENCH_ON_N", "256,512")
    assert on.sizes("cpu") == [256, 512]


def test_overhead_bench():
    from benchmarks import test_bench_overhead as oh

    rows = oh.bench("cpu", rounds=1)
    _check_rows(rows, ["snn_fast-module", "snn_fast-functional", "torch-4ops", "torch-sigmoid"])
    assert {r["mode"] for r in rows} == {"fwd+bwd (host)"}


def test_swap_in_reports_differing_spikes(monkeypatch, capsys):
    """benchmarks/swap_in.py: equal spikes say so and exit 0; a flipped spike is counted, the timings
    still run, and the exit status is 1 (a GPU run gets its numbers and its failure both)."""
    pytest.importorskip("snntorch")
    from benchmarks import swap_in

    argv = ["--n", "16", "--T", "6", "--rounds", "1"]  # no --threads: main() would leave it set for later tests
    assert swap_in.main(argv) == 0
    out = capsys.readouterr().out
    assert "; spikes equal (" in out and "converted multistep" in out

    real_convert = snn_fast.convert

    class FlipOne(torch.nn.Module):  # the converted model, with its first per-step spike flipped
        def __init__(self, inner):
            super().__init__()
            self.inner, self.fc, self.lif = inner, inner.fc, inner.lif

        def forward(self, x):
            s = self.inner(x).clone()
            s.view(-1)[0] = 1 - s.view(-1)[0]
            return s

    monkeypatch.setattr(swap_in.snn_fast, "convert", lambda m: FlipOne(real_convert(m)))
    assert swap_in.main(argv) == 1
    out = capsys.readouterr().out
    assert "SPIKES DIFFER: converted per-step vs snnTorch: 1 of " in out, out
    assert "fwd+bwd  converted per-step" in out  # timed all the same


def test_builds_ab_runs_both_builds(capsys):
    """benchmarks/builds_ab.py at a tiny shape, this build as both A and B: every round's two children
    ran the given build and printed their forward and backward medians."""
    from benchmarks import builds_ab

    here = os.path.dirname(os.path.dirname(os.path.abspath(snn_fast.__file__)))
    assert builds_ab.main(["--a", here, "--b", here, "--shape", "2,2,4,3,3", "--steps", "2", "--rounds", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("round")]
    assert [ln.split(":")[0] for ln in lines] == ["round 1 A", "round 1 B", "round 2 A", "round 2 B"]
    for ln in lines:
        assert snn_fast.__file__ in ln and " fwd " in ln and " bwd " in ln, ln
