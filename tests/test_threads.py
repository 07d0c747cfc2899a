"""Thread safety: every cache and registry of the package under concurrent calls.

Data-loader threads and serving threads call the ops concurrently. Each test runs 4–8 threads × many
calls with varying parameters under a very short ``sys.setswitchinterval`` (the interpreter then
switches threads every few bytecodes, which turns a rare interleaving into a likely one) and checks
that nothing raises and that every result equals the single-threaded one.

The caches and registries, and why each is safe:
- ``snn_fast/ops/common/consts.py`` ``cached``: lookups lock-free, insert (and the bound's check) under a lock;
  nothing is evicted (a FIFO eviction once raced: ``pop(next(iter(...)))`` with inserts gave
  "dictionary changed size during iteration" and KeyError).
- ``backends.OpBackends.load``: first load (import + torch.library registration) under a lock, so
  the registration runs once (torch refuses a second fake for the same op).
- ``surrogate`` registry: register/unregister under a lock; readers iterate over snapshots.
- ``autotable.AutoTable``: plain get/set of computed values (a race computes the same value twice);
  ``load`` reads with ``.get`` so a concurrent ``clear_cache`` cannot turn a hit into a KeyError.
- ``_triton._state``: computed once under a lock (the answer never changes).
- the C++ output cache (csrc/cpu/output_cache.cpp): every access to its free list and counters
  holds its mutex; checked below by results and by the live-bytes count returning to its start.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import snn_fast
from snn_fast import backends
from snn_fast import surrogate as sg
from snn_fast.ops.common import consts

THREADS = 8


@pytest.fixture
def fast_switching():
    """Switch threads every 1 µs (the default is 5 ms) so races show up within a few hundred calls."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _run_threads(fn, n_threads=THREADS):
    """fn(thread_index) on n_threads threads started together; their results, re-raising any error."""
    barrier = threading.Barrier(n_threads)

    def body(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n_threads) as ex:
        return list(ex.map(body, range(n_threads)))


class _YieldingKey:
    """A cache key whose hash and equality run Python code that yields the GIL: a thread switch can
    then happen inside the cache's dict operations, as it can anywhere on Python 3.12+ (eval-breaker
    checks on every call) and free-threaded builds. On 3.11 with the package's own keys (tuples of
    floats, dtypes, devices: C-level hash and ==) the eviction happens to be one atomic stretch of
    bytecode, so the end-to-end test below cannot catch a racy eviction (3 of 3 runs passed with one);
    with these keys the old cache's unguarded ``pop(next(iter(cache)))`` raised KeyError (two threads
    evicting the same oldest key) in every run."""

    def __init__(self, j):
        self.j = j

    def __hash__(self):
        time.sleep(0)
        return hash(self.j)

    def __eq__(self, other):
        time.sleep(0)
        return isinstance(other, _YieldingKey) and other.j == self.j


def test_const_cache_concurrent_inserts_past_its_bound(fast_switching, monkeypatch):
    """More distinct keys than the cache holds (bound set to 32 here), from 8 threads: every lookup
    returns the tensor its own key makes, the bound holds, and nothing raises."""
    monkeypatch.setattr(consts, "_CACHE", {})
    monkeypatch.setattr(consts, "MAX_ENTRIES", 32)
    n_keys = 4 * consts.MAX_ENTRIES
    cpu = torch.device("cpu")

    def work(i):
        bad = 0
        for r in range(400):
            j = (i * 7 + r) % n_keys
            t = consts.cached((_YieldingKey(j),), cpu, lambda j=j: torch.tensor([float(j)]))
            bad += int(t.item() != j)
        return bad

    assert _run_threads(work) == [0] * THREADS
    assert len(consts._CACHE) == consts.MAX_ENTRIES


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_lif_concurrent_varying_tau_equals_serial(fast_switching):
    """lif_multistep from 8 threads with varying float τ, θ and shapes (more (τ, θ) pairs than the
    const cache holds) equals the single-threaded results, forward and backward."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for j in range(48):
        x = torch.randn(4, 2, 16 + 8 * (j % 5), generator=g) * 2
        cases.append((x, 1.5 + 0.37 * j, 0.5 + 0.05 * (j % 7)))

    def run(case):
        x, tau, th = case
        x = x.clone().requires_grad_(True)
        s, v = snn_fast.lif_multistep(x, tau=tau, v_threshold=th, backend="cpu")
        (s.sum() + v.sum()).backward()
        return s.detach(), v.detach(), x.grad

    expected = [run(c) for c in cases]

    def work(i):
        bad = []
        for r in range(6 * len(cases) // THREADS):
            j = (i * 5 + r) % len(cases)
            for a, b in zip(run(cases[j]), expected[j]):
                if not torch.equal(a, b):
                    bad.append(j)
        return bad

    assert _run_threads(work) == [[]] * THREADS


def test_backend_first_load_registers_once(fast_switching):
    """Eight threads loading the same backend for the first time: the torch.library registration
    hooks run once (torch refuses a second fake for one op), every thread gets the same Loaded."""
    calls = []

    def register(loaded):
        calls.append(loaded)
        time.sleep(0.01)  # a registration takes time: widen the window another thread could enter

    class Autograd:  # the fused-op autograd's registration, counted too
        differentiable = ()

        def register(self, loaded):
            calls.append(loaded)

    table = backends.OpBackends("x", {"cpu": backends.Backend(fwd="aten::add", bwd="aten::mul",
                                                              probe=lambda x, arg: None)},
                                autograd=Autograd(), register_fakes=register)
    loaded = _run_threads(lambda i: table.load("cpu"))
    assert len(calls) == 2 and calls[1] is loaded[0]  # the fakes (given the entry), then the autograd
    assert all(b is loaded[0] for b in loaded)


def _sig(x, a):
    return torch.sigmoid(x)


def _dsig(x, a):  # its derivative: registration checks g′ against central differences of g
    return torch.sigmoid(x) * (1 - torch.sigmoid(x))


def test_surrogate_registry_concurrent_register_and_read(fast_switching):
    """Threads registering and unregistering their own surrogates while others list and look up:
    no 'dictionary changed size during iteration', and each thread finds its own surrogate."""
    def work(i):
        for r in range(60):
            name = f"thread_sg_{i}_{r}"
            if i % 2:
                sg.register_surrogate(name, _sig, _dsig)
                assert sg.get(name).name == name
                assert name in sg.names()
                sg.unregister_surrogate(name)
            else:
                assert "sigmoid" in sg.names()
                with pytest.raises(ValueError, match="unknown surrogate"):
                    sg.get(name)
        return True

    assert all(_run_threads(work))


def test_surrogate_same_name_registered_once(fast_switching):
    """Two threads registering one name: exactly one succeeds (the check and the insert are atomic)."""
    for attempt in range(20):
        name = f"thread_dup_{attempt}"

        def work(i):
            try:
                sg.register_surrogate(name, _sig, _dsig)
                return 1
            except ValueError:
                return 0

        try:
            assert sum(_run_threads(work, 4)) == 1
        finally:
            sg.unregister_surrogate(name)


def test_autotable_load_and_clear_concurrently(fast_switching, tmp_path):
    """AutoTable.load racing clear_cache: never a KeyError, always the table's entries."""
    from snn_fast.autotable import AutoTable

    path = tmp_path / "table.json"
    path.write_text('{"entries": [{"dtype": "float32", "T": 4, "N": 64, "cuda_ms": 1.0, "triton_ms": 2.0}]}')
    table = AutoTable(str(path))

    def work(i):
        for _ in range(200):
            if i == 0:
                table.clear_cache()
            else:
                assert len(table.load()) == 1
        return True

    assert all(_run_threads(work, 4))


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
def test_cpu_output_cache_concurrent(fast_switching):
    """The C++ output cache (blocks >= 1 MiB) shared by 4 threads: results equal the serial ones and
    the live-bytes count returns to where it started (no block lost or handed out twice)."""
    g = torch.Generator().manual_seed(1)
    T, N = 8, 65536  # 2 MiB float32: through the cache
    xs = [torch.randn(T, N, generator=g) * 2 for _ in range(4)]
    gs = torch.randn(T, N, generator=g)

    def run(x):
        x = x.clone().requires_grad_(True)
        s, v = snn_fast.lif_multistep(x, tau=2.0, backend="cpu")
        s.backward(gs)
        return s.detach(), x.grad

    expected = [run(x) for x in xs]
    live0 = snn_fast.cpu_cache_info()["live_bytes"]

    def work(i):
        for r in range(10):
            j = (i + r) % len(xs)
            s, gx = run(xs[j])
            if not (torch.equal(s, expected[j][0]) and torch.equal(gx, expected[j][1])):
                return False
        return True

    assert all(_run_threads(work, 4))
    assert snn_fast.cpu_cache_info()["live_bytes"] == live0
