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
  scalar_t* __restrict__ saved;            // nullptr with save="recompute"
  acc_of_t<scalar_t>* __restrict__ ckpt;   // save="recompute": V every kRcChunk steps, else nullptr
  bool v0_uniform = false;                 // v0 [1]: v0[0] starts every neuron
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
  load_start<VEC>(a.v0, a.v0_uniform, n0, v);
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
            hv[j] = Codec::encode(h, p);
          }
        },
        p.hard_reset, p.decay_input);
    store_acc<VEC>(a.s, off, sv);
    if (a.saved != nullptr) store_pack<VEC>(a.saved, off, hv);
    if (a.v_seq != nullptr) store_acc<VEC>(a.v_seq, off, v);
    // save="recompute": V after steps K, 2K, … in the accumulation dtype, exactly the V the re-run
    // starts from (not after the last step: v_last holds that).
    if (a.ckpt != nullptr && (t + 1) % kRcChunk == 0 && t + 1 < T) store_pack<VEC>(a.ckpt, (t / kRcChunk) * N + n0, v);
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
  const acc_of_t<scalar_t>* __restrict__ ckpt;  // save="recompute": the forward's V checkpoints
  bool v0_uniform = false;  // v0 [1]: v0[0] starts every neuron; grad_v0 [1] gets NaN
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
  // A uniform start's grad_v0 [1] is NaN (no gradient): written here, before the loop, where few
  // registers are live (at the end, beside dv, the branch cost the bf16/fp16 ×8 kernel a spill, sm_80).
  if (a.v0_uniform && n0 == 0) a.grad_v0[0] = from_acc<scalar_t>(quiet_nan<acc_t>());

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
      Codec::decode(raw[j], p, hh, xx, spike);
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
      if (t == 0) load_start<VEC>(a.v0, a.v0_uniform, n0, v0v);
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
      Codec::decode(raw[j], p, h[j], xs, spike);
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
              if (t > 0) Codec::decode(rawp[j], p, hprev, xsprev, spikeprev);
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
  if (!a.v0_uniform) store_acc<VEC>(a.grad_v0, n0, dv);
}

// save="recompute": backward for neuron i from x, v0 and the V checkpoints, without a saved H.
// Segments of K = kRcChunk steps, last first: re-run the forward over the segment from its first V
// (v0 or checkpoint c − 1) with the forward's own lif_charge / lif_fire_rt / lif_reset (the same H
// and spikes bit for bit), keeping H in `hbuf` (this thread's K slots, `stride` apart: a column of a
// __shared__ [K][kThreads] array in the kernel, a local array in the emulator), then walk the segment
// back as lif_bwd_thread does. V_{t−1} (PARAM) is the segment's first V or the forward's reset of
// step t − 1 again, the mask and (PARAM with decay_input) X_t are read again: this thread read them a
// segment earlier. One neuron per thread (kRcVec = 1), loops not unrolled: H in registers instead
// (the segment unrolled, VEC = 1) needed 128 registers and spilled 192 B with PARAM (sm_90, fp32),
// or 156 registers without spills under __launch_bounds__(256, 1) at 303 s of ptxas per kernel.
template <typename scalar_t, bool PARAM>
SNN_HD void lif_bwd_rc_thread(const BwdPtrs<scalar_t>& a, int64_t T, int64_t N, const LIFFlagsC& flags, int64_t i,
                              acc_of_t<scalar_t>* hbuf, int stride, acc_of_t<scalar_t>& dk, acc_of_t<scalar_t>& dth,
                              acc_of_t<scalar_t>& dal) {
  using acc_t = acc_of_t<scalar_t>;
  constexpr int K = kRcChunk;
  const int64_t n0 = i;  // int64 throughout: T·N may exceed 2^31
  if (n0 >= N) return;
  const LIFParams<acc_t> p = load_params<acc_t>(a.params, flags);
  auto load1 = [&](const scalar_t* base, int64_t off) {
    acc_t v[1];
    load_acc<1>(base, off, v);
    return v[0];
  };
  auto mask_at = [&](int64_t off) {
    bool m[1] = {true};
    if (a.mask != nullptr) load_mask<1>(a.mask, off, m);
    return m[0];
  };
  acc_t dv = a.grad_v_last != nullptr ? load1(a.grad_v_last, n0) : acc_t(0);
  const int64_t nseg = (T + K - 1) / K;
  with_flags(
      [&](auto hard, auto di, auto detach) {
        constexpr bool HARD = decltype(hard)::value, DI = decltype(di)::value, DETACH = decltype(detach)::value;
        for (int64_t c = nseg - 1; c >= 0; --c) {
          const int64_t t0 = c * K;
          const int len = int(T - t0 < K ? T - t0 : K);
          const acc_t vstart = c == 0 ? load1(a.v0, a.v0_uniform ? 0 : n0) : load_ro(a.ckpt + (c - 1) * N + n0);
          acc_t v = vstart;
#pragma unroll 1
          for (int q = 0; q < len; ++q) {
            const int64_t off = (t0 + q) * N + n0;
            const acc_t h = lif_charge<DI>(v, load1(a.x, off), p);
            hbuf[q * stride] = h;
            v = lif_reset<HARD>(h, lif_fire_rt<acc_t>(h, mask_at(off), p), p);
          }
#pragma unroll 1
          for (int q = len - 1; q >= 0; --q) {
            const int64_t off = (t0 + q) * N + n0;
            const acc_t h = hbuf[q * stride];
            const acc_t xs = h - p.theta;
            acc_t gp, dga;
            sg_grad_dalpha_rt<PARAM, acc_t>(p.sg, xs, p.alpha, gp, dga);
            const acc_t s = emitted<acc_t>(xs, lif_fires(xs, p), mask_at(off), p);  // = the forward's lif_fire_rt
            if (a.grad_v_seq != nullptr) dv += load1(a.grad_v_seq, off);
            acc_t vprev = vstart, xv = acc_t(0);
            if constexpr (PARAM) {
              if (q > 0) {
                const acc_t hp = hbuf[(q - 1) * stride];
                vprev = lif_reset<HARD>(hp, lif_fire_rt<acc_t>(hp, mask_at(off - N), p), p);
              }
              if constexpr (DI) xv = load1(a.x, off);
            }
            acc_t g_dk, g_dth, g_dal;
            const acc_t eps = lif_step_backward_g<HARD, DI, DETACH, acc_t>(h, s, vprev, xv, load1(a.grad_s, off), dv,
                                                                         gp, dga, p, g_dk, g_dth, g_dal);
            const acc_t gx[1] = {lif_grad_x<DI>(eps, p)};
            store_acc<1>(a.grad_x, off, gx);
            dv = lif_grad_v_prev(eps, p);
            if constexpr (PARAM) {
              dk += g_dk;
              dth += g_dth;
              dal += g_dal;
            }
          }
        }
      },
      p.hard_reset, p.decay_input, p.detach_reset);
  const acc_t gv0[1] = {dv};
  store_grad_start<1>(a.grad_v0, a.v0_uniform, n0, gv0);
}

}  // namespace cuda
}  // namespace snn_fast
