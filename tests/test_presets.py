"""The seed methods as presets: each reproduces its document's equations."""
import subprocess
import sys

import pytest
import torch

import snn_fast
from snn_fast import nn as snn
from snn_fast import presets

from conftest import assert_close
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


def test_bpsa_temporal_term_is_kappa_times_spike():
    """Seed 003: with spike_gate and a detached reset, ∂V_t/∂H_t = 1 − S + κ·S (κ = 0.2)."""
    h = torch.tensor([[0.7, 0.2]], dtype=torch.float64, requires_grad=True)  # one fires (θ = 0.5), one not
    s, v = snn_fast.lif_multistep(h, **presets.functional_kwargs("bpsa"))
    (gv,) = torch.autograd.grad(v.sum(), h)
    assert s.tolist() == [[1.0, 0.0]]
    assert torch.allclose(gv, torch.tensor([[0.2, 1.0]], dtype=torch.float64))
    assert isinstance(presets.lif("bpsa"), snn.IF)


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
