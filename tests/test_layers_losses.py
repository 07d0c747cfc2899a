"""tdBN and the chaotic loss (docs/spec.md §7) against the seeds' formulas."""
import math

import pytest
import torch

from snn_fast import losses
from snn_fast.nn import TDBatchNorm


def test_chaotic_loss_matches_seed_formula_and_stays_finite():
    h = torch.randn(4, 30, dtype=torch.float64) * 5
    z = 10.0
    out = torch.sigmoid(h / 10)  # the seed's chaos_loss_fun(h, z)
    seed = (-z * (0.65 * torch.log(out) + 0.35 * torch.log(1 - out))).sum()
    torch.testing.assert_close(losses.chaotic_loss(h, z), seed)
    big = torch.tensor([1e4, -1e4])  # the seed's log(sigmoid) gives inf here
    assert torch.isfinite(losses.chaotic_loss(big, z))
    with pytest.raises(ValueError, match="I0"):
        losses.chaotic_loss(h, z, I0=1.5)


def test_chaotic_loss_anneals():
    m = losses.ChaoticLoss(z=10.0, beta=0.5)
    h = torch.randn(8, requires_grad=True)
    l1 = m(h)
    m.step()
    assert m.z == 5.0
    torch.testing.assert_close(m(h), l1 / 2)
    l1.backward()
    assert h.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 3, 5, 6, 7)])
def test_tdbn_normalises_to_alpha_theta(shape):
    torch.manual_seed(0)
    C = shape[2]
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    bn = TDBatchNorm(C, alpha=1 / math.sqrt(2), v_threshold=0.5).double()
    y = bn(x)
    dims = [d for d in range(len(shape)) if d != 2]
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    expect = 0.5 / math.sqrt(2) * (x - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(y, expect)
    # eval: running statistics, updated with momentum 0.1 from the batch (unbiased variance)
    bn.eval()
    n = x.numel() / C
    rm = 0.1 * mean.flatten()
    rv = 0.9 + 0.1 * var.flatten() * n / (n - 1)
    torch.testing.assert_close(bn.running_mean, rm)
    torch.testing.assert_close(bn.running_var, rv)


def test_tdbn_bad_shape():
    with pytest.raises(ValueError, match="expects \\[T, B, C=3"):
        TDBatchNorm(3)(torch.randn(2, 4, 5))
