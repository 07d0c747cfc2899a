// Launch API of the fused batch-norm + LIF CUDA kernels (bn_lif.cu; docs/spec.md §12): plain C++,
// pointers and a stream, no torch types, so the unit compiles with nvcc alone
// (tests/test_cuda_compile.py). The torch binding is bn_lif_cuda_binding.cpp (backend='cuda'; 'auto'
// prefers Triton on a GPU until the GPU check has timed both).
//
// x is [T, N] with N = B·C·inner, channel (n / inner) % C; a run is one (t, b): `inner` consecutive
// elements of one channel. The per-channel scale a_c = weight_c·(rstd_c·gain), gain = tdbn_alpha·θ
// (tdBN) or 1, is computed by each thread from weight, rstd and params, as the CPU op does it (no
// torch op for it on the host). Per element and step:
//   stats     read x: per (channel, chunk) shifted sums Σ(x − K_c), Σ(x − K_c)² in double ([C, P, 2]),
//             then per channel mean, rstd = 1/√(var + eps) and the unbiased variance (bn_lif_stats)
//   forward   read x, write s; with a backward to follow and T > kSeg = 8, V every 8 steps
//             ([⌈T/8⌉ − 1, N] acc, both save modes: the backward reads x anyway, for batch norm)
//   backward  read x, read ∂L/∂S, write ∂L/∂X' (a_c·∂L/∂X' in eval): the forward re-run 8 steps at a
//             time into registers from those checkpoints, then walked back. Blocks of G channels ×
//             256 / G of their neurons; each block sums, per channel, its neurons' Σ_t ∂L/∂X',
//             Σ_t ∂L/∂X'·(x − m) and, with parameter gradients, their (∂k, ∂θ, ∂α) terms in double
//             ([C, P, 5]): no per-neuron [·, N] scratch
//   channels  one block per channel sums its P block totals: ∂weight, ∂bias, the dx coefficients and
//             the channel's parameter-gradient terms ([3, C] double); one block then sums those into
//             ∂params
//   dx        training: read ∂L/∂X', x, write ∂L/∂x = A_c·∂L/∂X' + B_c·(x − m_c) + D_c
// So 9 passes over [T, N] per training step (3 forward, 6 backward), as on the CPU, plus for T > 8 the
// checkpoints (written and read in the acc type: 2·4·(⌈T/8⌉ − 1) bytes per neuron in fp32).
// Every sum runs in a fixed order (fixed partition, fixed tree): the results are deterministic.
#pragma once

#include <cstdint>

#include "lif_cuda.h"

namespace snn_fast {
namespace cuda {

// The backward re-runs the forward kBNLIFSeg steps at a time (in registers); the forward keeps V after
// steps kBNLIFSeg − 1, 2·kBNLIFSeg − 1, …: bn_lif_checkpoints(T) rows of N.
constexpr int kBNLIFSeg = 8;
inline int64_t bn_lif_checkpoints(int64_t T) { return T > 0 ? (T - 1) / kBNLIFSeg : 0; }

struct BNLIFFwdArgs {
  DType dtype;
  int64_t T, N, C, inner;
  const void* x;       // [T, N] storage dtype
  const void* v0;      // [N], or [1] with v0_uniform
  bool v0_uniform;     // v0[0] starts every neuron (uniform_v0, lif_checks.h: the op's v0 is [1], N > 1)
  const void* params;  // [3] acc: k, θ, α
  const void* w;       // [C] acc: weight, rstd (a_c = w_c·(rstd_c·gain)), mean m_c and shift b_c of
  const void* rstd;    //   X' = (x − m)·a + b
  const void* m;
  const void* b;
  double tdbn_alpha;   // > 0: tdBN's gain α·θ; 0: gain 1
  const bool* mask;    // [T, N] or null
  void* s;             // [T, N]
  void* v_last;        // [N]
  void* v_seq;         // [T, N] or null
  void* ck;            // [⌈T/8⌉ − 1, N] acc: V after steps 7, 15, …; or null (no backward follows)
  LIFFlagsC flags;
};

struct BNLIFBwdArgs {
  DType dtype;
  int64_t T, N, C, inner;
  const void* grad_s;      // [T, N]
  const void* grad_v_last; // [N] or null
  const void* grad_v_seq;  // [T, N] or null
  const void* x;
  const void* v0;          // [N], or [1] with v0_uniform
  bool v0_uniform;         // v0[0] starts every neuron; grad_v0 [1] then gets NaN, never a gradient
  const void* params;
  const void* w;
  const void* rstd;
  const void* m;
  const void* b;
  double tdbn_alpha;
  const bool* mask;
  const void* ck;          // [⌈T/8⌉ − 1, N] acc: the forward's checkpoints (unread for T <= 8)
  bool scale_by_a;         // write a_c·∂L/∂X' (running statistics) instead of ∂L/∂X'
  bool need_param_grad;
  void* grad_x;            // [T, N]
  void* grad_v0;           // [N], or [1] with v0_uniform
  int G;                   // channels per block: bn_lif_bwd_lanes(N, C, inner)
  int64_t P;               // row chunks: bn_lif_bwd_blocks(N, C, inner); the grid is ⌈C / G⌉·P blocks
  double* part;            // [C, P, 5]: each (channel, chunk)'s sums (parameter terms 0 without need_param_grad)
  LIFFlagsC flags;
};

// The per-channel reduction of the backward's sums and its epilogue (one block per channel), then the
// parameter gradient (one block).
struct BNLIFChannelArgs {
  DType dtype;             // x's: the [C] tensors are in its acc type
  int64_t T, N, C, inner;
  int64_t P;               // the backward's blocks per channel
  const double* part;      // [C, P, 5], from the backward
  const void* params;      // [3] acc
  const void* w;           // [C] acc
  const void* rstd;        // [C] acc
  double tdbn_alpha;
  bool batch_stats;        // write the dx coefficients
  void* grad_w;            // [C] acc: Σ∂L/∂X'·(x − m)·rstd·gain
  void* grad_b;            // [C] acc: Σ∂L/∂X'
  void* coef;              // [3, C] acc: A | B | D of the dx pass (batch_stats), or null
  double* pchan;           // [3, C]: the channel's (∂k, ∂θ, ∂α) terms, tdBN's θ term included, or null
  void* grad_params;       // [3] acc: written 0 by block 0 when pchan is null, else by bn_lif_params_launch
};

struct BNStatsArgs {
  DType dtype;
  int64_t T, N, C, inner;
  int64_t P;               // chunks per channel (blocks of the first pass: C·P)
  const void* x;           // [T, N]
  double* part;            // [C, P, 2] scratch
  double eps;
  void* mean;              // [C] acc
  void* rstd;              // [C] acc: 1/√(var + eps), var the biased variance
  void* var_unbiased;      // [C] acc: var·n/(n − 1) (n the values per channel, > 1)
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
int bn_lif_channels_launch(const BNLIFChannelArgs& args, void* stream);
int bn_lif_params_launch(const BNLIFChannelArgs& args, void* stream);  // with args.pchan only
int bn_lif_stats_launch(const BNStatsArgs& args, void* stream);
// The chunks per channel of bn_lif_stats_launch for this shape (at least 1): enough blocks to fill a
// GPU, each of at least a few thousand values.
int64_t bn_lif_stats_chunks(int64_t T, int64_t N, int64_t C, int64_t inner);
// The backward's block: G channels × 256 / G of their neurons (bn_lif_kernels.cuh says how G is
// chosen); its grid: ⌈C / G⌉ channel groups × P row chunks, P = ⌈B·inner·G / 256⌉ (at least 1).
int bn_lif_bwd_lanes(int64_t N, int64_t C, int64_t inner);
int64_t bn_lif_bwd_blocks(int64_t N, int64_t C, int64_t inner);

}  // namespace cuda
}  // namespace snn_fast
