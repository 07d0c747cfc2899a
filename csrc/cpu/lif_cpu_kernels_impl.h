// Fused LIF CPU kernels (templates), instantiated once per storage dtype in lif_cpu_kernels_*.cpp so
// the four dtypes compile in parallel. The torch-facing ops are in lif_cpu.cpp; byte counts there.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "lif_cpu_kernels.h"

namespace snn_fast {
namespace cpu_lif {

// Neurons per block. Each step touches one contiguous run of `block` elements per tensor: runs of
// 4 KiB (block 1024) stall the hardware prefetchers at every page, longer runs stream. The backward
// keeps T × block floats of H; SNN_FAST_CPU_BLOCK_ELEMS of them (256 KiB) stay in L2. The forward
// keeps only one row of V per block, so its runs are longer (64 KiB; measured ~8 % faster than 16 KiB
// at W4). Either way there are at least 4 blocks per thread when N allows, so that the threads get
// even shares.
#ifndef SNN_FAST_CPU_BLOCK_ELEMS
#define SNN_FAST_CPU_BLOCK_ELEMS 65536
#endif
inline int64_t balanced_block(int64_t N, int64_t cap) {
  const int64_t share = (N + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads());
  return std::max<int64_t>(16, std::min<int64_t>(cap, (share + 15) / 16 * 16));
}
// With parameter gradients the block size must not depend on the thread count: the per-block
// partial sums are added in block order, and that grouping is part of the (deterministic) result.
inline int64_t bwd_block_for(int64_t T, int64_t N, bool need_param_grad) {
  int64_t b = (int64_t(SNN_FAST_CPU_BLOCK_ELEMS) / std::max<int64_t>(T, 1)) / 16 * 16;
  b = std::min<int64_t>(std::max<int64_t>(b, 16), 8192);
  return need_param_grad ? b : balanced_block(N, b);
}
inline int64_t fwd_block_for(int64_t N) { return balanced_block(N, 16384); }

// Blocks are handed out one at a time from a shared counter instead of one fixed range per thread:
// on a shared machine one core is often slower for a while, and with a static split the other then
// waits at the barrier (~7 % of a W4 step was spent there). Which thread runs a block never changes
// what the block computes, so results stay independent of the scheduling.
class BlockQueue {
 public:
  explicit BlockQueue(int64_t nblocks) : n_(nblocks) {}
  // Calls per_thread(queue) on each of min(threads, blocks) threads; per_thread loops on next().
  template <typename F>
  void run(F&& per_thread) {
    const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_));
    at::parallel_for(0, nt, 1, [&](int64_t, int64_t) { per_thread(); });
  }
  // The next block to run, or -1 when none is left.
  int64_t next() {
    const int64_t b = next_.fetch_add(1, std::memory_order_relaxed);
    return b < n_ ? b : -1;
  }

 private:
  const int64_t n_;
  std::atomic<int64_t> next_{0};
};

// The per-block loops get one clone per ISA (picked at load time by the dynamic loader), so one
// build runs AVX-512 where the CPU has it and stays portable. Contraction is off (setup.py), so
// every clone rounds like the float32 reference.
// x86-64-v3 is AVX2 + FMA, v4 adds AVX-512.
// SNN_CPU_CLONES_FMA is for loops whose results feed no spike decision (the backward walk): there
// contraction into FMAs is allowed (fewer instructions, one rounding less; that loop is compute-bound).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define SNN_CPU_CLONES_FMA \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define SNN_CPU_CLONES
#define SNN_CPU_CLONES_FMA
#endif

// Calls f(std::bool_constant<hard_reset>, std::bool_constant<decay_input>).
template <typename F>
void with_flags(bool hard, bool di, F&& f) {
  if (hard) {
    if (di) f(std::true_type{}, std::true_type{});
    else f(std::true_type{}, std::false_type{});
  } else {
    if (di) f(std::false_type{}, std::true_type{});
    else f(std::false_type{}, std::false_type{});
  }
}

// The common case, no noise mask: the reset and charge forms are template arguments, so the loop is
// a handful of vector ops (the same roundings as lif_charge/lif_reset: x·1 and x·0 select exactly).
template <bool HARD, bool DI, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void fwd_block_fast(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                                   scalar_t* __restrict__ s, scalar_t* __restrict__ v_last,
                                   scalar_t* __restrict__ v_seq, acc_t* __restrict__ v, int64_t n, int64_t T,
                                   int64_t N, const acc_t k, const acc_t theta, const acc_t vr) {
  auto step = [=](acc_t vv, acc_t xv, scalar_t& sp) {
    const acc_t h = DI ? vv + (xv - (vv - vr)) * k : (vv - (vv - vr) * k) + xv;
    const bool spike = (h - theta) >= acc_t(0);
    sp = scalar_t(spike ? acc_t(1) : acc_t(0));
    return HARD ? (spike ? vr : h) : (spike ? h - theta : h);
  };
  for (int64_t j = 0; j < n; ++j) v[j] = acc_t(v0[j]);
  int64_t t = 0;
  // Four steps per pass over the block when v_seq is not asked for: V stays in a register between
  // them and each thread streams four rows of x and of s at once (more misses in flight). At W4 the
  // forward measured 7 % faster in a standalone loop and ~25 % in the op. Same operations per
  // element, so the same results.
  if (v_seq == nullptr) {
    for (; t + 4 <= T; t += 4) {
      const int64_t off = t * N;  // int64: T·N may exceed 2^31
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        acc_t vv = v[j];
        vv = step(vv, acc_t(x[off + j]), s[off + j]);
        vv = step(vv, acc_t(x[off + N + j]), s[off + N + j]);
        vv = step(vv, acc_t(x[off + 2 * N + j]), s[off + 2 * N + j]);
        v[j] = step(vv, acc_t(x[off + 3 * N + j]), s[off + 3 * N + j]);
      }
    }
  }
  for (; t < T; ++t) {
    const int64_t off = t * N;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) v[j] = step(v[j], acc_t(x[off + j]), s[off + j]);
    if (v_seq != nullptr)
      for (int64_t j = 0; j < n; ++j) v_seq[off + j] = scalar_t(v[j]);
  }
  for (int64_t j = 0; j < n; ++j) v_last[j] = scalar_t(v[j]);
}

// One block of n neurons (pointers already offset to the block's first neuron), all T steps.
template <typename scalar_t, typename acc_t>
SNN_CPU_CLONES void fwd_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                              const bool* __restrict__ mask, scalar_t* __restrict__ s,
                              scalar_t* __restrict__ v_last, scalar_t* __restrict__ v_seq,
                              acc_t* __restrict__ v, int64_t n, int64_t T, int64_t N, const LIFParams<acc_t> p) {
  for (int64_t j = 0; j < n; ++j) v[j] = acc_t(v0[j]);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N;  // int64: T·N may exceed 2^31
    if (mask == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        acc_t h = lif_charge<acc_t>(v[j], acc_t(x[off + j]), p);
        acc_t sp = (h - p.theta) >= acc_t(0) ? acc_t(1) : acc_t(0);
        s[off + j] = scalar_t(sp);
        v[j] = lif_reset<acc_t>(h, sp, p);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        acc_t h = lif_charge<acc_t>(v[j], acc_t(x[off + j]), p);
        acc_t sp = lif_fire<acc_t>(h, mask[off + j], p);
        s[off + j] = scalar_t(sp);
        v[j] = lif_reset<acc_t>(h, sp, p);
      }
    }
    if (v_seq != nullptr)
      for (int64_t j = 0; j < n; ++j) v_seq[off + j] = scalar_t(v[j]);
  }
  for (int64_t j = 0; j < n; ++j) v_last[j] = scalar_t(v[j]);
}

template <typename scalar_t, typename acc_t>
void fwd_impl(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
              scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p) {
  const int64_t B = fwd_block_for(N);
  const int64_t nblocks = (N + B - 1) / B;
  BlockQueue queue(nblocks);
  queue.run([&] {
    std::vector<acc_t> v(B);
    for (int64_t blk; (blk = queue.next()) >= 0;) {
      const int64_t n0 = blk * B, n = std::min(B, N - n0);
      scalar_t* vs = v_seq ? v_seq + n0 : nullptr;
      if (mask != nullptr) {
        fwd_block<scalar_t, acc_t>(x + n0, v0 + n0, mask + n0, s + n0, v_last + n0, vs, v.data(), n, T, N, p);
      } else {
        auto run = [&](auto hard, auto di) {
          fwd_block_fast<decltype(hard)::value, decltype(di)::value, scalar_t, acc_t>(
              x + n0, v0 + n0, s + n0, v_last + n0, vs, v.data(), n, T, N, p.k, p.theta, p.vr);
        };
        with_flags(p.hard_reset, p.decay_input, run);
      }
    }
  });
}


// Backward for one block: re-run the forward into vprev (V_{t−1}, T × B), then walk back.
// Writes the block's (∂k, ∂θ, ∂α) partial sums to out3.
template <int SG, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_block(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                              const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                              const scalar_t* __restrict__ v0, const bool* __restrict__ mask,
                              scalar_t* __restrict__ gx, scalar_t* __restrict__ gv0, acc_t* __restrict__ vprev,
                              acc_t* __restrict__ dv, acc_t* __restrict__ lane_sums, int64_t n, int64_t B,
                              int64_t T, int64_t N, const LIFParams<acc_t> p, double* __restrict__ out3) {
  const acc_t cx = p.decay_input ? p.k : acc_t(1), keep = acc_t(1) - p.k;
  // Re-run the forward: same functions, same operation order, so the same spikes.
  for (int64_t j = 0; j < n; ++j) dv[j] = acc_t(v0[j]);  // dv holds V during the re-run
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N;
    acc_t* __restrict__ vp = vprev + t * B;
    if (mask == nullptr) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        vp[j] = dv[j];
        acc_t h = lif_charge<acc_t>(dv[j], acc_t(x[off + j]), p);
        acc_t sp = (h - p.theta) >= acc_t(0) ? acc_t(1) : acc_t(0);
        dv[j] = lif_reset<acc_t>(h, sp, p);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        vp[j] = dv[j];
        acc_t h = lif_charge<acc_t>(dv[j], acc_t(x[off + j]), p);
        dv[j] = lif_reset<acc_t>(h, lif_fire<acc_t>(h, mask[off + j], p), p);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) dv[j] = gvlast ? acc_t(gvlast[j]) : acc_t(0);
  // Parameter gradients: one running sum per lane (elementwise adds vectorise without reordering
  // any sum), folded into double at the end of the block.
  acc_t* __restrict__ sk = lane_sums;
  acc_t* __restrict__ sth = lane_sums + B;
  acc_t* __restrict__ sal = lane_sums + 2 * B;
  for (int64_t j = 0; j < n; ++j) sk[j] = sth[j] = sal[j] = acc_t(0);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = t * N;
    const acc_t* __restrict__ vp = vprev + t * B;
    // ∂L/∂V_t from v_seq, added in its own loop: a load behind `gvseq ?` inside the main loop is
    // control flow the vectoriser cannot if-convert.
    if (gvseq != nullptr)
      for (int64_t j = 0; j < n; ++j) dv[j] += acc_t(gvseq[off + j]);
    if (mask == nullptr) {
      for (int64_t j = 0; j < n; ++j) {
        acc_t xv = acc_t(x[off + j]);
        acc_t h = lif_charge<acc_t>(vp[j], xv, p);
        acc_t sp = (h - p.theta) >= acc_t(0) ? acc_t(1) : acc_t(0);
        acc_t dvt = dv[j];
        acc_t ek, eth, eal;
        acc_t eps = lif_step_backward<SG, acc_t>(h, sp, vp[j], xv, acc_t(gs[off + j]), dvt, p, ek, eth, eal);
        gx[off + j] = scalar_t(eps * cx);
        dv[j] = eps * keep;
        sk[j] += ek;
        sth[j] += eth;
        sal[j] += eal;
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        acc_t xv = acc_t(x[off + j]);
        acc_t h = lif_charge<acc_t>(vp[j], xv, p);
        acc_t sp = lif_fire<acc_t>(h, mask[off + j], p);
        acc_t dvt = dv[j];
        acc_t ek, eth, eal;
        acc_t eps = lif_step_backward<SG, acc_t>(h, sp, vp[j], xv, acc_t(gs[off + j]), dvt, p, ek, eth, eal);
        gx[off + j] = scalar_t(eps * cx);
        dv[j] = eps * keep;
        sk[j] += ek;
        sth[j] += eth;
        sal[j] += eal;
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) gv0[j] = scalar_t(dv[j]);
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

// The walk back from T − 1 to 0 of bwd_block_fast: H_t from hbuf, ∂L/∂V carried in dv. Its own
// function so that it alone may contract into FMAs (the spike test reads the stored H, so no
// spike decision can change).
template <int SG, bool HARD, bool DI, typename scalar_t, typename acc_t>
SNN_CPU_CLONES_FMA void bwd_walk_fast(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvseq,
                                      scalar_t* __restrict__ gx, const acc_t* __restrict__ hbuf,
                                      acc_t* __restrict__ dv, int64_t n, int64_t B, int64_t T, int64_t N,
                                      const LIFParams<acc_t> p) {
  const acc_t k = p.k, theta = p.theta, alpha = p.alpha;
  const acc_t cx = DI ? k : acc_t(1), keep = acc_t(1) - k, live = p.detach_reset ? acc_t(0) : acc_t(1);
  // ∂S_t/∂H_t-independent part of ∂L/∂S_t through the reset and κ: c0 + c1·H_t.
  const acc_t c1 = HARD ? -live : acc_t(0), c0 = (HARD ? live * p.vr : -live * theta) + p.kappa;
  // One step back: ∂L/∂V_t = d and H_t = h in, ∂L/∂X_t to gxo, ∂L/∂V_{t−1} returned.
  auto back = [=](acc_t d, acc_t h, acc_t g, scalar_t& gxo) {
    const acc_t xs = h - theta;
    const bool spike = xs >= acc_t(0);
    const acc_t gp = sg_grad<SG>(xs, alpha);
    // ∂L/∂S_t: the output, the reset (unless detached) and κ.
    const acc_t ds = g + d * (HARD ? c1 * h + c0 : c0);
    const acc_t eps = (HARD ? (spike ? acc_t(0) : d) : d) + ds * gp;
    gxo = scalar_t(eps * cx);
    return eps * keep;
  };
  int64_t t = T - 1;
  // Two steps per pass without v_seq (∂L/∂V carried in a register, two rows of ∂L/∂S and ∂L/∂X
  // streamed at once), as the forward does with four.
  if (gvseq == nullptr) {
    for (; t >= 1; t -= 2) {
      const int64_t off = t * N;
      const acc_t* __restrict__ hp = hbuf + t * B;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const acc_t d = back(dv[j], hp[j], acc_t(gs[off + j]), gx[off + j]);
        dv[j] = back(d, hp[j - B], acc_t(gs[off - N + j]), gx[off - N + j]);
      }
    }
  }
  for (; t >= 0; --t) {
    const int64_t off = t * N;
    const acc_t* __restrict__ hp = hbuf + t * B;
    if (gvseq != nullptr)
      for (int64_t j = 0; j < n; ++j) dv[j] += acc_t(gvseq[off + j]);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dv[j] = back(dv[j], hp[j], acc_t(gs[off + j]), gx[off + j]);
  }
}

// Backward for the common case (no noise mask, no parameter gradients): re-run the forward keeping
// H_t (T × B in L2), then walk back reading only H and ∂L/∂S. The flags are template arguments or
// uniform scalars (live = 0/1 for detach_reset, κ), so the loop is straight vector code. The algebra is
// lif_step_backward_g's with hard/soft fixed: s·x and (1 − s)·x select exactly.
template <int SG, bool HARD, bool DI, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_block_fast(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                                   const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                                   const scalar_t* __restrict__ v0, scalar_t* __restrict__ gx,
                                   scalar_t* __restrict__ gv0, acc_t* __restrict__ hbuf, acc_t* __restrict__ dv,
                                   int64_t n, int64_t B, int64_t T, int64_t N, const LIFParams<acc_t> p) {
  const acc_t k = p.k, theta = p.theta, vr = p.vr;
  // H_t into hp, V_t returned: the forward's step, in the forward's operation order.
  auto step = [=](acc_t vv, acc_t xv, acc_t& hp) {
    const acc_t h = DI ? vv + (xv - (vv - vr)) * k : (vv - (vv - vr) * k) + xv;
    hp = h;
    const bool spike = (h - theta) >= acc_t(0);
    return HARD ? (spike ? vr : h) : (spike ? h - theta : h);
  };
  for (int64_t j = 0; j < n; ++j) dv[j] = acc_t(v0[j]);  // dv holds V during the re-run
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {  // four steps per pass, as in fwd_block_fast
    const int64_t off = t * N;
    acc_t* __restrict__ hp = hbuf + t * B;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      acc_t vv = dv[j];
      vv = step(vv, acc_t(x[off + j]), hp[j]);
      vv = step(vv, acc_t(x[off + N + j]), hp[B + j]);
      vv = step(vv, acc_t(x[off + 2 * N + j]), hp[2 * B + j]);
      dv[j] = step(vv, acc_t(x[off + 3 * N + j]), hp[3 * B + j]);
    }
  }
  for (; t < T; ++t) {
    const int64_t off = t * N;
    acc_t* __restrict__ hp = hbuf + t * B;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dv[j] = step(dv[j], acc_t(x[off + j]), hp[j]);
  }
  for (int64_t j = 0; j < n; ++j) dv[j] = gvlast ? acc_t(gvlast[j]) : acc_t(0);
  bwd_walk_fast<SG, HARD, DI, scalar_t, acc_t>(gs, gvseq, gx, hbuf, dv, n, B, T, N, p);
  for (int64_t j = 0; j < n; ++j) gv0[j] = scalar_t(dv[j]);
}

template <int SG, typename scalar_t, typename acc_t>
void bwd_impl(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
              const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
              const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad) {
  const int64_t B = bwd_block_for(T, N, need_param_grad);
  const int64_t nblocks = (N + B - 1) / B;
  // One partial sum per block, added in block order afterwards: the result does not depend on the
  // number of threads.
  std::vector<double> partial(nblocks * 3, 0.0);
  BlockQueue queue(nblocks);
  queue.run([&] {
    std::vector<acc_t> vprev(T * B), dv(B), lane_sums(3 * B);
    for (int64_t blk; (blk = queue.next()) >= 0;) {
      const int64_t n0 = blk * B, n = std::min(B, N - n0);
      if (mask == nullptr && !need_param_grad) {
        auto run = [&](auto hard, auto di) {
          bwd_block_fast<SG, decltype(hard)::value, decltype(di)::value, scalar_t, acc_t>(
              gs + n0, gvlast ? gvlast + n0 : nullptr, gvseq ? gvseq + n0 : nullptr, x + n0, v0 + n0, gx + n0,
              gv0 + n0, vprev.data(), dv.data(), n, B, T, N, p);
        };
        with_flags(p.hard_reset, p.decay_input, run);
        continue;
      }
      bwd_block<SG, scalar_t, acc_t>(gs + n0, gvlast ? gvlast + n0 : nullptr, gvseq ? gvseq + n0 : nullptr, x + n0,
                                     v0 + n0, mask ? mask + n0 : nullptr, gx + n0, gv0 + n0, vprev.data(),
                                     dv.data(), lane_sums.data(), n, B, T, N, p, partial.data() + blk * 3);
    }
  });
  if (need_param_grad) {
    double acc[3] = {0, 0, 0};
    for (int64_t b = 0; b < nblocks; ++b)
      for (int i = 0; i < 3; ++i) acc[i] += partial[b * 3 + i];
    for (int i = 0; i < 3; ++i) param_grad[i] = acc[i];
  }
}

// The surrogate is a template argument of the backward so its inner loop vectorises.
template <typename scalar_t, typename acc_t, typename... Args>
void bwd_dispatch(int sg, Args&&... args) {
  switch (sg) {
#define SNN_CASE(ID) \
  case ID:           \
    return bwd_impl<ID, scalar_t, acc_t>(std::forward<Args>(args)...);
    SNN_FAST_SURROGATE_CASES(SNN_CASE)
#undef SNN_CASE
  }
}

template <typename scalar_t, typename acc_t>
void lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                    scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p) {
  fwd_impl<scalar_t, acc_t>(x, v0, mask, s, v_last, v_seq, T, N, p);
}

template <typename scalar_t, typename acc_t>
void lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                    const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                    const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad) {
  bwd_dispatch<scalar_t, acc_t>(sg, gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p, need_param_grad, param_grad);
}

#define SNN_FAST_INSTANTIATE_LIF_CPU(scalar_t, acc_t)                                                        \
  template void lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*, scalar_t*,     \
                                                scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&); \
  template void lif_bwd_kernel<scalar_t, acc_t>(int, const scalar_t*, const scalar_t*, const scalar_t*,       \
                                                const scalar_t*, const scalar_t*, const bool*, scalar_t*,         \
                                                scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, bool, double*);

}  // namespace cpu_lif
}  // namespace snn_fast
