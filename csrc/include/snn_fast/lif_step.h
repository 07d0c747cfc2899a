// One LIF step, forward and backward (SPEC §2, §4), shared by the CPU and CUDA kernels.
//
// Parametrisation: k = 1/τ (0 for IF), cx = k (decay_input) or 1, vr = v_reset (hard) or 0 (soft).
//   charge  H = V + (X − (V − vr))·k        (decay_input)
//           H = V − (V − vr)·k + X          (otherwise)
//   fire    S = Θ(H − θ) (Θ(0) = 1), or g(H − θ) where the noise mask is 0
//   reset   V = S·vr + (1 − S)·H (hard)  |  V = H − S·θ (soft)
// The charge is written in the reference's operation order, so fp32 kernels round exactly like the
// fp32 reference and spikes do not flip between them.
#pragma once

#include "snn_fast/surrogate.h"

namespace snn_fast {

template <typename T>
struct LIFParams {
  T k;       // leak 1/τ
  T theta;   // threshold θ
  T alpha;   // surrogate width α
  T vr;      // reset value (hard) or 0 (soft)
  T kappa;   // reset_residual κ
  int sg;    // surrogate id
  bool hard_reset;
  bool decay_input;
  bool detach_reset;
};

// Both forms are computed and blended by an exact 0/1 factor: a `?:` on the flag here keeps GCC from
// vectorising the CPU backward loop (measured: scalar code, 6× slower), and the extra flops are free
// in a memory-bound loop. On the GPU the compiler folds the uniform factor either way.
template <typename T>
SNN_HD T lif_charge(T v, T x, const LIFParams<T>& p) {
  const T di = p.decay_input ? T(1) : T(0);
  T with_input_decay = v + (x - (v - p.vr)) * p.k;
  T plain = (v - (v - p.vr) * p.k) + x;
  return di * with_input_decay + (T(1) - di) * plain;
}

// Emitted value: the spike where the mask is 1 (always, without a mask), g(H − θ) where it is 0.
template <typename T>
SNN_HD T lif_fire(T h, bool mask_on, const LIFParams<T>& p) {
  T xs = h - p.theta;
  return mask_on ? (xs >= T(0) ? T(1) : T(0)) : sg_prim_rt<T>(p.sg, xs, p.alpha);
}

template <typename T>
SNN_HD T lif_reset(T h, T s, const LIFParams<T>& p) {
  return p.hard_reset ? s * p.vr + (T(1) - s) * h : h - s * p.theta;
}

// Gradients of one step. In: H, the emitted S, V_{t−1}, X, ∂L/∂S_t and dv = ∂L/∂V_t (all paths).
// Returns ε = ∂L/∂H_t (the caller forms ∂L/∂X_t = ε·cx and ∂L/∂V_{t−1} = ε·(1 − k)); writes this
// step's contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α. (Scalars, not a struct: GCC's `omp simd` cannot
// vectorise a loop holding an aggregate local.)
template <int SG, typename T>
SNN_HD T lif_step_backward(T h, T s, T v_prev, T x, T grad_s, T dv, const LIFParams<T>& p, T& dk, T& dtheta,
                           T& dalpha) {
  // The flags enter as 0/1 factors, not `?:`: x·1 and x·0 are exact, so this equals the branchy form
  // for finite values, and a select on a flag inside the loop stops GCC vectorising it.
  const T hard = p.hard_reset ? T(1) : T(0), soft = T(1) - hard;
  const T live = p.detach_reset ? T(0) : T(1);  // the reset sees the spike's gradient
  const T di = p.decay_input ? T(1) : T(0);
  T xs = h - p.theta;
  T gp = sg_grad<SG>(xs, p.alpha);
  // S feeds the output, the reset (unless detached) and the κ term.
  T reset_coef = live * (hard * (p.vr - h) - soft * p.theta);
  T ds = grad_s + dv * (reset_coef + p.kappa);
  T eps = dv * (T(1) - hard * s) + ds * gp;
  dtheta = -ds * gp - soft * (dv * s);  // θ also enters the soft reset directly
  dalpha = ds * sg_dalpha<SG>(xs, p.alpha);
  dk = eps * (di * x - (v_prev - p.vr));
  return eps;
}

}  // namespace snn_fast
