"""snn_fast.convert against Sinabs 3.1 itself: LIF, IAF, LIFSqueeze and IAFSqueeze.

Each case runs the Sinabs layer and its conversion on the same float64 inputs over two consecutive
calls (Sinabs's layers are stateful: the membrane of the first call carries into the second):
spikes equal, the membrane ``v_mem`` after each call, input gradients and the gradient of
``tau_mem`` (or ``alpha_mem``) within 1e-9 relative. Inputs include values that land exactly on the
threshold (Sinabs fires on v ≥ θ): x = θ into a zero membrane for IAF, and a dyadic series
(α = 0.5, x in quarters) on which every membrane is exact and many sit on θ.

Sinabs's ``SingleSpike`` returns ``(v − θ >= 0).float()``: float32 whatever the membrane's dtype,
so the gradient reaching each spike is rounded to float32 in Sinabs's own float64 backward
(and ``Heaviside``'s gradient, ``[v ≥ θ − window].float() / θ``, is float32 too). ``sinabs_f64`` (conftest.py)
swaps ``.float()`` for the membrane's dtype in those two (nothing else changes) so that the
comparison can be made at float64 precision; ``test_unpatched_float32`` checks the unpatched
library in float32.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import snn_fast
from snn_fast.convert import SinabsLIF

from conftest import assert_close_to_peer

sinabs = pytest.importorskip("sinabs")
sl = pytest.importorskip("sinabs.layers")
A = pytest.importorskip("sinabs.activation")



SURROGATES = {
    "single_exponential": lambda: A.SingleExponential(grad_width=0.4, grad_scale=1.5),
    "heaviside": lambda: A.Heaviside(window=0.75),
    "gaussian": lambda: A.Gaussian(mu=0.1, sigma=0.6, grad_scale=0.8),
    "multi_gaussian": lambda: A.MultiGaussian(),
    "periodic_exponential": lambda: A.PeriodicExponential(grad_width=0.5, grad_scale=1.2),
}
RESETS = {
    "subtract": lambda th: A.MembraneSubtract(),
    "subtract_theta": lambda th: A.MembraneSubtract(subtract_value=th),
    "reset_zero": lambda th: A.MembraneReset(reset_value=0.0),
}
KINDS = ["LIF", "IAF", "LIFSqueeze", "IAFSqueeze"]
B, T, N = 3, 10, 16


def _make(kind, reset, sgname, theta, norm_input=True, train_alphas=False, tau=None):
    kw = dict(spike_threshold=torch.tensor(theta), spike_fn=A.SingleSpike, reset_fn=RESETS[reset](theta),
              surrogate_grad_fn=SURROGATES[sgname]())
    if kind.startswith("LIF"):
        if tau is None:
            tau = 1.0 / 0.6931471805599453 if train_alphas else 6.0
        kw.update(tau_mem=tau, norm_input=norm_input, train_alphas=train_alphas)
    else:
        train_alphas = False
    if kind.endswith("Squeeze"):
        kw.update(batch_size=B)
    layer = getattr(sl, kind)(**kw).double()
    if train_alphas:
        with torch.no_grad():
            layer.alpha_mem.fill_(0.5)  # exactly ½: every membrane of the dyadic series is exact
    return layer


def _inputs(kind_in, theta, seed=0):
    """Two calls' inputs [B, T, N] in float64; θ-landing values included (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    if kind_in == "random":
        xs = [torch.randn(B, T, N, generator=g, dtype=torch.float64) * 0.9 + 0.35 for _ in range(2)]
    else:
        xs = [torch.randint(-2, 7, (B, T, N), generator=g).double() / 4 for _ in range(2)]
    xs[0][:, 0, :4] = theta  # into a zero membrane: IAF lands exactly on θ and fires (v ≥ θ)
    return xs


def _run(layer, xs, squeeze):
    """Two calls: (spikes, v_mem after each call, grads of x1, x2 and the decay parameter)."""
    xs = [x.clone().requires_grad_(True) for x in xs]
    g = torch.Generator().manual_seed(7)
    outs, mems, loss = [], [], 0
    for x in xs:
        inp = x.flatten(0, 1) if squeeze else x
        s = layer(inp)
        if squeeze:
            s = s.unflatten(0, (B, T))
        outs.append(s.double())
        mems.append(layer.v_mem)
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=torch.float64)).sum()
    loss = loss + (layer.v_mem * torch.randn(layer.v_mem.shape, generator=g, dtype=torch.float64)).sum()
    params = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, xs + params)
    return [o.detach() for o in outs], [m.detach() for m in mems], grads


def _compare(peer, ours, xs, squeeze):
    want, got = _run(peer, xs, squeeze), _run(ours, xs, squeeze)
    for i in range(2):
        where = (got[0][i] != want[0][i]).nonzero()[:5].tolist()
        assert torch.equal(got[0][i], want[0][i]), f"call {i}: spikes differ at {where}"
        assert_close_to_peer(got[1][i], want[1][i], f"call {i}: v_mem")
    assert len(got[2]) == len(want[2])
    for i, (a, b) in enumerate(zip(got[2], want[2])):
        assert_close_to_peer(a, b, ["x1", "x2", "decay"][i] + ".grad")
    return want, got


@pytest.mark.parametrize("kind_in", ["random", "dyadic"])
@pytest.mark.parametrize("sgname", list(SURROGATES))
@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("kind", KINDS)
def test_sinabs_layers(sinabs_f64, kind, reset, sgname, kind_in):
    theta = 1.0 if kind_in == "dyadic" else 1.25
    xs = _inputs(kind_in, theta)
    configs = [dict(train_alphas=kind_in == "dyadic")] if kind.startswith("IAF") else \
        [dict(norm_input=ni, train_alphas=kind_in == "dyadic") for ni in (True, False)]
    for cfg in configs:
        peer = _make(kind, reset, sgname, theta, **cfg)
        ours = snn_fast.convert(peer)
        assert isinstance(ours, SinabsLIF) and isinstance(ours, sl.StatefulLayer)
        _compare(peer, ours, xs, kind.endswith("Squeeze"))


def test_inplace_shares_parameters_and_utilities(sinabs_f64):
    net = nn.Sequential(nn.Linear(N, N), _make("LIF", "subtract", "single_exponential", 1.0)).double()
    params = {id(p) for p in net.parameters()}
    snn_fast.convert(net, inplace=True)
    assert isinstance(net[1], SinabsLIF)
    assert {id(p) for p in net.parameters()} == params  # tau_mem and spike_threshold: the same objects
    assert set(net.state_dict()) == {"0.weight", "0.bias", "1.tau_mem", "1.spike_threshold", "1.v_mem"}
    net(torch.randn(B, T, N, dtype=torch.float64))
    assert net[1].v_mem.shape == (B, N) and net[1].v_mem.abs().sum() > 0
    sinabs.reset_states(net)
    assert net[1].v_mem.abs().sum() == 0
    sinabs.zero_grad(net)
    net2 = copy.deepcopy(net)
    assert isinstance(net2[1], SinabsLIF) and net2[1].tau_mem is not net[1].tau_mem
    assert "SinabsLIF" in repr(net)
    assert snn_fast.convert(net) is not net  # already converted: a copy, nothing to do


def test_batch_size_change_and_squeeze_utils(sinabs_f64):
    """A new trailing shape restarts the state from zero, as Sinabs does; squeeze layers answer
    sinabs.utils.get_batch_size / set_batch_size."""
    peer = _make("IAFSqueeze", "subtract", "heaviside", 1.0)
    ours = snn_fast.convert(peer)
    assert sinabs.utils.get_batch_size(nn.Sequential(ours)) == B
    xs = _inputs("random", 1.0)
    _compare(peer, ours, xs, True)
    x = torch.randn(B * T, 5, dtype=torch.float64)
    assert torch.equal(peer(x).double(), ours(x).double())
    torch.testing.assert_close(ours.v_mem, peer.v_mem, rtol=0, atol=0)


def test_sinabs_example_network(sinabs_f64):
    """Sinabs's docs network: Conv2d + IAFSqueeze + AvgPool2d + Flatten + Linear + IAFSqueeze over
    [B·T, C, H, W], and a [B, T, ...] Linear + LIF + Linear + IAF stack; outputs, weight gradients."""
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        sl.IAFSqueeze(batch_size=B, spike_fn=A.SingleSpike, spike_threshold=torch.tensor(0.5)),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10, bias=False),
        sl.IAFSqueeze(batch_size=B, spike_fn=A.SingleSpike, reset_fn=A.MembraneReset()),
    ).double()
    mlp = nn.Sequential(
        nn.Linear(N, 32), sl.LIF(tau_mem=8.0, spike_fn=A.SingleSpike, surrogate_grad_fn=A.PeriodicExponential(),
                                  norm_input=False),
        nn.Linear(32, 10), sl.IAF(spike_fn=A.SingleSpike, surrogate_grad_fn=A.Gaussian()),
    ).double()
    cases = [(conv, torch.rand(B * T, 2, 8, 8, dtype=torch.float64) * 2),
             (mlp, torch.randn(B, T, N, dtype=torch.float64) * 4)]
    for net, x in cases:
        ours = snn_fast.convert(net)
        assert sum(isinstance(m, SinabsLIF) for m in ours.modules()) == 2
        res = []
        for m in (net, ours):
            y = m(x)
            loss = (y * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).sum()
            res.append((y.detach().double(), torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])))
        assert res[0][0].sum() > 0 and torch.equal(res[0][0], res[1][0])
        for a, b in zip(res[1][1], res[0][1]):
            assert_close_to_peer(a, b, "weight grad")


def test_unpatched_float32():
    """The library as installed, in float32: the same spikes; membranes and gradients to float32 rounding."""
    peer = _make("LIF", "subtract", "single_exponential", 1.0).float()
    ours = snn_fast.convert(peer)
    x = torch.randn(B, T, N, generator=torch.Generator().manual_seed(3)) + 0.4
    outs = []
    for m in (peer, ours):
        xx = x.clone().requires_grad_(True)
        s = m(xx)
        (s * torch.linspace(-1, 1, N)).sum().backward()
        outs.append((s.detach(), m.v_mem.detach(), xx.grad, m.tau_mem.grad))
    assert outs[1][0].dtype == torch.float32 and torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[1][1:], outs[0][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


REFUSED = [
    (lambda: sl.LIF(tau_mem=5.0), "MultiSpike"),  # Sinabs's default spike_fn
    (lambda: sl.IAF(spike_fn=A.MaxSpike(1)), "MaxSpike"),
    (lambda: sl.LIF(tau_mem=5.0, tau_syn=3.0, spike_fn=A.SingleSpike), "tau_syn"),
    (lambda: sl.LIF(tau_mem=5.0, spike_fn=A.SingleSpike, record_states=True), "record_states"),
    (lambda: sl.IAF(spike_fn=A.SingleSpike, min_v_mem=-1.0), "min_v_mem"),
    (lambda: sl.IAF(spike_fn=A.SingleSpike, reset_fn=A.MembraneReset(0.5)), "reset_value"),
    (lambda: sl.IAF(spike_fn=A.SingleSpike, reset_fn=A.MembraneSubtract(0.5)), "subtract_value"),
    (lambda: sl.LIF(tau_mem=torch.full((N,), 5.0), spike_fn=A.SingleSpike), "per-neuron tau_mem"),
    (lambda: sl.IAF(spike_fn=A.SingleSpike, surrogate_grad_fn=lambda v, th: v * 0 + 1), "surrogate_grad_fn"),
    (lambda: sl.IAFRecurrent(nn.Linear(N, N), spike_fn=A.SingleSpike), "IAFRecurrent"),
    (lambda: sl.ExpLeak(tau_mem=5.0), "ExpLeak"),
]


@pytest.mark.parametrize("make,why", REFUSED, ids=[w for _, w in REFUSED])
def test_refused(make, why):
    layer = make()
    with pytest.raises(ValueError, match=why.split()[0]):
        snn_fast.convert(nn.Sequential(nn.Linear(N, N), layer), inplace=True)
    with pytest.warns(UserWarning, match="left 1 neuron"), pytest.raises(ValueError, match="no supported"):
        snn_fast.convert(nn.Sequential(layer), strict=False, inplace=True)


def test_learned_threshold_refused():
    layer = sl.IAF(spike_fn=A.SingleSpike)
    layer.spike_threshold.requires_grad_(True)
    with pytest.raises(ValueError, match="learned spike_threshold"):
        snn_fast.convert(layer, inplace=True)  # (Sinabs's deepcopy makes a fixed threshold again)
