"""The CPU output cache (csrc/cpu/output_cache.h): freed kernel outputs are reused, never leak stale
data into results, stay visible to the profiler, and obey SNN_FAST_CPU_CACHE_MB."""
import gc
import math
import os
import subprocess
import sys

import pytest
import torch

import snn_fast

from conftest import assert_close

pytestmark = pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")

# [T, N] float32 of 2 MiB: above the cache's 1 MiB threshold.
T, N = 8, 65536


def stats():
    info = snn_fast.cpu_cache_info()
    return dict(cached=info["cached_bytes"], live=info["live_bytes"], hits=info["hits"], misses=info["misses"])


def fwd_bwd(x, gs, backend="cpu"):
    x = x.clone().requires_grad_(True)
    s, v = snn_fast.lif_multistep(x, tau=2.0, surrogate="sigmoid", backend=backend)
    s.backward(gs)
    return s.detach(), v.detach(), x.grad


def test_freed_outputs_are_reused_and_results_stay_exact():
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(T, N, generator=g) * 2 for _ in range(2))
    gs = torch.randn(T, N, generator=g)
    # poison: fill a cached block with NaN before it goes back to the cache
    s_old, _, gx_old = fwd_bwd(x1, gs)
    s_old.fill_(math.nan)
    gx_old.fill_(math.nan)
    del s_old, gx_old
    before = stats()
    assert before["cached"] >= 2 * T * N * 4
    got = fwd_bwd(x2, gs)
    after = stats()
    assert after["hits"] >= before["hits"] + 2, (before, after)  # s and grad_x came from the cache
    ref = fwd_bwd(x2, gs, backend="reference")
    for a, b, name in zip(got, ref, ["s", "v_T", "grad_x"]):
        assert not a.isnan().any(), f"{name}: stale cached data survived"
        assert_close(a, b, name=name)


def test_clear_releases_cached_blocks_only():
    s, _, gx = fwd_bwd(torch.randn(T, N), torch.ones(T, N))
    snn_fast.empty_cpu_cache()
    st = stats()
    assert st["cached"] == 0
    assert st["live"] >= 2 * T * N * 4  # s and gx are still alive and untouched
    assert s.isfinite().all() and gx.isfinite().all()


def test_profiler_sees_cached_allocations():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(T, N)
    fwd_bwd(x, torch.ones(T, N))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        s = torch.ops.snn_fast.lif_fwd(x, torch.zeros(N), torch.tensor([0.5, 1.0, 4.0]), None, 0, True, 0.0, True,
                                       False, 0.0, False, 0, False, 0)[0]
        del s
    ev = [e for e in prof.key_averages() if e.key == "snn_fast::lif_fwd"]
    assert ev and ev[0].cpu_memory_usage >= T * N * 4, "the cached output must show in memory profiles"


def _run(code, env):
    # cwd: `python -c` puts the working directory first on sys.path; from the repository root that would
    # import the checkout's snn_fast (and its own build of _C) instead of the one under test (make compat).
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def test_cache_ops_opcheck():
    """torch.library.opcheck of the cache's three ops (schema, fakes, dispatch)."""
    ops = torch.ops.snn_fast
    torch.library.opcheck(ops.cpu_cache_empty_like.default, (torch.randn(3, 5),),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.cpu_cache_stats.default, (), test_utils=("test_schema",))
    torch.library.opcheck(ops.cpu_cache_clear.default, (), test_utils=("test_schema",))
    stats = ops.cpu_cache_stats()
    assert len(stats) == 4 and all(isinstance(v, int) for v in stats)


def test_env_cap_zero_turns_the_cache_off():
    code = ("import torch, snn_fast\n"
            "x = torch.randn(8, 65536)\n"
            "for _ in range(3): snn_fast.lif_multistep(x, backend='cpu')\n"
            "print(list(torch.ops.snn_fast.cpu_cache_stats()))")
    r = _run(code, {"SNN_FAST_CPU_CACHE_MB": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0]"
    r = _run(code, {"SNN_FAST_CPU_CACHE_MB": "64"})
    cached, live, hits, misses = eval(r.stdout.strip().splitlines()[-1])
    assert hits >= 2 and misses >= 1, r.stdout


def test_env_cap_must_be_a_number():
    r = _run("import torch, snn_fast\nsnn_fast.lif_multistep(torch.randn(8, 65536), backend='cpu')",
             {"SNN_FAST_CPU_CACHE_MB": "lots"})
    assert r.returncode != 0
    assert "SNN_FAST_CPU_CACHE_MB" in r.stderr


def _step_with_state(op, x, v0, gs, backend="cpu"):
    """One forward+backward from a given v0: (v_T, ∂L/∂v0), the op's two [N] outputs."""
    xx, v = x.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    if op == "lif":
        s, v_last = snn_fast.lif_multistep(xx, v0=v, tau=2.0, backend=backend)
    else:
        C = x.shape[2]
        w, b = torch.ones(C, dtype=x.dtype), torch.zeros(C, dtype=x.dtype)
        s, v_last = snn_fast.bn_lif(xx, w, b, None, None, True, v0=v, tau=2.0, backend=backend)
    ((s * gs).sum() + v_last.sum()).backward()
    return v_last.detach(), v.grad


@pytest.mark.parametrize("op", ["lif", "bn_lif"])
def test_state_rows_come_from_the_cache(op):
    """v_T and ∂L/∂v0 ([N]: a quarter of x at T = 4) are taken from the cache too: without it a
    forward at [4, 32, 64, 56, 56] faulted up to 1,700 pages in again in some processes. Reused
    blocks, poisoned with NaN before they went back, never leak into a result."""
    n = 1 << 18  # [N] float32 of 1 MiB: the cache's threshold
    g = torch.Generator().manual_seed(1)
    shape = (2, n) if op == "lif" else (2, 1, 4, n // 4)
    x = torch.randn(shape, generator=g) * 2
    v0 = torch.randn(shape[1:], generator=g) * 0.2
    gs = torch.randn(shape, generator=g)
    gc.collect()  # no cached block of an earlier test freed by a collection within the step
    gc.disable()
    try:
        live = stats()["live"]
        v_last, gv0 = _step_with_state(op, x, v0, gs)
        grown = stats()["live"] - live
    finally:
        gc.enable()
    assert grown == 2 * n * 4, "v_T and grad_v0 must be live blocks of the cache"
    v_last.fill_(math.nan)
    gv0.fill_(math.nan)
    del v_last, gv0
    got = _step_with_state(op, x, v0, gs)
    ref = _step_with_state(op, x.double(), v0.double(), gs.double(), backend="reference")
    for a, b, name in zip(got, ref, ["v_T", "grad_v0"]):
        assert not a.isnan().any(), f"{name}: stale cached data survived"
        assert_close(a, b.float(), name=name)
