"""Modules behave like SpikingJelly's multi-step nodes and agree with the functional API."""
import math

import pytest
import torch

import snn_fast
from snn_fast import nn as snn
from snn_fast.ops.lif.reference import lif_multistep_reference

from conftest import assert_close


def plif_reference_grads(m, x, loss_fn=lambda s: s.sum(), noise_mask=None):
    """The gradients of w, θ and α of a fresh PLIF ``m`` (learnable θ and α) recomputed through the
    reference with the module's own options and parameter values: 1/τ = sigmoid(w), i.e. λ = 1 − sigmoid(w)."""
    w = m.w.detach().clone().requires_grad_(True)
    th = m.v_threshold.detach().clone().requires_grad_(True)
    al = m.alpha.detach().clone().requires_grad_(True)
    f = m.flags
    s, _ = lif_multistep_reference(x, tau=None, decay=1 - torch.sigmoid(w), decay_input=f.decay_input, v_threshold=th,
                                   v_reset=f.v_reset if f.hard_reset else None, detach_reset=f.detach_reset,
                                   surrogate=m.sg.name, alpha=al, reset_residual=f.reset_residual,
                                   noise_mask=noise_mask)
    loss_fn(s).backward()
    return {"w": w.grad, "v_threshold": th.grad, "alpha": al.grad}


def test_lif_module_matches_functional_and_keeps_state():
    m = snn.LIF(tau=2.5, v_threshold=0.7, surrogate="atan", alpha=3.0)
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    s = m(x[:3])
    s2 = m(x[3:])
    ref_s, ref_v = lif_multistep_reference(x, tau=2.5, v_threshold=0.7, surrogate="atan", alpha=3.0)
    assert torch.equal(torch.cat([s, s2]), ref_s)
    assert torch.allclose(m.v, ref_v)
    m.reset()
    assert m.v is None
    assert torch.equal(m(x), ref_s)


def test_detach_cuts_the_graph():
    m = snn.LIF()
    x = torch.randn(3, 2, 4, requires_grad=True)
    m(x)
    assert m.v.requires_grad
    m.detach()
    assert not m.v.requires_grad


def test_plif_learns_w_and_threshold():
    m = snn.PLIF(init_tau=3.0, learnable_threshold=True, learnable_alpha=True)
    assert math.isclose(1 / torch.sigmoid(m.w).item(), 3.0, rel_tol=1e-6)
    x = torch.randn(8, 4, 16) * 2
    m(x).sum().backward()
    for p in (m.w, m.v_threshold, m.alpha):
        assert p.grad is not None and p.grad.abs() > 0
    # the same gradient through the reference
    w = m.w.detach().clone().requires_grad_(True)
    s, _ = lif_multistep_reference(x, decay=1 - torch.sigmoid(w), tau=None, v_threshold=1.0)
    s.sum().backward()
    assert_close(m.w.grad, w.grad, name="grad_w vs reference (θ, α fixed)")
    # and all three, θ and α learnable in the reference too
    ref = plif_reference_grads(m, x)
    for name, p in (("w", m.w), ("v_threshold", m.v_threshold), ("alpha", m.alpha)):
        assert_close(p.grad, ref[name], name=f"grad_{name}")


def test_learn_tau_gradient_matches_reference():
    m = snn.LIF(tau=2.0, learn_tau=True, backend="auto")
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    m(x).sum().backward()
    tau = torch.tensor(2.0, dtype=torch.float32, requires_grad=True)
    s, _ = lif_multistep_reference(x, tau=tau)
    s.sum().backward()
    torch.testing.assert_close(m.tau.grad, tau.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not snn_fast.HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("hard_reset", [False, True])
def test_cpu_gradcheck_covers_tau(hard_reset):
    """float64 gradcheck of the fused CPU kernel with τ learnable, next to x, v0, θ and α (with τ
    fixed, ∂L/∂τ of the kernel would only be compared in float32)."""
    T, N = 4, 6
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, N, dtype=torch.float64, generator=g).requires_grad_()
    v0 = torch.randn(N, dtype=torch.float64, generator=g).requires_grad_()
    tau = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    th = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    al = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(T, N, dtype=torch.bool)  # analog outputs everywhere: g is smooth, gradcheck applies

    def f(x, v0, tau, th, al):
        return snn_fast.lif_multistep(x, v0, tau=tau, v_threshold=th, alpha=al, noise_mask=mask, return_v_seq=True,
                                      v_reset=0.0 if hard_reset else None, backend="cpu")

    assert torch.autograd.gradcheck(f, (x, v0, tau, th, al))
    # and through the module: LIF(learn_tau=True) in float64 on the CPU kernel
    m = snn.LIF(tau=2.5, learn_tau=True, backend="cpu", noise_prob=0.0).double()
    xm = torch.randn(T, 2, N, dtype=torch.float64, generator=g)

    s = m(xm)
    (s * torch.arange(s.numel(), dtype=torch.float64).view_as(s)).sum().backward()
    tau_ref = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    s_ref, _ = lif_multistep_reference(xm, tau=tau_ref)
    (s_ref * torch.arange(s.numel(), dtype=torch.float64).view_as(s)).sum().backward()
    assert_close(m.tau.grad, tau_ref.grad, name="module grad_tau")


def test_if_node_integrates_without_leak():
    m = snn.IF(v_threshold=2.5)
    s = m(torch.ones(4, 1))
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_noise_only_in_training():
    torch.manual_seed(0)
    m = snn.LIF(noise_prob=0.5)
    x = torch.randn(4, 50) + 1
    s_train = m(x)
    assert ((s_train != 0) & (s_train != 1)).any()
    m.reset()
    m.eval()
    s_eval = m(x)
    assert ((s_eval == 0) | (s_eval == 1)).all()


def test_extra_repr_and_bad_args():
    r = repr(snn.LIF(tau=3.0, v_reset=None, surrogate="rect"))
    assert "tau=3" in r and "v_reset=None" in r and "surrogate=rectangle" in r
    with pytest.raises(ValueError, match="tau must be > 1"):
        snn.LIF(tau=1.0)
    with pytest.raises(ValueError, match="noise_prob"):
        snn.LIF(noise_prob=2.0)
    with pytest.raises(ValueError, match="batch|broadcast"):
        m = snn.LIF()
        m(torch.randn(2, 3, 4))
        m(torch.randn(2, 5, 4))  # new batch size without reset()


def test_multistep_container_and_reset_net():
    net = torch.nn.Sequential(snn.MultiStep(torch.nn.Conv2d(2, 3, 3, padding=1)), snn.LIF(), snn.IF())
    x = torch.randn(4, 2, 2, 5, 5)
    y = net(x)
    assert y.shape == (4, 2, 3, 5, 5)
    snn.reset_net(net)
    assert all(m.v is None for m in net if isinstance(m, snn.BaseLIF))


def test_module_edge_cases():
    with pytest.raises(ValueError, match="learn_tau=True needs a finite tau"):
        snn.LIF(tau=math.inf, learn_tau=True)
    with pytest.raises(TypeError, match="IF has no leak"):
        snn.IF(decay=0.5)
    # MultiStep reshapes (a non-contiguous module output must not break .view)
    m = snn.MultiStep(torch.nn.Identity())
    x = torch.randn(3, 2, 4, 5).transpose(2, 3)
    assert torch.equal(m(x), x)


def test_asgl_schedule_decays_noise_at_milestones():
    net = torch.nn.Sequential(snn.LIF(noise_prob=0.4), snn.PLIF(noise_prob=0.2))
    sched = snn.ASGLSchedule(net, gamma=0.5, milestones=[2])
    sched.step()
    assert net[0].noise_prob == 0.4
    sched.step()
    assert net[0].noise_prob == pytest.approx(0.2) and net[1].noise_prob == pytest.approx(0.1)
