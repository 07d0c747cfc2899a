// Launch API of the fused batch-norm + LIF CUDA kernels (bn_lif.cu; docs/spec.md §12): plain C++,
// pointers and a stream, no torch types, so the unit compiles with nvcc alone
// (tests/test_cuda_compile.py). The torch binding is bn_lif_cuda_binding.cpp (backend='cuda'; 'auto'
// prefers Triton on a GPU until the GPU check has timed both).
//
// x is [T, N] with N = B·C·inner, channel (n / inner) % C. One thread per neuron; per element and step:
//   forward   read x, write s, write H (acc_t, save="state")
//   backward  read H (or re-run the forward into it: read x, write H), read x, read ∂L/∂S, write ∂L/∂X'
//             (a_c·∂L/∂X' in eval); per neuron its sums over t of ∂L/∂X', ∂L/∂X'·(x − m) ([2, N]) and,
//             with parameter gradients, its (∂k, ∂θ, ∂α) terms ([3, N]), reduced per channel by the caller
//   dx        training: read ∂L/∂X', x, write ∂L/∂x = A_c·∂L/∂X' + B_c·(x − m_c) + D_c
#pragma once

#include <cstdint>

#include "lif_cuda.h"

namespace snn_fast {
namespace cuda {

struct BNLIFFwdArgs {
  DType dtype;
  int64_t T, N, C, inner;
  const void* x;       // [T, N] storage dtype
  const void* v0;      // [N]
  const void* params;  // [3] acc: k, θ, α
  const void* a;       // [C] acc: the scale a_c, mean m_c and shift b_c of X' = (x − m)·a + b
  const void* m;
  const void* b;
  const bool* mask;    // [T, N] or null
  void* s;             // [T, N]
  void* v_last;        // [N]
  void* v_seq;         // [T, N] or null
  void* h;             // [T, N] acc, or null (nothing saved)
  LIFFlagsC flags;
};

struct BNLIFBwdArgs {
  DType dtype;
  int64_t T, N, C, inner;
  const void* grad_s;      // [T, N]
  const void* grad_v_last; // [N] or null
  const void* grad_v_seq;  // [T, N] or null
  const void* x;
  const void* v0;
  const void* params;
  const void* a;
  const void* m;
  const void* b;
  const bool* mask;
  void* h;                 // [T, N] acc: the forward's H, or a scratch the kernel fills first (rerun)
  bool rerun;
  bool scale_by_a;         // write a_c·∂L/∂X' (running statistics) instead of ∂L/∂X'
  bool need_param_grad;
  void* grad_x;            // [T, N]
  void* grad_v0;           // [N]
  void* sums;              // [2, N] acc
  void* psum;              // [3, N] acc, or null without parameter gradients
  LIFFlagsC flags;
};

struct BNLIFDxArgs {
  DType dtype;
  int64_t T, N, C, inner;
  const void* x;
  void* grad_x;       // in place
  const void* coef;   // [3, C] acc: A | B | D
  const void* m;      // [C] acc
};

// 0 on success, else a cudaError_t value.
int bn_lif_fwd_launch(const BNLIFFwdArgs& args, void* stream);
int bn_lif_bwd_launch(const BNLIFBwdArgs& args, void* stream);
int bn_lif_dx_launch(const BNLIFDxArgs& args, void* stream);

}  // namespace cuda
}  // namespace snn_fast
