// Tempotron math (SPEC §5), shared by the CPU and CUDA kernels.
//
// V[b,o,t] = v0·Σ_i W[o,i]·K(t − t_i),  K(u) = (e^{−u/τ} − e^{−u/τ_s})·1[u ≥ 0],  t_i < 0: no spike.
// Because K is a difference of two exponentials, an input spiking at t_i ∈ (k − 1, k] enters the
// integer grid at step k = ⌈t_i⌉ with weights ea = e^{−(k − t_i)/τ}, es = e^{−(k − t_i)/τ_s}; after
// scattering W[o,i]·ea (·es) into two histograms A, A_s over k, two first-order filters
//     a_t = da·a_{t−1} + A_t,   s_t = ds·s_{t−1} + A_s,t,   da = e^{−1/τ}, ds = e^{−1/τ_s}
// give V_t = v0·(a_t − s_t). Work O(B·I·O + B·O·T) instead of O(B·I·O·T); no [B, I, T] tensor.
// The exponentials are computed once per (b, i) (tempotron_entry); the O-fold inner loops only
// multiply and add.
//
// Backward, with g = ∂L/∂V: the reverse filters Ga_k = g_k + da·Ga_{k+1} (Gs likewise) give
//     ∂L/∂W[o,i]  = v0·Σ_b (Ga[b,o,k]·ea − Gs[b,o,k]·es)
//     ∂L/∂t[b,i]  = v0·Σ_o W[o,i]·(Ga[b,o,k]·ea/τ − Gs[b,o,k]·es/τ_s)
// (the derivative of K for u ≥ 0, as autograd gives it for the reference; 0 for silent inputs).
#pragma once

#include <cmath>
#include <cstdint>

#include "snn_fast/surrogate.h"  // SNN_HD

namespace snn_fast {

template <typename T>
struct TempotronConsts {
  T inv_tau, inv_tau_s;  // 1/τ, 1/τ_s
  T da, ds;              // e^{−1/τ}, e^{−1/τ_s}
  T v0;                  // PSP normalisation
};

template <typename T>
SNN_HD TempotronConsts<T> tempotron_consts(double tau, double tau_s, double v0) {
  TempotronConsts<T> c;
  c.inv_tau = T(1.0 / tau);
  c.inv_tau_s = T(1.0 / tau_s);
  c.da = T(exp(-1.0 / tau));
  c.ds = T(exp(-1.0 / tau_s));
  c.v0 = T(v0);
  return c;
}

// Grid entry of one input spike. Returns k = ⌈t⌉ and sets (ea, es); a spike that never reaches the
// grid (t < 0, NaN, or ⌈t⌉ ≥ steps) returns k = 0 with ea = es = 0, so callers need no branch: it
// adds W·0 to bin 0 and gathers nothing in the backward.
template <typename T>
SNN_HD int64_t tempotron_entry(T t, int64_t steps, const TempotronConsts<T>& c, T* ea, T* es) {
  using std::ceil;
  using std::exp;
  if (!(t >= T(0))) {
    *ea = T(0);
    *es = T(0);
    return 0;
  }
  const T kf = ceil(t);
  if (kf >= T(steps)) {
    *ea = T(0);
    *es = T(0);
    return 0;
  }
  const T u = kf - t;  // in [0, 1)
  *ea = exp(-u * c.inv_tau);
  *es = exp(-u * c.inv_tau_s);
  return int64_t(kf);
}

// One forward filter step: (a, s) ← (da·a + ha, ds·s + hs); returns V_t = v0·(a − s).
template <typename T>
SNN_HD T tempotron_filter_step(T& a, T& s, T ha, T hs, const TempotronConsts<T>& c) {
  a = c.da * a + ha;
  s = c.ds * s + hs;
  return c.v0 * (a - s);
}

// One reverse filter step: (Ga, Gs) ← (g + da·Ga, g + ds·Gs).
template <typename T>
SNN_HD void tempotron_reverse_step(T& ga, T& gs, T g, const TempotronConsts<T>& c) {
  ga = g + c.da * ga;
  gs = g + c.ds * gs;
}

// ∂L/∂W[o,i] term of one (b, o, i), without the v0 factor.
template <typename T>
SNN_HD T tempotron_dw_term(T ga, T gs, T ea, T es) {
  return ga * ea - gs * es;
}

// ∂L/∂t[b,i] term of one (b, o, i), without the v0 factor.
template <typename T>
SNN_HD T tempotron_dt_term(T w, T ga, T gs, T ea, T es, const TempotronConsts<T>& c) {
  return w * (ga * ea * c.inv_tau - gs * es * c.inv_tau_s);
}

}  // namespace snn_fast
