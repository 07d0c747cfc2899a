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

// a_c = w_c·(rstd_c·gain), gain = tdbn_alpha·θ (tdBN) or 1: bn_lif_cpu.cpp's bn_scale, per thread.
template <typename acc_t>
SNN_HD acc_t bnlif_scale(const void* w, const void* rstd, double tdbn_alpha, int64_t c, acc_t theta) {
  const acc_t gain = tdbn_alpha > 0 ? acc_t(tdbn_alpha) * theta : acc_t(1);
  return static_cast<const acc_t*>(w)[c] * (static_cast<const acc_t*>(rstd)[c] * gain);
}

// The emitted value of element i from its H: the spike, or g(H − θ) where the noise mask is off.
template <typename acc_t>
SNN_HD acc_t bnlif_emitted(acc_t h, const bool* mask, int64_t i, const LIFParams<acc_t>& p) {
  return mask != nullptr ? lif_fire_rt<acc_t>(h, mask[i], p) : lif_spike<acc_t>(h, p);
}

// The backward re-runs the forward in segments of kSeg steps held in registers; the forward keeps the
// membrane V after steps kSeg − 1, 2·kSeg − 1, … ([⌈T/kSeg⌉ − 1, N] acc, nothing for T ≤ kSeg) so that
// each segment starts from it. kSeg = 8: the LIF op's recompute interval (bn_lif_cuda.h, whose
// bn_lif_checkpoints is this count for the host).
constexpr int kSeg = kBNLIFSeg;
SNN_HD int64_t bnlif_checkpoints(int64_t T) { return T > 0 ? (T - 1) / kSeg : 0; }

// Forward of neuron n (channel (n / inner) % C) over t = 0 … T − 1: s, v_last, the optional v_seq and
// the checkpoints (each skipped when null).
template <typename scalar_t>
SNN_HD void bnlif_fwd_thread(const BNLIFFwdArgs& args, int64_t n) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t T = args.T, N = args.N;
  if (n >= N) return;
  const auto p = load_params(static_cast<const acc_t*>(args.params), args.flags);
  const int64_t c = (n / args.inner) % args.C;
  const acc_t a = bnlif_scale<acc_t>(args.w, args.rstd, args.tdbn_alpha, c, p.theta),
              m = static_cast<const acc_t*>(args.m)[c], b = static_cast<const acc_t*>(args.b)[c];
  const scalar_t* x = static_cast<const scalar_t*>(args.x);
  scalar_t* s = static_cast<scalar_t*>(args.s);
  scalar_t* v_seq = static_cast<scalar_t*>(args.v_seq);
  acc_t* ck = static_cast<acc_t*>(args.ck);
  acc_t v = to_acc(static_cast<const scalar_t*>(args.v0)[args.v0_uniform ? 0 : n]);
  with_flags(
      [&](auto hard, auto di) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t i = t * N + n;
          const acc_t h = lif_charge<decltype(di)::value>(v, bn_input<acc_t>(to_acc(x[i]) - m, a, b), p);
          const acc_t sp = bnlif_emitted(h, args.mask, i, p);
          s[i] = from_acc<scalar_t>(sp);
          v = lif_reset<decltype(hard)::value>(h, sp, p);
          if (v_seq != nullptr) v_seq[i] = from_acc<scalar_t>(v);
          if (ck != nullptr && (t + 1) % kSeg == 0 && t + 1 < T) ck[((t + 1) / kSeg - 1) * N + n] = v;
        }
      },
      p.hard_reset, p.decay_input);
  static_cast<scalar_t*>(args.v_last)[n] = from_acc<scalar_t>(v);
}

// The backward's block: G channels (lanes, a power of two) × kThreads / G neurons of each (rows); thread
// tid is lane tid % G, row tid / G. G = 1 for a channel of many neurons with runs of 8 or more; more
// where a channel has few neurons (so that the block's threads are not idle: G·count <= kThreads) or
// short runs (inner < 8: neighbouring lanes are then neighbouring elements, so a warp reads whole
// sectors, not one element C·inner apart per thread); never more lanes than channels.
SNN_HD int bnlif_bwd_lanes(int64_t N, int64_t C, int64_t inner) {
  const int64_t count = C > 0 ? N / C : 0;
  int g = 1;
  while (g < kThreads && 2 * g * count <= kThreads) g *= 2;
  while (g < kThreads && g * inner < 8) g *= 2;
  while (g > 1 && g / 2 >= C) g /= 2;
  return g;
}

// The backward's row chunks P (its grid: ⌈C / G⌉·P blocks), at least one.
SNN_HD int64_t bnlif_bwd_blocks(int64_t N, int64_t C, int64_t inner) {
  const int64_t count = C > 0 ? N / C : 0, rows = kThreads / bnlif_bwd_lanes(N, C, inner);
  const int64_t p = (count + rows - 1) / rows;
  return p > 1 ? p : 1;
}

// Block (cg, q) of the backward, thread tid: channel c = cg·G + tid % G, its neuron k = q·(kThreads / G)
// + tid / G (k < B·inner; run r = k / inner, element n = (r·C + c)·inner + k % inner), t = T − 1 … 0,
// segment by segment: the segment's H and x − m re-run into registers from its checkpoint, then walked
// back. Writes ∂L/∂X' (a_c·∂L/∂X' with scale_by_a) into grad_x and ∂L/∂v0, and returns the neuron's
// Σ_t ∂L/∂X', Σ_t ∂L/∂X'·(x − m) and, with need_param_grad, its (∂k, ∂θ, ∂α) terms in out (zeros for a
// thread past the channels or the channel's neurons) for the block's per-lane sums.
template <typename scalar_t>
SNN_HD void bnlif_bwd_thread(const BNLIFBwdArgs& args, int64_t cg, int64_t q, int tid, double (&out)[5]) {
  using acc_t = acc_of_t<scalar_t>;
  for (int j = 0; j < 5; ++j) out[j] = 0;
  const int64_t N = args.N, T = args.T, C = args.C, inner = args.inner;
  const int G = args.G;
  const int64_t c = cg * G + tid % G, k = q * (kThreads / G) + tid / G;
  if (c >= C || k >= N / C) return;
  const int64_t r = k / inner, n = (r * C + c) * inner + (k - r * inner);
  const auto p = load_params(static_cast<const acc_t*>(args.params), args.flags);
  const acc_t a = bnlif_scale<acc_t>(args.w, args.rstd, args.tdbn_alpha, c, p.theta),
              m = static_cast<const acc_t*>(args.m)[c], b = static_cast<const acc_t*>(args.b)[c];
  const scalar_t* x = static_cast<const scalar_t*>(args.x);
  const scalar_t* gs = static_cast<const scalar_t*>(args.grad_s);
  const scalar_t* gvs = static_cast<const scalar_t*>(args.grad_v_seq);
  const acc_t* ck = static_cast<const acc_t*>(args.ck);
  scalar_t* gx = static_cast<scalar_t*>(args.grad_x);
  const acc_t v0 = to_acc(static_cast<const scalar_t*>(args.v0)[args.v0_uniform ? 0 : n]);
  acc_t dv = args.grad_v_last ? to_acc(static_cast<const scalar_t*>(args.grad_v_last)[n]) : acc_t(0);
  acc_t g0 = 0, g1 = 0, sk = 0, sth = 0, sal = 0;
  const acc_t scale = args.scale_by_a ? a : acc_t(1);
  with_flags(
      [&](auto hard, auto di, auto detach, auto pgrad) {
        constexpr bool HARD = decltype(hard)::value, DI = decltype(di)::value, DET = decltype(detach)::value,
                       PG = decltype(pgrad)::value;
        for (int64_t seg = bnlif_checkpoints(T); seg >= 0; --seg) {
          const int64_t t0 = seg * kSeg, len = T - t0 < kSeg ? T - t0 : kSeg;
          acc_t hs[kSeg], xcs[kSeg];  // registers: every index is a constant after unrolling
          const acc_t vstart = seg == 0 ? v0 : ck[(seg - 1) * N + n];
          acc_t v = vstart;
          // one running element index each way (not a 64-bit address per unrolled step)
          int64_t i = t0 * N + n;
#pragma unroll
          for (int j = 0; j < kSeg; ++j) {
            if (j < len) {
              xcs[j] = to_acc(x[i]) - m;
              hs[j] = lif_charge<DI>(v, bn_input<acc_t>(xcs[j], a, b), p);
              v = lif_reset<HARD>(hs[j], bnlif_emitted(hs[j], args.mask, i, p), p);
              i += N;
            }
          }
#pragma unroll
          for (int j = kSeg - 1; j >= 0; --j) {
            if (j < len) {
              i -= N;
              const acc_t h = hs[j], sp = bnlif_emitted(h, args.mask, i, p), xc = xcs[j];
              if (gvs != nullptr) dv += to_acc(gvs[i]);
              acc_t gp, dga, eps;
              if constexpr (PG) {
                sg_grad_dalpha_rt<true, acc_t>(p.sg, h - p.theta, p.alpha, gp, dga);
                // V_{t−1}: the previous step's reset, or the segment's start
                const acc_t vprev =
                    j > 0 ? lif_reset<HARD>(hs[j - 1], bnlif_emitted(hs[j - 1], args.mask, i - N, p), p) : vstart;
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
          }
        }
      },
      p.hard_reset, p.decay_input, p.detach_reset, args.need_param_grad);
  if (!args.v0_uniform)
    static_cast<scalar_t*>(args.grad_v0)[n] = from_acc<scalar_t>(dv);
  else if (n == 0)  // a start shared by every neuron has no gradient here: NaN, never a number
    static_cast<scalar_t*>(args.grad_v0)[0] = from_acc<scalar_t>(quiet_nan<acc_t>());
  out[0] = double(g0);
  out[1] = double(g1);
  out[2] = double(sk);
  out[3] = double(sth);
  out[4] = double(sal);
}

// Training, neuron n over t = 0 … T − 1: ∂L/∂x = A_c·∂L/∂X' + B_c·(x − m_c) + D_c, in place over
// ∂L/∂X'. One thread per neuron, as the walk: its channel (two 64-bit divisions) once, not per element.
template <typename scalar_t>
SNN_HD void bnlif_dx_thread(const BNLIFDxArgs& args, int64_t n) {
  using acc_t = acc_of_t<scalar_t>;
  if (n >= args.N) return;
  const int64_t C = args.C, N = args.N;
  const int64_t c = (n / args.inner) % C;
  const acc_t* coef = static_cast<const acc_t*>(args.coef);
  const acc_t A = coef[c], B = coef[C + c], D = coef[2 * C + c], m = static_cast<const acc_t*>(args.m)[c];
  const scalar_t* x = static_cast<const scalar_t*>(args.x);
  scalar_t* gx = static_cast<scalar_t*>(args.grad_x);
  for (int64_t t = 0; t < args.T; ++t) {
    const int64_t i = t * N + n;
    const acc_t xc = to_acc(x[i]) - m;
    gx[i] = from_acc<scalar_t>(A * to_acc(gx[i]) + (B * xc + D));
  }
}

// --- per-channel reductions ------------------------------------------------------------------------
// Each is a thread's share (a fixed stride over the channel's values, in order) plus an epilogue the
// block's thread 0 runs on the block's totals; bn_lif.cu sums the shares with block_sum (a fixed tree),
// the emulator with the same tree on the host.

constexpr int kChanThreads = 256;   // bnlif_channels: one block per channel
constexpr int kParamThreads = 256;  // bnlif_params: one block
constexpr int kStatsThreads = 256;  // bnlif_stats_part: one block per (channel, chunk)

// f(acc_t{}) for the acc type of storage dtype d (the reductions depend on it only). Host only.
template <typename F>
int with_acc_type(DType d, F&& f) {
  return d == DType::kFloat64 ? f(double{}) : f(float{});
}

// The 32-bit index instantiations of the statistics serve while a channel's values plus one block's
// stride fit in 31 bits.
inline bool bnlif_stats_narrow(const BNStatsArgs& a) {
  return a.T * (a.N / a.C) + kStatsThreads < (int64_t(1) << 31);
}

// Thread tid's share of channel c's totals: Σ over its backward blocks q of part[(c·P + q)·5 + j]
// (Σ∂L/∂X', Σ∂L/∂X'·(x − m) and, with pchan, the three parameter terms).
SNN_HD void bnlif_channel_share(const BNLIFChannelArgs& a, int64_t c, int tid, int nthreads, double (&out)[5]) {
  for (int j = 0; j < 5; ++j) out[j] = 0;
  const int K = a.pchan != nullptr ? 5 : 2;
  for (int64_t q = tid; q < a.P; q += nthreads) {
#pragma unroll
    for (int j = 0; j < 5; ++j)  // constant indices: out stays in registers
      if (j < K) out[j] += a.part[(c * a.P + q) * 5 + j];
  }
}

// Channel c from its totals (g0 = Σ∂L/∂X', g1 = Σ∂L/∂X'·(x − m), the three parameter terms), in
// double as the CPU op: ∂weight = g1·rstd·gain, ∂bias = g0; with batch statistics the dx coefficients
// A = a, B = −a·rstd²·g1/n, D = −a·g0/n (n = T·B·inner); the channel's (∂k, ∂θ + tdBN's θ term
// g1·w·rstd·α_tdBN, ∂α) into pchan, or, without parameter gradients, block 0 zeroes ∂params.
template <typename acc_t>
SNN_HD void bnlif_channel_epilogue(const BNLIFChannelArgs& a, int64_t c, const double (&tot)[5]) {
  const int64_t C = a.C;
  const acc_t theta = static_cast<const acc_t*>(a.params)[1];
  const acc_t gain = a.tdbn_alpha > 0 ? acc_t(a.tdbn_alpha) * theta : acc_t(1);
  const acc_t w = static_cast<const acc_t*>(a.w)[c], r = static_cast<const acc_t*>(a.rstd)[c];
  const double g0 = tot[0], g1 = tot[1], rd = double(r);
  static_cast<acc_t*>(a.grad_w)[c] = acc_t(g1 * rd * double(gain));
  static_cast<acc_t*>(a.grad_b)[c] = acc_t(g0);
  if (a.coef != nullptr) {
    const double n = double(a.T) * double(a.N / C);
    const double ad = double(w * (r * gain));  // the forward's a_c (bnlif_scale), exactly
    acc_t* coef = static_cast<acc_t*>(a.coef);
    coef[c] = acc_t(ad);
    coef[C + c] = acc_t(-ad * rd * rd * g1 / n);
    coef[2 * C + c] = acc_t(-ad * g0 / n);
  }
  if (a.pchan != nullptr) {
    a.pchan[c] = tot[2];
    a.pchan[C + c] = tot[3] + (a.tdbn_alpha > 0 ? g1 * double(w) * rd * a.tdbn_alpha : 0.0);
    a.pchan[2 * C + c] = tot[4];
  } else if (c == 0) {
    acc_t* gp = static_cast<acc_t*>(a.grad_params);
    gp[0] = gp[1] = gp[2] = acc_t(0);
  }
}

// Thread tid's share of ∂params: Σ over its channels of pchan's three rows.
SNN_HD void bnlif_params_share(const BNLIFChannelArgs& a, int tid, int nthreads, double (&out)[3]) {
  out[0] = out[1] = out[2] = 0;
  for (int64_t c = tid; c < a.C; c += nthreads) {
    out[0] += a.pchan[c];
    out[1] += a.pchan[a.C + c];
    out[2] += a.pchan[2 * a.C + c];
  }
}

template <typename acc_t>
SNN_HD void bnlif_params_epilogue(const BNLIFChannelArgs& a, const double (&tot)[3]) {
  acc_t* gp = static_cast<acc_t*>(a.grad_params);
  for (int j = 0; j < 3; ++j) gp[j] = acc_t(tot[j]);
}

// Chunks per channel of the statistics' first pass: ~2048 blocks in all when the channels have the
// values for it, each of at least 4096 values, at least one.
SNN_HD int64_t bnlif_stats_chunks(int64_t T, int64_t N, int64_t C, int64_t inner) {
  if (C <= 0 || inner <= 0) return 1;
  const int64_t count = T * (N / C);
  const int64_t by_size = (count + 4095) / 4096, by_grid = (2048 + C - 1) / C;
  const int64_t p = by_size < by_grid ? by_size : by_grid;
  return p > 1 ? p : 1;
}

// Block (c, p)'s thread tid: its share of Σd and Σd², d = x − K_c over chunk p of channel c's values
// (k < T·B·inner in run order: run r = k / inner is (t, b), element (r·C + c)·inner + k % inner). The
// shift K_c, the channel's first value, keeps Σd² − (Σd)²/n from cancelling when |mean| ≫ std.
template <typename scalar_t, typename idx_t>
SNN_HD void bnlif_stats_share(const BNStatsArgs& a, int64_t c, int64_t p, int tid, int nthreads, double (&out)[2]) {
  const scalar_t* x = static_cast<const scalar_t*>(a.x);
  const int64_t count = a.T * (a.N / a.C), chunk = (count + a.P - 1) / a.P;
  const int64_t begin = p * chunk, end = begin + chunk < count ? begin + chunk : count;
  const double K = double(to_acc(x[c * a.inner]));
  const idx_t inner = idx_t(a.inner);
  out[0] = out[1] = 0;
  if (begin >= end) return;
#pragma unroll 4
  for (idx_t k = idx_t(begin) + idx_t(tid); k < idx_t(end); k += idx_t(nthreads)) {
    const idx_t r = k / inner;
    const double d = double(to_acc(x[(int64_t(r) * a.C + c) * a.inner + int64_t(k - r * inner)])) - K;
    out[0] += d;
    out[1] += d * d;
  }
}

// Channel c's mean, rstd and unbiased variance from its P chunks' sums (in chunk order), in double.
template <typename scalar_t>
SNN_HD void bnlif_stats_finish(const BNStatsArgs& a, int64_t c) {
  using acc_t = acc_of_t<scalar_t>;
  if (c >= a.C) return;
  double s1 = 0, s2 = 0;
  for (int64_t p = 0; p < a.P; ++p) {
    s1 += a.part[(c * a.P + p) * 2];
    s2 += a.part[(c * a.P + p) * 2 + 1];
  }
  const double n = double(a.T) * double(a.N / a.C);
  const double K = double(to_acc(static_cast<const scalar_t*>(a.x)[c * a.inner]));
  const double dm = s1 / n;
  double var = s2 / n - dm * dm;
  var = var < 0 ? 0.0 : var;  // rounding below 0 clamped; NaN (an inf or NaN in x) kept, as on the CPU
  static_cast<acc_t*>(a.mean)[c] = acc_t(K + dm);
  static_cast<acc_t*>(a.rstd)[c] = acc_t(1.0 / sqrt(var + a.eps));
  static_cast<acc_t*>(a.var_unbiased)[c] = acc_t(var * n / (n - 1));
}

}  // namespace cuda
}  // namespace snn_fast
