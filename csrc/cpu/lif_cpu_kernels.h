// Entry points of the fused LIF CPU kernels (lif_cpu_kernels_impl.h), one instantiation per storage
// dtype (lif_cpu_kernels_{f32,f64,f16,bf16}.cpp). Pointers are to contiguous [T, N] / [N] data.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cpu_lif {

// A user's surrogate (snn_fast/ops/lif/custom_cpu.py): g′(H − θ) and ∂g/∂α evaluated by its torch
// functions before the walk, [T, N] in acc_t, and, under a noise mask, the forward's emitted values
// (g's analog ones where the mask is off), read instead of computed. Pointers to element 0 of [T, N].
template <typename scalar_t, typename acc_t>
struct Given {
  const acc_t* gp = nullptr;    // g′(H − θ)
  const acc_t* dga = nullptr;   // ∂g/∂α (read only with parameter gradients)
  const scalar_t* s = nullptr;  // emitted S (read only under a noise mask)
  Given offset(int64_t n0) const {
    return {gp ? gp + n0 : nullptr, dga ? dga + n0 : nullptr, s ? s + n0 : nullptr};
  }
};

// Forward over all T steps: s, v_last and (when non-null) v_seq, and d: H − θ of every step (for a
// user's surrogate, custom_cpu.py).
template <typename scalar_t, typename acc_t>
void lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                    scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p, acc_t* d = nullptr,
                    bool v0_uniform = false);

// Backward: grad_x, grad_v0 and, when need_param_grad, (∂k, ∂θ, ∂α) summed deterministically into
// param_grad[3]. gvlast / gvseq / mask may be null. v0_uniform (every kernel here): v0 is one value
// v0[0] for every neuron (lif_checks.h uniform_v0) and grad_v0 is not written.
template <typename scalar_t, typename acc_t>
void lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                    const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                    const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad, bool v0_uniform);

// For a user's surrogate: D = H_t − θ of every step into d ([T, N], acc_t), the forward re-run (with
// s, when non-null, as the emitted values in the reset: a forward under a noise mask).
template <typename scalar_t, typename acc_t>
void lif_sg_arg_kernel(const scalar_t* x, const scalar_t* v0, const scalar_t* s, acc_t* d, int64_t T, int64_t N,
                       const LIFParams<acc_t>& p, bool v0_uniform);

// lif_bwd_kernel with g′ and ∂g/∂α from `given` (and the emitted S from given.s where mask is non-null).
template <typename scalar_t, typename acc_t>
void lif_bwd_given_kernel(const Given<scalar_t, acc_t>& given, const scalar_t* gs, const scalar_t* gvlast,
                          const scalar_t* gvseq, const scalar_t* x, const scalar_t* v0, const bool* mask,
                          scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N, const LIFParams<acc_t>& p,
                          bool need_param_grad, double* param_grad, bool v0_uniform);

// A user's surrogate compiled to C++ on this machine (lif_bwd_native_kernel in lif_cpu_kernels_impl.h,
// built by snn_fast/ops/lif/native_surrogate.py into a library of its own): lif_bwd_kernel's walk
// with that surrogate inline, the default firing and reset, no noise mask. Its address reaches
// lif_cpu.cpp's lif_bwd_native op as an integer, with the library's native_abi_tag, which the op
// compares with its own for x's dtype before the call: the version below (bumped when the call
// changes), the storage dtype, and the size of LIFParams (a library built from edited headers).
template <typename scalar_t, typename acc_t>
using NativeBwdFn = void (*)(const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                             const scalar_t* v0, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                             const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad,
                             bool v0_uniform);
constexpr int kNativeAbi = 2;  // 2: v0_uniform
template <typename scalar_t, typename acc_t>
constexpr int64_t native_abi_tag() {
  constexpr int64_t dtype = std::is_same_v<scalar_t, float> ? 1 : std::is_same_v<scalar_t, double> ? 2
                            : std::is_same_v<scalar_t, c10::Half> ? 3 : 4;
  return int64_t(kNativeAbi) * 1000000 + int64_t(sizeof(LIFParams<acc_t>)) * 100 + dtype;
}

#define SNN_FAST_EXTERN_LIF_CPU(scalar_t, acc_t)                                                             \
  extern template void lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*,         \
                                                       scalar_t*, scalar_t*, scalar_t*, int64_t, int64_t,     \
                                                       const LIFParams<acc_t>&, acc_t*, bool);                \
  extern template void lif_bwd_kernel<scalar_t, acc_t>(int, const scalar_t*, const scalar_t*, const scalar_t*, \
                                                       const scalar_t*, const scalar_t*, const bool*, scalar_t*, \
                                                       scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&,  \
                                                       bool, double*, bool);                                  \
  extern template void lif_sg_arg_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const scalar_t*,  \
                                                          acc_t*, int64_t, int64_t, const LIFParams<acc_t>&,  \
                                                          bool);                                              \
  extern template void lif_bwd_given_kernel<scalar_t, acc_t>(                                                \
      const Given<scalar_t, acc_t>&, const scalar_t*, const scalar_t*, const scalar_t*, const scalar_t*,      \
      const scalar_t*, const bool*, scalar_t*, scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&, bool,    \
      double*, bool);
SNN_FAST_EXTERN_LIF_CPU(float, float)
SNN_FAST_EXTERN_LIF_CPU(double, double)
SNN_FAST_EXTERN_LIF_CPU(c10::Half, float)
SNN_FAST_EXTERN_LIF_CPU(c10::BFloat16, float)
#undef SNN_FAST_EXTERN_LIF_CPU

}  // namespace cpu_lif
}  // namespace snn_fast
