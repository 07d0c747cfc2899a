"""The host work of one LIF forward+backward, counted without a GPU.

On a GPU the kernels of a small layer take microseconds; whatever the Python layers add on top (extra
torch calls, allocations, a device sync) sets the step time. This file records every torch call the
eager path makes below the autograd key (a TorchDispatchMode sees each one: the fused ops, allocations,
copies, ``.item()``'s ``_local_scalar_dense`` sync) and holds the line:

- without parameter gradients: exactly one forward op and one backward op, nothing else but views;
- with a learnable parameter: the same two ops plus a bounded number of small parameter ops;
- never a device sync.

The C++ ops are the same on the CPU and the GPU (``snn_fast::lif_fwd``/``lif_bwd``, CUDA kernels behind
the same schema), so a Python change that adds host work on the GPU fails here first.
"""
from __future__ import annotations

import pytest
import torch

import snn_fast
from snn_fast import nn as snn

from conftest import OpLog as _OpLog

pytestmark = pytest.mark.skipif(not snn_fast.HAS_C, reason="needs the C++ extension")

# Ops that make no new storage and launch nothing: the reshapes between [T, *] and [T, N].
VIEWS = {"view", "_unsafe_view", "alias", "detach", "expand", "as_strided", "_reshape_alias", "reshape",
         "unsqueeze", "squeeze", "select"}
SYNCS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}


class OpLog(_OpLog):
    def work(self):
        """Everything but views."""
        return [o for o in self.ops if o.split(".")[-1] not in VIEWS]


def _fwd_bwd(run, x, grad):
    """Record one forward and its backward (``grad`` made beforehand: the caller's loss is not ours;
    ``x.grad`` cleared: accumulating into it is autograd's work, not ours)."""
    x.grad = None
    with OpLog() as log:
        s = run(x)
        s.backward(grad)
    return log


def _x(shape=(4, 2, 64)):
    return torch.randn(shape).requires_grad_(True)


def test_oplog_sees_allocations_and_syncs():
    """The instrument itself: an allocation, a copy and a sync below the autograd key are recorded."""
    with OpLog() as log:
        t = torch.zeros(3)
        t.clone().sum().item()
    assert "aten.zeros" in log.work() and "aten.clone" in log.work()
    assert any(o.split(".")[-1] in SYNCS for o in log.ops)


@pytest.mark.parametrize("save", ["state", "recompute"])
def test_functional_two_ops_only(save):
    x = _x()
    g = torch.randn_like(x)
    run = lambda x: snn_fast.lif_multistep(x, backend="cpu", save=save)[0]  # noqa: E731
    run(x.detach())  # first call: constant caches filled
    log = _fwd_bwd(run, x, g)
    assert log.work() == ["snn_fast.lif_fwd", "snn_fast.lif_bwd"], log.ops


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_module_two_ops_only(step_mode):
    m = snn.LIF(tau=2.0, backend="cpu", step_mode=step_mode)
    x = _x((2, 64)) if step_mode == "s" else _x()
    g = torch.randn_like(x)
    m(x.detach())
    for _ in range(2):  # fresh state, then the membrane carried from the call before (detached)
        m.detach()
        log = _fwd_bwd(m, x, g)
        assert log.work() == ["snn_fast.lif_fwd", "snn_fast.lif_bwd"], log.ops
    m.reset()
    log = _fwd_bwd(m, x, g)
    assert log.work() == ["snn_fast.lif_fwd", "snn_fast.lif_bwd"], log.ops


@pytest.mark.parametrize("kind", ["threshold", "tau", "plif"])
def test_learnable_parameters_bounded(kind):
    """A learnable parameter adds the [3] params assembly and its gradient's slice: a few tiny ops,
    the same number whatever T and N, and no sync (a value check per step would need one)."""
    counts = set()
    for shape in ((4, 2, 64), (9, 3, 5)):
        if kind == "plif":
            m = snn.PLIF(backend="cpu")
        else:
            m = snn.LIF(backend="cpu", learn_tau=kind == "tau", learnable_threshold=kind == "threshold")
        x = _x(shape)
        m(x.detach())  # first call: constant caches filled
        m.reset()
        log = _fwd_bwd(m, x, torch.randn_like(x))
        work = log.work()
        assert work.count("snn_fast.lif_fwd") == 1 and work.count("snn_fast.lif_bwd") == 1, log.ops
        assert not any(o.split(".")[-1] in SYNCS for o in log.ops), log.ops
        counts.add(len(work))
    assert len(counts) == 1, counts
    assert counts.pop() <= 10


def test_inference_one_op():
    m = snn.LIF(backend="cpu")
    x = torch.randn(4, 2, 64)
    m(x)
    m.reset()
    with torch.no_grad(), OpLog() as log:
        m(x)
    assert log.work() == ["snn_fast.lif_fwd"], log.ops


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn_tau"])
def test_bn_lif_module_cpp_autograd_bounded_ops(learn):
    """The fused batch norm + LIF (snn_fast.nn.BNLIF) on the C++ op: its backward node is the C++ one
    (csrc/autograd/bn_lif_autograd.cpp; a Python autograd Function cost ~55 µs forward and ~80 µs
    backward per layer), the forward and backward ops run once each, the rest is a bounded number of
    small ops (the batch counter, both running buffers in one lerp; the learnable τ's params), the same
    for any T and N, and nothing syncs."""
    counts = set()
    for shape in ((4, 2, 8, 3, 3), (6, 3, 8, 5, 2)):
        m = snn.BNLIF(8, tau=2.0, backend="cpu", learn_tau=learn)
        x = _x(shape)
        m(x.detach())  # first call: constant caches filled
        m.reset()
        m.zero_grad(set_to_none=True)
        x.grad = None
        with OpLog() as log:
            s = m(x)
            node = s.grad_fn  # the op's node, under the views to [T, B, C, *]
            while node is not None and "View" in node.name():
                node = node.next_functions[0][0]
            assert node is not None and "BNLIFFunction" in node.name(), s.grad_fn
            s.backward(torch.ones_like(s))
        work = [o for o in log.work() if o != "aten.ones_like"]  # the test's gradient, not ours
        # num_batches_tracked += 1 (nn.BatchNorm's), the statistics, both running buffers in one lerp
        head = ["aten.add_", "snn_fast.bn_lif_stats", "aten._foreach_lerp_", "snn_fast.bn_lif_fwd",
                "snn_fast.bn_lif_bwd"]
        if not learn:
            assert work == head, log.ops
        assert work.count("snn_fast.bn_lif_fwd") == 1 and work.count("snn_fast.bn_lif_bwd") == 1, log.ops
        assert work.count("snn_fast.bn_lif_stats") == 1 and work.count("aten._foreach_lerp_") == 1, log.ops
        assert not any(o.split(".")[-1] in SYNCS for o in log.ops), log.ops
        counts.add(len(work))
    assert len(counts) == 1, counts
    # learn_tau: 1/τ and the [3] params (3 ops), ∂τ from ∂k (4)
    assert counts.pop() <= (12 if learn else 5)


def _triton_bn_lif():
    from snn_fast.ops.bn_lif.function import BACKENDS as BN

    why = BN.unavailable("triton", torch.ones(2, 1, 1))
    if why:
        pytest.skip(f"triton: {why}")
    BN.load("triton")
    from snn_fast.ops.bn_lif import triton as bt
    return bt


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_lif_functional_ops(training, backend):
    """snn_fast.bn_lif's host work per fwd+bwd, op by op, on the path the CUDA backend shares (only the
    ops' kernels differ) and on Triton's: in training, the statistics in one op (mean, rstd and the
    unbiased variance; Triton's own op, where torch's var_mean, rsqrt and the unbiased factor ran),
    both running buffers in one lerp, the forward and the backward op; in eval, rstd from the running
    variance (two ops) and the mean's copy. The first GPU run found ~1 ms of host work per step when
    these were ~10 separate torch calls in Python plus ~25 in the CUDA binding. Interpreted, each
    Triton op is one opaque op here; on a GPU its own host work is the test above."""
    if backend == "triton":
        _triton_bn_lif()
    elif not snn_fast._ext.has_kernel("bn_lif_stats", "CPU"):
        pytest.skip("this build of _C has no bn_lif_stats")
    C = 8
    x = _x((4, 2, C, 3, 3))
    w, b = torch.rand(C, requires_grad=True), torch.rand(C, requires_grad=True)
    rm, rv = torch.zeros(C), torch.ones(C)
    g = torch.randn_like(x)

    def run(x):
        return snn_fast.bn_lif(x, w, b, rm, rv, training, 0.1, 1e-5, backend=backend)[0]

    run(x.detach())  # first call: constant caches filled
    w.grad = b.grad = None
    log = _fwd_bwd(run, x, g)
    sfx = "_triton" if backend == "triton" else ""
    if training:
        want = [f"snn_fast.bn_lif_stats{sfx}", "aten._foreach_lerp_"]
    else:
        want = ["aten._to_copy", "aten.add", "aten.rsqrt"]
    want += [f"snn_fast.bn_lif_fwd{sfx}", f"snn_fast.bn_lif_bwd{sfx}"]
    # the gradients of w and b are accumulated into fresh .grad (autograd's, not ours: no copy)
    assert log.work() == want, log.ops



@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_lif_triton_ops_are_allocations_and_launches(monkeypatch, training):
    """The Triton backend's three ops (statistics, forward, backward) on the host: allocations and
    kernel launches, no torch arithmetic (the first GPU run measured this backend at 1.8–2.0 ms per
    step when batch norm's per-channel algebra ran as ~20 torch ops around its kernels), and the
    launches each op needs: 2 for the statistics, 1 forward, and the backward's walk, channel pass,
    ∂params (with parameter gradients) and dx (with batch statistics)."""
    bt = _triton_bn_lif()
    launches = []
    monkeypatch.setattr(bt, "launch", lambda kernel, grid, args, consts: launches.append(kernel.fn.__name__))
    T, B, C, S = 3, 2, 4, 5
    x = torch.randn(T, B * C * S)
    v0, params = torch.zeros(B * C * S), torch.tensor([0.5, 1.0, 4.0])
    w, b = torch.rand(C), torch.randn(C)
    flags = (0, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    for need, tdbn in ((True, 0.7), (False, 0.0)):

        def step():
            mean, rstd, _ = bt.bn_lif_stats_triton(x, C, S, 1e-5)
            s, _, _, saved = bt.bn_lif_fwd_triton(x, v0, params, w, b, mean, rstd, tdbn, S, training, None, *flags,
                                                  False, 0)
            bt.bn_lif_bwd_triton(x, None, None, x, v0, params, w, b, mean, rstd, tdbn, S, training, None, saved, s,
                                 *flags, 0, need)

        step()  # first call: the float64 constant buffers (eps; v_r, κ, α) made and cached
        launches.clear()
        with OpLog() as log:
            step()
        assert set(log.work()) <= {"aten.empty", "aten.empty_like", "aten.new_empty"}, log.ops
        assert not any(o.split(".")[-1] in SYNCS for o in log.ops), log.ops
        want = ["bn_lif_stats_part_kernel", "bn_lif_stats_finish_kernel", "bn_lif_fwd_kernel", "bn_lif_bwd_kernel",
                "bn_lif_channels_kernel"] + (["bn_lif_params_kernel"] if need else []) + (
                ["bn_lif_dx_kernel"] if training else [])
        assert launches == want
