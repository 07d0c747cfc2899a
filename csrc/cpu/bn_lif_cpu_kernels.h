// Entry points of the fused batch-norm + LIF CPU kernels (bn_lif_cpu_kernels_impl.h), one
// instantiation per storage dtype (bn_lif_cpu_kernels_{f32,f64,f16,bf16}.cpp). x is [T, N] contiguous
// with N = B·C·S: element n of a row belongs to channel (n / S) % C (S = `inner`, the spatial size).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "lif_cpu_kernels.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cpu_bn_lif {

// The per-channel affine of the charge's input, X' = (x − m_c)·a_c + b_c, [C] each in acc_t; and the
// layout of the start the kernels take with it: v0_uniform, one value v0[0] for every neuron (the op's
// v0 is [1]: a reset start, which has no gradient), so that neither v0 nor ∂L/∂v0 is a row of N in
// memory (per-thread blocks of it in cache instead); else v0 and ∂L/∂v0 are [N].
template <typename acc_t>
struct BNAffine {
  const acc_t* a;
  const acc_t* m;
  const acc_t* b;
  int64_t C;
  int64_t inner;
  bool v0_uniform = false;
};

// What the training backward's batch-statistics pass (∂L/∂x through the batch mean and variance)
// needs besides BNAffine and the channel sums: rstd_c ([C], acc_t) and n = T·B·S, the values per
// channel. Given to bn_lif_bwd_kernel, it may run that pass itself, channel by channel while the
// channel's x and a·∂L/∂X' are still in cache (it says whether it did).
template <typename acc_t>
struct BNBatchStats {
  const acc_t* rstd;
  double count;
};

// The coefficients of ∂L/∂x = A_c·(a·∂L/∂X') + B_c·(x − m_c) + D_c for channel c from its sums
// g0 = Σ∂L/∂X', g1 = Σ∂L/∂X'·(x − m_c) (docs/spec.md §12), in double: with X' = (x − m)·a + b and the
// biased variance, ∂m = −a·g0 and ∂var = −½·a·rstd²·g1 (Σ(x − m) = 0 for the batch mean), so
// ∂x = a·∂X' − a·g0/n − a·rstd²·(x − m)·g1/n; the walk wrote a·∂X' already (A = 1).
template <typename acc_t>
inline void dx_coefficients(double a, double rstd, double g0, double g1, double n, acc_t& A, acc_t& B, acc_t& D) {
  A = acc_t(1);
  B = acc_t(-a * rstd * rstd * g1 / n);
  D = acc_t(-a * g0 / n);
}

// Whether the training backward goes channel by channel (bn_lif_cpu_kernels_impl.h bwd_by_channel:
// each channel's batch-statistics pass right after its walk, from the cache) rather than by blocks of
// the row with that pass over all of [T, N] after it. Measured (the dev VM, 2 threads, fp32, training
// backward alone; README "Fused batch norm + LIF"): 1.13× faster at [4, 32, 64, 56, 56] (runs of
// 3136), slower for runs of 196 … 784 (14² … 28²), where walking a channel's short runs one by one
// cost more than the pass it saved. So: runs of kChannelMinRun or more, a channel's x, ∂L/∂S and ∂L/∂x
// (∂L/∂v_seq and the mask too, where given) within kChannelBytes (two of them, one per core, in this
// host's 32 MiB L3), and two channels or more. The shape's choice alone, never the thread count's: the
// sums' order, and so the result, does not depend on it. snn_fast/ops/bn_lif/memory.py mirrors it.
constexpr int64_t kChannelMinRun = 2048;             // S: runs of 8 KiB in fp32 (56² is one)
constexpr int64_t kChannelBytes = int64_t(8) << 20;

inline bool backward_by_channel(int64_t T, int64_t N, int64_t C, int64_t S, int64_t element_size, bool grad_v_seq,
                                bool mask) {
  const int64_t per_element = 3 * element_size + (grad_v_seq ? element_size : 0) + (mask ? 1 : 0);
  return S >= kChannelMinRun && C >= 2 && T * (N / C) * per_element <= kChannelBytes;  // T·B·S elements
}

// Per-channel mean and biased variance over (T, B, S), in double: one read of x.
template <typename scalar_t>
void bn_stats_kernel(const scalar_t* x, int64_t T, int64_t N, int64_t C, int64_t inner, double* mean, double* var);

// Forward: LIF over all T steps charging with X'; s, v_last and (when non-null) v_seq.
template <typename scalar_t, typename acc_t>
void bn_lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                       scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p, const BNAffine<acc_t>& f);

// Backward walk: gx = a_c·∂L/∂X', gv0, (∂k, ∂θ, ∂α) into param_grad[3]
// when need_param_grad, and per channel Σ∂L/∂X' and Σ∂L/∂X'·(x − m_c) into chan_sums[2C] (always),
// summed in a fixed order (independent of the thread count). With `stats` (training), where the
// shape allows it (backward_by_channel above), it also runs the batch-statistics pass,
// gx ← ∂L/∂x, and returns true; false: gx holds a·∂L/∂X' and the caller runs bn_lif_dx_kernel.
template <typename scalar_t, typename acc_t>
bool bn_lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                       const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                       const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad,
                       double* param_grad, double* chan_sums, const BNBatchStats<acc_t>* stats);

// In place: gx ← A_c·gx + B_c·(x − m_c) + D_c, coef = [A | B | D] ([3C], acc_t), m = f.m.
template <typename scalar_t, typename acc_t>
void bn_lif_dx_kernel(const scalar_t* x, scalar_t* gx, int64_t T, int64_t N, const acc_t* coef,
                      const BNAffine<acc_t>& f);

// A user's surrogate compiled to C++ on this machine (bn_lif_bwd_native_kernel in
// bn_lif_cpu_kernels_impl.h, built by snn_fast/ops/lif/native_surrogate.py into a library of its own):
// bn_lif_bwd_kernel's walk with that surrogate inline, no noise mask. Its address reaches
// bn_lif_cpu.cpp's bn_lif_bwd_native op as an integer with the library's bn_native_abi_tag, which the
// op compares with its own for x's dtype before the call: LIF's tag (version, dtype, LIFParams) and
// this call's version and the size of BNAffine.
template <typename scalar_t, typename acc_t>
using NativeBnBwdFn = bool (*)(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                               const scalar_t* v0, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                               const LIFParams<acc_t>& p, const BNAffine<acc_t>& f, bool need_param_grad,
                               double* param_grad, double* chan_sums, const BNBatchStats<acc_t>* stats);
constexpr int kBnNativeAbi = 3;  // 2: BNAffine::v0_uniform; 3: BNBatchStats (the batch-statistics pass)
template <typename scalar_t, typename acc_t>
constexpr int64_t bn_native_abi_tag() {
  return (int64_t(kBnNativeAbi) * 1000 + int64_t(sizeof(BNAffine<acc_t>))) * 100000000 +
         cpu_lif::native_abi_tag<scalar_t, acc_t>();
}

#define SNN_FAST_EXTERN_BN_LIF_CPU(scalar_t, acc_t)                                                          \
  extern template void bn_stats_kernel<scalar_t>(const scalar_t*, int64_t, int64_t, int64_t, int64_t, double*, \
                                                 double*);                                                    \
  extern template void bn_lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*,      \
                                                          scalar_t*, scalar_t*, scalar_t*, int64_t, int64_t,  \
                                                          const LIFParams<acc_t>&, const BNAffine<acc_t>&);   \
  extern template bool bn_lif_bwd_kernel<scalar_t, acc_t>(                                                   \
      int, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*, const bool*,   \
      scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, const BNAffine<acc_t>&, bool, double*, \
      double*, const BNBatchStats<acc_t>*);                                                                   \
  extern template void bn_lif_dx_kernel<scalar_t, acc_t>(const scalar_t*, scalar_t*, int64_t, int64_t,        \
                                                         const acc_t*, const BNAffine<acc_t>&);
SNN_FAST_EXTERN_BN_LIF_CPU(float, float)
SNN_FAST_EXTERN_BN_LIF_CPU(double, double)
SNN_FAST_EXTERN_BN_LIF_CPU(c10::Half, float)
SNN_FAST_EXTERN_BN_LIF_CPU(c10::BFloat16, float)
#undef SNN_FAST_EXTERN_BN_LIF_CPU

}  // namespace cpu_bn_lif
}  // namespace snn_fast
