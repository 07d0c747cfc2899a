"""CUDA graphs: a training step with the fused neurons, captured once and replayed.

This applies both to ``torch.cuda.graph`` in eager mode and to ``torch.compile(mode="reduce-overhead")``.
At a small batch, a step on a GPU is host-bound, and replaying a captured graph removes the host work.
A capture imposes three rules on the ops (``snn_fast/ops/common/consts.py`` says why):

- no sync: the value check of a tensor τ/θ/α (``.item()``) is skipped while capturing, as it is
  under torch.compile;
- no host-to-device copy: a constant missing from the cache is made by fill kernels during a capture;
- no freed input: the cached constants a graph reads (params, a shared start, Triton's float64
  constants) are never evicted.

Without a GPU, the capture is simulated (``consts.capturing`` patched to say yes). Those tests
record what the ops do: no sync, no tensor made from host data, nothing kept in the cache. The GPU
tests capture and replay for real, against eager steps. The GPU check's opt-in cuda-graphs stage runs them.
"""
from __future__ import annotations

import copy

import pytest
import torch

import snn_fast
from snn_fast import _triton
from snn_fast import nn as snn
from snn_fast.ops.common import consts

from conftest import HAS_CUDA, OpLog

HOST_DATA = {"lift_fresh", "lift_fresh_copy"}  # torch.tensor(python data): a host-to-device copy on a GPU
SYNCS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(consts, "_CACHE", {})


@pytest.fixture
def capture(monkeypatch):
    """A capture in progress, as the ops see it, on any device."""
    monkeypatch.setattr(consts, "capturing", lambda device: True)


# --- the cache's rules, without a GPU -------------------------------------------------------------

def test_capturing_asks_cuda_only_for_a_gpu_tensor(monkeypatch):
    def boom():
        raise AssertionError("asked CUDA about a CPU tensor")

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", boom)
    assert consts.capturing(torch.device("cpu")) is False


def test_a_kept_constant_is_never_evicted(fresh_cache, monkeypatch):
    """The first key stays the same tensor however many keys come after it; past the bound, a key is
    made for each call, right, and not kept."""
    monkeypatch.setattr(consts, "MAX_ENTRIES", 8)
    cpu = torch.device("cpu")
    first = consts.cached(("k", 0), cpu, lambda: consts.values((0.5,), torch.float32, cpu))
    for j in range(1, 40):
        t = consts.cached(("k", j), cpu, lambda j=j: consts.values((float(j),), torch.float32, cpu))
        assert t.item() == j
    assert consts.cached(("k", 0), cpu, lambda: torch.full((1,), -1.0)) is first and first.item() == 0.5
    assert len(consts._CACHE) == 8
    a = consts.cached(("k", 39), cpu, lambda: torch.full((1,), 39.0))
    assert a is not consts.cached(("k", 39), cpu, lambda: torch.full((1,), 39.0))


def test_a_constant_missing_during_a_capture_is_filled_and_not_kept(fresh_cache, capture):
    cpu = torch.device("cpu")
    vals = (0.1, -2.5, 1.0 / 3.0)  # float64 fills are exact: a Python float is a double
    with OpLog() as log:
        t = consts.cached(("p",), cpu, lambda: consts.values(vals, torch.float64, cpu))
    assert t.tolist() == list(vals)
    assert "fill_" in log.names() and not HOST_DATA & log.names(), log.ops
    assert consts._CACHE == {}


def test_a_constant_made_before_the_capture_is_the_one_it_reads(fresh_cache, monkeypatch):
    cpu = torch.device("cpu")
    made = consts.cached(("p",), cpu, lambda: consts.values((1.0, 2.0), torch.float32, cpu))
    monkeypatch.setattr(consts, "capturing", lambda device: True)
    assert consts.cached(("p",), cpu, lambda: torch.full((2,), float("nan"))) is made


def _cpu_backends():
    out = [pytest.param("cpu", marks=pytest.mark.skipif(not snn_fast.HAS_C, reason="needs snn_fast._C"))]
    triton_ok = _triton.import_error() is None and _triton.interpreted()
    out.append(pytest.param("triton", marks=pytest.mark.skipif(not triton_ok, reason="needs triton's interpreter")))
    return out


def _lif_step(backend, x, tau):
    x = x.clone().requires_grad_()
    tau = tau.detach().clone().requires_grad_()
    s, v = snn_fast.lif_multistep(x, tau=tau, v_threshold=0.8, backend=backend)
    (s.sum() + v.sum()).backward()
    return s, v, x.grad, tau.grad


def _bn_lif_step(backend, x):
    C = x.shape[2]
    rm, rv = torch.zeros(C, dtype=x.dtype), torch.ones(C, dtype=x.dtype)
    s, v = snn_fast.bn_lif(x, None, None, rm, rv, True, 0.1, 1e-5, backend=backend)
    return s, v, rm, rv


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("op", ["lif", "bn_lif"])
def test_simulated_capture_makes_no_host_data_and_no_sync(fresh_cache, monkeypatch, backend, dtype, op):
    """Every constant of a first call made inside the 'capture', and the same results as an eager call.
    lif: the functional op with a learnable tensor τ (its value check skipped), float θ and α, a shared
    start, fwd+bwd. bn_lif: its params, start, missing weight and bias, Triton's float64 buffers."""
    x = torch.randn((4, 3, 5) if op == "lif" else (3, 2, 4, 3, 3), dtype=dtype) * 2
    tau = torch.tensor(1.7, dtype=dtype)
    run = (lambda: _lif_step(backend, x, tau)) if op == "lif" else (lambda: _bn_lif_step(backend, x))
    want = run()
    monkeypatch.setattr(consts, "_CACHE", {})
    monkeypatch.setattr(consts, "capturing", lambda device: True)
    with OpLog() as log:
        got = run()
    assert not SYNCS & log.names() and not HOST_DATA & log.names(), sorted(log.names())
    assert consts._CACHE == {}
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"output {i} differs from the eager call's"


@pytest.mark.parametrize("op", ["lif", "bn_lif"])
@pytest.mark.parametrize("name", ["tau", "v_threshold", "alpha"])
def test_a_cpu_parameter_with_x_elsewhere_is_named_during_a_capture(capture, op, name):
    """Eager mode moves a CPU τ/θ/α to x's device at each call; a capture cannot (a host copy): the
    argument is named, before any work. x on the meta device stands in for the GPU."""
    x = torch.zeros(2, 2, 3, 1, 1, device="meta")
    kw = {name: torch.tensor(2.0)}
    with pytest.raises(ValueError, match=f"{name} is on the CPU .* CUDA graph capture"):
        if op == "lif":
            snn_fast.lif_multistep(x, **kw)
        else:
            snn_fast.bn_lif(x, None, None, None, None, True, 0.1, 1e-5, **kw)


def test_a_bad_tensor_tau_is_still_refused_outside_a_capture():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="tau"):
        snn_fast.lif_multistep(x, tau=torch.tensor(0.5), backend="reference")
    with pytest.raises(ValueError, match="tau must be finite"):
        snn_fast.lif_multistep(x, tau=torch.tensor(float("nan")), backend="reference")


# --- on a GPU: capture and replay -----------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def _backends_on_gpu():
    return [pytest.param(b, marks=gpu) for b in ("cuda", "triton")]


def _graph_step(model, x, g, warmup=3):
    """Capture one training step (forward, backward into the parameters' .grad) of ``model`` on the
    static input ``x`` with the output gradient ``g``, after warm-up steps on a side stream (the
    Triton kernels compile and the constants are cached there, as torch's documentation asks)."""
    def step():
        snn.reset_net(model)
        out = model(x)
        out.backward(g)
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out, side


def _eager_step(model, x, g):
    model.zero_grad(set_to_none=True)
    snn.reset_net(model)
    out = model(x)
    out.backward(g)
    return out


def _churn_the_caches(device, stream):
    """Eager calls with many new float constants (more keys than the old cache held: it evicted, and
    freed, a tensor a graph reads), then fresh allocations of NaN that would take a freed block, on the
    stream the constants were made on (the allocator gives a freed block only to its own stream)."""
    with torch.cuda.stream(stream):
        x = torch.randn(2, 64, device=device)
        for j in range(80):
            snn_fast.lif_multistep(x, tau=1.5 + 0.01 * j, v_threshold=0.5 + 0.001 * j)
        keep = [torch.full((64,), float("nan"), device=device) for _ in range(256)]
    torch.cuda.current_stream().wait_stream(stream)
    return keep


def _compare_replays(model, graph, out, side, x, g, eager_model, steps=3):
    kept = {k: t.data_ptr() for k, t in consts._CACHE.items()}  # what the graph may read
    for i in range(steps):
        new_x = torch.randn_like(x) * 2
        new_g = torch.randn_like(g)
        x.copy_(new_x)
        g.copy_(new_g)
        keep = _churn_the_caches(x.device, side) if i == 1 else None
        graph.replay()
        want = _eager_step(eager_model, new_x, new_g)
        torch.testing.assert_close(out, want, rtol=0, atol=0, msg=lambda m: f"replay {i}: spikes: {m}")
        for (n, p), q in zip(model.named_parameters(), eager_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"replay {i}: {n}.grad: {m}")
        for (n, b), c in zip(model.named_buffers(), eager_model.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-7, msg=lambda m: f"replay {i}: {n}: {m}")
        del keep
    assert all(k in consts._CACHE and consts._CACHE[k].data_ptr() == p for k, p in kept.items())


@pytest.mark.parametrize("backend", _backends_on_gpu())
@pytest.mark.parametrize("learn", [False, True], ids=["float-params", "learnable-tau-theta"])
def test_lif_training_step_replays_as_eager(backend, learn):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        snn.MultiStep(torch.nn.Linear(32, 64)),
        snn.LIF(tau=1.8, backend=backend, learn_tau=learn, learnable_threshold=learn),
        snn.MultiStep(torch.nn.Linear(64, 16)),
        snn.LIF(tau=2.5, v_reset=None, backend=backend),
    ).cuda()
    eager_model = copy.deepcopy(model)
    x = torch.randn(4, 8, 32, device="cuda")
    g = torch.randn(4, 8, 16, device="cuda")
    graph, out, side = _graph_step(model, x, g)
    _compare_replays(model, graph, out, side, x, g, eager_model)


class _PerStepNet(torch.nn.Module):
    """SpikingJelly's single-step style: the loop over T in Python, each neuron carrying its membrane
    from one call to the next (the state a captured step reads from the step before it)."""

    def __init__(self, backend):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 16)
        self.lif1 = snn.LIF(tau=1.8, backend=backend, step_mode="s")
        self.lif2 = snn.LIF(tau=2.5, v_reset=None, backend=backend, step_mode="s")

    def forward(self, x):
        return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(xt)))) for xt in x])


@pytest.mark.parametrize("backend", _backends_on_gpu())
def test_single_step_loop_replays_as_eager(backend):
    torch.manual_seed(0)
    model = _PerStepNet(backend).cuda()
    eager_model = copy.deepcopy(model)
    x = torch.randn(6, 8, 32, device="cuda")
    g = torch.randn(6, 8, 16, device="cuda")
    graph, out, side = _graph_step(model, x, g)
    _compare_replays(model, graph, out, side, x, g, eager_model)


@pytest.mark.parametrize("backend", _backends_on_gpu())
def test_functional_lif_with_a_tensor_tau_captures(backend):
    """lif_multistep(x, tau=<a CUDA tensor>) checks τ's value with .item() in eager mode: inside a capture
    that sync raised. Now it is skipped there; the replay follows the tensor's current value."""
    x = torch.randn(4, 1000, device="cuda") * 2
    tau = torch.tensor(2.0, device="cuda")
    snn_fast.lif_multistep(x, tau=tau, backend=backend)  # warm-up: compile, cache
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        s, v = snn_fast.lif_multistep(x, tau=tau, backend=backend)
    for t in (2.0, 1.3, 7.0):
        tau.fill_(t)
        graph.replay()
        s_want, v_want = snn_fast.lif_multistep(x, tau=tau, backend=backend)  # eager, the same tensor
        assert torch.equal(s, s_want) and torch.equal(v, v_want), f"tau={t}"
    assert s.sum() > 0 and not torch.equal(v, snn_fast.lif_multistep(x, tau=2.0, backend=backend)[1])


@gpu
def test_a_cpu_tau_runs_eagerly_and_is_refused_in_a_capture():
    x = torch.randn(4, 100, device="cuda")
    tau = torch.tensor(2.0)
    s, _ = snn_fast.lif_multistep(x, tau=tau)
    assert torch.equal(s, snn_fast.lif_multistep(x, tau=2.0)[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="tau is on the CPU"):
        with torch.cuda.graph(graph):
            snn_fast.lif_multistep(x, tau=tau)


@pytest.mark.parametrize("backend", _backends_on_gpu())
@pytest.mark.parametrize("affine", [True, False])
def test_bn_lif_training_step_replays_as_eager(backend, affine):
    """The fused batch norm + LIF in training: the replays update the running statistics as eager steps do."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        snn.MultiStep(torch.nn.Conv2d(3, 8, 3, padding=1)),
        snn.BNLIF(8, affine=affine, backend=backend),
    ).cuda()
    eager_model = copy.deepcopy(model)
    x = torch.randn(4, 2, 3, 10, 10, device="cuda")
    g = torch.randn(4, 2, 8, 10, 10, device="cuda")
    graph, out, side = _graph_step(model, x, g)
    eager_model.load_state_dict(model.state_dict())  # the warm-up and capture steps moved the statistics
    _compare_replays(model, graph, out, side, x, g, eager_model)


def _step(m, x):
    snn.reset_net(m)
    return m(x)


def _reduce_overhead(monkeypatch):
    """``torch.compile(mode='reduce-overhead')`` of ``_step``, fresh (Dynamo reset, counters cleared),
    and the list each CUDA graph replay appends to."""
    from torch._dynamo.utils import counters

    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: (replays.append(1), replay(self))[1])
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(_step, mode="reduce-overhead", fullgraph=True), replays


def _assert_replayed_without_skips(replays):
    from torch._dynamo.utils import counters

    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert len(replays) >= 2, f"{len(replays)} CUDA graph replays: the recording's own, at most"


@gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_reduce_overhead_compile_uses_cuda_graphs(backend, train, monkeypatch):
    """torch.compile(mode='reduce-overhead') runs the step as CUDA graphs (no skip: no CPU tensor, no
    op that refuses capture), replayed, with the eager results: inference, and training (the backward
    graph too; the gradients of x and of a learnable θ against eager). The neuron alone: a Linear's
    GEMM or 1/τ compiled by Inductor may round otherwise than eager and flip a spike; the op may not."""
    model = snn.LIF(tau=1.8, backend=backend, learnable_threshold=True).cuda()
    eager_model = copy.deepcopy(model)
    compiled, replays = _reduce_overhead(monkeypatch)
    torch.manual_seed(0)
    for i in range(5):  # cudagraph trees: a warm-up run, a recording (which replays once), then replays
        x = torch.randn(4, 8, 32, device="cuda") * 2
        g = torch.randn(4, 8, 32, device="cuda")
        torch.compiler.cudagraph_mark_step_begin()
        if train:
            model.zero_grad(set_to_none=True)
            eager_model.zero_grad(set_to_none=True)
            xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
            out = compiled(model, xc)
            out.backward(g)
            got = out.detach().clone()
            want = _step(eager_model, xe)
            want.backward(g)
            torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"call {i}: x.grad: {m}")
            torch.testing.assert_close(model.v_threshold.grad, eager_model.v_threshold.grad, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"call {i}: v_threshold.grad: {m}")
        else:
            with torch.no_grad():
                got = compiled(model, x).clone()
                want = _step(eager_model, x)
        assert torch.equal(got, want.detach()), f"call {i}"
    _assert_replayed_without_skips(replays)


@gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_reduce_overhead_compile_of_bn_lif_training(backend, monkeypatch):
    """The fused batch norm + LIF in training under reduce-overhead: its running statistics (buffers
    mutated in place) updated by the replays as by eager steps, no cudagraph skip."""
    model = snn.BNLIF(8, backend=backend).cuda()
    eager_model = copy.deepcopy(model)
    compiled, replays = _reduce_overhead(monkeypatch)
    torch.manual_seed(0)
    for i in range(5):
        x = torch.randn(4, 2, 8, 6, 6, device="cuda") + 0.5
        g = torch.randn(4, 2, 8, 6, 6, device="cuda")
        torch.compiler.cudagraph_mark_step_begin()
        model.zero_grad(set_to_none=True)
        eager_model.zero_grad(set_to_none=True)
        out = compiled(model, x)
        out.backward(g)
        want = _step(eager_model, x)
        want.backward(g)
        assert torch.equal(out.detach(), want.detach()), f"call {i}"
        for (n, p), q in zip(model.named_parameters(), eager_model.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"call {i}: {n}: {m}")
        for (n, b), c in zip(model.named_buffers(), eager_model.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-6, msg=lambda m: f"call {i}: {n}: {m}")
    _assert_replayed_without_skips(replays)
