// Launch API of the fused LIF CUDA kernels: plain C++, pointers and a stream, no torch types.
//
// The kernels (lif_fwd.cu, lif_bwd.cu) include only CUDA headers and snn_fast/*.h, so they compile
// with nvcc alone (tests/test_cuda_compile.py checks them on machines without a CUDA torch); the
// torch binding (lif_cuda_binding.cpp) checks tensors and calls these on the current stream.
//
// Bytes moved per element of [T, N] (storage dtype size b; the 6-pass design):
//   forward   read x, write s, write saved H                      3b  (+ b v_seq, + 1 B mask)
//   backward  read grad_s, read saved H, write grad_x             3b  (+ b grad_v_seq, + 1 B mask,
//                                                                      + b x when learning k with
//                                                                        decay_input)
// 6b in all, vs the 5b floor of re-running the forward from x in the backward (the CPU kernel's
// way): on a GPU the re-run needs T values per neuron that do not fit in registers for large T, and
// H gives g′ directly. What is saved per dtype (H for float32/float64, H − θ with the spike in its
// sign bit for float16/bfloat16, 2 B/element where saving H in float32 would cost 4) is documented
// once, at the end of snn_fast/lif_step.h; the Triton backend saves the same.
//
// save="recompute" (lif_fwd / lif_bwd with save = 1): the forward writes s (v_last,
// v_seq) and, instead of H, the membrane V after steps K, 2K, … (K = kRcChunk = 8; ceil(T/K) − 1
// rows of N in the accumulation dtype, none for T <= K); the backward re-runs the forward segment by
// segment from x and those V with a segment's H in shared memory (K·256·4 B = 8 KiB per block, fp64
// 16 KiB), then walks it back:
//   forward   read x, write s                                      2b  (+ 4/K B checkpoint, fp64 8/K)
//   backward  read x, read grad_s, write grad_x                    3b  (+ 4/K B checkpoint read; the
//                                                                      mask, and x when learning k with
//                                                                      decay_input, read again in the walk)
// 5b + 8/K B in all (fp32 22 B instead of 24; bf16 11 B instead of 12), at the 5-pass floor save the
// checkpoints, and a layer keeps 4·N·(ceil(T/K) − 1) bytes for its backward instead of b·T·N
// (snn_fast/ops/lif/memory.py counts both; tests/test_lif.py checks the counts against what
// autograd keeps). The re-run uses lif_step.h's own functions in the forward's order: the same H and
// the same spikes bit for bit.
#pragma once

#include <cstdint>

namespace snn_fast {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Steps per recompute segment; = snn_fast.ops.lif.contract.RECOMPUTE_CHUNK (tests/test_cuda_compile.py).
constexpr int kRcChunk = 8;

// Rows of V checkpoints of save="recompute" for T steps: V after steps K, 2K, … before the last.
inline int64_t lif_checkpoint_rows(int64_t T) { return T > 0 ? (T + kRcChunk - 1) / kRcChunk - 1 : 0; }

// Flags shared by forward and backward (the op's six flags).
struct LIFFlagsC {
  int surrogate;
  bool hard_reset;
  double v_reset;
  bool decay_input;
  bool detach_reset;
  double reset_residual;
  bool strict_threshold;  // fire on H > θ only (the reset timing: after the spike, the only one here)
};

struct LIFFwdArgs {
  DType dtype;
  int64_t T, N;
  const void* x;          // [T, N]
  const void* v0;         // [N], or [1] with v0_uniform
  const void* params;     // [3] (k, θ, α): float32, float64 for float64 x; on the device
  const bool* mask;       // [T, N] or nullptr
  void* s;                // [T, N]
  void* v_last;           // [N]
  void* v_seq;            // [T, N] or nullptr
  void* saved;            // [T, N], storage dtype (see above); nullptr with save="recompute"
  LIFFlagsC flags;
  void* ckpt;             // save="recompute": [lif_checkpoint_rows(T), N] accumulation dtype, else nullptr
  bool v0_uniform;        // v0[0] starts every neuron (uniform_v0, lif_checks.h: the op's v0 is [1], N > 1)
};

struct LIFBwdArgs {
  DType dtype;
  int64_t T, N;
  const void* grad_s;      // [T, N]
  const void* grad_v_last; // [N] or nullptr (zero)
  const void* grad_v_seq;  // [T, N] or nullptr (zero)
  const void* x;           // [T, N]; read only when learning k with decay_input
  const void* v0;          // [N] ([1] with v0_uniform); read only when learning parameters or re-running
  const void* params;      // [3], device
  const bool* mask;        // [T, N] or nullptr
  const void* saved;       // [T, N] from the forward; with recompute its V checkpoints (accumulation dtype)
  void* grad_x;            // [T, N]
  void* grad_v0;           // [N]; with v0_uniform [1], NaN (no gradient for a start every neuron shares)
  bool need_param_grad;
  void* grad_params;       // [3] in the params dtype; written only when need_param_grad
  double* workspace;       // lif_bwd_workspace_doubles(N, dtype) doubles when need_param_grad
  LIFFlagsC flags;
  bool recompute;          // save="recompute": re-run the forward from x and `saved` (the checkpoints)
  bool v0_uniform;         // as LIFFwdArgs'
};

// Doubles of scratch the backward needs for its deterministic parameter-gradient reduction.
int64_t lif_bwd_workspace_doubles(int64_t N, DType dtype);

// Both return a cudaError_t as int (0 = success); stream is a cudaStream_t.
int lif_fwd_launch(const LIFFwdArgs& args, void* stream);
int lif_bwd_launch(const LIFBwdArgs& args, void* stream);

}  // namespace cuda
}  // namespace snn_fast
