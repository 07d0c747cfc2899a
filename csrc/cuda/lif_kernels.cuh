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
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const acc_t h = lif_charge<acc_t>(v[j], xv[j], p);
      const bool spike = (h - p.theta) >= acc_t(0);
      sv[j] = emitted<acc_t>(h, spike, m[j], p);
      v[j] = lif_reset<acc_t>(h, sv[j], p);
      hv[j] = Codec::encode(h, p.theta, spike);
    }
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
  const acc_t cx = p.decay_input ? p.k : acc_t(1), keep = acc_t(1) - p.k;

  acc_t dv[VEC];
  if (a.grad_v_last != nullptr) {
    load_acc<VEC>(a.grad_v_last, n0, dv);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) dv[j] = acc_t(0);
  }
  // H and the emitted S of a step, decoded from the saved state (+ mask). Loaded one step ahead
  // (step t − 1 in iteration t), so PARAM gets V_{t−1} = reset(H_{t−1}, S_{t−1}) from the same read.
  auto load_step = [&](int64_t t, acc_t(&hh)[VEC], acc_t(&ss)[VEC]) {
    const int64_t off = t * N + n0;
    scalar_t raw[VEC];
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
      bool spike;
      Codec::decode(raw[j], p.theta, hh[j], spike);
      ss[j] = emitted<acc_t>(hh[j], spike, m[j], p);
    }
  };
  acc_t h[VEC], s[VEC];
  load_step(T - 1, h, s);

  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = t * N + n0;
    acc_t hp[VEC], sp[VEC], vprev[VEC], xv[VEC];
    if (t > 0) load_step(t - 1, hp, sp);
    if (PARAM) {
      if (t > 0) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) vprev[j] = lif_reset<acc_t>(hp[j], sp[j], p);
      } else {
        load_acc<VEC>(a.v0, n0, vprev);
      }
      if (p.decay_input) {
        load_acc<VEC>(a.x, off, xv);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xv[j] = acc_t(0);
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) vprev[j] = xv[j] = acc_t(0);  // unused without PARAM
    }
    acc_t gs[VEC];
    load_acc<VEC>(a.grad_s, off, gs);
    if (a.grad_v_seq != nullptr) {
      acc_t gq[VEC];
      load_acc<VEC>(a.grad_v_seq, off, gq);
#pragma unroll
      for (int j = 0; j < VEC; ++j) dv[j] += gq[j];
    }
    acc_t gx[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      acc_t gp, dga;
      sg_grad_dalpha_rt<PARAM, acc_t>(p.sg, h[j] - p.theta, p.alpha, gp, dga);
      acc_t g_dk, g_dth, g_dal;
      const acc_t eps = lif_step_backward_g<acc_t>(h[j], s[j], vprev[j], xv[j], gs[j], dv[j], gp, dga, p, g_dk, g_dth, g_dal);
      gx[j] = eps * cx;
      dv[j] = eps * keep;
      if (PARAM) {
        dk += g_dk;
        dth += g_dth;
        dal += g_dal;
      }
    }
    store_acc<VEC>(a.grad_x, off, gx);
    if (t > 0) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        h[j] = hp[j];
        s[j] = sp[j];
      }
    }
  }
  store_acc<VEC>(a.grad_v0, n0, dv);
}

}  // namespace cuda
}  // namespace snn_fast
