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

template <typename T>
SNN_HD T lif_charge(T v, T x, const LIFParams<T>& p) {
  using namespace detail;
  // decay_input: v + (x − (v − vr))·k;  otherwise: (v − (v − vr)·k) + x. Reference order, unfused.
  return p.decay_input ? add_rn(v, mul_rn(sub_rn(x, sub_rn(v, p.vr)), p.k))
                       : add_rn(sub_rn(v, mul_rn(sub_rn(v, p.vr), p.k)), x);
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

// Gradients of one step. In: H, the emitted S, V_{t−1}, X, ∂L/∂S_t and dV = ∂L/∂V_t (all paths).
// Out: ε = ∂L/∂H_t (the caller forms ∂L/∂X_t = ε·cx and ∂L/∂V_{t−1} = ε·(1 − k)) and the
// contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α.
template <typename T>
struct LIFStepGrad {
  T eps, dk, dtheta, dalpha;
};

// The step's gradients given gp = g′(H − θ) and dga = ∂g/∂α at H − θ (dga only matters for dalpha).
// The CUDA kernels call this with a runtime surrogate switch; the CPU kernel through the template below.
template <typename T>
SNN_HD LIFStepGrad<T> lif_step_backward_g(T h, T s, T v_prev, T x, T grad_s, T dv, T gp, T dga,
                                          const LIFParams<T>& p) {
  // S feeds the output, the reset (unless detached) and the κ term.
  T reset_coef = p.hard_reset ? (p.detach_reset ? T(0) : p.vr - h) : (p.detach_reset ? T(0) : -p.theta);
  T ds = grad_s + dv * (reset_coef + p.kappa);
  LIFStepGrad<T> r;
  r.eps = dv * (p.hard_reset ? T(1) - s : T(1)) + ds * gp;
  r.dtheta = -ds * gp - (p.hard_reset ? T(0) : dv * s);  // θ also enters the soft reset directly
  r.dalpha = ds * dga;
  r.dk = r.eps * ((p.decay_input ? x : T(0)) - (v_prev - p.vr));
  return r;
}

template <int SG, typename T>
SNN_HD LIFStepGrad<T> lif_step_backward(T h, T s, T v_prev, T x, T grad_s, T dv, const LIFParams<T>& p) {
  T xs = h - p.theta;
  return lif_step_backward_g<T>(h, s, v_prev, x, grad_s, dv, sg_grad<SG>(xs, p.alpha),
                                sg_dalpha<SG>(xs, p.alpha), p);
}

}  // namespace snn_fast
