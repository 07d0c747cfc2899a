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

namespace detail {
// Round-to-nearest add/sub/mul that the compiler may not fuse into an FMA. nvcc contracts a·b + c
// by default (--fmad=true), which rounds once instead of twice and would let the CUDA charge drift
// from the fp32 reference by an ulp, enough to flip a spike sitting on θ. On the host these are the
// plain operators, exactly what the CPU kernel compiled before (its x86-64 baseline has no FMA).
SNN_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
SNN_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
SNN_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SNN_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
SNN_HD double sub_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
SNN_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
}  // namespace detail

// Both charge forms are evaluated with unfused round-to-nearest operations (reference order). On the
// host they are blended by an exact 0/1 factor: a `?:` on the flag keeps GCC from vectorising the
// CPU backward loop (measured: scalar code, 6x slower) and the extra flops are free in a
// memory-bound loop. On the GPU the flag is a uniform branch.
template <typename T>
SNN_HD T lif_charge(T v, T x, const LIFParams<T>& p) {
  using namespace detail;
#ifdef __CUDA_ARCH__
  return p.decay_input ? add_rn(v, mul_rn(sub_rn(x, sub_rn(v, p.vr)), p.k))
                       : add_rn(sub_rn(v, mul_rn(sub_rn(v, p.vr), p.k)), x);
#else
  const T di = p.decay_input ? T(1) : T(0);
  T with_input_decay = v + (x - (v - p.vr)) * p.k;
  T plain = (v - (v - p.vr) * p.k) + x;
  return di * with_input_decay + (T(1) - di) * plain;
#endif
}

// Emitted value: the spike where the mask is 1 (always, without a mask), g(H − θ) where it is 0.
template <typename T>
SNN_HD T lif_fire(T h, bool mask_on, const LIFParams<T>& p) {
  T xs = h - p.theta;
  return mask_on ? (xs >= T(0) ? T(1) : T(0)) : sg_prim_rt<T>(p.sg, xs, p.alpha);
}

template <typename T>
SNN_HD T lif_reset(T h, T s, const LIFParams<T>& p) {
  using namespace detail;
  // Unfused like the charge: with an analog (noisy) s these roundings matter.
  return p.hard_reset ? add_rn(mul_rn(s, p.vr), mul_rn(sub_rn(T(1), s), h)) : sub_rn(h, mul_rn(s, p.theta));
}

// Gradients of one step given gp = g′(H − θ) and dga = ∂g/∂α there. In: H, the emitted S, V_{t−1},
// X, ∂L/∂S_t and dv = ∂L/∂V_t (all paths). Returns ε = ∂L/∂H_t (the caller forms ∂L/∂X_t = ε·cx and
// ∂L/∂V_{t−1} = ε·(1 − k)); writes this step's contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α. Scalars, not a
// struct: GCC's `omp simd` cannot vectorise a loop holding an aggregate local. The flags enter as 0/1
// factors, not `?:`: x·1 and x·0 are exact, so this equals the branchy form for finite values, and a
// select on a flag inside the loop stops GCC vectorising it.
template <typename T>
SNN_HD T lif_step_backward_g(T h, T s, T v_prev, T x, T grad_s, T dv, T gp, T dga, const LIFParams<T>& p,
                             T& dk, T& dtheta, T& dalpha) {
#ifdef __CUDA_ARCH__
  // GPU: the flags are uniform branches (free), and the factor form costs registers (it made the
  // float64 ×2 backward spill on sm_90).
  T reset_coef = p.detach_reset ? T(0) : (p.hard_reset ? p.vr - h : -p.theta);
  T ds = grad_s + dv * (reset_coef + p.kappa);
  T eps = dv * (p.hard_reset ? T(1) - s : T(1)) + ds * gp;
  dtheta = -ds * gp - (p.hard_reset ? T(0) : dv * s);  // θ also enters the soft reset directly
  dalpha = ds * dga;
  dk = eps * ((p.decay_input ? x : T(0)) - (v_prev - p.vr));
#else
  const T hard = p.hard_reset ? T(1) : T(0), soft = T(1) - hard;
  const T live = p.detach_reset ? T(0) : T(1);  // the reset sees the spike's gradient
  const T di = p.decay_input ? T(1) : T(0);
  // S feeds the output, the reset (unless detached) and the κ term.
  T reset_coef = live * (hard * (p.vr - h) - soft * p.theta);
  T ds = grad_s + dv * (reset_coef + p.kappa);
  T eps = dv * (T(1) - hard * s) + ds * gp;
  dtheta = -ds * gp - soft * (dv * s);  // θ also enters the soft reset directly
  dalpha = ds * dga;
  dk = eps * (di * x - (v_prev - p.vr));
#endif
  return eps;
}

// The CPU kernel's form: the surrogate is a template argument so its loop vectorises.
template <int SG, typename T>
SNN_HD T lif_step_backward(T h, T s, T v_prev, T x, T grad_s, T dv, const LIFParams<T>& p, T& dk, T& dtheta,
                           T& dalpha) {
  T xs = h - p.theta;
  return lif_step_backward_g<T>(h, s, v_prev, x, grad_s, dv, sg_grad<SG>(xs, p.alpha), sg_dalpha<SG>(xs, p.alpha),
                                p, dk, dtheta, dalpha);
}

}  // namespace snn_fast
