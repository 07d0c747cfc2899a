"""The seed methods as presets: each reproduces its document's equations."""
import math
import subprocess
import sys

import pytest
import torch

import snn_fast
from snn_fast import nn as snn
from snn_fast import presets

from conftest import assert_close
from test_lif import BACKENDS, SKIP
from test_nn import plif_reference_grads


@pytest.mark.parametrize("name,lam,theta", [("stbp_tdbn", 0.25, 0.5), ("csbp", 0.5, 1.0)])
def test_stbp_and_csbp_follow_their_recurrence(name, lam, theta):
    """Seeds 000/004: u_t = λ·u_{t−1}·(1 − o_{t−1}) + x_t, o_t = [u_t ≥ θ]."""
    x = torch.rand(12, 50, dtype=torch.float64)
    u = torch.zeros(50, dtype=torch.float64)
    o = torch.zeros(50, dtype=torch.float64)
    outs = []
    for t in range(12):
        u = lam * u * (1 - o) + x[t]
        o = (u >= theta).double()
        outs.append(o)
    s, _ = snn_fast.lif_multistep(x, **presets.functional_kwargs(name))
    assert torch.equal(s, torch.stack(outs))
    assert isinstance(presets.lif(name), snn.LIF)


def _bpsa_backends():
    """(backend, device) pairs that run the ``bpsa_norm`` surrogate here, as test_lif.py's ``BACKENDS``
    (the reference, the C++ CPU kernel, Triton on CPU tensors under its interpreter, CUDA devices);
    'cuda' does not run user-registered surrogates and is left out."""
    out = []
    for be in BACKENDS:
        if be.name == "cuda":
            continue
        marks = [pytest.mark.skip(reason=SKIP[be.id])] if SKIP[be.id] else []
        out.append(pytest.param(be.name, be.device, id=be.id, marks=marks))
    return out


def _bpsa_document(x, theta, kappa):
    """The document's node, written out: IF charge H = V + X, fire S = Θ(H − θ), spatial adjustment
    S = V/sg(V) where fired (value 1, ∂S/∂V = 1/V), hard reset to 0 through the detached spike, and the
    temporal residual κ·(S − sg(S))."""
    v = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        h = v + x[t]
        fired = h >= theta
        s = torch.where(fired, h / torch.where(fired, h, torch.ones_like(h)).detach(), torch.zeros_like(h))
        v = (1 - s.detach()) * h + kappa * (s - s.detach())
        spikes.append(s)
    return torch.stack(spikes), v


@pytest.mark.parametrize("backend,device", _bpsa_backends())
def test_bpsa_spatial_adjustment_is_one_over_v(backend, device):
    """Seed 003's text: ∂S/∂V = 1/V where the neuron fired, 0 elsewhere (``preset("bpsa")``)."""
    h = torch.tensor([[0.7, 0.2, 1.6, 0.5]], dtype=torch.float64, device=device, requires_grad=True)
    s, _ = snn_fast.lif_multistep(h, backend=backend, **presets.functional_kwargs("bpsa"))
    (gs,) = torch.autograd.grad(s.sum(), h)
    assert s.tolist() == [[1.0, 0.0, 1.0, 1.0]]  # θ = 0.5 fires (Θ(0) = 1)
    assert_close(gs, torch.tensor([[1 / 0.7, 0.0, 1 / 1.6, 1 / 0.5]], dtype=torch.float64, device=device))


@pytest.mark.parametrize("backend,device", _bpsa_backends())
def test_bpsa_follows_the_document_over_time(backend, device):
    """The preset against the document's node written out in torch, T = 9: spikes, the last membrane
    and ∂L/∂x for a loss on both, float64."""
    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(9, 40, dtype=torch.float64, generator=g) * 0.6 + 0.2).to(device)
    w_s = torch.randn(9, 40, dtype=torch.float64, generator=g).to(device)
    w_v = torch.randn(40, dtype=torch.float64, generator=g).to(device)
    xa = x.clone().requires_grad_()
    s, v = snn_fast.lif_multistep(xa, backend=backend, **presets.functional_kwargs("bpsa"))
    (ga,) = torch.autograd.grad((s * w_s).sum() + (v * w_v).sum(), xa)
    xb = x.clone().requires_grad_()
    s_ref, v_ref = _bpsa_document(xb, 0.5, 0.2)
    (gb,) = torch.autograd.grad((s_ref * w_s).sum() + (v_ref * w_v).sum(), xb)
    assert torch.equal(s, s_ref.detach())
    assert_close(v, v_ref.detach(), name="v_T")
    assert_close(ga, gb, name="grad_x")
    assert s.sum() > 0 and (s == 0).any()  # both branches exercised


def test_bpsa_temporal_term_is_kappa_times_spike_gradient():
    """Seed 003, temporal: with a detached reset, ∂V_t/∂H_t = 1 − S + κ·∂S/∂H (κ = 0.2). The gate
    (``spatial="gate"``, ∂S/∂H = 1 where fired) gives κ; the text's 1/V gives κ/V."""
    h = torch.tensor([[0.7, 0.2]], dtype=torch.float64, requires_grad=True)  # one fires (θ = 0.5), one not
    s, v = snn_fast.lif_multistep(h, **presets.functional_kwargs("bpsa", spatial="gate"))
    (gv,) = torch.autograd.grad(v.sum(), h)
    assert s.tolist() == [[1.0, 0.0]]
    assert torch.allclose(gv, torch.tensor([[0.2, 1.0]], dtype=torch.float64))
    s, v = snn_fast.lif_multistep(h, **presets.functional_kwargs("bpsa"))
    (gv,) = torch.autograd.grad(v.sum(), h)
    assert s.tolist() == [[1.0, 0.0]]
    assert torch.allclose(gv, torch.tensor([[0.2 / 0.7, 1.0]], dtype=torch.float64))
    assert isinstance(presets.lif("bpsa"), snn.IF)
    assert isinstance(presets.lif("bpsa", spatial="gate"), snn.IF)
    assert isinstance(presets.lif("bpsa_lif"), snn.LIF)


def test_bpsa_spatial_options():
    norm, gate = presets.preset("bpsa"), presets.preset("bpsa", spatial="gate")
    assert norm["surrogate"] == "bpsa_norm" and norm["alpha"] == norm["v_threshold"] == 0.5
    assert gate["surrogate"] == "spike_gate" and "alpha" not in gate
    assert norm["reset_residual"] == gate["reset_residual"] == 0.2 and norm["detach_reset"] and gate["detach_reset"]
    assert presets.preset("bpsa", v_threshold=1.0)["alpha"] == 1.0  # α follows θ: g′ = 1/V where fired
    assert presets.preset("bpsa", v_threshold=1.0, alpha=2.0)["alpha"] == 2.0
    assert presets.preset("bpsa_lif", spatial="norm")["surrogate"] == "bpsa_norm"
    with pytest.raises(ValueError, match="spatial must be one of"):
        presets.preset("bpsa", spatial="divide")
    with pytest.raises(ValueError, match="spatial= is an option of the BPSA presets only"):
        presets.preset("csbp", spatial="gate")


def test_bpsa_norm_surrogate_matches_its_formulas():
    """g′ = 1[x ≥ 0]/(α + x), g = ln(1 + x/α) above threshold, ∂g/∂α; finite (0) at NaN."""
    sg = presets.register_bpsa_norm()
    assert presets.register_bpsa_norm() is sg  # once per process
    x = torch.tensor([-1.0, -1e-9, 0.0, 0.3, 2.0, math.nan], dtype=torch.float64)
    a = torch.tensor(0.5, dtype=torch.float64)
    want_dg = torch.tensor([0.0, 0.0, 2.0, 1 / 0.8, 1 / 2.5, 0.0], dtype=torch.float64)
    assert_close(sg.dg(x, a), want_dg)
    assert_close(sg.g(x, a), torch.tensor([0, 0, 0, math.log1p(0.6), math.log1p(4.0), 0], dtype=torch.float64))
    assert_close(sg.dg_dalpha(x, a), torch.tensor([0, 0, 0, -0.3 / 0.4, -2.0 / 1.25, 0], dtype=torch.float64))


def test_asgl_learns_decay_threshold_and_width_with_noise():
    m = presets.lif("asgl", learn=True)
    assert isinstance(m, snn.PLIF) and m.noise_prob == 0.5
    assert abs(1 - 1 / (1 / torch.sigmoid(m.w).item()) - 0.5) < 1e-6  # λ = 0.5 at init
    x = torch.randn(6, 4, 20) + 1
    torch.manual_seed(7)
    out = m(x)
    assert ((out != 0) & (out != 1)).any()  # noisy analog outputs in training
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in (m.w, m.v_threshold, m.alpha))
    # the same gradients through the reference, with the mask the module drew (torch's generator)
    torch.manual_seed(7)
    mask = snn_fast.noise_mask_like(x, m.noise_prob)
    ref = plif_reference_grads(m, x, noise_mask=mask)
    for name, p in (("w", m.w), ("v_threshold", m.v_threshold), ("alpha", m.alpha)):
        assert_close(p.grad, ref[name], name=f"grad_{name}")


def test_plif_preset_and_unknown_name():
    assert isinstance(presets.lif("plif"), snn.PLIF)
    assert presets.preset("csbp", decay=0.2)["decay"] == 0.2  # the single-neuron example's λ
    with pytest.raises(ValueError, match="unknown preset 'nope'.*csbp"):
        presets.preset("nope")


def test_package_works_without_the_extension():
    """With snn_fast._C unavailable: the reference path runs, auto falls back, 'cpu' says how to build."""
    code = (
        "import sys; sys.modules['snn_fast._C'] = None\n"
        "import torch, snn_fast, snn_fast.nn, snn_fast.ops.tempotron\n"
        "assert not snn_fast.HAS_C\n"
        "s, v = snn_fast.lif_multistep(torch.randn(3, 4))\n"
        "try:\n"
        "    snn_fast.lif_multistep(torch.randn(3, 4), backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'make build' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
