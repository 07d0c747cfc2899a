// Fused batch-norm + LIF CPU kernels (templates; docs/spec.md §12), instantiated once per storage
// dtype in bn_lif_cpu_kernels_*.cpp. The torch-facing ops and the byte counts are in bn_lif_cpu.cpp.
//
// They are the LIF kernels of lif_cpu_kernels_impl.h (same blocks, block queue, ISA clones and
// lif_step.h functions) with the charge's input X' = (x − m_c)·a_c + b_c (lif_step.h bn_input). A
// block's a, m, b are expanded once per block into per-lane arrays, so the inner loops stay straight
// vector code (no division for the channel per element).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bn_lif_cpu_kernels.h"
#include "lif_cpu_kernels_impl.h"

namespace snn_fast {
namespace cpu_bn_lif {

using cpu_lif::BlockQueue;
using cpu_lif::Given;
using cpu_lif::kRuntimeSurrogate;
// The reset timing is after the spike here (the op refuses the others: bn_lif_cpu.cpp), a constant so
// lif_step.h's timing branches fold away and the loops vectorise as the LIF kernels' default timing.
constexpr int kAfter = kResetAfterFire;

// Runs (one channel's contiguous elements) of a few elements: a Linear's [T, B, C] (runs of 1), a
// ResNet's late 1×1 … 7×7 stages. Taken one run at a time, their per-run cost exceeds the arithmetic
// (the backward of [4, 4, 512, 1, 1] took 47 µs against 8 µs for the LIF op alone). Below these
// lengths the work goes per element or per column of a [rows, C·inner] view instead. Each threshold
// is where the two ways measured level (a standalone build of these kernels, 1–2 threads; per run
// vs the other way, in µs): the statistics 39 vs 14 at runs of 16, 24 vs 28 at 64, 854 vs 791 at 49
// with 32·512 channels' runs; dx 13 vs 3.7 at 4, 5.2 vs 5.8 at 16, 223 vs 413 at 49; the per-lane
// arrays 5.2 vs 1.5 at 1, 4.3 vs 4.9 at 8, 154 vs 381 at 49.
constexpr int64_t kShortRunStats = 64;
constexpr int64_t kShortRunStatsAlways = 16;  // below it, per column whatever C·inner (bn_stats_kernel)
constexpr int64_t kShortRunDx = 16;
constexpr int64_t kShortRunDxCols = 4096;  // most columns per task of the short-run dx pass (bn_lif_dx_kernel)
constexpr int64_t kShortRunExpand = 8;

// a, m, b of lanes n0 … n0 + n − 1 into per-lane arrays.
template <typename acc_t>
inline void expand(const BNAffine<acc_t>& f, int64_t n0, int64_t n, acc_t* a, acc_t* m, acc_t* b) {
  int64_t c = (n0 / f.inner) % f.C, r = n0 % f.inner;
  if (f.inner < kShortRunExpand) {
    for (int64_t j = 0; j < n; ++j) {
      a[j] = f.a[c];
      m[j] = f.m[c];
      b[j] = f.b[c];
      if (++r == f.inner) {
        r = 0;
        if (++c == f.C) c = 0;
      }
    }
    return;
  }
  for (int64_t j = 0; j < n;) {  // one channel's run of lanes at a time
    const int64_t len = std::min(n - j, f.inner - r);
    std::fill(a + j, a + j + len, f.a[c]);
    std::fill(m + j, m + j + len, f.m[c]);
    std::fill(b + j, b + j + len, f.b[c]);
    j += len;
    r += len;
    if (r == f.inner) {
      r = 0;
      if (++c == f.C) c = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Statistics: channel c owns the T·B runs of S contiguous elements at ((t·B + b)·C + c)·S. Each run's
// sum and its sum of squared deviations from the run's mean are taken in the compute dtype (vector
// reductions over one run, in L1; the deviations' own sum corrects for the rounding of that mean),
// and each channel merges its runs in double in run order (Chan et al.): no cancellation of
// E[x²] − E[x]², and the result does not depend on the thread count.
template <typename scalar_t>
SNN_CPU_CLONES void run_moments(const scalar_t* __restrict__ p, int64_t n, double& mean, double& m2) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += acc_t(p[j]);  // [vec]
  const acc_t rm = acc_t(double(s) / double(n));
  acc_t q = 0, e = 0;
#pragma omp simd reduction(+ : q, e)
  for (int64_t j = 0; j < n; ++j) {  // [vec]
    const acc_t d = acc_t(p[j]) - rm;
    q += d * d;
    e += d;
  }
  mean = double(rm) + double(e) / double(n);
  m2 = double(q) - double(e) * double(e) / double(n);
}

// Channels of a few elements per run (inner < kShortRunStats: a Linear's [T, B, C], a ResNet's late 1×1 …
// 7×7 stages): a call per run would cost more than its arithmetic (156 µs for [4, 4, 512, 1, 1]). There
// x is [runs, W = C·inner], and each column k is summed over the runs in run order, vectorised across
// the columns, in double; two passes (the mean, then the squared deviations from it), so no
// cancellation. Each column is one thread's, and channels merge their columns in order: the result
// does not depend on the thread count either. Two [C·inner] double arrays: for runs of 16 … 63
// elements taken only while they stay in L2 (kShortRunCols), else run by run.
constexpr int64_t kShortRunCols = 32768;

template <typename scalar_t>
void bn_stats_short_runs(const scalar_t* x, int64_t runs, int64_t C, int64_t inner, double* mean, double* var) {
  const int64_t W = C * inner;
  const double n = double(runs) * double(inner);
  std::vector<double> col(W, 0.0), mu(W);
  const int64_t grain = std::max<int64_t>(64, (int64_t(1) << 16) / std::max<int64_t>(runs, 1));
  at::parallel_for(0, W, grain, [&](int64_t k0, int64_t k1) {
    double* __restrict__ s = col.data();
    for (int64_t r = 0; r < runs; ++r) {
      const scalar_t* __restrict__ row = x + r * W;
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k) s[k] += double(row[k]);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t = 0;
    for (int64_t k = c * inner; k < (c + 1) * inner; ++k) t += col[k];
    mean[c] = t / n;
    for (int64_t k = c * inner; k < (c + 1) * inner; ++k) mu[k] = mean[c];
  }
  std::fill(col.begin(), col.end(), 0.0);
  at::parallel_for(0, W, grain, [&](int64_t k0, int64_t k1) {
    double* __restrict__ q = col.data();
    const double* __restrict__ m = mu.data();
    for (int64_t r = 0; r < runs; ++r) {
      const scalar_t* __restrict__ row = x + r * W;
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k) {
        const double d = double(row[k]) - m[k];
        q[k] += d * d;
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t = 0;
    for (int64_t k = c * inner; k < (c + 1) * inner; ++k) t += col[k];
    var[c] = t / n;
  }
}

template <typename scalar_t>
void bn_stats_kernel(const scalar_t* x, int64_t T, int64_t N, int64_t C, int64_t inner, double* mean, double* var) {
  const int64_t runs = T * (N / (C * inner));
  // Runs under kShortRunStatsAlways elements always per column (run by run is several times slower
  // there whatever C·inner: C = 4096 of 3×3, 1884 µs against 273); up to kShortRunStats only while the
  // column arrays stay in L2.
  if (inner < kShortRunStatsAlways || (inner < kShortRunStats && C * inner <= kShortRunCols))
    return bn_stats_short_runs<scalar_t>(x, runs, C, inner, mean, var);
  // Runs in memory order, a block of rows of the [runs, C·inner] view (about 2^20 elements) at a time:
  // threads take ranges of the block's runs as x lies, then each channel merges its runs of the block
  // (Chan et al.) in run order, as before: the same bits, whatever the threads. Taken channel by
  // channel, a channel's T·B runs lie C·inner apart and each one restarted the hardware prefetch
  // (the statistics of [4, 32, 64, 56, 56] float32 took 5.8 ms against 3.5–4 ms for x.sum()).
  const int64_t R = std::clamp<int64_t>((int64_t(1) << 20) / (C * inner), 1, std::max<int64_t>(runs, 1));
  std::vector<double> rmean(R * C), rm2(R * C), cnt(C, 0.0), mu(C, 0.0), m2(C, 0.0);
  for (int64_t r0 = 0; r0 < runs; r0 += R) {
    const int64_t nr = std::min(R, runs - r0);
    const scalar_t* xb = x + r0 * C * inner;
    at::parallel_for(0, nr * C, std::max<int64_t>(1, (int64_t(1) << 16) / inner), [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) run_moments<scalar_t>(xb + i * inner, inner, rmean[i], rm2[i]);
    });
    at::parallel_for(0, C, std::max<int64_t>(1, 4096 / nr), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = 0; r < nr; ++r) {
          const double n_new = cnt[c] + double(inner);
          const double delta = rmean[r * C + c] - mu[c];
          mu[c] += delta * (double(inner) / n_new);
          m2[c] += rm2[r * C + c] + delta * delta * (cnt[c] * double(inner) / n_new);
          cnt[c] = n_new;
        }
    });
  }
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = mu[c];
    var[c] = std::max(m2[c], 0.0) / cnt[c];
  }
}

// ---------------------------------------------------------------------------------------------------
// Forward: cpu_lif::fwd_block with the affine input.
template <bool HARD, bool DI, bool MASKED, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void fwd_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                              const bool* __restrict__ mask, scalar_t* __restrict__ s,
                              scalar_t* __restrict__ v_last, scalar_t* __restrict__ v_seq, acc_t* __restrict__ v,
                              const acc_t* __restrict__ a, const acc_t* __restrict__ m,
                              const acc_t* __restrict__ b, int64_t n, int64_t T, int64_t N,
                              const LIFParams<acc_t> p) {
  auto step = [&](acc_t vv, int64_t i, int64_t j) {
    const acc_t xp = bn_input<acc_t>(acc_t(x[i]) - m[j], a[j], b[j]);
    const acc_t h = lif_charge<DI, acc_t, kAfter>(vv, xp, p);
    acc_t sp;
    if constexpr (MASKED) sp = lif_fire_rt<acc_t>(h, mask[i], p);
    else sp = lif_spike<acc_t>(h, p);
    s[i] = scalar_t(sp);
    return lif_reset<HARD, acc_t, kAfter>(h, sp, p);
  };
  for (int64_t j = 0; j < n; ++j) v[j] = acc_t(v0[j]);
  int64_t t = 0;
  if (v_seq == nullptr) {  // four steps per pass, as cpu_lif::fwd_block
    for (; t + 4 <= T; t += 4) {
      const int64_t off = t * N;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {  // [vec]
        acc_t vv = v[j];
        vv = step(vv, off + j, j);
        vv = step(vv, off + N + j, j);
        vv = step(vv, off + 2 * N + j, j);
        v[j] = step(vv, off + 3 * N + j, j);
      }
    }
  }
  for (; t < T; ++t) {
    const int64_t off = t * N;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) v[j] = step(v[j], off + j, j);  // [vec]
    if (v_seq != nullptr)
      for (int64_t j = 0; j < n; ++j) v_seq[off + j] = scalar_t(v[j]);
  }
  for (int64_t j = 0; j < n; ++j) v_last[j] = scalar_t(v[j]);
}

template <typename scalar_t, typename acc_t>
void bn_lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                       scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p, const BNAffine<acc_t>& f) {
  const int64_t B = cpu_lif::fwd_block_for(N);
  const int64_t nblocks = (N + B - 1) / B;
  with_flags(
      [&](auto hard, auto di, auto masked) {
        BlockQueue queue(nblocks, T * N < cpu_lif::kFwdParallelMinWork);
        queue.run([&] {
          std::vector<acc_t> v(B), a(B), m(B), b(B);
          cpu_lif::StartBlocks<scalar_t> start(v0, nullptr, f.v0_uniform, B);
          for (int64_t blk; (blk = queue.next()) >= 0;) {
            const int64_t n0 = blk * B, n = std::min(B, N - n0);
            expand(f, n0, n, a.data(), m.data(), b.data());
            fwd_block<decltype(hard)::value, decltype(di)::value, decltype(masked)::value, scalar_t, acc_t>(
                x + n0, start.v0(n0), mask ? mask + n0 : nullptr, s + n0, v_last + n0, v_seq ? v_seq + n0 : nullptr,
                v.data(), a.data(), m.data(), b.data(), n, T, N, p);
          }
        });
      },
      p.hard_reset, p.decay_input, mask != nullptr);
}

// Σ v[0..n) in double, as four interleaved partial sums (lanes j mod 4) added (s0 + s1) + (s2 + s3).
template <typename acc_t>
inline double lane_run_sum(const acc_t* __restrict__ v, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += double(v[j]);
    s1 += double(v[j + 1]);
    s2 += double(v[j + 2]);
    s3 += double(v[j + 3]);
  }
  if (j < n) s0 += double(v[j]);
  if (j + 1 < n) s1 += double(v[j + 1]);
  if (j + 2 < n) s2 += double(v[j + 2]);
  return (s0 + s1) + (s2 + s3);
}

// ---------------------------------------------------------------------------------------------------
// Backward of one block: re-run the forward keeping xc = x − m and H (with PGRAD: V_{t−1}, from which
// the walk recomputes H and the parameter terms) for T × B elements in L2, then walk back two steps
// per pass (∂L/∂V and the lane sums stay in registers between them, two rows of ∂L/∂S and ∂L/∂x
// stream at once). Per lane it sums ∂L/∂X' and ∂L/∂X'·xc over t (and, with PGRAD, the parameter
// terms), folded into double at the end of the block: the channel sums of batch norm's backward come
// out of the same pass, and x is read once from memory. gx receives a·∂L/∂X'.
// MASKED: the emitted value follows the noise mask, its primitive a runtime switch (SG is then
// kRuntimeSurrogate), as in cpu_lif::bwd_block.
template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, bool PGRAD, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_block(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                              const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                              const scalar_t* __restrict__ v0, const bool* __restrict__ mask,
                              scalar_t* __restrict__ gx, scalar_t* __restrict__ gv0, acc_t* __restrict__ state,
                              acc_t* __restrict__ xcbuf, acc_t* __restrict__ dv, acc_t* __restrict__ lanes,
                              const acc_t* __restrict__ a, const acc_t* __restrict__ m,
                              const acc_t* __restrict__ b, int64_t n, int64_t B, int64_t T, int64_t N,
                              const LIFParams<acc_t> p, double* __restrict__ out3, double* __restrict__ chan_out,
                              int64_t c, int64_t r, int64_t C, int64_t inner) {
  const Given<scalar_t, acc_t> gv{};
  for (int64_t j = 0; j < n; ++j) dv[j] = acc_t(v0[j]);  // dv holds V during the re-run
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N;
    acc_t* __restrict__ st = state + t * B;
    acc_t* __restrict__ xcp = xcbuf + t * B;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      const acc_t vv = dv[j];
      const acc_t xc = acc_t(x[off + j]) - m[j];
      xcp[j] = xc;
      const acc_t h = lif_charge<DI, acc_t, kAfter>(vv, bn_input<acc_t>(xc, a[j], b[j]), p);
      if constexpr (PGRAD) st[j] = vv;
      else st[j] = h;
      const acc_t sp = cpu_lif::emitted_at<MASKED, kRuntimeSurrogate>(h, mask, gv, off + j, p);
      dv[j] = lif_reset<HARD, acc_t, kAfter>(h, sp, p);
    }
  }
  for (int64_t j = 0; j < n; ++j) dv[j] = gvlast ? acc_t(gvlast[j]) : acc_t(0);
  acc_t* __restrict__ g0 = lanes;
  acc_t* __restrict__ g1 = lanes + B;
  acc_t* __restrict__ sk = lanes + 2 * B;
  acc_t* __restrict__ sth = lanes + 3 * B;
  acc_t* __restrict__ sal = lanes + 4 * B;
  for (int64_t j = 0; j < n; ++j) g0[j] = g1[j] = sk[j] = sth[j] = sal[j] = acc_t(0);
  // One step back for element i (lane j): ∂L/∂V_t = d in, ∂L/∂V_{t−1} out; `sv` is H (or V_{t−1}).
  auto back = [&](acc_t d, int64_t i, int64_t j, acc_t sv, acc_t xc, acc_t& s0, acc_t& s1, acc_t& k_, acc_t& th_,
                  acc_t& al_) {
    acc_t h, xp = acc_t(0);
    if constexpr (PGRAD) {
      xp = bn_input<acc_t>(xc, a[j], b[j]);
      h = lif_charge<DI, acc_t, kAfter>(sv, xp, p);
    } else {
      h = sv;
    }
    const acc_t sp = cpu_lif::emitted_at<MASKED, SG>(h, mask, gv, i, p);
    acc_t eps;
    if constexpr (PGRAD) {
      acc_t gp, dga, ek, eth, eal;
      cpu_lif::surrogate_grads<SG>(h, p, gv, i, gp, dga);
      eps = lif_step_backward_g<HARD, DI, DETACH, acc_t, true, kAfter>(h, sp, sv, xp, acc_t(gs[i]), d, gp, dga, p, ek,
                                                                      eth, eal);
      k_ += ek;
      th_ += eth;
      al_ += eal;
    } else {
      acc_t gp;
      if constexpr (SG == kRuntimeSurrogate) {
        acc_t unused;
        sg_grad_dalpha_rt<false, acc_t>(p.sg, h - p.theta, p.alpha, gp, unused);
      } else {
        gp = sg_grad<SG>(h - p.theta, p.alpha);
      }
      const acc_t ds = lif_grad_s<HARD, DETACH>(acc_t(gs[i]), d, h, p);
      eps = lif_grad_h<HARD>(d, sp, ds, gp);
    }
    const acc_t gxp = lif_grad_x<DI>(eps, p);
    gx[i] = scalar_t(gxp * a[j]);
    s0 += gxp;
    s1 += gxp * xc;
    return lif_grad_v_prev(eps, p);
  };
  int64_t t = T - 1;
  if (gvseq == nullptr) {
    for (; t >= 1; t -= 2) {
      const int64_t off = t * N;
      const acc_t* __restrict__ st = state + t * B;
      const acc_t* __restrict__ xcp = xcbuf + t * B;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {  // [vec]
        acc_t s0 = g0[j], s1 = g1[j], k_ = sk[j], th_ = sth[j], al_ = sal[j];
        const acc_t d = back(dv[j], off + j, j, st[j], xcp[j], s0, s1, k_, th_, al_);
        dv[j] = back(d, off - N + j, j, st[j - B], xcp[j - B], s0, s1, k_, th_, al_);
        g0[j] = s0;
        g1[j] = s1;
        if constexpr (PGRAD) {
          sk[j] = k_;
          sth[j] = th_;
          sal[j] = al_;
        }
      }
    }
  }
  for (; t >= 0; --t) {
    const int64_t off = t * N;
    const acc_t* __restrict__ st = state + t * B;
    const acc_t* __restrict__ xcp = xcbuf + t * B;
    if (gvseq != nullptr)
      for (int64_t j = 0; j < n; ++j) dv[j] += acc_t(gvseq[off + j]);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      acc_t s0 = g0[j], s1 = g1[j], k_ = sk[j], th_ = sth[j], al_ = sal[j];
      dv[j] = back(dv[j], off + j, j, st[j], xcp[j], s0, s1, k_, th_, al_);
      g0[j] = s0;
      g1[j] = s1;
      if constexpr (PGRAD) {
        sk[j] = k_;
        sth[j] = th_;
        sal[j] = al_;
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) gv0[j] = scalar_t(dv[j]);
  // Lanes into the block's channel sums (chan_out: [Σ∂X' | Σ∂X'·xc], [2C]), one channel's run of lanes
  // at a time; lane 0 is element r of channel c's run. Within a run, four partial sums over lanes
  // j ≡ 0, 1, 2, 3 (mod 4), combined as (s0 + s1) + (s2 + s3): a fixed order whatever the vector width.
  // An add per lane straight into chan_out[c] was one serial chain through memory (each add waits
  // for the previous one's store), a cost per element of the order of a whole walk step at T = 4.
  if (inner == 1) {  // runs of one lane: lane_run_sum of one value is that value, in double
    for (int64_t j = 0; j < n; ++j) {
      chan_out[c] += double(g0[j]);
      chan_out[C + c] += double(g1[j]);
      if (++c == C) c = 0;
    }
  } else {
    for (int64_t j = 0; j < n;) {
      const int64_t len = std::min(n - j, inner - r);
      chan_out[c] += lane_run_sum(g0 + j, len);
      chan_out[C + c] += lane_run_sum(g1 + j, len);
      j += len;
      r += len;
      if (r == inner) {
        r = 0;
        if (++c == C) c = 0;
      }
    }
  }
  if constexpr (PGRAD) {
    double dk = 0, dth = 0, dal = 0;
    for (int64_t j = 0; j < n; ++j) {
      dk += sk[j];
      dth += sth[j];
      dal += sal[j];
    }
    out3[0] = dk;
    out3[1] = dth;
    out3[2] = dal;
  }
}

// ---------------------------------------------------------------------------------------------------
// gx ← A_c·gx + B_c·(x − m_c) + D_c over runs of S contiguous elements (one channel each).
template <typename scalar_t, typename acc_t>
SNN_CPU_CLONES void dx_run(const scalar_t* __restrict__ x, scalar_t* __restrict__ gx, int64_t n, acc_t A, acc_t Bc,
                           acc_t D, acc_t m) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) gx[j] = scalar_t(A * acc_t(gx[j]) + (Bc * (acc_t(x[j]) - m) + D));  // [vec]
}

// The same over W elements of a row of the [rows, C·inner] view with the coefficients expanded per
// column (short runs: one dx_run call per run of a few elements cost more than the run).
template <typename scalar_t, typename acc_t>
SNN_CPU_CLONES void dx_row(const scalar_t* __restrict__ x, scalar_t* __restrict__ gx, int64_t W,
                           const acc_t* __restrict__ A, const acc_t* __restrict__ Bc, const acc_t* __restrict__ D,
                           const acc_t* __restrict__ m) {
#pragma omp simd
  for (int64_t k = 0; k < W; ++k) gx[k] = scalar_t(A[k] * acc_t(gx[k]) + (Bc[k] * (acc_t(x[k]) - m[k]) + D[k]));  // [vec]
}

// ---------------------------------------------------------------------------------------------------
// The training backward channel by channel (when: backward_by_channel, bn_lif_cpu_kernels.h). Its
// batch-statistics pass (∂L/∂x = a·∂L/∂X' + B_c·xc + D_c) needs channel c's sums over all of (T, B, S)
// before it can touch an element of c. Run after the whole walk, as a pass of its own, it reads
// a·∂L/∂X' and x back from memory and writes ∂L/∂x: 3 of the op's 9 passes. Channel by channel
// instead, one task walks a channel's elements (its T·B runs of S), which completes its sums, then
// runs the pass over them while they are still in cache: the backward moves x, ∂L/∂S and ∂L/∂x once
// each, 6 passes in all.
template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, typename scalar_t, typename acc_t>
void bwd_by_channel(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                    const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                    const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad, double* param_grad,
                    double* chan_sums, const BNBatchStats<acc_t>& stats, int64_t Bs) {
  const int64_t C = f.C, S = f.inner, rows = N / (C * S);
  std::vector<double> partial(C * 3, 0.0);
  std::fill(chan_sums, chan_sums + 2 * C, 0.0);  // each task adds into its own channel's only
  BlockQueue queue(C, T * N < cpu_lif::kBwdParallelMinWork);
  queue.run([&] {
    const int64_t bmax = std::min(Bs, S);
    std::vector<acc_t> state(T * bmax), xcbuf(T * bmax), dv(bmax), lanes(5 * bmax), a(bmax), m(bmax), b(bmax);
    cpu_lif::StartBlocks<scalar_t> start(v0, gv0, f.v0_uniform, bmax);
    for (int64_t c; (c = queue.next()) >= 0;) {
      double acc3[3] = {0, 0, 0};
      for (int64_t row = 0; row < rows; ++row) {  // the walk: blocks of the channel's run in each row
        for (int64_t off = 0; off < S; off += bmax) {
          const int64_t n0 = (row * C + c) * S + off, n = std::min(bmax, S - off);
          expand(f, n0, n, a.data(), m.data(), b.data());
          double out3[3] = {0, 0, 0};
          auto run = [&](auto pgrad) {
            bwd_block<SG, HARD, DI, DETACH, MASKED, decltype(pgrad)::value, scalar_t, acc_t>(
                gs + n0, gvlast ? gvlast + n0 : nullptr, gvseq ? gvseq + n0 : nullptr, x + n0, start.v0(n0),
                mask ? mask + n0 : nullptr, gx + n0, start.gv0(n0), state.data(), xcbuf.data(), dv.data(),
                lanes.data(), a.data(), m.data(), b.data(), n, bmax, T, N, p, out3, chan_sums, c, off, C, S);
          };
          if (need_param_grad) run(Flag<true>{});
          else run(Flag<false>{});
          for (int i = 0; i < 3; ++i) acc3[i] += out3[i];
        }
      }
      for (int i = 0; i < 3; ++i) partial[c * 3 + i] = acc3[i];
      // The channel's sums are complete: its coefficients, then the pass over its runs.
      acc_t A, Bc, D;
      dx_coefficients<acc_t>(double(f.a[c]), double(stats.rstd[c]), chan_sums[c], chan_sums[C + c], stats.count, A,
                             Bc, D);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t row = 0; row < rows; ++row) {
          const int64_t n0 = t * N + (row * C + c) * S;
          dx_run<scalar_t, acc_t>(x + n0, gx + n0, S, A, Bc, D, f.m[c]);
        }
    }
  });
  if (need_param_grad) cpu_lif::sum_param_partials(partial, param_grad);
}

template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, typename scalar_t, typename acc_t>
bool bwd_impl(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
              const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
              const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad, double* param_grad,
              double* chan_sums, const BNBatchStats<acc_t>* stats) {
  // The block size of LIF's parameter-gradient backward, whatever the flags: the channel sums are
  // added in block order, so it must not depend on the thread count.
  const int64_t B = cpu_lif::bwd_block_for(T, N, true) / 2;  // two T × B scratches (V and xc)
  const int64_t Bs = std::max<int64_t>(B, 16);
  if (stats != nullptr) {
    if (backward_by_channel(T, N, f.C, f.inner, sizeof(scalar_t), gvseq != nullptr, mask != nullptr)) {
      bwd_by_channel<SG, HARD, DI, DETACH, MASKED, scalar_t, acc_t>(gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p,
                                                                    f, need_param_grad, param_grad, chan_sums, *stats,
                                                                    Bs);
      return true;
    }
  }
  const int64_t nblocks = (N + Bs - 1) / Bs;
  std::vector<double> partial(nblocks * 3, 0.0);
  // Per block its channel sums, [2C] (a block touches a run of channels; the rest stay 0).
  std::vector<double> block_sums(nblocks * 2 * f.C, 0.0);
  BlockQueue queue(nblocks, T * N < cpu_lif::kBwdParallelMinWork);
  queue.run([&] {
    std::vector<acc_t> state(T * Bs), xcbuf(T * Bs), dv(Bs), lanes(5 * Bs), a(Bs), m(Bs), b(Bs);
    cpu_lif::StartBlocks<scalar_t> start(v0, gv0, f.v0_uniform, Bs);
    for (int64_t blk; (blk = queue.next()) >= 0;) {
      const int64_t n0 = blk * Bs, n = std::min(Bs, N - n0);
      expand(f, n0, n, a.data(), m.data(), b.data());
      const scalar_t* gvl = gvlast ? gvlast + n0 : nullptr;
      const scalar_t* gvs = gvseq ? gvseq + n0 : nullptr;
      const bool* mk = mask ? mask + n0 : nullptr;
      auto run = [&](auto pgrad) {
        bwd_block<SG, HARD, DI, DETACH, MASKED, decltype(pgrad)::value, scalar_t, acc_t>(
            gs + n0, gvl, gvs, x + n0, start.v0(n0), mk, gx + n0, start.gv0(n0), state.data(), xcbuf.data(), dv.data(),
            lanes.data(), a.data(), m.data(), b.data(), n, Bs, T, N, p, partial.data() + blk * 3,
            block_sums.data() + blk * 2 * f.C, (n0 / f.inner) % f.C, n0 % f.inner, f.C, f.inner);
      };
      if (need_param_grad) run(Flag<true>{});
      else run(Flag<false>{});
    }
  });
  // Channel sums: blocks in ascending order (fixed, whatever thread ran them).
  std::fill(chan_sums, chan_sums + 2 * f.C, 0.0);
  for (int64_t k = 0; k < nblocks; ++k)
    for (int64_t i = 0; i < 2 * f.C; ++i) chan_sums[i] += block_sums[k * 2 * f.C + i];
  if (need_param_grad) cpu_lif::sum_param_partials(partial, param_grad);
  return false;
}

template <typename scalar_t, typename acc_t>
bool bn_lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                       const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                       const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad,
                       double* param_grad, double* chan_sums, const BNBatchStats<acc_t>* stats) {
  bool done = false;
  with_flags(
      [&](auto hard, auto di, auto detach) {
        constexpr bool H = decltype(hard)::value, D = decltype(di)::value, E = decltype(detach)::value;
        if (mask != nullptr) {
          done = bwd_impl<kRuntimeSurrogate, H, D, E, true, scalar_t, acc_t>(
              gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p, f, need_param_grad, param_grad, chan_sums, stats);
          return;
        }
        switch (sg) {
#define SNN_CASE(ID)                                                                                          \
  case ID:                                                                                                    \
    done = bwd_impl<ID, H, D, E, false, scalar_t, acc_t>(gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p, f,   \
                                                         need_param_grad, param_grad, chan_sums, stats);      \
    return;
          SNN_FAST_SURROGATE_CASES(SNN_CASE)
#undef SNN_CASE
        }
      },
      p.hard_reset, p.decay_input, p.detach_reset);
  return done;
}

// The walk of a user's surrogate compiled to C++ (cpu_lif::kNativeSurrogate): the translation unit that
// snn_fast/ops/lif/native_surrogate.py generates specialises sg_grad/sg_dalpha for that id and
// instantiates this for one dtype; bn_lif_cpu.cpp calls it through a NativeBnBwdFn pointer
// (bn_lif_bwd_native). No noise mask (its emitted value needs the user's g).
template <typename scalar_t, typename acc_t>
bool bn_lif_bwd_native_kernel(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                              const scalar_t* v0, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                              const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad,
                              double* param_grad, double* chan_sums, const BNBatchStats<acc_t>* stats) {
  bool done = false;
  with_flags(
      [&](auto hard, auto di, auto detach) {
        done = bwd_impl<cpu_lif::kNativeSurrogate, decltype(hard)::value, decltype(di)::value, decltype(detach)::value,
                        false, scalar_t, acc_t>(gs, gvlast, gvseq, x, v0, nullptr, gx, gv0, T, N, p, f,
                                                need_param_grad, param_grad, chan_sums, stats);
      },
      p.hard_reset, p.decay_input, p.detach_reset);
  return done;
}

// ---------------------------------------------------------------------------------------------------
// The batch-statistics pass as a pass of its own, after a walk by blocks of the row (bn_lif_bwd_kernel
// returned false): gx ← A_c·gx + B_c·(x − m_c) + D_c over all of [T, N].
template <typename scalar_t, typename acc_t>
void bn_lif_dx_kernel(const scalar_t* x, scalar_t* gx, int64_t T, int64_t N, const acc_t* coef,
                      const BNAffine<acc_t>& f) {
  const int64_t runs = T * (N / f.inner);
  const int64_t C = f.C;
  if (f.inner < kShortRunDx) {
    // Tasks of (one row) × (a chunk of ≤ kShortRunDxCols columns, the chunks of a row equal), chunk-major,
    // split between threads by rows as whole rows were: the expanded coefficients are one chunk's per
    // thread (64 KiB in float), not 4 rows of C·inner for the call.
    const int64_t W = C * f.inner, rows = runs / C;
    const int64_t chunks = (W + kShortRunDxCols - 1) / kShortRunDxCols, cw = (W + chunks - 1) / chunks;
    const int64_t tasks = chunks * rows, grain = std::max<int64_t>(1, (int64_t(1) << 15) / cw);
    at::parallel_for(0, tasks, T * N < cpu_lif::kFwdParallelMinWork ? tasks : grain, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> cols(4 * cw);
      int64_t filled = -1;  // the chunk whose coefficients cols holds
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t chunk = t / rows, r = t % rows, k0 = chunk * cw, n = std::min(cw, W - k0);
        if (chunk != filled) {
          for (int64_t j = 0; j < n; ++j) {
            const int64_t c = (k0 + j) / f.inner;
            cols[j] = coef[c];
            cols[cw + j] = coef[C + c];
            cols[2 * cw + j] = coef[2 * C + c];
            cols[3 * cw + j] = f.m[c];
          }
          filled = chunk;
        }
        dx_row<scalar_t, acc_t>(x + r * W + k0, gx + r * W + k0, n, cols.data(), cols.data() + cw,
                                cols.data() + 2 * cw, cols.data() + 3 * cw);
      }
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / f.inner);
  at::parallel_for(0, runs, T * N < cpu_lif::kFwdParallelMinWork ? runs : grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      dx_run<scalar_t, acc_t>(x + r * f.inner, gx + r * f.inner, f.inner, coef[c], coef[C + c], coef[2 * C + c],
                              f.m[c]);
    }
  });
}

#define SNN_FAST_INSTANTIATE_BN_LIF_CPU(scalar_t, acc_t)                                                      \
  template void bn_stats_kernel<scalar_t>(const scalar_t*, int64_t, int64_t, int64_t, int64_t, double*, double*); \
  template void bn_lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*, scalar_t*,    \
                                                   scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, \
                                                   const BNAffine<acc_t>&);                                    \
  template bool bn_lif_bwd_kernel<scalar_t, acc_t>(int, const scalar_t*, const scalar_t*, const scalar_t*,     \
                                                   const scalar_t*, const scalar_t*, const bool*, scalar_t*,      \
                                                   scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&,         \
                                                   const BNAffine<acc_t>&, bool, double*, double*,               \
                                                   const BNBatchStats<acc_t>*);                                  \
  template void bn_lif_dx_kernel<scalar_t, acc_t>(const scalar_t*, scalar_t*, int64_t, int64_t, const acc_t*,   \
                                                  const BNAffine<acc_t>&);

}  // namespace cpu_bn_lif
}  // namespace snn_fast
