"""snn_fast.convert against the peers themselves: snnTorch 1.0 Leaky and Norse 1.1 LIFBoxCell.

Each case runs the peer's module and its conversion on the same float64 inputs, step by step from
the caller's loop (the peer's calling convention) and, for the converted module, also through its
one-kernel ``multistep``: spikes equal, membranes, input gradients and parameter gradients within
1e-9 relative. Inputs include values that land exactly on the threshold (the strict Θ(0) = 0 of
both peers): the first step from a zero membrane with x = θ, and a dyadic series (β = 0.5, x in
quarters) on which every membrane is exact and many sit on θ.

snnTorch's spike functions return ``(x > 0).float()``: float32 whatever the membrane's dtype, so
the gradient reaching each spike is rounded to float32 (~1e-7 relative) in snnTorch's own float64
backward. ``snntorch_f64`` (conftest.py) swaps ``.float()`` for the input's dtype in those forwards (their
backwards are untouched) so that the comparison can be made at float64 precision;
``test_snntorch_unpatched_float32`` checks the unpatched library in float32.
"""
from __future__ import annotations


import pytest
import torch
from torch import nn

import snn_fast
from snn_fast.convert import NorseLIFBoxCell, SnnTorchLeaky

from conftest import assert_close_to_peer

snn = pytest.importorskip("snntorch")
sgm = pytest.importorskip("snntorch.surrogate")



SURROGATES = {
    "none": lambda: None,
    "atan": lambda: sgm.atan(alpha=3.0),
    "fast_sigmoid": lambda: sgm.fast_sigmoid(slope=5.0),
    "sigmoid": lambda: sgm.sigmoid(slope=4.0),
    "triangular": lambda: sgm.triangular(threshold=0.5),
    "ste": lambda: sgm.straight_through_estimator(),
}
RESETS = [("subtract", True), ("subtract", False), ("zero", True), ("zero", False), ("none", True)]


def _inputs(kind, T=12, N=48, seed=0):
    """(x [T, N], mem0 [N], β, θ) in float64; θ-landing values included (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(T, N, generator=g, dtype=torch.float64) * 1.3 + 0.3
        mem0 = torch.randn(N, generator=g, dtype=torch.float64)
        beta, theta = 0.9, 1.25
    else:  # dyadic: every membrane exact, many on θ
        x = torch.randint(-2, 6, (T, N), generator=g).double() / 4
        mem0 = torch.randint(-2, 6, (N,), generator=g).double() / 4
        beta, theta = 0.5, 1.0
    mem0[:8] = 0.0
    x[0, :8] = theta  # lands exactly on θ at the first step: no spike on either side
    return x, mem0, beta, theta


def _leaky(mech, delay, sgname, learn, init_hidden=False, beta=0.9, theta=1.25, output=False):
    return snn.Leaky(beta=beta, threshold=theta, spike_grad=SURROGATES[sgname](), learn_beta=learn,
                     learn_threshold=learn, reset_mechanism=mech, reset_delay=delay, init_hidden=init_hidden,
                     output=output).double()


def _run_leaky(lif, x, mem0, init_hidden):
    """The peer's loop: (spikes [T, N], last mem, x.grad, mem0.grad, β.grad, θ.grad) under a fixed loss."""
    x = x.clone().requires_grad_(True)
    m0 = mem0.clone().requires_grad_(True)
    spks = []
    if init_hidden:
        lif.mem = m0.clone()  # the carried state (what a caller's first forward would find)
        for t in range(x.shape[0]):
            spks.append(lif(x[t]))
        mem = lif.mem
    else:
        mem = m0
        for t in range(x.shape[0]):
            spk, mem = lif(x[t], mem)
            spks.append(spk)
    S = torch.stack(spks).double()
    g = torch.Generator().manual_seed(7)
    loss = (S * torch.randn(S.shape, generator=g, dtype=torch.float64)).sum() \
        + (mem * torch.randn(mem.shape, generator=g, dtype=torch.float64)).sum()
    params = [p for p in (lif.beta, lif.threshold) if p.requires_grad]
    wrt = [x] + ([] if init_hidden else [m0]) + params
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return S.detach(), mem.detach(), grads


@pytest.mark.parametrize("kind", ["random", "dyadic"])
@pytest.mark.parametrize("sgname", list(SURROGATES))
@pytest.mark.parametrize("mech,delay", RESETS)
def test_snntorch_leaky_step_by_step(snntorch_f64, mech, delay, sgname, kind):
    x, mem0, beta, theta = _inputs(kind)
    if sgname == "sigmoid" and kind == "random":
        x = x * 0.5  # snnTorch's sigmoid backward overflows (NaN) for slope·(mem − θ) < −709
    for learn in (True, False):
        peer = _leaky(mech, delay, sgname, learn, beta=beta, theta=theta)
        ours = snn_fast.convert(peer)
        assert isinstance(ours, SnnTorchLeaky)
        want = _run_leaky(peer, x, mem0, False)
        got = _run_leaky(ours, x, mem0, False)
        assert torch.equal(got[0], want[0]), f"spikes differ at {(got[0] != want[0]).nonzero()[:5].tolist()}"
        assert_close_to_peer(got[1], want[1], "mem")
        for i, (a, b) in enumerate(zip(got[2], want[2])):
            assert_close_to_peer(a, b, ["x", "mem0", "beta", "threshold"][i] + ".grad")


@pytest.mark.parametrize("mech,delay", RESETS)
def test_snntorch_leaky_init_hidden(snntorch_f64, mech, delay):
    x, mem0, beta, theta = _inputs("dyadic")
    peer = _leaky(mech, delay, "atan", True, init_hidden=True, beta=beta, theta=theta)
    ours = snn_fast.convert(peer)
    want = _run_leaky(peer, x, mem0, True)
    got = _run_leaky(ours, x, mem0, True)
    assert torch.equal(got[0], want[0])
    assert_close_to_peer(got[1], want[1], "mem")
    for a, b in zip(got[2], want[2]):
        assert_close_to_peer(a, b, "grad")
    with pytest.raises(TypeError, match="init_hidden"):
        ours(x[0], mem0)


@pytest.mark.parametrize("mech,delay", RESETS)
def test_snntorch_multistep_is_the_loop(snntorch_f64, mech, delay):
    """``multistep`` ([T, ...] in one op) returns what T calls of forward return."""
    x, mem0, beta, theta = _inputs("random")
    peer = _leaky(mech, delay, "fast_sigmoid", True, beta=beta, theta=theta)
    ours = snn_fast.convert(peer)
    want = _run_leaky(peer, x, mem0, False)
    xx, m0 = x.clone().requires_grad_(True), mem0.clone().requires_grad_(True)
    S, mem = ours.multistep(xx, m0)
    g = torch.Generator().manual_seed(7)
    loss = (S * torch.randn(S.shape, generator=g, dtype=torch.float64)).sum() \
        + (mem * torch.randn(mem.shape, generator=g, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, [xx, m0, ours.beta, ours.threshold])
    assert torch.equal(S.detach(), want[0])
    assert_close_to_peer(mem, want[1], "mem")
    for a, b in zip(grads, want[2]):
        assert_close_to_peer(a, b, "grad")


def test_snntorch_unpatched_float32():
    """The library as installed (float32 spikes) in float32: the same spikes and membranes."""
    x, mem0, beta, theta = _inputs("dyadic")
    x, mem0 = x.float(), mem0.float()
    peer = snn.Leaky(beta=beta, threshold=theta)
    ours = snn_fast.convert(peer)
    for lif in (peer, ours):
        mem, spks = mem0, []
        for t in range(x.shape[0]):
            spk, mem = lif(x[t], mem)
            spks.append(spk)
        lif.result = (torch.stack(spks), mem)
    assert torch.equal(ours.result[0], peer.result[0])
    assert torch.equal(ours.result[1], peer.result[1])


def test_snntorch_refusals():
    with pytest.raises(ValueError, match="graded_spikes_factor"):
        snn_fast.convert(snn.Leaky(beta=0.5, graded_spikes_factor=2.0))
    with pytest.raises(ValueError, match="per-neuron beta"):
        snn_fast.convert(snn.Leaky(beta=torch.full((4,), 0.5)))
    with pytest.raises(ValueError, match="inhibition"):
        snn_fast.convert(snn.Leaky(beta=0.5, inhibition=True))
    with pytest.raises(ValueError, match="Synaptic"):
        snn_fast.convert(snn.Synaptic(alpha=0.5, beta=0.5))
    with pytest.raises(ValueError, match="spike_grad"):
        snn_fast.convert(snn.Leaky(beta=0.5, spike_grad=lambda x: (x > 0).float()))
    with pytest.raises(ValueError, match="reference backend"):
        snn_fast.convert(snn.Leaky(beta=0.5, reset_delay=False), backend="cpu")


# --- the peers' own example networks ---------------------------------------------------------------


class TutorialMLP(nn.Module):
    """snnTorch tutorial 5's network (sizes reduced): Linear-Leaky-Linear-Leaky, the caller's loop."""

    def __init__(self, steps=10):
        super().__init__()
        self.steps = steps
        self.fc1 = nn.Linear(64, 40)
        self.lif1 = snn.Leaky(beta=0.95)
        self.fc2 = nn.Linear(40, 10)
        self.lif2 = snn.Leaky(beta=0.95)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for _ in range(self.steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec), torch.stack(mem2_rec)


def _grads_equal(peer, ours, run):
    """run(net) -> loss; parameter gradients of the two nets (same initial weights) within conftest.PEER_RTOL."""
    for net in (peer, ours):
        net.zero_grad()
        run(net).backward()
    pp, po = dict(peer.named_parameters()), dict(ours.named_parameters())
    assert pp.keys() == po.keys()
    for name in pp:
        assert_close_to_peer(po[name].grad, pp[name].grad, f"{name}.grad")


def test_snntorch_tutorial_mlp(snntorch_f64):
    torch.manual_seed(0)
    peer = TutorialMLP().double()
    ours = snn_fast.convert(peer)
    x = torch.rand(8, 64, dtype=torch.float64) * 2
    s_p, m_p = peer(x)
    s_o, m_o = ours(x)
    assert torch.equal(s_o, s_p) and s_p.sum() > 0
    assert_close_to_peer(m_o, m_p, "mem2")
    _grads_equal(peer, ours, lambda net: (net(x)[1] ** 2).mean() + net(x)[0].sum())


def _conv_net():
    spike_grad = sgm.fast_sigmoid(slope=25)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True),
        nn.Conv2d(4, 8, 5), nn.MaxPool2d(2), snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
        snn.Leaky(beta=0.5, spike_grad=spike_grad, init_hidden=True, output=True),
    ).double()


def _conv_forward(net, data, steps=5):
    """snnTorch tutorial 6's forward_pass, unchanged: utils.reset, then the caller's loop."""
    from snntorch import utils

    spk_rec, mem_rec = [], []
    utils.reset(net)
    for _ in range(steps):
        spk_out, mem_out = net(data)
        spk_rec.append(spk_out)
        mem_rec.append(mem_out)
    return torch.stack(spk_rec), torch.stack(mem_rec)


def test_snntorch_tutorial_conv_net(snntorch_f64):
    torch.manual_seed(0)
    peer = _conv_net()
    ours = snn_fast.convert(peer)
    data = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 3
    for _ in range(2):  # twice: utils.reset must clear the converted neurons' state as the originals'
        s_p, m_p = _conv_forward(peer, data)
        s_o, m_o = _conv_forward(ours, data)
        assert torch.equal(s_o, s_p)
        assert_close_to_peer(m_o, m_p, "mem")
    _grads_equal(peer, ours, lambda net: (_conv_forward(net, data)[1] ** 2).mean())


# --- Norse -------------------------------------------------------------------------------------------


def _norse():
    return pytest.importorskip("norse.torch")


def _norse_run(cell, x, v0, multistep=False):
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState

    x = x.clone().requires_grad_(True)
    v = v0.clone().requires_grad_(True)
    state = LIFBoxFeedForwardState(v=v)
    if multistep:
        Z, state = cell.multistep(x, state)
    else:
        zs = []
        for t in range(x.shape[0]):
            z, state = cell(x[t], state)
            zs.append(z)
        Z = torch.stack(zs)
    g = torch.Generator().manual_seed(3)
    loss = (Z * torch.randn(Z.shape, generator=g, dtype=torch.float64)).sum() \
        + (state.v * torch.randn(state.v.shape, generator=g, dtype=torch.float64)).sum()
    params = [p for p in (cell.p.tau_mem_inv, cell.p.v_th) if isinstance(p, torch.Tensor) and p.requires_grad]
    return Z.detach(), state.v.detach(), torch.autograd.grad(loss, [x, v] + params)


@pytest.mark.parametrize("reset", ["value", "subtract"])
@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_norse_lif_box_cell(reset, kind):
    norse = _norse()
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.functional.reset import reset_subtract, reset_value

    x, v0, _, theta = _inputs(kind)
    tau_inv = nn.Parameter(torch.tensor(50.0, dtype=torch.float64))  # dt·τ⁻¹ = 0.05: learned
    v_th = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    p = LIFBoxParameters(tau_mem_inv=tau_inv, v_th=v_th, reset_method=reset_value if reset == "value"
                         else reset_subtract)
    peer = norse.LIFBoxCell(p, dt=0.001)
    ours = snn_fast.convert(peer)
    assert isinstance(ours, NorseLIFBoxCell)
    x = x * 20  # dt·τ⁻¹·x reaches θ; x[0, :8] = 20·θ lands the first step on 0.05·20·θ = θ exactly
    want = _norse_run(peer, x, v0)
    for multistep in (False, True):
        got = _norse_run(ours, x, v0, multistep)
        assert torch.equal(got[0], want[0])
        assert_close_to_peer(got[1], want[1], "v")
        for i, (a, b) in enumerate(zip(got[2], want[2])):
            assert_close_to_peer(a, b, ["x", "v0", "tau_mem_inv", "v_th"][i] + ".grad")


def test_norse_sequential_state_mlp():
    norse = _norse()
    torch.manual_seed(0)
    peer = norse.SequentialState(nn.Linear(20, 30), norse.LIFBoxCell(), nn.Linear(30, 5), norse.LIFBoxCell()).double()
    with torch.no_grad():
        peer[2].weight.mul_(10.0)  # so that the output layer fires too
    ours = snn_fast.convert(peer)
    x = torch.randn(24, 4, 20, dtype=torch.float64) * 30

    def run(net):
        state, outs = None, []
        for t in range(x.shape[0]):
            out, state = net(x[t], state)
            outs.append(out)
        return torch.stack(outs), state

    (z_p, st_p), (z_o, st_o) = run(peer), run(ours)
    assert torch.equal(z_o, z_p) and z_p.sum() > 0
    for a, b in zip(st_o, st_p):
        if b is not None:
            assert_close_to_peer(a.v, b.v, "state.v")
    _grads_equal(peer, ours, lambda net: run(net)[0].sum() + (run(net)[1][1].v ** 2).sum())


def test_norse_refusals():
    norse = _norse()
    from norse.torch.functional.lif_box import LIFBoxParameters

    with pytest.raises(ValueError, match="v_leak"):
        snn_fast.convert(norse.LIFBoxCell(LIFBoxParameters(v_leak=torch.tensor(0.5))))
    with pytest.raises(ValueError, match="method"):
        snn_fast.convert(norse.LIFBoxCell(LIFBoxParameters(method="tanh")))
    with pytest.raises(ValueError, match="LIFCell"):
        snn_fast.convert(norse.LIFCell())
