"""``@triton.jit`` versions of the ``bpsa_norm`` surrogate (``snn_fast.presets``), for the Triton
backend. Imported only when Triton is installed and the surrogate is registered; Triton resolves a
jit function's globals (``tl``) from this module.

x = H − θ and a = α := θ, so a + x⁺ = H where the neuron fired:
g(x) = ln(1 + x⁺/a),  g′(x) = 1[x ≥ 0]/(a + x⁺),  ∂g/∂α = −x⁺/(a·(a + x⁺)),  x⁺ = x where x > 0, else 0
(NaN → 0, as in the torch functions, so every backend gives the same).
"""
import triton
import triton.language as tl


@triton.jit
def _log1p(y):
    # ln(1 + y) to full relative precision for small y (Kahan): u − 1 is exact, and the ratio
    # y/(u − 1) corrects the rounding of u = 1 + y. tl.log(1 + y) alone loses the digits of y below
    # the float32 epsilon of 1.
    u = 1.0 + y
    d = u - 1.0
    return tl.where(d == 0.0, y, tl.log(u) * (y / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def bpsa_norm_g(x, a):
    xp = tl.where(x > 0.0, x, 0.0)
    return _log1p(xp / a)


@triton.jit
def bpsa_norm_dg(x, a):
    xp = tl.where(x > 0.0, x, 0.0)
    return tl.where(x >= 0.0, 1.0 / (a + xp), 0.0)


@triton.jit
def bpsa_norm_dalpha(x, a):
    xp = tl.where(x > 0.0, x, 0.0)
    return -xp / (a * (a + xp))
