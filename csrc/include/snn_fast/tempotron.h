// Tempotron math (docs/spec.md §6), shared by the CPU and CUDA kernels.
//
// V[b,o,t] = v0·Σ_i W[o,i]·K(t − t_i),  K(u) = (e^{−u/τ} − e^{−u/τ_s})·1[u ≥ 0],  t_i < 0: no spike.
//
// Stable form. With τ_slow = max(τ, τ_s), τ_fast = min(τ, τ_s) and δ = 1/τ_fast − 1/τ_slow ≥ 0,
//     K(u) = δ_signed·K̃(u),   K̃(u) = e^{−u/τ_slow}·u·φ(u·δ),   φ(z) = −expm1(−z)/z  (φ(0) = 1),
// δ_signed = 1/τ_s − 1/τ. K̃ never subtracts two nearly equal exponentials: as τ_s → τ the plain
// difference e^{−u/τ} − e^{−u/τ_s} cancels (all digits lost at |τ − τ_s| ≈ 1e-7·τ in float32; V came
// out ≡ 0 or 14 % off) while K̃ tends to the alpha kernel u·e^{−u/τ}, exactly at δ = 0.
// The kernels compute V = scale·Σ_i W·K̃(t − t_i) with scale = v0·δ_signed (finite for τ = τ_s).
//
// Grid: an input spiking at t_i ∈ (k − 1, k] enters step k = ⌈t_i⌉ with u = k − t_i ∈ [0, 1) and
//     ea = e^{−u/τ_slow},  es = e^{−u/τ_fast},  kt = K̃(u).
// Scatter W·ea and W·kt into histograms A, D over k; two first-order filters
//     d_t = ds·d_{t−1} + c1·a_{t−1} + D_t,   a_t = da·a_{t−1} + A_t,   V_t = scale·d_t
// with da = e^{−1/τ_slow}, ds = e^{−1/τ_fast}, c1 = (da − ds)/δ = da·φ(δ), follow from
// K̃(x + 1) = ds·K̃(x) + c1·e^{−x/τ_slow}. All terms are non-negative for W ≥ 0 (no cancellation).
// Work O(B·I·O + B·O·T) instead of O(B·I·O·T); no [B, I, T] tensor. The exponentials are computed
// once per (b, i) (tempotron_entry); the O-fold inner loops only multiply and add.
//
// Backward, with g = ∂L/∂V: reverse filters Ga_k = g_k + da·Ga_{k+1}, Gs_k = g_k + ds·Gs_{k+1},
// Gl_k = ds·Gl_{k+1} + c1·Ga_{k+1} give Σ_{t≥k} g_t·K̃(t − k + u) = kt·Gs_k + ea·Gl_k (from
// K̃(m + u) = ds^m·K̃(u) + ea·L_m, L_m = (da^m − ds^m)/δ), and with K̃′(x) = e^{−x/τ_fast} − K̃(x)/τ_slow:
//     ∂L/∂W[o,i]  = scale·Σ_b (kt·Gs + ea·Gl)[b,o,k]
//     ∂L/∂t[b,i]  = scale·Σ_o W[o,i]·((kt·Gs + ea·Gl)/τ_slow − es·Gs)[b,o,k]
// (the derivative of K for u ≥ 0, as autograd gives it for the reference; 0 for silent inputs).
// Only Gs and Gl are stored; Ga is the running state of Gl's recurrence.
#pragma once

#include <cmath>
#include <cstdint>

#include "snn_fast/surrogate.h"  // SNN_HD

namespace snn_fast {

template <typename T>
struct TempotronConsts {
  T inv_slow, inv_fast;  // 1/τ_slow, 1/τ_fast
  T delta;               // 1/τ_fast − 1/τ_slow ≥ 0
  T da, ds;              // e^{−1/τ_slow}, e^{−1/τ_fast}
  T c1;                  // (da − ds)/δ = da·φ(δ)
  T scale;               // V = scale·Σ W·K̃ (= v0·δ_signed)
};

// φ(z) = (1 − e^{−z})/z, 1 at z = 0; expm1 keeps it exact to rounding for tiny z.
template <typename T>
SNN_HD T tempotron_phi(T z) {
  using std::expm1;
  return z == T(0) ? T(1) : -expm1(-z) / z;
}

template <typename T>
SNN_HD TempotronConsts<T> tempotron_consts(double tau, double tau_s, double scale) {
  const double slow = tau > tau_s ? tau : tau_s, fast = tau > tau_s ? tau_s : tau;
  // slow − fast is exact when the two are within a factor 2 (Sterbenz), so δ keeps full relative
  // precision as τ_s → τ; 1/fast − 1/slow would lose it (each reciprocal rounds first).
  const double delta = (slow - fast) / slow / fast;
  TempotronConsts<T> c;
  c.inv_slow = T(1.0 / slow);
  c.inv_fast = T(1.0 / fast);
  c.delta = T(delta);
  c.da = T(exp(-1.0 / slow));
  c.ds = T(exp(-1.0 / fast));
  c.c1 = T(exp(-1.0 / slow) * tempotron_phi<double>(delta));
  c.scale = T(scale);
  return c;
}

// Grid entry of one input spike. Returns k = ⌈t⌉ and sets (ea, es, kt); a spike that never reaches
// the grid (t < 0, NaN, or ⌈t⌉ ≥ steps) returns k = 0 with ea = es = kt = 0, so callers need no
// branch: it adds W·0 to bin 0 and gathers nothing in the backward. es ≤ ea and kt ≤ ea·u, so
// ea == 0 means the input contributes nothing (silent, or e^{−u/τ_slow} underflowed).
template <typename T>
SNN_HD int64_t tempotron_entry(T t, int64_t steps, const TempotronConsts<T>& c, T* ea, T* es, T* kt) {
  using std::ceil;
  using std::exp;
  if (!(t >= T(0))) {
    *ea = T(0);
    *es = T(0);
    *kt = T(0);
    return 0;
  }
  const T kf = ceil(t);
  if (kf >= T(steps)) {
    *ea = T(0);
    *es = T(0);
    *kt = T(0);
    return 0;
  }
  const T u = kf - t;  // in [0, 1)
  *ea = exp(-u * c.inv_slow);
  *es = exp(-u * c.inv_fast);
  *kt = *ea * (u * tempotron_phi<T>(u * c.delta));
  return int64_t(kf);
}

// One forward filter step: d ← ds·d + c1·a + hd (with the previous a), a ← da·a + ha; returns V_t.
template <typename T>
SNN_HD T tempotron_filter_step(T& a, T& d, T ha, T hd, const TempotronConsts<T>& c) {
  d = c.ds * d + c.c1 * a + hd;
  a = c.da * a + ha;
  return c.scale * d;
}

// One reverse filter step: Gl ← ds·Gl + c1·Ga (with the previous Ga), Ga ← g + da·Ga, Gs ← g + ds·Gs.
template <typename T>
SNN_HD void tempotron_reverse_step(T& ga, T& gs, T& gl, T g, const TempotronConsts<T>& c) {
  gl = c.ds * gl + c.c1 * ga;
  ga = g + c.da * ga;
  gs = g + c.ds * gs;
}

// ∂L/∂W[o,i] term of one (b, o, i), without the scale factor.
template <typename T>
SNN_HD T tempotron_dw_term(T gs, T gl, T ea, T kt) {
  return kt * gs + ea * gl;
}

// ∂L/∂t[b,i] term of one (b, o, i), without the scale factor.
template <typename T>
SNN_HD T tempotron_dt_term(T w, T gs, T gl, T ea, T es, T kt, const TempotronConsts<T>& c) {
  return w * ((kt * gs + ea * gl) * c.inv_slow - es * gs);
}

}  // namespace snn_fast
