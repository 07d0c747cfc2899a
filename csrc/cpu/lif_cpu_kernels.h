// Entry points of the fused LIF CPU kernels (lif_cpu_kernels_impl.h), one instantiation per storage
// dtype (lif_cpu_kernels_{f32,f64,f16,bf16}.cpp). Pointers are to contiguous [T, N] / [N] data.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cpu_lif {

// Forward over all T steps: s, v_last and (when non-null) v_seq.
template <typename scalar_t, typename acc_t>
void lif_fwd_kernel(const scalar_t* x, const scalar_t* v0, const bool* mask, scalar_t* s, scalar_t* v_last,
                    scalar_t* v_seq, int64_t T, int64_t N, const LIFParams<acc_t>& p);

// Backward: grad_x, grad_v0 and, when need_param_grad, (∂k, ∂θ, ∂α) summed deterministically into
// param_grad[3]. gvlast / gvseq / mask may be null.
template <typename scalar_t, typename acc_t>
void lif_bwd_kernel(int sg, const scalar_t* gs, const scalar_t* gvlast, const scalar_t* gvseq, const scalar_t* x,
                    const scalar_t* v0, const bool* mask, scalar_t* gx, scalar_t* gv0, int64_t T, int64_t N,
                    const LIFParams<acc_t>& p, bool need_param_grad, double* param_grad);

#define SNN_FAST_EXTERN_LIF_CPU(scalar_t, acc_t)                                                             \
  extern template void lif_fwd_kernel<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const bool*,         \
                                                       scalar_t*, scalar_t*, scalar_t*, int64_t, int64_t,     \
                                                       const LIFParams<acc_t>&);                              \
  extern template void lif_bwd_kernel<scalar_t, acc_t>(int, const scalar_t*, const scalar_t*, const scalar_t*, \
                                                       const scalar_t*, const scalar_t*, const bool*, scalar_t*, \
                                                       scalar_t*, int64_t, int64_t, const LIFParams<acc_t>&,  \
                                                       bool, double*);
SNN_FAST_EXTERN_LIF_CPU(float, float)
SNN_FAST_EXTERN_LIF_CPU(double, double)
SNN_FAST_EXTERN_LIF_CPU(c10::Half, float)
SNN_FAST_EXTERN_LIF_CPU(c10::BFloat16, float)
#undef SNN_FAST_EXTERN_LIF_CPU

}  // namespace cpu_lif
}  // namespace snn_fast
