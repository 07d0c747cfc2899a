// The per-thread bodies of the fused LIF kernels: what one thread does for its VEC contiguous
// neurons over the whole T loop. The __global__ wrappers (lif_fwd.cu, lif_bwd.cu) add only the
// thread index and the block reduction; csrc/cuda/emulate/ runs these same bodies on the host.
// Per-element math comes from snn_fast/lif_step.h, the functions the CPU kernel runs.
#pragma once

#include "lif_common.cuh"

namespace snn_fast {
namespace cuda {

template <typename scalar_t>
struct FwdPtrs {
  const scalar_t* __restrict__ x;
  const scalar_t* __restrict__ v0;
  const acc_of_t<scalar_t>* __restrict__ params;
  const bool* __restrict__ mask;
  scalar_t* __restrict__ s;
  scalar_t* __restrict__ v_last;
  scalar_t* __restrict__ v_seq;
  scalar_t* __restrict__ saved;
};

// Forward for neurons [i·VEC, i·VEC + VEC): membranes in registers, one 16-byte access per tensor
// per step. The optional mask and v_seq are null checks (uniform branches).
template <typename scalar_t, int VEC>
SNN_HD void lif_fwd_thread(const FwdPtrs<scalar_t>& a, int64_t T, int64_t N, const LIFFlagsC& flags, int64_t i) {
  using acc_t = acc_of_t<scalar_t>;
  using Codec = SavedCodec<scalar_t>;
  const int64_t n0 = i * VEC;  // int64 throughout: T·N may exceed 2^31
  if (n0 >= N) return;
  const LIFParams<acc_t> p = load_params<acc_t>(a.params, flags);

  acc_t v[VEC];
  load_acc<VEC>(a.v0, n0, v);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N + n0;
    acc_t xv[VEC];
    load_acc<VEC>(a.x, off, xv);
    bool m[VEC];
    if (a.mask != nullptr) {
      load_mask<VEC>(a.mask, off, m);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) m[j] = true;
    }
    acc_t sv[VEC];
    scalar_t hv[VEC];
    with_flags(
        [&](auto hard, auto di) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            const acc_t h = lif_charge<decltype(di)::value>(v[j], xv[j], p);
            sv[j] = lif_fire_rt<acc_t>(h, m[j], p);
            v[j] = lif_reset<decltype(hard)::value>(h, sv[j], p);
            hv[j] = Codec::encode(h, p.theta);
          }
        },
        p.hard_reset, p.decay_input);
    store_acc<VEC>(a.s, off, sv);
    store_pack<VEC>(a.saved, off, hv);
    if (a.v_seq != nullptr) store_acc<VEC>(a.v_seq, off, v);
  }
  store_acc<VEC>(a.v_last, n0, v);
}

template <typename scalar_t>
struct BwdPtrs {
  const scalar_t* __restrict__ grad_s;
  const scalar_t* __restrict__ grad_v_last;
  const scalar_t* __restrict__ grad_v_seq;
  const scalar_t* __restrict__ x;
  const scalar_t* __restrict__ v0;
  const acc_of_t<scalar_t>* __restrict__ params;
  const bool* __restrict__ mask;
  const scalar_t* __restrict__ saved;
  scalar_t* __restrict__ grad_x;
  scalar_t* __restrict__ grad_v0;
  double* __restrict__ partial;  // [gridDim.x, 3] when PARAM
};

// Backward for neurons [i·VEC, i·VEC + VEC), t = T−1 … 0 with ∂L/∂V in registers. With PARAM, adds
// this thread's contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α into dk, dth, dal (left alone otherwise).
template <typename scalar_t, int VEC, bool PARAM>
SNN_HD void lif_bwd_thread(const BwdPtrs<scalar_t>& a, int64_t T, int64_t N, const LIFFlagsC& flags, int64_t i,
                           acc_of_t<scalar_t>& dk, acc_of_t<scalar_t>& dth, acc_of_t<scalar_t>& dal) {
  using acc_t = acc_of_t<scalar_t>;
  using Codec = SavedCodec<scalar_t>;
  const int64_t n0 = i * VEC;  // int64 throughout: T·N may exceed 2^31
  if (n0 >= N) return;
  const LIFParams<acc_t> p = load_params<acc_t>(a.params, flags);

  acc_t dv[VEC];
  if (a.grad_v_last != nullptr) {
    load_acc<VEC>(a.grad_v_last, n0, dv);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dv[j] = acc_t(0);
  }
  // A step's saved state and its emitted S (decoded + mask). Loaded one step ahead (step t − 1 in
  // iteration t), so PARAM gets V_{t−1} = reset(H_{t−1}, S_{t−1}) from the same read. The raw saved
  // value is what is carried to the next iteration, H and H − θ are decoded from it where used: fewer
  // live registers (carrying both made the float64 ×2 kernel spill on sm_90).
  auto load_step = [&](int64_t t, scalar_t(&raw)[VEC], acc_t(&ss)[VEC]) {
    const int64_t off = t * N + n0;
    load_pack<VEC>(a.saved, off, raw);
    bool m[VEC];
    if (a.mask != nullptr) {
      load_mask<VEC>(a.mask, off, m);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) m[j] = true;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t hh, xx;
      bool spike;
      Codec::decode(raw[j], p.theta, hh, xx, spike);
      ss[j] = emitted<acc_t>(xx, spike, m[j], p);
    }
  };
  scalar_t raw[VEC];
  acc_t s[VEC];
  load_step(T - 1, raw, s);

  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = t * N + n0;
    scalar_t rawp[VEC];
    acc_t sp[VEC], v0v[VEC], xv[VEC];
    if (t > 0) load_step(t - 1, rawp, sp);
    if (PARAM) {
      if (t == 0) load_acc<VEC>(a.v0, n0, v0v);
      if (p.decay_input) {
        load_acc<VEC>(a.x, off, xv);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xv[j] = acc_t(0);  // unused: ∂H/∂k has no X term
      }
    }
    acc_t gs[VEC];
    load_acc<VEC>(a.grad_s, off, gs);
    if (a.grad_v_seq != nullptr) {
      acc_t gq[VEC];
      load_acc<VEC>(a.grad_v_seq, off, gq);
#pragma unroll
      for (int j = 0; j < VEC; ++j) dv[j] += gq[j];
    }
    acc_t h[VEC], gp[VEC], dga[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t xs;
      bool spike;
      Codec::decode(raw[j], p.theta, h[j], xs, spike);
      sg_grad_dalpha_rt<PARAM, acc_t>(p.sg, xs, p.alpha, gp[j], dga[j]);
    }
    acc_t gx[VEC];
    with_flags(
        [&](auto hard, auto di, auto detach) {
          constexpr bool HARD = decltype(hard)::value, DI = decltype(di)::value;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            acc_t vprev = acc_t(0);  // V_{t−1}: the reset of the previous step's H and S, or v0 (PARAM only)
            if (PARAM) {
              acc_t hprev, xsprev;
              bool spikeprev;
              if (t > 0) Codec::decode(rawp[j], p.theta, hprev, xsprev, spikeprev);
              vprev = t > 0 ? lif_reset<HARD>(hprev, sp[j], p) : v0v[j];
            }
            acc_t g_dk, g_dth, g_dal;
            // EXACT_K0 = false: detach_reset with κ = 0 keeps 0·dv here (lif_step.h lif_grad_s: registers)
            const acc_t eps = lif_step_backward_g<HARD, DI, decltype(detach)::value, acc_t, false>(
                h[j], s[j], vprev, PARAM ? xv[j] : acc_t(0), gs[j], dv[j], gp[j], dga[j], p, g_dk, g_dth, g_dal);
            gx[j] = lif_grad_x<DI>(eps, p);
            dv[j] = lif_grad_v_prev(eps, p);
            if (PARAM) {
              dk += g_dk;
              dth += g_dth;
              dal += g_dal;
            }
          }
        },
        p.hard_reset, p.decay_input, p.detach_reset);
    store_acc<VEC>(a.grad_x, off, gx);
    if (t > 0) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        raw[j] = rawp[j];
        s[j] = sp[j];
      }
    }
  }
  store_acc<VEC>(a.grad_v0, n0, dv);
}

}  // namespace cuda
}  // namespace snn_fast
