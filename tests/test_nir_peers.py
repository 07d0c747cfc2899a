"""snn_fast.nir.load of the graphs that snnTorch 1.0, Norse 1.1 and Sinabs 3.1 export, against the peers.

Each graph is exported by the peer's own exporter (snnTorch's fails under nir 1.0.8: its graph is
made by the same extraction without the failing type inference, see ``_snntorch_graph``), loaded
with the peer's ``dialect``, and run on the same float64 inputs as the exported model itself (the
peer's loop, one step per call) and, where the peer's import reads its export back as the same
function, as that import: spikes equal, input gradients and the neurons' last membranes within
``conftest.PEER_RTOL``. Inputs are random, and dyadic through an identity first layer (β = ½ or
¾, x in quarters) so that many membranes land exactly on θ: the firing comparison (snnTorch and
Norse fire on v > θ, Sinabs on v ≥ θ) decides those.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nir")
pytest.importorskip("nirtorch")
import nir  # noqa: E402

import snn_fast.nir as snir  # noqa: E402
from snn_fast import nn as snn  # noqa: E402

from conftest import assert_close_to_peer  # noqa: E402

T, B, N = 12, 3, 8


def _inputs(kind, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(T, B, n, generator=g, dtype=torch.float64) * 1.5 + 0.3
    return torch.randint(-2, 7, (T, B, n), generator=g).double() / 4  # dyadic: exact membranes, many on θ


def _identity_first(net, n=N):
    """An identity first Linear (the neurons see x itself), the later Linears from float32 values (the
    peers' imports make float32 weights)."""
    with torch.no_grad():
        first = True
        for m in net.modules():
            if isinstance(m, nn.Linear):
                if first:
                    m.weight.copy_(torch.eye(n, dtype=m.weight.dtype))
                    m.bias.zero_()
                    first = False
                else:
                    m.weight.copy_((m.weight * 3).float().double())
                    m.bias.copy_(m.bias.float().double())


def _loss(out, seed=7):
    g = torch.Generator().manual_seed(seed)
    return (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()


def _run_steps(step, x):
    """(spikes [T, ...], x.grad) of a peer's per-step callable."""
    x = x.clone().requires_grad_(True)
    out = torch.stack([step(x[t]) for t in range(x.shape[0])]).double()
    (gx,) = torch.autograd.grad(_loss(out), [x])
    return out.detach(), gx


def _run_ours(model, x):
    snn.reset_net(model)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (gx,) = torch.autograd.grad(_loss(out), [x])
    return out.detach(), gx


def _same(got, want, what):
    assert torch.equal(got[0], want[0]), f"{what}: spikes differ at {(got[0] != want[0]).nonzero()[:5].tolist()}"
    assert got[0].sum() > 0, f"{what}: nothing fired"
    assert_close_to_peer(got[1], want[1], f"{what}: x.grad")


def _lifs(model):
    return [m for m in model.modules() if isinstance(m, snn.BaseLIF)]


# ---------------------------------------------------------------------------------------------------
# snnTorch 1.0


def _snntorch_graph(net, sample):
    """snnTorch's export: ``export_to_nir`` ends in ``nir_graph.infer_types()``, which nir 1.0.8 refuses
    (test_snntorch_export_to_nir_fails); the graph before it is what snnTorch emits: the same
    ``nirtorch.extract_nir_graph`` call with snnTorch's own module extractor."""
    snt = pytest.importorskip("snntorch")
    import nirtorch
    from snntorch.export_nir import _extract_snntorch_module, export_to_nir

    try:
        return export_to_nir(net, sample)
    except ValueError as e:
        if "Type inference error" not in str(e):
            raise
    return nirtorch.extract_nir_graph(net, _extract_snntorch_module, sample, model_name="snntorch",
                                      ignore_submodules_of=[snt.RLeaky, snt.RSynaptic], model_fwd_args=[],
                                      ignore_dims=[])


def _snntorch_net():
    snt = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    # reset_mechanism='zero', reset_delay=False: what the graph says (v_reset = 0) and snnTorch's import makes
    kw = dict(reset_mechanism="zero", reset_delay=False, init_hidden=True)
    net = nn.Sequential(nn.Linear(N, N), snt.Leaky(beta=0.75, threshold=1.0, **kw),
                        nn.Linear(N, 4), snt.Leaky(beta=0.5, threshold=0.5, **kw)).double()
    _identity_first(net)
    return net


def test_snntorch_export_to_nir_fails():
    """The exact failure of snnTorch 1.0's exporter with nir 1.0.8 / nirtorch 2.6: its closing
    ``infer_types()`` finds the Input node typed with the sample's batch dim ([1, 4] → the Linear's [4]);
    with ``ignore_dims=[0]`` it fails on the next edge instead, as a scalar β is written as 0-d LIF
    parameters (the Linear's [5] → the LIF's [])."""
    snt = pytest.importorskip("snntorch")
    from snntorch.export_nir import export_to_nir

    if nir.__version__ != "1.0.8":
        pytest.skip(f"the failure is that of nir 1.0.8, not {nir.__version__}")
    net = nn.Sequential(nn.Linear(4, 5), snt.Leaky(beta=0.8, init_hidden=True), nn.Linear(5, 2),
                        snt.Leaky(beta=0.9, init_hidden=True))
    with pytest.raises(ValueError, match=r"type mismatch: input.output: \[\[1 4\]\] -> 0.input: \[\[4\]\]"):
        export_to_nir(net, torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"type mismatch: 0.output: \[\[5\]\] -> 1.input: \[\]"):
        export_to_nir(net, torch.randn(1, 4), ignore_dims=[0])


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_snntorch_leaky_graph_loads_exactly(snntorch_f64, kind):
    """snnTorch's graph of Linear + Leaky loads to what the exported net and snnTorch's own
    ``import_from_nir`` compute: H = β·V + X, a spike on H > θ, reset to 0 (reset_delay=False), the
    atan surrogate (α = 2) of a default Leaky."""
    snt = pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir
    from snntorch.utils import reset

    net = _snntorch_net()
    g = _snntorch_graph(net, torch.randn(1, N, dtype=torch.float64))
    ours = snir.load(g, dialect="snntorch", dtype=torch.float64)
    lifs = _lifs(ours)
    assert len(lifs) == 2 and not lifs[0].flags.fire_at_threshold and lifs[0].sg.name == "atan"
    x = _inputs(kind)
    reset(net)
    want = _run_steps(net, x)
    mems = [net[1].mem.clone(), net[3].mem.clone()]
    got = _run_ours(ours, x)
    _same(got, want, "vs the exported net")
    for lif, mem in zip(lifs, mems):
        assert_close_to_peer(lif.v, mem, "last membrane")
    imported = import_from_nir(g).double()
    leaky = getattr(imported, "1")
    assert isinstance(leaky, snt.Leaky) and leaky.reset_mechanism == "zero" and not leaky.reset_delay
    reset(imported)
    _same(got, _run_steps(lambda xt: imported(xt)[0], x), "vs snnTorch's import_from_nir")


def test_snntorch_refused():
    pytest.importorskip("snntorch")
    shape = (3,)

    def graph(node):
        return nir.NIRGraph.from_list(nir.Affine(np.eye(3), np.zeros(3)), node)

    def lif(**kw):
        p = dict(tau=np.full(shape, 4e-4), r=np.full(shape, 4.0), v_leak=np.zeros(shape),
                 v_threshold=np.ones(shape), v_reset=np.zeros(shape))
        p.update(kw)
        return nir.LIF(**p)

    with pytest.raises(ValueError, match="node 'lif'.*v_leak = 0.5"):
        snir.load(graph(lif(v_leak=np.full(shape, 0.5))), dialect="snntorch")
    with pytest.raises(ValueError, match="node 'lif'.*v_reset = 0.25.*resets to 0"):
        snir.load(graph(lif(v_reset=np.full(shape, 0.25))), dialect="snntorch")
    with pytest.raises(ValueError, match="node 'lif'.*tau differs across neurons"):
        snir.load(graph(lif(tau=np.array([4e-4, 5e-4, 4e-4]))), dialect="snntorch")
    with pytest.raises(ValueError, match="node 'if'.*exports no IF.*Leaky\\(beta=0.9"):
        snir.load(graph(nir.IF(r=np.ones(shape), v_threshold=np.ones(shape))), dialect="snntorch")
    # snnTorch's Synaptic is written as a CubaLIF, RLeaky as a subgraph
    cuba = nir.CubaLIF(tau_syn=np.full(shape, 2e-4), tau_mem=np.full(shape, 4e-4), r=np.full(shape, 4.0),
                       v_leak=np.zeros(shape), v_threshold=np.ones(shape), w_in=np.full(shape, 2.0))
    with pytest.raises(ValueError, match="node 'cubalif'.*synaptic current"):
        snir.load(graph(cuba), dialect="snntorch")


def test_snntorch_rleaky_refused():
    snt = pytest.importorskip("snntorch")
    net = nn.Sequential(nn.Linear(4, 5), snt.RLeaky(beta=0.8, linear_features=5, init_hidden=True))
    g = _snntorch_graph(net, torch.randn(1, 4))
    with pytest.raises(ValueError, match="subgraph.*RLeaky|recurrent cycle"):
        snir.load(g, dialect="snntorch")


# ---------------------------------------------------------------------------------------------------
# Norse 1.1


def _norse_net():
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.iaf import IAFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters

    torch.manual_seed(0)
    # dt·tau_mem_inv = ½ and ¼ (exact in both Norse's dt·τ⁻¹ and the loader's dt²/tau)
    def f64(v):
        return torch.tensor(v, dtype=torch.float64)

    p1 = LIFBoxParameters(tau_mem_inv=f64(500.0), v_th=f64(1.0))
    p2 = LIFBoxParameters(tau_mem_inv=f64(250.0), v_th=f64(0.25))
    net = norse.SequentialState(nn.Linear(N, N), norse.LIFBoxCell(p1), nn.Linear(N, 6), norse.LIFBoxCell(p2),
                                nn.Linear(6, 4), norse.IAFCell(IAFParameters(v_th=f64(0.5)))).double()
    _identity_first(net)
    return net


def _norse_step(net):
    state = [None]

    def step(xt):
        out, state[0] = net(xt, state[0])
        return out
    return step


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_norse_graph_loads_exactly(kind):
    """Norse's graph (``norse.torch.to_nir``, dt = 1e-3) of Linear + LIFBoxCell + IAFCell loads to what
    the exported net computes: v ← v + dt·τ⁻¹·(x − v) and v ← v + x, a spike on v > θ, reset to 0,
    SuperSpike."""
    norse = pytest.importorskip("norse.torch")
    net = _norse_net()
    g = norse.to_nir(net, torch.randn(1, N, dtype=torch.float64))
    taus = [float(n.tau) for n in g.nodes.values() if isinstance(n, nir.LIF)]
    # Norse 1.1 writes tau = dt / tau_mem_inv (not 1 / tau_mem_inv): the loader undoes that
    assert taus == pytest.approx([1e-3 / 500, 1e-3 / 250], rel=1e-12)
    ours = snir.load(g, dialect="norse", dtype=torch.float64)
    lifs = _lifs(ours)
    assert [type(m).__name__ for m in lifs] == ["LIF", "LIF", "IF"]
    assert [m.leak() for m in lifs[:2]] == pytest.approx([0.5, 0.25], rel=1e-12)
    x = _inputs(kind) * 2
    want = _run_steps(_norse_step(net), x)
    _same(_run_ours(ours, x), want, "vs the exported net")


def test_norse_if_matches_its_import():
    """For IAFCell, Norse's from_nir reads its export back (v ← v + x, r = 1): the same function."""
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.iaf import IAFParameters

    net = norse.SequentialState(nn.Linear(N, 5), norse.IAFCell(IAFParameters(v_th=torch.tensor(0.75)))).double()
    with torch.no_grad():
        net[0].weight.copy_(net[0].weight.float().double() * 3)
        net[0].bias.copy_(net[0].bias.float().double())
    g = norse.to_nir(net, torch.randn(1, N, dtype=torch.float64))
    ours = snir.load(g, dialect="norse", dtype=torch.float64)
    x = _inputs("random")
    got = _run_ours(ours, x)
    _same(got, _run_steps(_norse_step(net), x), "vs the exported net")
    _same(got, _run_steps(_norse_step(norse.from_nir(g).double()), x), "vs Norse's from_nir")


def test_norse_dt():
    """The dt the graph was exported with (the cells' own): another dt is another τ."""
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.lif_box import LIFBoxParameters

    p = LIFBoxParameters(tau_mem_inv=torch.tensor(20.0, dtype=torch.float64))
    net = norse.SequentialState(nn.Linear(N, 5), norse.LIFBoxCell(p, dt=0.01)).double()
    with torch.no_grad():
        net[0].weight.mul_(8)
    g = norse.to_nir(net, torch.randn(1, N, dtype=torch.float64), dt=0.01)
    ours = snir.load(g, dialect="norse", dt=0.01, dtype=torch.float64)
    assert _lifs(ours)[0].leak() == pytest.approx(0.2, rel=1e-12)
    x = _inputs("random")
    _same(_run_ours(ours, x), _run_steps(_norse_step(net), x), "dt=0.01")
    # the default dt = 1e-3 reads the same graph as dt·tau_mem_inv = 1e-6 / 5e-4
    assert _lifs(snir.load(g, dialect="norse"))[0].leak() == pytest.approx(0.002, rel=1e-12)
    with pytest.raises(ValueError, match="dt²/tau = 2.*is dt the one"):
        snir.load(g, dialect="norse", dt=0.1)


def test_norse_refused():
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.lif_box import LIFBoxParameters

    net = norse.SequentialState(nn.Linear(4, 5), norse.LIFBoxCell(LIFBoxParameters(v_leak=torch.tensor(0.5))))
    with pytest.raises(ValueError, match="node '1'.*v_leak = 0.5"):
        snir.load(norse.to_nir(net, torch.randn(1, 4)), dialect="norse")
    net = norse.SequentialState(nn.Linear(4, 5), norse.LIFCell())
    with pytest.raises(ValueError, match="node '1' \\(CubaLIF\\).*synaptic current"):
        snir.load(norse.to_nir(net, torch.randn(1, 4)), dialect="norse")
    net = norse.SequentialState(nn.Linear(4, 5), norse.LIBoxCell())
    with pytest.raises(ValueError, match="node '1' \\(LI\\).*without spikes"):
        snir.load(norse.to_nir(net, torch.randn(1, 4)), dialect="norse")
    lif = nir.LIF(tau=np.full(3, 1e-5), r=np.full(3, 2.0), v_leak=np.zeros(3), v_threshold=np.ones(3))
    with pytest.raises(ValueError, match="node 'lif'.*r = 2.*no input resistance"):
        snir.load(nir.NIRGraph.from_list(nir.Affine(np.eye(3), np.zeros(3)), lif), dialect="norse")


# ---------------------------------------------------------------------------------------------------
# Sinabs 3.1


def _sinabs_net(norm_input=True):
    pytest.importorskip("sinabs")
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike

    torch.manual_seed(0)
    # SingleSpike: one spike per step (NIR's neuron; Sinabs's default MultiSpike is not expressible)
    # the IAF first, on x itself: dyadic inputs land its membrane on θ exactly
    net = nn.Sequential(nn.Linear(N, N), sl.IAF(spike_threshold=1.0, spike_fn=SingleSpike),
                        nn.Linear(N, 6), sl.LIF(tau_mem=3.0, spike_threshold=0.5, spike_fn=SingleSpike,
                                                norm_input=norm_input))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(N))
        net[0].bias.zero_()
        net[2].weight.mul_(3)
    return net


def _sinabs_export(net):
    import sinabs

    g = sinabs.to_nir(net, torch.randn(B, T, N))  # float32: Sinabs's spikes are float32
    sinabs.reset_states(net)
    return g, net.double()


def _sinabs_run(net, x):
    """Sinabs's layers take [B, T, ...]: the whole sequence per call."""
    import sinabs

    sinabs.reset_states(net)
    x = x.clone().requires_grad_(True)
    out = net(x.transpose(0, 1)).transpose(0, 1).double()
    (gx,) = torch.autograd.grad(_loss(out), [x])
    return out.detach(), gx


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_sinabs_graph_loads_exactly(sinabs_f64, kind):
    """Sinabs's graph (``sinabs.to_nir``: τ in steps, r = 1) of Linear + IAF + LIF loads to what the
    exported net computes: v ← α·v + (1 − α)·x (α = e^{−1/τ}, norm_input=True) and v ← v + x, a spike on
    v ≥ θ, MembraneSubtract, SingleExponential."""
    net = _sinabs_net()
    g, net = _sinabs_export(net)
    ours = snir.load(g, dialect="sinabs", dtype=torch.float64)
    lifs = _lifs(ours)
    assert [type(m).__name__ for m in lifs] == ["IF", "LIF"] and lifs[1].flags.decay_input
    assert all(m.flags.fire_at_threshold and not m.flags.hard_reset for m in lifs)
    x = _inputs(kind) * 2
    want = _sinabs_run(net, x)
    got = _run_ours(ours, x)
    _same(got, want, "vs the exported net")
    for lif, layer in zip(lifs, (net[1], net[3])):
        assert_close_to_peer(lif.v, layer.v_mem, "last membrane")


def test_sinabs_norm_input_false_as_nir_says(sinabs_f64):
    """A LIF with norm_input=False is NIR's r = 1/(1 − α) (Sinabs itself writes r = 1 whatever
    norm_input is): that graph loads to the layer."""
    import sinabs

    net = _sinabs_net(norm_input=False).double()
    g = sinabs.to_nir(net.float(), torch.randn(B, T, N))
    net = net.double()
    a = float(np.exp(-1.0 / 3.0))
    lif = g.nodes["3"]
    lif.r = np.full(np.shape(lif.tau), 1.0 / (1.0 - a))
    ours = snir.load(g, dialect="sinabs", dtype=torch.float64)
    assert not _lifs(ours)[1].flags.decay_input
    x = _inputs("random")
    _same(_run_ours(ours, x), _sinabs_run(net, x), "norm_input=False")


def test_sinabs_refused():
    pytest.importorskip("sinabs")
    import sinabs
    import sinabs.layers as sl

    def graph(node):
        return nir.NIRGraph.from_list(nir.Affine(np.eye(3), np.zeros(3)), node)

    lif = nir.LIF(tau=np.full(3, 3.0), r=np.full(3, 2.0), v_leak=np.zeros(3), v_threshold=np.ones(3))
    with pytest.raises(ValueError, match="node 'lif'.*r = 2.*norm_input"):
        snir.load(graph(lif), dialect="sinabs")
    lif = nir.LIF(tau=np.full(3, 3.0), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3),
                  v_reset=np.full(3, -1.0))
    with pytest.raises(ValueError, match="node 'lif'.*v_reset = -1.*MembraneSubtract"):
        snir.load(graph(lif), dialect="sinabs")
    with pytest.raises(ValueError, match="node 'if'.*r = 3.*v ← v \\+ x"):
        snir.load(graph(nir.IF(r=np.full(3, 3.0), v_threshold=np.ones(3))), dialect="sinabs")
    net = nn.Sequential(nn.Linear(4, 5), sl.ExpLeak(tau_mem=3.0))
    with pytest.raises(ValueError, match="node '1' \\(LI\\).*without spikes"):
        snir.load(sinabs.to_nir(net, torch.randn(2, 3, 4)), dialect="sinabs")


def test_dialect_and_dt_checked():
    g = nir.NIRGraph.from_list(nir.Affine(np.eye(3), np.zeros(3)))
    with pytest.raises(ValueError, match="dialect must be one of"):
        snir.load(g, dialect="lava")
    with pytest.raises(ValueError, match="dt must be > 0"):
        snir.load(g, dialect="norse", dt=0.0)
