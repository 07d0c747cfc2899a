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

// Below these many element-steps (T·N) a call runs on the calling thread, without a parallel
// region: waking the pool costs ~10-30 µs when a core is free, and on an oversubscribed CPU a
// scheduler time slice ([4, 2, 64] went from 0.44 ms to 1-16 ms with another process busy
// on one of 2 cores; at [4, 32, 1024] medians of 35-87 ms were measured on the loaded dev VM,
// benchmarks/test_bench_latency.py). Measured 1 vs 2 threads with both cores free (best of 20-400
// calls): forward 27.3 vs 26.3 µs at T·N = 2^16, 39.9 vs 34.9 at 2^17, 65.1 vs 49.9 at 2^18;
// forward+backward 120 vs 145 µs at 2^16, 181 vs 180 at 2^17, 283 vs 306 at 2^18, 579 vs 490 at 2^19.
// Threads go on only where they saved at least 15 µs, a fraction of one wake-up under load: the
// forward from 2^18, the backward from 2^19.
constexpr int64_t kFwdParallelMinWork = int64_t(1) << 18;
constexpr int64_t kBwdParallelMinWork = int64_t(1) << 19;

// Blocks are handed out one at a time from a shared counter instead of one fixed range per thread:
// on a shared machine one core is often slower for a while, and with a static split the other then
// waits at the barrier (~7 % of a W4 step was spent there). Which thread runs a block never changes
// what the block computes, so results stay independent of the scheduling.
class BlockQueue {
 public:
  // serial: the calling thread drains the queue (work below the size where threads pay off).
  BlockQueue(int64_t nblocks, bool serial) : n_(nblocks), serial_(serial) {}
  // Calls per_thread(queue) on each of min(threads, blocks) threads; per_thread loops on next().
  template <typename F>
  void run(F&& per_thread) {
    if (serial_) {
      per_thread();
      return;
    }
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
  const bool serial_;
  std::atomic<int64_t> next_{0};
};

// Σ over tasks of their (∂k, ∂θ, ∂α) partials, in task order (fixed, whatever thread ran which task).
inline void sum_param_partials(const std::vector<double>& partial, double* param_grad) {
  double acc[3] = {0, 0, 0};
  for (size_t k = 0; k + 3 <= partial.size(); k += 3)
    for (int i = 0; i < 3; ++i) acc[i] += partial[k + i];
  for (int i = 0; i < 3; ++i) param_grad[i] = acc[i];
}

// Loops marked [vec] are the hot per-element loops: tests/test_cpu_vectorised.py compiles them for
// float32 with a built-in and a given surrogate and fails unless GCC reports each one vectorised
// (a scalar walk is several times slower and still passes every numerical test).
//
// The per-block loops get one clone per ISA (picked at load time by the dynamic loader), so one
// build runs AVX-512 where the CPU has it and stays portable. Contraction is off (setup.py), so
// every clone rounds like the float32 reference.
// x86-64-v3 is AVX2 + FMA, v4 adds AVX-512. No loop contracts: FMAs in the backward walk make an
// all-True mask differ from no mask by an ulp, and W4 fwd+bwd is as fast without them.
// A user's surrogate compiled on this machine (snn_fast/ops/lif/native_surrogate.py) defines it empty
// and builds for -march=native instead: one copy of each loop, for the CPU it runs on.
#ifndef SNN_CPU_CLONES
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SNN_CPU_CLONES
#endif
#endif
// The per-element helpers of the [vec] loops below, inlined whatever GCC's unit-growth budget has
// left: a call left in such a loop keeps it scalar. In a user's compiled surrogate
// (native_surrogate.py) that budget ran out once this header grew, and surrogate_grads stayed a call.
#if defined(__GNUC__)
#define SNN_CPU_INLINE __attribute__((always_inline)) inline
#else
#define SNN_CPU_INLINE inline
#endif

// The flags reach the loops as template arguments (snn_fast::with_flags, once per call), so each
// loop holds only its own step formula: straight vector code. The step itself is lif_step.h's, the
// functions the CUDA kernels and their emulator run.
//
// So does the reset timing (TIMING, lif_step.h), one instantiation per timing, so that every loop is
// straight vector code; the strict threshold is a loop-invariant bound of the spike's comparison
// (p.fire_min), not a template argument. The flags a timing does not read collapse into one
// instantiation (canonical_flags), and the timings other than the default take bwd_block's walk
// only (bwd_impl): what the delayed and no-reset timings add to the build is one bwd_block per
// surrogate and decay_input (and hard/soft reset for the delayed one).
template <int V>
struct TimingConst {
  static constexpr int value = V;
};
template <typename acc_t, typename F>
void with_timing(const LIFParams<acc_t>& p, F&& f) {
  switch (p.timing) {
    case kResetDelayed:
      return f(TimingConst<kResetDelayed>{});
    case kResetNone:
      return f(TimingConst<kResetNone>{});
    default:
      return f(TimingConst<kResetAfterFire>{});
  }
}
// The hard-reset and detach_reset template flags a timing's step reads: after the spike both; the
// delayed timing the hard reset (its pending reset; nothing depends on S); no reset neither (the
// charge's vr is p.vr). The flags a timing does not read are fixed to false: one instantiation.
template <int TIMING>
constexpr bool canonical_hard(bool hard) {
  return TIMING == kResetNone ? false : hard;
}
template <int TIMING>
constexpr bool canonical_detach(bool detach) {
  return TIMING == kResetAfterFire ? detach : false;
}

// One block of n neurons (pointers already offset to the block's first neuron), all T steps. MASKED:
// the emitted value follows the noise mask (lif_fire_rt: the surrogate's primitive is a runtime switch
// there, the loop scalar, as before), else the spike (the common case: a handful of vector ops).
// KEEP: also H − θ of every step into d (acc_t, [T, N]), the argument of a user's surrogate.
template <bool HARD, bool DI, bool MASKED, bool KEEP, int TIMING, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void fwd_block(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                              const bool* __restrict__ mask, scalar_t* __restrict__ s,
                              scalar_t* __restrict__ v_last, scalar_t* __restrict__ v_seq, acc_t* __restrict__ d,
                              acc_t* __restrict__ v, int64_t n, int64_t T, int64_t N, const LIFParams<acc_t> p) {
  // One step of element i = t·N + j: V_{t−1} in, S_t to s[i], V_t returned.
  auto step = [&](acc_t vv, int64_t i) {
    const acc_t h = lif_charge<DI, acc_t, TIMING, HARD>(vv, acc_t(x[i]), p);
    if constexpr (KEEP) d[i] = h - p.theta;
    acc_t sp;
    if constexpr (MASKED) sp = lif_fire_rt<acc_t>(h, mask[i], p);
    else sp = lif_spike(h, p);
    s[i] = scalar_t(sp);
    return lif_reset<HARD, acc_t, TIMING>(h, sp, p);
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
      for (int64_t j = 0; j < n; ++j) {  // [vec]
        acc_t vv = v[j];
        vv = step(vv, off + j);
        vv = step(vv, off + N + j);
        vv = step(vv, off + 2 * N + j);
        v[j] = step(vv, off + 3 * N + j);
      }
    }
  }
  for (; t < T; ++t) {
    const int64_t off = t * N;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) v[j] = step(v[j], off + j);  // [vec]
    if (v_seq != nullptr)
      for (int64_t j = 0; j < n; ++j) v_seq[off + j] = scalar_t(v[j]);
  }
  for (int64_t j = 0; j < n; ++j) v_last[j] = scalar_t(v[j]);
}

// A start every neuron shares (v0 [1], v0_uniform: lif_checks.h uniform_v0): each thread reads a
// block of it from its own buffer, in cache, and writes the ∂L/∂v0 nobody asked for into a sink,
// instead of a row of N read by the forward, read again by the backward and written by it. The block's
// pointers are base + step·n0 (step 0 or 1), not a branch: GCC unswitched the block loop on one, and
// its copy of the inlined parameter-gradient walk stayed scalar (tests/test_native_surrogate.py).
template <typename scalar_t>
class StartBlocks {
 public:
  StartBlocks(const scalar_t* v0, scalar_t* gv0, bool uniform, int64_t B)
      : fill_(uniform ? B : 0, uniform ? v0[0] : scalar_t(0)), sink_(uniform && gv0 ? B : 0),
        v0_(uniform ? fill_.data() : v0), gv0_(uniform ? sink_.data() : gv0), step_(uniform ? 0 : 1) {}
  const scalar_t* v0(int64_t n0) const { return v0_ + step_ * n0; }
  scalar_t* gv0(int64_t n0) const { return gv0_ + step_ * n0; }

 private:
  std::vector<scalar_t> fill_, sink_;
  const scalar_t* v0_;
  scalar_t* gv0_;
  int64_t step_;
};

template <typename scalar_t, typename acc_t>
void fwd_impl(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
              scalar_t* v_seq, acc_t* d, int64_t T, int64_t N, const LIFParams<acc_t>& p, bool v0_uniform) {
  const int64_t B = fwd_block_for(N);
  const int64_t nblocks = (N + B - 1) / B;
  with_timing(p, [&](auto timing) {
    constexpr int TIMING = decltype(timing)::value;
    with_flags(
        [&](auto hard, auto di, auto masked, auto keep) {
          // D for a user's surrogate: the default timing only (lif_cpu.cpp refuses the others)
          constexpr bool KEEP = decltype(keep)::value && TIMING == kResetAfterFire;
          BlockQueue queue(nblocks, T * N < kFwdParallelMinWork);
          queue.run([&] {
            std::vector<acc_t> v(B);
            StartBlocks<scalar_t> start(v0, nullptr, v0_uniform, B);
            for (int64_t blk; (blk = queue.next()) >= 0;) {
              const int64_t n0 = blk * B, n = std::min(B, N - n0);
              fwd_block<canonical_hard<TIMING>(decltype(hard)::value), decltype(di)::value, decltype(masked)::value,
                        KEEP, TIMING, scalar_t, acc_t>(x + n0, start.v0(n0), mask ? mask + n0 : nullptr, s + n0,
                                                                v_last + n0, v_seq ? v_seq + n0 : nullptr,
                                                                d ? d + n0 : nullptr, v.data(), n, T, N, p);
            }
          });
        },
        p.hard_reset, p.decay_input, mask != nullptr, d != nullptr);
  });
}

// The surrogate of the backward's loops: a template argument (SG >= 0; the loops vectorise), for
// kRuntimeSurrogate the runtime id p.sg (one instantiation for all surrogates), or for
// kGivenSurrogate values computed before the walk (a user's torch g′, snn_fast/ops/lif/custom_cpu.py),
// read per element from Given.
constexpr int kRuntimeSurrogate = -1;
constexpr int kGivenSurrogate = -2;
// kNativeSurrogate: a user's torch g′ and ∂g/∂α translated to C++ (snn_fast/ops/lif/native_surrogate.py)
// as explicit specialisations of sg_grad / sg_dalpha for this id, in a translation unit of their own
// built on the user's machine (lif_bwd_native_kernel): the walk computes them inline, as a built-in's.
// No noise mask there (its emitted value needs the user's g; the given path runs it).
constexpr int kNativeSurrogate = -3;
template <int SG, typename scalar_t, typename T>
SNN_CPU_INLINE void surrogate_grads(T h, const LIFParams<T>& p, const Given<scalar_t, T>& gv, int64_t i, T& gp, T& dga) {
  if constexpr (SG == kGivenSurrogate) {
    gp = gv.gp[i];
    dga = gv.dga[i];
  } else if constexpr (SG == kRuntimeSurrogate) {
    sg_grad_dalpha_rt<true, T>(p.sg, h - p.theta, p.alpha, gp, dga);
  } else {
    gp = sg_grad<SG>(h - p.theta, p.alpha);
    dga = sg_dalpha<SG>(h - p.theta, p.alpha);
  }
}
// g′(H − θ) of element i.
template <int SG, typename scalar_t, typename T>
SNN_CPU_INLINE T sg_grad_at(T h, const LIFParams<T>& p, const Given<scalar_t, T>& gv, int64_t i) {
  if constexpr (SG == kGivenSurrogate) return gv.gp[i];
  else return sg_grad<SG>(h - p.theta, p.alpha);
}
// The emitted S of element i from its H: the noise mask's choice (MASKED) or the spike. With a given
// surrogate the mask's analog values came from the user's g in the forward: read from gv.s.
template <bool MASKED, int SG, typename scalar_t, typename T>
SNN_CPU_INLINE T emitted_at(T h, const bool* __restrict__ mask, const Given<scalar_t, T>& gv, int64_t i,
                    const LIFParams<T>& p) {
  if constexpr (!MASKED) return lif_spike(h, p);
  else if constexpr (SG == kGivenSurrogate) return T(gv.s[i]);
  else if constexpr (SG == kRuntimeSurrogate) return lif_fire_rt<T>(h, mask[i], p);
  else return lif_fire<SG, T>(h, mask[i], p);
}
// The surrogate that picks the emitted value in a re-run: the given one, else the runtime switch.
template <int SG>
constexpr int kRerunSg = SG == kGivenSurrogate ? kGivenSurrogate : kRuntimeSurrogate;

// Backward for one block with parameter gradients: re-run the forward into vprev (V_{t−1}, T × B),
// then walk back, recharging H from V_{t−1} and X. Writes the block's (∂k, ∂θ, ∂α) partial sums to
// out3. Runs under a noise mask and for the delayed and no-reset timings (which need V_{t−1});
// the default timing without a mask takes bwd_block_params, which gives the same bits. MASKED: the
// emitted value follows the noise mask; its primitive is a runtime switch, so the loops are scalar
// and SG is kRuntimeSurrogate (8 instantiations for the noisy mode, not 88). Both variants run the
// same operations, so an all-True mask gives bitwise the unmasked result (tests/test_cpp_special_values.py
// compares this function under an all-True mask with bwd_block_params).
template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, int TIMING, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_block(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                              const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                              const scalar_t* __restrict__ v0, const bool* __restrict__ mask,
                              const Given<scalar_t, acc_t> gv, scalar_t* __restrict__ gx, scalar_t* __restrict__ gv0,
                              acc_t* __restrict__ vprev, acc_t* __restrict__ dv, acc_t* __restrict__ lane_sums,
                              int64_t n, int64_t B,
                              int64_t T, int64_t N, const LIFParams<acc_t> p, double* __restrict__ out3) {
  // Re-run the forward: same functions, same operation order, so the same spikes.
  for (int64_t j = 0; j < n; ++j) dv[j] = acc_t(v0[j]);  // dv holds V during the re-run
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = t * N;
    acc_t* __restrict__ vp = vprev + t * B;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      vp[j] = dv[j];
      const acc_t h = lif_charge<DI, acc_t, TIMING, HARD>(dv[j], acc_t(x[off + j]), p);
      dv[j] = lif_reset<HARD, acc_t, TIMING>(h, emitted_at<MASKED, kRerunSg<SG>>(h, mask, gv, off + j, p), p);
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
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      const acc_t xv = acc_t(x[off + j]);
      const acc_t h = lif_charge<DI, acc_t, TIMING, HARD>(vp[j], xv, p);
      acc_t gp, dga, ek, eth, eal;
      surrogate_grads<SG>(h, p, gv, off + j, gp, dga);
      const acc_t sp = emitted_at<MASKED, kRerunSg<SG>>(h, mask, gv, off + j, p);
      const acc_t eps = lif_step_backward_g<HARD, DI, DETACH, acc_t, true, TIMING>(
          h, sp, vp[j], xv, acc_t(gs[off + j]), dv[j], gp, dga, p, ek, eth, eal);
      gx[off + j] = scalar_t(lif_grad_x<DI>(eps, p));
      dv[j] = lif_grad_v_prev<acc_t, TIMING, HARD>(eps, vp[j], p);
      sk[j] += ek;
      sth[j] += eth;
      sal[j] += eal;
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

// The re-run of bwd_block_fast: the forward from v0, keeping H_t in hbuf (T × B, in L2); leaves V_T
// in v. ARG: keeps H_t − θ instead (the argument of the surrogate; with B = N, hbuf is [T, N]).
// KEEP_Q: also ∂H_t/∂k (lif_dh_dk) in qbuf (T × B), for bwd_block_params.
// TIMING: the forward's reset timing (the delayed one soft only: bwd_impl says why).
template <int SG, bool HARD, bool DI, bool MASKED, bool ARG, typename scalar_t, typename acc_t,
          int TIMING = kResetAfterFire, bool KEEP_Q = false>
SNN_CPU_CLONES void rerun_keep_h(const scalar_t* __restrict__ x, const scalar_t* __restrict__ v0,
                                 const bool* __restrict__ mask, const Given<scalar_t, acc_t> gv,
                                 acc_t* __restrict__ hbuf, acc_t* __restrict__ v, int64_t n, int64_t B, int64_t T,
                                 int64_t N, const LIFParams<acc_t> p, acc_t* __restrict__ qbuf = nullptr) {
  // H_t of element i = t·N + j into hp (and ∂H_t/∂k into qp), V_t returned: the forward's step, in
  // the forward's operation order.
  auto step = [&](acc_t vv, int64_t i, acc_t& hp, acc_t& qp) {
    const acc_t xv = acc_t(x[i]);
    const acc_t h = lif_charge<DI, acc_t, TIMING, HARD>(vv, xv, p);
    if constexpr (ARG) hp = h - p.theta;
    else hp = h;
    if constexpr (KEEP_Q) qp = lif_dh_dk<DI>(vv, xv, p);
    return lif_reset<HARD, acc_t, TIMING>(h, emitted_at<MASKED, kRerunSg<SG>>(h, mask, gv, i, p), p);
  };
  // Without KEEP_Q the Q stores land in one dummy that the compiler drops.
  acc_t unused = 0;
  for (int64_t j = 0; j < n; ++j) v[j] = acc_t(v0[j]);
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) {  // four steps per pass, as in fwd_block
    const int64_t off = t * N;
    acc_t* __restrict__ hp = hbuf + t * B;
    acc_t* __restrict__ qp = KEEP_Q ? qbuf + t * B : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      acc_t vv = v[j];
      if constexpr (KEEP_Q) {
        vv = step(vv, off + j, hp[j], qp[j]);
        vv = step(vv, off + N + j, hp[B + j], qp[B + j]);
        vv = step(vv, off + 2 * N + j, hp[2 * B + j], qp[2 * B + j]);
        v[j] = step(vv, off + 3 * N + j, hp[3 * B + j], qp[3 * B + j]);
      } else {
        vv = step(vv, off + j, hp[j], unused);
        vv = step(vv, off + N + j, hp[B + j], unused);
        vv = step(vv, off + 2 * N + j, hp[2 * B + j], unused);
        v[j] = step(vv, off + 3 * N + j, hp[3 * B + j], unused);
      }
    }
  }
  for (; t < T; ++t) {
    const int64_t off = t * N;
    acc_t* __restrict__ hp = hbuf + t * B;
    acc_t* __restrict__ qp = KEEP_Q ? qbuf + t * B : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      if constexpr (KEEP_Q) v[j] = step(v[j], off + j, hp[j], qp[j]);
      else v[j] = step(v[j], off + j, hp[j], unused);
    }
  }
}

// The walk back from T − 1 to 0 of bwd_block_fast: H_t from hbuf, ∂L/∂V carried in dv. The default
// timing only.
// MASKED (the noise mask, no parameter gradients): the same instantiation but for the emitted value,
// so an all-True mask rounds exactly like the unmasked walk. Not contracted (it was, with
// SNN_CPU_CLONES_FMA): the hard reset's ε = dv·(1 − S) + ds·g′ has two products, and which one GCC
// fuses follows statement order, which differed between MASKED and unmasked: grad_x ≤ 1 ulp apart
// (15 of 150 elements). Uncontracted, every operation rounds as in bwd_block and the reference.
template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_walk_fast(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvseq,
                                      const bool* __restrict__ mask, const Given<scalar_t, acc_t> gv,
                                      scalar_t* __restrict__ gx,
                                      const acc_t* __restrict__ hbuf, acc_t* __restrict__ dv, int64_t n, int64_t B,
                                      int64_t T, int64_t N, const LIFParams<acc_t> p) {
  // One step back: ∂L/∂V_t = d and H_t = h of element i in, ∂L/∂X_t to gx[i], ∂L/∂V_{t−1} returned.
  auto back = [&](acc_t d, acc_t h, int64_t i) {
    const acc_t ds = lif_grad_s<HARD, DETACH>(acc_t(gs[i]), d, h, p);
    const acc_t eps =
        lif_grad_h<HARD>(d, emitted_at<MASKED, SG>(h, mask, gv, i, p), ds, sg_grad_at<SG>(h, p, gv, i));
    gx[i] = scalar_t(lif_grad_x<DI>(eps, p));
    return lif_grad_v_prev(eps, p);
  };
  int64_t t = T - 1;
  // Two steps per pass without v_seq (∂L/∂V carried in a register, two rows of ∂L/∂S and ∂L/∂X
  // streamed at once), as the forward does with four.
  if (gvseq == nullptr) {
    for (; t >= 1; t -= 2) {
      const int64_t off = t * N;
      const acc_t* __restrict__ hp = hbuf + t * B;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dv[j] = back(back(dv[j], hp[j], off + j), hp[j - B], off - N + j);  // [vec]
    }
  }
  for (; t >= 0; --t) {
    const int64_t off = t * N;
    const acc_t* __restrict__ hp = hbuf + t * B;
    if (gvseq != nullptr)
      for (int64_t j = 0; j < n; ++j) dv[j] += acc_t(gvseq[off + j]);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dv[j] = back(dv[j], hp[j], off + j);  // [vec]
  }
}

// Backward without parameter gradients (the common case, and the noise mask's MASKED variant):
// re-run the forward keeping H_t (T × B in L2), then walk back reading only H and ∂L/∂S.
// TIMING kResetNone, or kResetDelayed with a soft reset: V_t = H_t carried, and the pending −R·θ
// (R from V_{t−1}, no gradient: docs/spec.md §2.3) leaves ∂H_t/∂V_{t−1} = 1 − k, so the walk is the
// soft reset's with detach_reset (∂L/∂S_t = ∂L/∂S_t + κ·∂L/∂V_t, ε = ∂L/∂V_t + ∂L/∂S_t·g′) on the
// re-run's H: the same operations as bwd_block's walk for those timings (lif_step_backward_g).
template <int SG, bool HARD, bool DI, bool DETACH, bool MASKED, typename scalar_t, typename acc_t,
          int TIMING = kResetAfterFire>
void bwd_block_fast(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                    const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ v0, const bool* __restrict__ mask, const Given<scalar_t, acc_t>& gv,
                    scalar_t* __restrict__ gx, scalar_t* __restrict__ gv0, acc_t* __restrict__ hbuf,
                    acc_t* __restrict__ dv, int64_t n, int64_t B, int64_t T, int64_t N, const LIFParams<acc_t> p) {
  // dv holds V during the re-run
  rerun_keep_h<SG, HARD, DI, MASKED, false, scalar_t, acc_t, TIMING>(x, v0, mask, gv, hbuf, dv, n, B, T, N, p);
  for (int64_t j = 0; j < n; ++j) dv[j] = gvlast ? acc_t(gvlast[j]) : acc_t(0);
  constexpr bool kAfter = TIMING == kResetAfterFire;
  static_assert(kAfter || TIMING == kResetNone || (TIMING == kResetDelayed && !HARD),
                "the hard delayed reset needs V_{t-1} in its walk: bwd_block");
  bwd_walk_fast<SG, HARD && kAfter, DI, DETACH || !kAfter, MASKED, scalar_t, acc_t>(gs, gvseq, mask, gv, gx, hbuf,
                                                                                     dv, n, B, T, N, p);
  for (int64_t j = 0; j < n; ++j) gv0[j] = scalar_t(dv[j]);
}

// Backward with parameter gradients, the default timing, no noise mask: the re-run keeps H_t and
// Q_t = ∂H_t/∂k (lif_dh_dk) in two T × B buffers in L2, so the walk reads neither X (from memory)
// nor V_{t−1} and does not recharge (bwd_block does both). W4 float32 fwd+bwd with a learnable α
// (benchmarks/test_bench_surrogate.py, the snn_fast-cpu-learn row) went from 6.56 to 5.97–6.14 ms at
// 1 thread and from 3.62 to 3.08–3.51 ms at 2 (three runs after, one before, same host and day).
// The same operations on the same values as bwd_block, in the same order (the lane sums add
// t = T − 1 down to 0), so bitwise bwd_block's results.
template <int SG, bool HARD, bool DI, bool DETACH, typename scalar_t, typename acc_t>
SNN_CPU_CLONES void bwd_walk_params(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvseq,
                                    const Given<scalar_t, acc_t> gv, scalar_t* __restrict__ gx,
                                    const acc_t* __restrict__ hbuf, const acc_t* __restrict__ qbuf,
                                    acc_t* __restrict__ dv, acc_t* __restrict__ lane_sums, int64_t n, int64_t B,
                                    int64_t T, int64_t N, const LIFParams<acc_t> p) {
  acc_t* __restrict__ sk = lane_sums;
  acc_t* __restrict__ sth = lane_sums + B;
  acc_t* __restrict__ sal = lane_sums + 2 * B;
  int64_t t = T - 1;
  // Two steps per pass without v_seq, as bwd_walk_fast: ∂L/∂V and the lane sums stay in registers
  // between them, and two rows of each stream are in flight at once. W4 float32 backward with a
  // learnable α, 1 thread: 5.7 -> 4.2–4.4 ms with a given g′, 3.8 -> 3.0–3.1 ms with the built-in
  // sigmoid (a standalone build of these kernels, median of 40 calls). Each lane sum still adds
  // t = T − 1 down to 0, one term at a time: the same bits as bwd_block. Written out, not as a lambda
  // applied twice: GCC left that form scalar here, 8× slower (tests/test_cpu_vectorised.py).
  if (gvseq == nullptr) {
    for (; t >= 1; t -= 2) {
      const int64_t off = t * N, off1 = off - N;
      const acc_t* __restrict__ hp = hbuf + t * B;
      const acc_t* __restrict__ qp = qbuf + t * B;
      for (int64_t j = 0; j < n; ++j) {  // [vec]
        acc_t h = hp[j];
        acc_t gp, dga, ek, eth, eal;
        surrogate_grads<SG>(h, p, gv, off + j, gp, dga);
        acc_t eps = lif_step_backward_q<HARD, DETACH, acc_t>(h, lif_spike(h, p), qp[j], acc_t(gs[off + j]), dv[j],
                                                             gp, dga, p, ek, eth, eal);
        gx[off + j] = scalar_t(lif_grad_x<DI>(eps, p));
        const acc_t d = lif_grad_v_prev(eps, p);
        const acc_t a0 = sk[j] + ek, a1 = sth[j] + eth, a2 = sal[j] + eal;
        h = hp[j - B];
        surrogate_grads<SG>(h, p, gv, off1 + j, gp, dga);
        eps = lif_step_backward_q<HARD, DETACH, acc_t>(h, lif_spike(h, p), qp[j - B], acc_t(gs[off1 + j]), d, gp,
                                                       dga, p, ek, eth, eal);
        gx[off1 + j] = scalar_t(lif_grad_x<DI>(eps, p));
        dv[j] = lif_grad_v_prev(eps, p);
        sk[j] = a0 + ek;
        sth[j] = a1 + eth;
        sal[j] = a2 + eal;
      }
    }
  }
  for (; t >= 0; --t) {
    const int64_t off = t * N;
    const acc_t* __restrict__ hp = hbuf + t * B;
    const acc_t* __restrict__ qp = qbuf + t * B;
    if (gvseq != nullptr)
      for (int64_t j = 0; j < n; ++j) dv[j] += acc_t(gvseq[off + j]);
    for (int64_t j = 0; j < n; ++j) {  // [vec]
      const acc_t h = hp[j];
      acc_t gp, dga, ek, eth, eal;
      surrogate_grads<SG>(h, p, gv, off + j, gp, dga);
      const acc_t eps = lif_step_backward_q<HARD, DETACH, acc_t>(h, lif_spike(h, p), qp[j], acc_t(gs[off + j]), dv[j],
                                                                 gp, dga, p, ek, eth, eal);
      gx[off + j] = scalar_t(lif_grad_x<DI>(eps, p));
      dv[j] = lif_grad_v_prev(eps, p);
      sk[j] += ek;
      sth[j] += eth;
      sal[j] += eal;
    }
  }
}

template <int SG, bool HARD, bool DI, bool DETACH, typename scalar_t, typename acc_t>
void bwd_block_params(const scalar_t* __restrict__ gs, const scalar_t* __restrict__ gvlast,
                      const scalar_t* __restrict__ gvseq, const scalar_t* __restrict__ x,
                      const scalar_t* __restrict__ v0, const Given<scalar_t, acc_t>& gv, scalar_t* __restrict__ gx,
                      scalar_t* __restrict__ gv0, acc_t* __restrict__ hbuf, acc_t* __restrict__ qbuf,
                      acc_t* __restrict__ dv, acc_t* __restrict__ lane_sums, int64_t n, int64_t B, int64_t T,
                      int64_t N, const LIFParams<acc_t> p, double* __restrict__ out3) {
  // dv holds V during the re-run
  rerun_keep_h<SG, HARD, DI, false, false, scalar_t, acc_t, kResetAfterFire, true>(x, v0, nullptr, gv, hbuf, dv, n, B,
                                                                                    T, N, p, qbuf);
  for (int64_t j = 0; j < n; ++j) dv[j] = gvlast ? acc_t(gvlast[j]) : acc_t(0);
  for (int64_t j = 0; j < 3 * B; ++j) lane_sums[j] = acc_t(0);
  bwd_walk_params<SG, HARD, DI, DETACH, scalar_t, acc_t>(gs, gvseq, gv, gx, hbuf, qbuf, dv, lane_sums, n, B, T, N,
                                                         p);
  for (int64_t j = 0; j < n; ++j) gv0[j] = scalar_t(dv[j]);
  double dk = 0, dth = 0, dal = 0;  // folded as bwd_block folds
  for (int64_t j = 0; j < n; ++j) {
    dk += lane_sums[j];
    dth += lane_sums[B + j];
    dal += lane_sums[2 * B + j];
  }
  out3[0] = dk;
  out3[1] = dth;
  out3[2] = dal;
}

template <int SG, bool HARD, bool DI, bool DETACH, int TIMING, typename scalar_t, typename acc_t>
void bwd_impl(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
              const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
              const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad, bool v0_uniform,
              const Given<scalar_t, acc_t>& given = {}) {
  const int64_t B = bwd_block_for(T, N, need_param_grad);
  const int64_t nblocks = (N + B - 1) / B;
  // One partial sum per block, added in block order afterwards: the result does not depend on the
  // number of threads.
  std::vector<double> partial(nblocks * 3, 0.0);
  BlockQueue queue(nblocks, T * N < kBwdParallelMinWork);
  queue.run([&] {
    std::vector<acc_t> vprev(T * B), dv(B), lane_sums(3 * B), qbuf;  // qbuf: bwd_block_params only
    StartBlocks<scalar_t> start(v0, gv0, v0_uniform, B);
    for (int64_t blk; (blk = queue.next()) >= 0;) {
      const int64_t n0 = blk * B, n = std::min(B, N - n0);
      const scalar_t* v0b = start.v0(n0);
      scalar_t* gv0b = start.gv0(n0);
      const scalar_t* gvl = gvlast ? gvlast + n0 : nullptr;
      const scalar_t* gvs = gvseq ? gvseq + n0 : nullptr;
      const bool* m = mask ? mask + n0 : nullptr;
      const Given<scalar_t, acc_t> gv = given.offset(n0);
      double* out3 = partial.data() + blk * 3;
      // bwd_block: under a noise mask, and the other timings' walk. The default timing's unmasked
      // blocks never come here (bwd_block_params or bwd_block_fast), so that instantiation is not built.
      auto full = [&] {
        if constexpr (SG == kNativeSurrogate) {
          TORCH_INTERNAL_ASSERT(false, "the compiled surrogate's walk runs without a noise mask");
        } else if (mask != nullptr) {
          bwd_block<kRerunSg<SG>, HARD, DI, DETACH, true, TIMING, scalar_t, acc_t>(
              gs + n0, gvl, gvs, x + n0, v0b, m, gv, gx + n0, gv0b, vprev.data(), dv.data(),
              lane_sums.data(), n, B, T, N, p, out3);
        } else if constexpr (TIMING != kResetAfterFire) {
          bwd_block<SG, HARD, DI, DETACH, false, TIMING, scalar_t, acc_t>(gs + n0, gvl, gvs, x + n0, v0b, m, gv,
                                                                        gx + n0, gv0b, vprev.data(), dv.data(),
                                                                        lane_sums.data(), n, B, T, N, p, out3);
        }
      };
      // The other timings: the fast walk without parameter gradients and a noise mask, except the hard
      // delayed reset, whose ∂L/∂V_{t−1} needs V_{t−1} (bwd_block keeps it; its parameter sums are
      // dropped when not asked for).
      if constexpr (TIMING != kResetAfterFire) {
        if constexpr (TIMING == kResetNone || !HARD) {
          if (!need_param_grad && mask == nullptr) {
            bwd_block_fast<SG, HARD, DI, DETACH, false, scalar_t, acc_t, TIMING>(
                gs + n0, gvl, gvs, x + n0, v0b, m, gv, gx + n0, gv0b, vprev.data(), dv.data(), n, B, T, N,
                p);
            continue;
          }
        }
        full();
      } else if (need_param_grad) {
        if (mask != nullptr) {
          full();
        } else {
          if (qbuf.empty()) qbuf.resize(T * B);
          bwd_block_params<SG, HARD, DI, DETACH, scalar_t, acc_t>(gs + n0, gvl, gvs, x + n0, v0b, gv, gx + n0,
                                                                  gv0b, vprev.data(), qbuf.data(), dv.data(),
                                                                  lane_sums.data(), n, B, T, N, p, out3);
        }
      } else if (mask != nullptr) {
        if constexpr (SG != kNativeSurrogate)
          bwd_block_fast<SG, HARD, DI, DETACH, true, scalar_t, acc_t>(
              gs + n0, gvl, gvs, x + n0, v0b, m, gv, gx + n0, gv0b, vprev.data(), dv.data(), n, B, T, N, p);
        else
          TORCH_INTERNAL_ASSERT(false, "the compiled surrogate's walk runs without a noise mask");
      } else {
        bwd_block_fast<SG, HARD, DI, DETACH, false, scalar_t, acc_t>(gs + n0, gvl, gvs, x + n0, v0b, m, gv,
                                                                     gx + n0, gv0b, vprev.data(), dv.data(), n,
                                                                     B, T, N, p);
      }
    }
  });
  if (need_param_grad) sum_param_partials(partial, param_grad);
}

template <typename scalar_t, typename acc_t>
void lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                    scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p, acc_t* d, bool v0_uniform) {
  fwd_impl<scalar_t, acc_t>(x, v0, mask, s, v_last, v_seq, d, T, N, p, v0_uniform);
}

// The surrogate and the flags are template arguments of the backward so its inner loops vectorise.
template <typename scalar_t, typename acc_t>
void lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                    const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                    const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad, bool v0_uniform) {
  with_timing(p, [&](auto timing) {
    constexpr int TIMING = decltype(timing)::value;
    with_flags(
        [&](auto hard, auto di, auto detach) {
          constexpr bool HARD = canonical_hard<TIMING>(decltype(hard)::value);
          constexpr bool DETACH = canonical_detach<TIMING>(decltype(detach)::value);
          switch (sg) {
#define SNN_CASE(ID)                                                                                       \
  case ID:                                                                                                 \
    return bwd_impl<ID, HARD, decltype(di)::value, DETACH, TIMING, scalar_t, acc_t>(                       \
        gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p, need_param_grad, param_grad, v0_uniform);
            SNN_FAST_SURROGATE_CASES(SNN_CASE)
#undef SNN_CASE
          }
        },
        p.hard_reset, p.decay_input, p.detach_reset);
  });
}

// D = H − θ, [T, N]: rerun_keep_h with B = N writes the rows of d in place.
template <typename scalar_t, typename acc_t>
void lif_sg_arg_kernel(const scalar_t* x, const scalar_t* v0, const scalar_t* s, acc_t* d, int64_t T, int64_t N,
                       const LIFParams<acc_t>& p, bool v0_uniform) {
  TORCH_CHECK(default_firing(p), "lif_sg_arg: the default firing and reset only (a user's surrogate)");
  const int64_t B = fwd_block_for(N);
  const int64_t nblocks = (N + B - 1) / B;
  const Given<scalar_t, acc_t> given{nullptr, nullptr, s};
  with_flags(
      [&](auto hard, auto di, auto masked) {
        BlockQueue queue(nblocks, T * N < kFwdParallelMinWork);
        queue.run([&] {
          std::vector<acc_t> v(B);
          StartBlocks<scalar_t> start(v0, nullptr, v0_uniform, B);
          for (int64_t blk; (blk = queue.next()) >= 0;) {
            const int64_t n0 = blk * B, n = std::min(B, N - n0);
            rerun_keep_h<kGivenSurrogate, decltype(hard)::value, decltype(di)::value, decltype(masked)::value, true,
                         scalar_t, acc_t>(x + n0, start.v0(n0), nullptr, given.offset(n0), d + n0, v.data(), n, N, T, N,
                                          p);
          }
        });
      },
      p.hard_reset, p.decay_input, s != nullptr);
}

template <typename scalar_t, typename acc_t>
void lif_bwd_given_kernel(const Given<scalar_t, acc_t>& given, const scalar_t* gs, const scalar_t* gvlast,
                          const scalar_t* gvseq, const scalar_t* x, const scalar_t* v0, const bool* mask,
                          scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N, const LIFParams<acc_t>& p,
                          bool need_param_grad, double* param_grad, bool v0_uniform) {
  TORCH_CHECK(default_firing(p), "lif_bwd (given g′): the default firing and reset only (a user's surrogate)");
  with_flags(
      [&](auto hard, auto di, auto detach) {
        bwd_impl<kGivenSurrogate, decltype(hard)::value, decltype(di)::value, decltype(detach)::value,
                 kResetAfterFire, scalar_t, acc_t>(gs, gvlast, gvseq, x, v0, mask, gx, gv0, T, N, p, need_param_grad, param_grad,
                                                   v0_uniform, given);
      },
      p.hard_reset, p.decay_input, p.detach_reset);
}

// The backward of a user's surrogate compiled to C++ (kNativeSurrogate): the translation unit that
// native_surrogate.py generates specialises sg_grad/sg_dalpha<kNativeSurrogate, acc_t> and instantiates
// this for one dtype; lif_cpu.cpp calls it through a NativeBwdFn pointer (lif_bwd_native). The default
// firing and reset, no noise mask.
template <typename scalar_t, typename acc_t>
void lif_bwd_native_kernel(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                           const scalar_t* v0, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                           const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad, bool v0_uniform) {
  with_flags(
      [&](auto hard, auto di, auto detach) {
        bwd_impl<kNativeSurrogate, decltype(hard)::value, decltype(di)::value, decltype(detach)::value,
                 kResetAfterFire, scalar_t, acc_t>(gs, gvlast, gvseq, x, v0, nullptr, gx, gv0, T, N, p,
                                                   need_param_grad, param_grad, v0_uniform);
      },
      p.hard_reset, p.decay_input, p.detach_reset);
}

#define SNN_FAST_INSTANTIATE_LIF_CPU(scalar_t, acc_t)                                                        \
  template void lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*, scalar_t*,     \
                                                scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, \
                                                acc_t*, bool);                                                       \
  template void lif_bwd_kernel<scalar_t, acc_t>(int, const scalar_t*, const scalar_t*, const scalar_t*,       \
                                                const scalar_t*, const scalar_t*, const bool*, scalar_t*,         \
                                                scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, bool, double*, bool); \
  template void lif_sg_arg_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const scalar_t*, acc_t*,    \
                                                   int64_t, int64_t, const LIFParams<acc_t>&, bool);             \
  template void lif_bwd_given_kernel<scalar_t, acc_t>(                                                         \
      const Given<scalar_t, acc_t>&, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,        \
      const scalar_t*, const bool*, scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, bool, double*, \
      bool);

}  // namespace cpu_lif
}  // namespace snn_fast
