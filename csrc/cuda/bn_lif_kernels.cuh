// The per-thread bodies of the fused batch-norm + LIF kernels (docs/spec.md §12; launch API and bytes:
// bn_lif_cuda.h): what one thread does for its neuron n (forward, backward) or element i (dx). The
// __global__ wrappers in bn_lif.cu add only the thread index; csrc/cuda/emulate/bn_lif_emulate.cu runs
// these same bodies on the host, thread by thread (tests/test_cuda_bn_lif_emulate.py). The per-element
// math is lif_step.h's (bn_input, lif_charge, lif_fire_rt, lif_reset, lif_step_backward_g), the
// functions the CPU kernels run; the flags become template arguments per thread (uniform branches).
#pragma once

#include "bn_lif_cuda.h"
#include "lif_common.cuh"

namespace snn_fast {
namespace cuda {

// The emitted value of element i from its H: the spike, or g(H − θ) where the noise mask is off.
template <typename acc_t>
SNN_HD acc_t bnlif_emitted(acc_t h, const bool* mask, int64_t i, const LIFParams<acc_t>& p) {
  return mask != nullptr ? lif_fire_rt<acc_t>(h, mask[i], p) : lif_spike<acc_t>(h, p);
}

// The forward of neuron n over t = 0 … T − 1 from v0[n]: writes the optional s, v_seq and H (each
// skipped when null) and returns V_T.
template <typename scalar_t>
SNN_HD acc_of_t<scalar_t> bnlif_run_forward(
    const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_seq, acc_of_t<scalar_t>* h_out,
    int64_t n, int64_t T, int64_t N, acc_of_t<scalar_t> a, acc_of_t<scalar_t> m, acc_of_t<scalar_t> b,
    const LIFParams<acc_of_t<scalar_t>>& p) {
  using acc_t = acc_of_t<scalar_t>;
  acc_t v = to_acc(v0[n]);
  with_flags(
      [&](auto hard, auto di) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t i = t * N + n;
          const acc_t h = lif_charge<decltype(di)::value>(v, bn_input<acc_t>(to_acc(x[i]) - m, a, b), p);
          const acc_t sp = bnlif_emitted(h, mask, i, p);
          if (s != nullptr) s[i] = from_acc<scalar_t>(sp);
          if (h_out != nullptr) h_out[i] = h;
          v = lif_reset<decltype(hard)::value>(h, sp, p);
          if (v_seq != nullptr) v_seq[i] = from_acc<scalar_t>(v);
        }
      },
      p.hard_reset, p.decay_input);
  return v;
}

// Forward of neuron n (channel (n / inner) % C): s, v_last, and the optional v_seq and H.
template <typename scalar_t>
SNN_HD void bnlif_fwd_thread(const BNLIFFwdArgs& args, int64_t n) {
  using acc_t = acc_of_t<scalar_t>;
  if (n >= args.N) return;
  const auto p = load_params(static_cast<const acc_t*>(args.params), args.flags);
  const int64_t c = (n / args.inner) % args.C;
  const acc_t v = bnlif_run_forward<scalar_t>(
      static_cast<const scalar_t*>(args.x), static_cast<const scalar_t*>(args.v0), args.mask,
      static_cast<scalar_t*>(args.s), static_cast<scalar_t*>(args.v_seq), static_cast<acc_t*>(args.h), n, args.T,
      args.N, static_cast<const acc_t*>(args.a)[c], static_cast<const acc_t*>(args.m)[c],
      static_cast<const acc_t*>(args.b)[c], p);
  static_cast<scalar_t*>(args.v_last)[n] = from_acc<scalar_t>(v);
}

// Backward of neuron n, t = T − 1 … 0 (after re-running the forward into H with `rerun`): ∂L/∂X' (or
// a_c·∂L/∂X' with scale_by_a) into grad_x, ∂L/∂v0, this neuron's Σ_t ∂L/∂X' and Σ_t ∂L/∂X'·(x − m)
// into sums[n], sums[N + n] and, with need_param_grad, its (∂k, ∂θ, ∂α) terms into psum[·N + n].
template <typename scalar_t>
SNN_HD void bnlif_bwd_thread(const BNLIFBwdArgs& args, int64_t n) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t N = args.N, T = args.T;
  if (n >= N) return;
  const auto p = load_params(static_cast<const acc_t*>(args.params), args.flags);
  const int64_t c = (n / args.inner) % args.C;
  const acc_t a = static_cast<const acc_t*>(args.a)[c], m = static_cast<const acc_t*>(args.m)[c],
              b = static_cast<const acc_t*>(args.b)[c];
  const scalar_t* x = static_cast<const scalar_t*>(args.x);
  const scalar_t* v0 = static_cast<const scalar_t*>(args.v0);
  const scalar_t* gs = static_cast<const scalar_t*>(args.grad_s);
  const scalar_t* gvs = static_cast<const scalar_t*>(args.grad_v_seq);
  acc_t* H = static_cast<acc_t*>(args.h);
  scalar_t* gx = static_cast<scalar_t*>(args.grad_x);
  if (args.rerun) bnlif_run_forward<scalar_t>(x, v0, args.mask, nullptr, nullptr, H, n, T, N, a, m, b, p);
  acc_t dv = args.grad_v_last ? to_acc(static_cast<const scalar_t*>(args.grad_v_last)[n]) : acc_t(0);
  acc_t g0 = 0, g1 = 0, sk = 0, sth = 0, sal = 0;
  const acc_t scale = args.scale_by_a ? a : acc_t(1);
  with_flags(
      [&](auto hard, auto di, auto detach, auto pgrad) {
        constexpr bool HARD = decltype(hard)::value, DI = decltype(di)::value, DET = decltype(detach)::value;
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t i = t * N + n;
          const acc_t h = H[i];
          const acc_t sp = bnlif_emitted(h, args.mask, i, p);
          if (gvs != nullptr) dv += to_acc(gvs[i]);
          const acc_t xc = to_acc(x[i]) - m;
          acc_t gp, dga, eps;
          if constexpr (decltype(pgrad)::value) {
            sg_grad_dalpha_rt<true, acc_t>(p.sg, h - p.theta, p.alpha, gp, dga);
            const acc_t vprev = t > 0 ? lif_reset<HARD>(H[i - N], bnlif_emitted(H[i - N], args.mask, i - N, p), p)
                                      : to_acc(v0[n]);
            acc_t ek, eth, eal;
            eps = lif_step_backward_g<HARD, DI, DET, acc_t, false>(h, sp, vprev, bn_input<acc_t>(xc, a, b),
                                                                   to_acc(gs[i]), dv, gp, dga, p, ek, eth, eal);
            sk += ek;
            sth += eth;
            sal += eal;
          } else {
            sg_grad_dalpha_rt<false, acc_t>(p.sg, h - p.theta, p.alpha, gp, dga);
            const acc_t ds = lif_grad_s<HARD, DET, acc_t, false>(to_acc(gs[i]), dv, h, p);
            eps = lif_grad_h<HARD>(dv, sp, ds, gp);
          }
          const acc_t gxp = lif_grad_x<DI>(eps, p);
          gx[i] = from_acc<scalar_t>(gxp * scale);
          g0 += gxp;
          g1 += gxp * xc;
          dv = lif_grad_v_prev(eps, p);
        }
      },
      p.hard_reset, p.decay_input, p.detach_reset, args.need_param_grad);
  static_cast<scalar_t*>(args.grad_v0)[n] = from_acc<scalar_t>(dv);
  acc_t* sums = static_cast<acc_t*>(args.sums);
  sums[n] = g0;
  sums[N + n] = g1;
  if (args.need_param_grad) {
    acc_t* ps = static_cast<acc_t*>(args.psum);
    ps[n] = sk;
    ps[N + n] = sth;
    ps[2 * N + n] = sal;
  }
}

// Training, element i of [T, N]: ∂L/∂x = A_c·∂L/∂X' + B_c·(x − m_c) + D_c, in place over ∂L/∂X'.
template <typename scalar_t>
SNN_HD void bnlif_dx_thread(const BNLIFDxArgs& args, int64_t i) {
  using acc_t = acc_of_t<scalar_t>;
  if (i >= args.T * args.N) return;
  const int64_t C = args.C;
  const int64_t c = ((i % args.N) / args.inner) % C;
  const acc_t* coef = static_cast<const acc_t*>(args.coef);
  scalar_t* gx = static_cast<scalar_t*>(args.grad_x);
  const acc_t xc = to_acc(static_cast<const scalar_t*>(args.x)[i]) - static_cast<const acc_t*>(args.m)[c];
  gx[i] = from_acc<scalar_t>(coef[c] * to_acc(gx[i]) + (coef[C + c] * xc + coef[2 * C + c]));
}

}  // namespace cuda
}  // namespace snn_fast
