"""The Triton kernels' lab variants (``snn_fast.ops.lif.triton.lab_variant``: explicit blocks, the
recompute segment length, the STREAM / STAGES / PREFETCH2 knobs) compute what the defaults compute.

The GPU check's ``lab`` stage times them on W1 and compares only spikes and grad_x there; this checks
every output and gradient, with a noise mask and learnable τ/θ/α, at the lengths where the prefetch
and segment edges fall (T = 1, 2, 3, 9) and an N that is not a multiple of any block. The knobs change
no arithmetic, so float32 results are bitwise equal; a block size changes the order in which the
parameter-gradient partial sums are added, so those are compared to rounding.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import snn_fast  # noqa: E402

STATE = [
    dict(knobs=dict(fwd=dict(PREFETCH2=True), bwd=dict(PREFETCH2=True))),
    dict(knobs=dict(fwd=dict(STREAM=True), bwd=dict(STREAM=True))),
    dict(knobs=dict(bwd=dict(STAGES=3))),
    dict(fwd=(64, 2), bwd=(256, 2)),
]
RECOMPUTE = [dict(chunk=4), dict(chunk=16), dict(chunk=1), dict(fwd=(64, 2), bwd_rc=(64, 2))]


def _lt():
    from snn_fast.ops.lif.function import BACKENDS

    BACKENDS.load("triton")
    from snn_fast.ops.lif import triton as lt

    return lt


def _run(lt, variant, save, T, seed=0):
    device = "cpu" if lt.INTERPRETED else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("Triton compiled (TRITON_INTERPRET unset) and no CUDA device")
    g = torch.Generator().manual_seed(seed + T)
    x = (torch.randn(T, 197, generator=g) * 1.5 + 0.4).to(device).requires_grad_()
    v0 = (torch.rand(197, generator=g) * 0.5).to(device).requires_grad_()
    mask = (torch.rand(T, 197, generator=g) > 0.3).to(device)
    tau = torch.tensor(2.5, device=device, requires_grad=True)
    theta = torch.tensor(0.8, device=device, requires_grad=True)
    alpha = torch.tensor(4.0, device=device, requires_grad=True)
    w = torch.randn(3, T, 197, generator=g).to(device)
    with lt.lab_variant(**variant):
        s, v, vs = snn_fast.lif_multistep(x, v0, tau=tau, v_threshold=theta, alpha=alpha, v_reset=-0.2,
                                          noise_mask=mask, return_v_seq=True, backend="triton", save=save)
        loss = (s * w[0]).sum() + (v * w[1, 0]).sum() + (vs * w[2]).sum()
        grads = torch.autograd.grad(loss, [x, v0, tau, theta, alpha])
    return [s, v, vs] + list(grads[:2]), list(grads[2:])


@pytest.mark.parametrize("T", [1, 2, 3, 9])
@pytest.mark.parametrize("save,variant", [("state", v) for v in STATE] + [("recompute", v) for v in RECOMPUTE],
                         ids=lambda v: v if isinstance(v, str) else repr(v).replace(" ", ""))
def test_lab_variant_computes_the_default(save, variant, T):
    lt = _lt()
    want, want_p = _run(lt, {}, save, T)
    got, got_p = _run(lt, variant, save, T)
    for name, a, b in zip(("s", "v_T", "v_seq", "grad_x", "grad_v0"), got, want):
        assert torch.equal(a, b), f"{name} differs under {variant} at T = {T}"
    for name, a, b in zip(("grad_tau", "grad_theta", "grad_alpha"), got_p, want_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} under {variant} at T = {T}")


def test_lab_variant_restores_the_defaults():
    lt = _lt()
    specs = lt._SPECS
    with lt.lab_variant(fwd=(64, 2), knobs=dict(fwd=dict(PREFETCH2=True)), eager_wrap=True):
        assert lt._SPECS is not specs and lt._EAGER_WRAP and lt._LAB["fwd"] == (64, 2)
    assert lt._SPECS is specs and not lt._EAGER_WRAP and lt._LAB == {}
