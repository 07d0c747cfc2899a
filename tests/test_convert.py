"""snn_fast.convert: SpikingJelly models with snn_fast's neurons swapped in compute the same function.

Checked against SpikingJelly itself (2.0, installed ``--no-deps``; the tests that need it skip when
it is absent) in float64: outputs, input gradients and every weight gradient agree to ≤ 1e-9 of their
scale (the issue's target), on single neurons under every option and surrogate, on hand-written
SpikingJelly nets, and on models nobody here wrote: SpikingJelly's own zoo (spiking ResNet-18,
SEW-ResNet-18, Spikformer at small sizes). The zoo imports ``torchvision`` only for
``load_state_dict_from_url`` (pretrained weights); when torchvision is absent a stub module that
raises on use stands in while the zoo modules are imported, and is removed right after.
"""
from __future__ import annotations

import copy
import io
import sys
import types

import pytest
import torch

import snn_fast
import snn_fast.nn as snn

try:
    import spikingjelly.activation_based as _sj_pkg  # noqa: F401
    from spikingjelly.activation_based import functional as SF
    from spikingjelly.activation_based import layer as SL
    from spikingjelly.activation_based import neuron as SN
    from spikingjelly.activation_based import surrogate as SS

    HAS_SJ = True
except ImportError:  # the peer is optional (`pip install --no-deps spikingjelly==2.0.0 loguru`)
    HAS_SJ = False

needs_sj = pytest.mark.skipif(not HAS_SJ, reason="spikingjelly 2.0 is not installed")
TOL = 1e-9  # the target for converted vs original in float64


def _close(a: torch.Tensor, b: torch.Tensor, what: str = "") -> float:
    """max |a − b| ≤ TOL · max(1, max |b|); returns the relative error (for the report)."""
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    err = (a - b).abs().max().item() / scale if b.numel() else 0.0
    assert err <= TOL, f"{what}: |Δ| = {err:.3g} (relative to max(1, |ref|)) > {TOL}"
    return err


# ---------------------------------------------------------------------------------------------------
# Without the peer


@pytest.mark.parametrize("make", [lambda m: snn.LIF(3.0, step_mode=m, store_v_seq=True),
                                  lambda m: snn.PLIF(2.5, v_reset=None, step_mode=m, store_v_seq=True),
                                  lambda m: snn.IF(v_threshold=0.6, detach_reset=True, step_mode=m, store_v_seq=True)],
                         ids=["LIF", "PLIF", "IF"])
def test_single_step_mode_equals_multi_step(make):
    """step_mode='s' takes one step [B, ...] per call and carries the membrane: the same spikes,
    membrane sequence and gradients as one multi-step call over the whole sequence."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, dtype=torch.float64) * 2
    m_multi, m_single = make("m").double(), make("s").double()
    m_single.load_state_dict(m_multi.state_dict())
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya = m_multi(xa)
    yb = torch.stack([m_single(xb[t]) for t in range(x.shape[0])])
    _close(yb, ya, "spikes")
    _close(m_single.v_seq, m_multi.v_seq, "v_seq")
    _close(m_single.v, m_multi.v, "v")
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    _close(xb.grad, xa.grad, "grad x")
    for (n, p), (_, q) in zip(m_multi.named_parameters(), m_single.named_parameters()):
        _close(q.grad, p.grad, n)
    m_single.reset()
    assert m_single.v is None and m_single.v_seq is None


def test_step_mode_is_checked():
    with pytest.raises(ValueError, match="step_mode"):
        snn.LIF(step_mode="x")
    m = snn.LIF()
    with pytest.raises(ValueError, match="step_mode"):
        m.step_mode = "multi"


def test_model_without_neuron_is_refused():
    with pytest.raises(ValueError, match="no supported spiking neuron"):
        snn_fast.convert(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        snn_fast.convert(lambda x: x)
    with pytest.raises(ValueError, match="unknown backend"):
        snn_fast.convert(torch.nn.Linear(2, 2), backend="fastest")


def test_already_converted_model_passes_through():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), snn.LIF())
    out = snn_fast.convert(net)
    assert isinstance(out[1], snn.LIF) and out is not net


# ---------------------------------------------------------------------------------------------------
# SpikingJelly: surrogates


def _sj_surrogates():
    """(SpikingJelly surrogate, snn_fast name, α) for every mapping the converter makes."""
    return [
        (SS.Sigmoid(alpha=4.0), "sigmoid", 4.0), (SS.Sigmoid(alpha=2.5), "sigmoid", 2.5),
        (SS.ATan(alpha=2.0), "atan", 2.0), (SS.ATan(alpha=3.0), "atan", 3.0),
        (SS.PiecewiseQuadratic(alpha=1.0), "triangle", 1.0), (SS.PiecewiseQuadratic(alpha=2.0), "triangle", 2.0),
        (SS.PiecewiseExp(alpha=1.0), "piecewise_exp", 1.0), (SS.PiecewiseExp(alpha=3.0), "piecewise_exp", 3.0),
        (SS.SoftSign(alpha=2.0), "soft_sign", 2.0), (SS.SoftSign(alpha=5.0), "soft_sign", 5.0),
        (SS.Erf(alpha=2.0), "erf", 2.0), (SS.Erf(alpha=1.5), "erf", 1.5),
        (SS.QPseudoSpike(alpha=2.0), "q_pseudo_spike", 2.0), (SS.QPseudoSpike(alpha=3.5), "q_pseudo_spike", 3.5),
        (SS.Rect(alpha=1.0), "rectangle", 1.0), (SS.Rect(alpha=2.0), "rectangle", 2.0),
        (SS.PiecewiseLeakyReLU(w=1.0, c=0.0), "rectangle", 0.5), (SS.PiecewiseLeakyReLU(w=0.25, c=0.0), "rectangle", 2.0),
        (SS.SuperSpike(alpha=1.0), "super_spike", 1.0),
        (SS.DeterministicPass(), "straight_through", None),
        (SS.LeakyKReLU(leak=0.0, k=1.0), "spike_gate", None),
    ] if HAS_SJ else []


SURROGATES = _sj_surrogates()
SG_IDS = [f"{type(s).__name__}-{n}-{a}" for s, n, a in SURROGATES]


@needs_sj
@pytest.mark.parametrize("sf,name,alpha", SURROGATES, ids=SG_IDS)
def test_surrogate_mapping_matches_spikingjelly(sf, name, alpha):
    """The mapped surrogate is SpikingJelly's: the same spike (Θ(0) = 1) and the same gradient at
    every point of a grid that includes 0 and the kinks of the piecewise ones (±0.25, ±0.5, ±1)."""
    from snn_fast import surrogate as S
    from snn_fast.convert import _sj_surrogate

    assert _sj_surrogate(sf) == (name, alpha)
    x = torch.cat([torch.linspace(-3, 3, 601, dtype=torch.float64),
                   torch.tensor([0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=torch.float64)])
    xs = x.clone().requires_grad_(True)
    y = sf(xs)
    y.backward(torch.ones_like(y))
    assert torch.equal(y.detach(), (x >= 0).to(x.dtype))
    a = torch.tensor(alpha if alpha is not None else 1.0, dtype=torch.float64)
    _close(S.get(name).dg(x, a), xs.grad, f"{type(sf).__name__} g'")


@needs_sj
@pytest.mark.parametrize("sf,what", [
    (lambda: SS.S2NN(), "S2NN"),
    (lambda: SS.SuperSpike(alpha=2.0), "SuperSpike"),
    (lambda: SS.PiecewiseLeakyReLU(w=1.0, c=0.01), "PiecewiseLeakyReLU"),
    (lambda: SS.LeakyKReLU(leak=0.1, k=1.0), "LeakyKReLU"),
    (lambda: SS.Sigmoid(spiking=False), "spiking=False"),
    (lambda: SS.SquarewaveFourierSeries(), "SquarewaveFourierSeries"),
], ids=["S2NN", "SuperSpike2", "PLReLU-c", "LeakyKReLU", "analog", "Fourier"])
def test_unsupported_surrogate_is_named_or_left_with_warning(sf, what):
    net = torch.nn.Sequential(SL.Linear(3, 4, step_mode="m"), SN.LIFNode(surrogate_function=sf(), step_mode="m"),
                              SN.IFNode(step_mode="m"))
    with pytest.raises(ValueError, match=what):
        snn_fast.convert(net)
    assert isinstance(net[1], SN.LIFNode) and isinstance(net[2], SN.IFNode)  # refused: nothing changed
    with pytest.warns(UserWarning, match=what):
        out = snn_fast.convert(net, strict=False)
    assert isinstance(out[1], SN.LIFNode) and isinstance(out[2], snn.IF)
    x = torch.randn(3, 2, 3)
    out(x)
    snn.reset_net(out)  # resets the neuron left in place too
    assert isinstance(out[1].v, float) and out[2].v is None


@needs_sj
def test_unsupported_neuron_is_named():
    from spikingjelly.activation_based.neuron import KLIFNode, ILIFNode

    # SimpleLIFNode starts from v = 0 whatever v_reset is: refused unless v_reset is 0 or None
    for node in (KLIFNode(step_mode="m"), ILIFNode(step_mode="m"),
                 SN.SimpleLIFNode(tau=2.0, decay_input=True, v_reset=0.1, step_mode="m")):
        with pytest.raises(ValueError, match=type(node).__name__):
            snn_fast.convert(torch.nn.Sequential(torch.nn.Identity(), node))
        with pytest.warns(UserWarning), pytest.raises(ValueError, match="no supported spiking neuron"):
            snn_fast.convert(torch.nn.Sequential(torch.nn.Identity(), node), strict=False)


# ---------------------------------------------------------------------------------------------------
# SpikingJelly: single neurons under every option


def _neuron_cases():
    if not HAS_SJ:
        return []
    cases = []
    for tau, di in ((2.0, True), (3.0, False)):
        for v_reset in (0.0, None, -0.2):
            for dr in (False, True):
                cases.append((f"LIF-tau{tau}-di{di}-vr{v_reset}-dr{dr}",
                              lambda m, tau=tau, di=di, v_reset=v_reset, dr=dr: SN.LIFNode(
                                  tau=tau, decay_input=di, v_threshold=0.7, v_reset=v_reset, detach_reset=dr,
                                  surrogate_function=SS.ATan(), step_mode=m, store_v_seq=True)))
    for v_reset in (0.0, None):
        cases.append((f"PLIF-vr{v_reset}", lambda m, v_reset=v_reset: SN.ParametricLIFNode(
            init_tau=3.0, v_reset=v_reset, decay_input=False, surrogate_function=SS.Erf(), step_mode=m)))
        cases.append((f"PLIF-di-vr{v_reset}", lambda m, v_reset=v_reset: SN.ParametricLIFNode(
            init_tau=2.0, v_reset=v_reset, detach_reset=True, step_mode=m, store_v_seq=True)))
        cases.append((f"IF-vr{v_reset}", lambda m, v_reset=v_reset: SN.IFNode(
            v_threshold=0.5, v_reset=v_reset, surrogate_function=SS.PiecewiseQuadratic(), step_mode=m)))
    cases.append(("SimpleLIF", lambda m: SN.SimpleLIFNode(tau=2.5, decay_input=True, v_reset=0.0,
                                                          surrogate_function=SS.SoftSign(), step_mode=m)))
    cases.append(("SimpleIF", lambda m: SN.SimpleIFNode(v_reset=None, surrogate_function=SS.Rect(), step_mode=m)))
    for s, name, _ in SURROGATES:
        cases.append((f"LIF-{type(s).__name__}-{name}", lambda m, s=s: SN.LIFNode(
            surrogate_function=copy.deepcopy(s), v_reset=None, step_mode=m)))
    return cases


NEURONS = _neuron_cases()


def _drive(node, x, mode):
    """Run ``node`` over ``x`` [T, B, N] in its step mode; spikes [T, B, N]."""
    if mode == "m":
        return node(x)
    return torch.stack([node(x[t]) for t in range(x.shape[0])])


@needs_sj
@pytest.mark.parametrize("mode", ["m", "s"])
@pytest.mark.parametrize("name,make", NEURONS, ids=[c[0] for c in NEURONS])
def test_neuron_matches_spikingjelly(name, make, mode):
    torch.manual_seed(0)
    ref = make(mode).double()
    new = snn_fast.convert(ref)
    assert isinstance(new, snn.BaseLIF) and new.step_mode == mode
    x = torch.randn(6, 2, 16, dtype=torch.float64) * 1.5
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = _drive(ref, xa, mode), _drive(new, xb, mode)
    assert ya.sum() > 0  # some spikes, so the reset path is exercised
    _close(yb, ya, "spikes")
    _close(new.v, ref.v, "v")
    if getattr(ref, "store_v_seq", False):
        _close(new.v_seq, ref.v_seq, "v_seq")
    # a second chunk without reset continues from the carried membrane
    ya2, yb2 = _drive(ref, xa * 0.5, mode), _drive(new, xb * 0.5, mode)
    _close(yb2, ya2, "second chunk")
    g, g2 = torch.randn_like(ya), torch.randn_like(ya2)
    ((ya * g).sum() + (ya2 * g2).sum()).backward()
    ((yb * g).sum() + (yb2 * g2).sum()).backward()
    _close(xb.grad, xa.grad, "grad x")
    if hasattr(ref, "w"):  # PLIF's learned τ: the same value, the same gradient
        assert new.w.item() == ref.w.item() and new.w.dtype == ref.w.dtype
        _close(new.w.grad, ref.w.grad, "grad w")
    # reset: SpikingJelly's reset_net and ours both clear the converted neuron
    SF.reset_net(torch.nn.Sequential(new))
    assert new.v is None
    ref.reset()
    _close(_drive(new, x.detach(), mode), _drive(ref, x.detach(), mode), "after reset")


@needs_sj
def test_plif_learned_tau_and_inplace():
    """A trained PLIF's τ carries over; inplace=True keeps the optimizer's parameters valid."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(SL.Linear(4, 8, step_mode="m"), SN.ParametricLIFNode(init_tau=2.0, step_mode="m"))
    with torch.no_grad():
        net[1].w.fill_(0.7)  # "learned": τ = 1/sigmoid(0.7) ≈ 1.50
    ref = copy.deepcopy(net)
    w = net[1].w
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out = snn_fast.convert(net, inplace=True)
    assert out is net and isinstance(net[1], snn.PLIF) and net[1].w is w
    assert abs(1.0 / torch.sigmoid(net[1].w).item() - 1.4966) < 1e-4  # τ = 1/sigmoid(0.7)
    assert set(map(id, net.parameters())) == {id(p) for g in opt.param_groups for p in g["params"]}
    x = torch.randn(5, 3, 4) * 2
    for m in (net, ref):
        m(x).sum().backward()
    assert net[1].w.grad is not None and abs(net[1].w.grad.item() - ref[1].w.grad.item()) <= 1e-5 * max(1.0, abs(ref[1].w.grad.item()))
    before = w.item()
    opt.step()
    assert net[1].w.item() != before


@needs_sj
def test_not_inplace_leaves_original_and_carries_state():
    torch.manual_seed(2)
    net = torch.nn.Sequential(SL.Linear(4, 8, step_mode="m"), SN.LIFNode(step_mode="m")).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64) * 3
    net(x)  # mid-sequence: the membrane is carried into the converted copy
    SF.detach_net(net)
    out = snn_fast.convert(net)
    assert isinstance(net[1], SN.LIFNode) and isinstance(out[1], snn.LIF)
    _close(out[1].v, net[1].v, "carried v")
    _close(out(x), net(x), "continued")


# ---------------------------------------------------------------------------------------------------
# SpikingJelly: whole models


def _compare_models(net: torch.nn.Module, x: torch.Tensor, mode: str = "m") -> dict:
    """Convert (a copy of) ``net`` and check outputs, input gradient and every weight gradient in
    float64; returns the relative errors."""
    net = net.double()
    new = snn_fast.convert(net)
    left = [type(m).__name__ for m in new.modules() if type(m).__module__.startswith("spikingjelly.activation_based.neuron")]
    assert not left, f"neurons left in place: {left}"
    n_conv = sum(isinstance(m, snn.BaseLIF) for m in new.modules())
    assert n_conv > 0
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    run = (lambda m, v: m(v)) if mode == "m" else (lambda m, v: torch.stack([m(v[t]) for t in range(v.shape[0])]))
    ya, yb = run(net, xa), run(new, xb)
    errs = {"out": _close(yb, ya, "output")}
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    errs["grad_x"] = _close(xb.grad, xa.grad, "grad x")
    pa, pb = dict(net.named_parameters()), dict(new.named_parameters())
    assert pa.keys() == pb.keys()
    w = 0.0
    for k in pa:
        if pa[k].grad is None:
            assert pb[k].grad is None, k
            continue
        w = max(w, _close(pb[k].grad, pa[k].grad, f"grad {k}"))
    errs["grad_w"] = w
    # both reset_nets reset the converted model: the next sample gives the original's answer again
    SF.reset_net(new)
    SF.reset_net(net)
    with torch.no_grad():
        _close(run(new, x), run(net, x), "after SpikingJelly reset_net")
        snn.reset_net(new)
        SF.reset_net(net)
        _close(run(new, x), run(net, x), "after snn_fast reset_net")
    # the converted model checkpoints whole
    buf = io.BytesIO()
    torch.save(new, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    copied = copy.deepcopy(new)
    for m in (loaded, copied):
        snn.reset_net(m)
    snn.reset_net(new)
    with torch.no_grad():
        ref = run(new, x)
        _close(run(loaded, x), ref, "torch.save round trip")
        _close(run(copied, x), ref, "deepcopy")
    return errs


class _SJMLP(torch.nn.Module):
    """A hand-written SpikingJelly MLP: Flatten → Linear → LIF → Linear → PLIF → Linear → IF."""

    def __init__(self, mode: str):
        super().__init__()
        self.net = torch.nn.Sequential(
            SL.Flatten(step_mode=mode), SL.Linear(12, 32, step_mode=mode),
            SN.LIFNode(tau=2.0, surrogate_function=SS.ATan(), detach_reset=True, step_mode=mode),
            SL.Linear(32, 16, step_mode=mode),
            SN.ParametricLIFNode(init_tau=2.5, v_reset=None, surrogate_function=SS.Sigmoid(alpha=3.0), step_mode=mode),
            SL.Linear(16, 10, step_mode=mode), SN.IFNode(v_threshold=0.5, step_mode=mode, store_v_seq=True))

    def forward(self, x):
        return self.net(x)


def _sj_cnn(mode: str):
    """A hand-written SpikingJelly CNN (the tutorial's shape): conv-BN-LIF ×2, pooling, a LIF classifier."""
    return torch.nn.Sequential(
        SL.Conv2d(2, 8, 3, padding=1, bias=False, step_mode=mode), SL.BatchNorm2d(8, step_mode=mode),
        SN.LIFNode(tau=2.0, surrogate_function=SS.PiecewiseQuadratic(), step_mode=mode),
        SL.MaxPool2d(2, 2, step_mode=mode),
        SL.Conv2d(8, 8, 3, padding=1, bias=False, step_mode=mode), SL.BatchNorm2d(8, step_mode=mode),
        SN.ParametricLIFNode(init_tau=2.0, detach_reset=True, step_mode=mode),
        SL.MaxPool2d(2, 2, step_mode=mode), SL.Flatten(step_mode=mode),
        SL.Linear(8 * 2 * 2, 5, step_mode=mode), SN.LIFNode(tau=2.0, v_reset=None, step_mode=mode))


@needs_sj
@pytest.mark.parametrize("mode", ["m", "s"])
def test_handwritten_mlp(mode):
    torch.manual_seed(3)
    _compare_models(_SJMLP(mode), torch.randn(6, 4, 3, 4, dtype=torch.float64) * 2, mode)


@needs_sj
@pytest.mark.parametrize("mode", ["m", "s"])
def test_handwritten_cnn(mode):
    torch.manual_seed(4)
    _compare_models(_sj_cnn(mode), torch.randn(4, 3, 2, 8, 8, dtype=torch.float64) * 2, mode)


def _zoo():
    """SpikingJelly's model zoo modules, importing them with a torchvision stub when torchvision is
    absent (they use it only for load_state_dict_from_url, i.e. pretrained weights)."""
    stub = {}
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv, tvm, tvu = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models.utils"))

        def load_state_dict_from_url(*a, **k):
            raise RuntimeError("torchvision stub (tests/test_convert.py): no pretrained weights here")

        tvu.load_state_dict_from_url = load_state_dict_from_url
        tv.models, tvm.utils = tvm, tvu
        stub = {"torchvision": tv, "torchvision.models": tvm, "torchvision.models.utils": tvu}
        sys.modules.update(stub)
    try:
        from spikingjelly.activation_based.model import sew_resnet, spikformer, spiking_resnet
    finally:
        for k in stub:
            sys.modules.pop(k, None)
    return spiking_resnet, sew_resnet, spikformer


ZOO_ERRS = {}


@needs_sj
@pytest.mark.parametrize("which", ["spiking_resnet18", "sew_resnet18", "spikformer"])
def test_zoo_model(which):
    """SpikingJelly's own models, original vs converted, fp64, T = 2, batch 2 at small images."""
    spiking_resnet, sew_resnet, spikformer = _zoo()
    torch.manual_seed(5)
    if which == "spiking_resnet18":
        net = spiking_resnet.spiking_resnet18(spiking_neuron=SN.LIFNode, surrogate_function=SS.ATan(),
                                              detach_reset=True, num_classes=10)
        x = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    elif which == "sew_resnet18":
        net = sew_resnet.sew_resnet18(spiking_neuron=SN.IFNode, cnf="ADD", num_classes=10)
        x = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    else:  # default neuron: LIFNode (soft/hard per block as the model builds it)
        net = spikformer.Spikformer(in_channels=3, img_size_h=16, img_size_w=16, patch_size=4, num_classes=10,
                                    embed_dims=32, num_heads=2, depths=1)
        x = torch.randn(2, 2, 3, 16, 16, dtype=torch.float64)
    SF.set_step_mode(net, "m")
    ZOO_ERRS[which] = _compare_models(net, x * 2)
    print(which, ZOO_ERRS[which])


# ---------------------------------------------------------------------------------------------------
# snnTorch and Norse: converted (tests/test_convert_peers.py compares them with the libraries); what
# has no exact counterpart is refused with the reason


def test_snntorch_and_norse_convert_and_refuse_the_rest():
    snt = pytest.importorskip("snntorch")
    from snn_fast.convert import NorseLIFBoxCell, SnnTorchLeaky

    net = snn_fast.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), snt.Leaky(beta=0.5)))
    assert isinstance(net[1], SnnTorchLeaky) and isinstance(net[1], snt.Leaky)
    with pytest.raises(ValueError, match="only Leaky"):
        snn_fast.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), snt.Synaptic(alpha=0.5, beta=0.5)))
    with pytest.warns(UserWarning, match="Synaptic"):
        out = snn_fast.convert(torch.nn.Sequential(snt.Leaky(beta=0.5), snt.Synaptic(alpha=0.5, beta=0.5)),
                               strict=False)
    assert isinstance(out[0], SnnTorchLeaky) and type(out[1]).__name__ == "Synaptic"
    pytest.importorskip("norse")
    from norse.torch import LIFBoxCell, LIFCell

    assert isinstance(snn_fast.convert(LIFBoxCell()), NorseLIFBoxCell)
    with pytest.raises(ValueError, match="only LIFBoxCell"):
        snn_fast.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), LIFCell()))


@needs_sj
def test_copy_of_a_model_holding_a_graph_says_what_to_do():
    net = torch.nn.Sequential(SL.Linear(3, 4, step_mode="m"), SN.LIFNode(step_mode="m"))
    net(torch.randn(2, 1, 3))  # SpikingJelly's membrane now keeps its graph: deepcopy refuses it
    with pytest.raises(RuntimeError, match="reset or detach its neurons"):
        snn_fast.convert(net)
    out = snn_fast.convert(net, inplace=True)  # in place needs no copy, and carries the membrane
    assert isinstance(out[1], snn.LIF) and out[1].v is not None


@needs_sj
def test_spikingjelly_set_step_mode_and_detach_net_reach_converted_neurons():
    net = snn_fast.convert(torch.nn.Sequential(SL.Linear(3, 4, step_mode="m"), SN.LIFNode(step_mode="m")))
    SF.set_step_mode(net, "s")  # sets the attribute of every module that has one: ours validates it
    assert net[1].step_mode == "s" and net(torch.randn(2, 3)).shape == (2, 4)
    x = torch.randn(2, 3, requires_grad=True)
    net(x)
    SF.detach_net(net)
    assert net[1].v.grad_fn is None
    with pytest.raises(ValueError, match="step_mode"):
        SF.set_step_mode(net, "x")


# ---------------------------------------------------------------------------------------------------
# fuse=True: batch norm + neuron into one BNLIF / TDBNLIF (docs/spec.md §12)


def _compare_fused(net: torch.nn.Module, x: torch.Tensor, n_fused: int, mode: str = "m") -> None:
    """Convert a copy of ``net`` in place with fuse=True (its parameters and buffers stay the same
    objects, so they are matched by name in the copy) and check, in float64, outputs, the input
    gradient, every parameter gradient (BN's included) and the running statistics after a training
    step, then the outputs in eval mode."""
    net = net.double()
    twin = copy.deepcopy(net)
    params, buffers = dict(twin.named_parameters()), dict(twin.named_buffers())
    new = snn_fast.convert(twin, inplace=True, fuse=True)
    got = sum(isinstance(m, snn.BNLIF) for m in new.modules())
    assert got == n_fused, (got, n_fused)
    run = (lambda m, v: m(v)) if mode == "m" else (lambda m, v: torch.stack([m(v[t]) for t in range(v.shape[0])]))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = run(net, xa), run(new, xb)
    _close(yb, ya, "output")
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    _close(xb.grad, xa.grad, "grad x")
    for k, p in net.named_parameters():
        if p.grad is None:
            assert params[k].grad is None, k
        else:
            _close(params[k].grad, p.grad, f"grad {k}")
    for k, b in net.named_buffers():
        _close(buffers[k].double(), b.double(), f"buffer {k}")
    net.eval()
    new.eval()
    snn.reset_net(new)
    if HAS_SJ:
        SF.reset_net(net)
    snn.reset_net(net)
    with torch.no_grad():
        _close(run(new, x), run(net, x), "eval output")


def _sj_bn_cnn(mode: str):
    """Conv → BN → neuron three ways: SpikingJelly's step-mode BatchNorm2d, SeqToANNContainer(conv, BN),
    and a SeqToANNContainer holding only the BN (multi-step)."""
    kids = [SL.Conv2d(2, 6, 3, padding=1, bias=False, step_mode=mode), SL.BatchNorm2d(6, step_mode=mode),
            SN.LIFNode(tau=2.0, surrogate_function=SS.ATan(), detach_reset=True, step_mode=mode)]
    if mode == "m":
        kids += [SL.SeqToANNContainer(torch.nn.Conv2d(6, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)),
                 SN.ParametricLIFNode(init_tau=2.0, v_reset=None, step_mode=mode),
                 SL.SeqToANNContainer(torch.nn.BatchNorm2d(6)), SN.IFNode(step_mode=mode)]
    kids += [SL.MaxPool2d(2, 2, step_mode=mode), SL.Flatten(step_mode=mode), SL.Linear(6 * 4 * 4, 5, step_mode=mode),
             SN.LIFNode(tau=2.0, step_mode=mode)]
    return torch.nn.Sequential(*kids)


@needs_sj
@pytest.mark.parametrize("mode,n", [("m", 3), ("s", 1)])
def test_fuse_spikingjelly_bn_then_neuron(mode, n):
    torch.manual_seed(6)
    net = _sj_bn_cnn(mode)
    for m in net.modules():  # non-trivial affine
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.3, 0.2)
    _compare_fused(net, torch.randn(4, 3, 2, 8, 8, dtype=torch.float64) * 2, n, mode)


def test_fuse_stbp_tdbn_resnet19_example():
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    try:
        from models.resnet19 import ResNet19
    finally:
        sys.path.pop(0)
    torch.manual_seed(7)
    net = ResNet19(width=1 / 32, backend="auto")
    for m in net.modules():
        if isinstance(m, snn.TDBatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.2, 0.2)
    # conv1's pair and each BasicBlock's (bn1, lif1): 1 + 8
    _compare_fused(net, torch.randn(2, 2, 3, 8, 8, dtype=torch.float64) * 2, 9)


def test_fuse_keeps_batchnorm_state_dict_names():
    net = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF())
    before = set(net.state_dict())
    new = snn_fast.convert(net, fuse=True)
    assert isinstance(new[0], snn.BNLIF) and isinstance(new[1], torch.nn.Identity)
    assert {k.replace("0.module.", "0.") for k in before} == set(new.state_dict())


@needs_sj
@pytest.mark.parametrize("arch,n", [("spiking_resnet18", 9), ("sew_resnet18", 17)])
def test_fuse_spikingjelly_zoo_resnet(arch, n):
    """SpikingJelly's own zoo ResNets, whose blocks call bn and neuron in a custom forward: every
    ``sn(bn(…))`` fuses (spiking ResNet: the stem and each block's bn1/sn1, its bn2 feeding the residual
    add first; SEW: the stem and both pairs of each block), read from the traced forward."""
    from spikingjelly.activation_based import functional as SF_

    spiking_resnet, sew_resnet, _ = _zoo()

    torch.manual_seed(8)
    kw = dict(spiking_neuron=SN.LIFNode, surrogate_function=SS.ATan(), detach_reset=True)
    net = (spiking_resnet.spiking_resnet18(**kw) if arch == "spiking_resnet18"
           else sew_resnet.sew_resnet18(cnf="ADD", **kw))
    SF_.set_step_mode(net, "m")
    for m in net.modules():  # non-trivial affine and running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.3, 0.2)
    _compare_fused(net, torch.randn(2, 2, 3, 32, 32, dtype=torch.float64) * 2, n)


def test_fuse_custom_forward_only_where_declared_and_exact():
    """Outside SpikingJelly's zoo a custom forward is not traced (fx cannot see ``self.pre = y``, or state
    a trace would change): its pairs fuse when declared in ``snn_fast_fuse_pairs``. A neuron subclass
    (its own forward) or a module with hooks is never fused."""

    class Block(torch.nn.Module):
        def __init__(self, declare):
            super().__init__()
            self.bn_a, self.lif_a = snn.TDBatchNorm(3), snn.LIF()
            self.bn_b, self.lif_b = snn.TDBatchNorm(3), snn.LIF()  # bn_b's output is kept too
            if declare:
                self.snn_fast_fuse_pairs = [("bn_a", "lif_a")]

        def forward(self, x):
            y = self.lif_a(self.bn_a(x))
            self.pre = self.bn_b(y)
            return self.lif_b(self.pre)

    torch.manual_seed(9)
    for declare, n in ((False, 0), (True, 1)):
        net = Block(declare)
        for m in net.modules():
            if isinstance(m, snn.TDBatchNorm):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.3, 0.2)
        _compare_fused(net, torch.randn(3, 2, 3, 4, 4, dtype=torch.float64), n)

    class Doubled(snn.LIF):
        def forward(self, x):
            return 2 * super().forward(x)

    seq = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), Doubled())
    assert not any(isinstance(m, snn.BNLIF) for m in snn_fast.convert(seq, fuse=True).modules())
    seen = []
    seq = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF())
    seq[1].register_forward_hook(lambda m, i, o: seen.append(o))
    new = snn_fast.convert(seq, fuse=True)
    assert not any(isinstance(m, snn.BNLIF) for m in new.modules())
    new(torch.randn(2, 2, 3, 4, 4))
    assert len(seen) == 1  # the hook still fires
    for kw in (dict(v_reset=None, reset_timing="none"), dict(step_mode="s", store_v_seq=True)):
        seq = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF(**kw))
        assert not any(isinstance(m, snn.BNLIF) for m in snn_fast.convert(seq, fuse=True).modules()), kw
    seq = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF())
    seq[0].eval()  # a frozen batch norm before a training neuron
    assert not any(isinstance(m, snn.BNLIF) for m in snn_fast.convert(seq, fuse=True).modules())


def test_fuse_user_surrogate_where_a_kernel_runs_it(monkeypatch, tmp_path):
    """A user's surrogate is fused where the fused op runs it on a kernel: with Triton functions, or
    translated into the CPU walk (then equal to the unfused model); not with fire_at_threshold=False,
    nor a torch-only surrogate whose g′ does not translate (or with the compiled walk off)."""
    import user_surrogates
    from snn_fast import surrogate as sgm
    from snn_fast.ops.lif import native_surrogate

    user_surrogates.register_all()
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1")
    monkeypatch.setenv(native_surrogate.ENV_COMPILE, "1")
    monkeypatch.setenv(native_surrogate.ENV_CACHE, str(tmp_path))

    def fused(surrogate, **kw):
        seq = torch.nn.Sequential(snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF(surrogate=surrogate, **kw))
        return sum(isinstance(m, snn.BNLIF) for m in snn_fast.convert(seq, fuse=True).modules())

    native = native_surrogate.unavailable("bn_lif") is None
    assert fused("user_torch_only") == int(native)  # no Triton functions: fused when it translates
    if sgm.get("user_shifted").triton is not None:  # translates too
        assert fused("user_shifted") == int(native)
    assert fused("user_shifted", fire_at_threshold=False) == 0
    assert fused("user_torch_only", noise_prob=0.3) == 0  # a noise mask: the CPU path runs the reference
    name = "convert_user_erf"  # the sigmoid's g′ plus 0·erf(x): erf does not translate
    if name not in sgm.names():
        sgm.register_surrogate(name, g=lambda x, a: torch.sigmoid(a * x), alpha=2.0, scaling=True,
                               dg=lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) + 0 * torch.erf(x))
    assert fused(name) == 0
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    assert fused("user_torch_only") == 0
    # a batch norm on a GPU: fused exactly where the surrogate has Triton functions (the fused Triton
    # kernels run either firing and a noise mask), whatever the CPU walk could translate (on, so that
    # the CPU rule would fuse user_torch_only); the decision alone, no GPU here
    from snn_fast.convert import _user_surrogate_fuses_on

    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1")
    assert _user_surrogate_fuses_on("cpu", snn.LIF(surrogate="user_torch_only")) == native
    for kw in ({}, dict(fire_at_threshold=False), dict(noise_prob=0.3)):
        assert not _user_surrogate_fuses_on("cuda", snn.LIF(surrogate="user_torch_only", **kw))
        assert _user_surrogate_fuses_on("cuda", snn.LIF(surrogate="user_shifted", **kw)) == (
            sgm.get("user_shifted").triton is not None)
    assert (sgm.get("user_shifted").triton is not None) == (user_surrogates.triton is not None)
    if native:
        torch.manual_seed(10)
        net = torch.nn.Sequential(snn.MultiStep(torch.nn.Conv2d(2, 3, 3, padding=1)),
                                  snn.MultiStep(torch.nn.BatchNorm2d(3)), snn.LIF(surrogate="user_torch_only"))
        with torch.no_grad():
            net[1].module.weight.uniform_(0.5, 1.5)
            net[1].module.bias.normal_(0.3, 0.2)
        _compare_fused(net, torch.randn(3, 2, 2, 5, 5, dtype=torch.float64) * 2, 1)
