// Launch API of the Tempotron CUDA kernels (tempotron_kernels.cu). That unit includes only the CUDA
// runtime and snn_fast headers, so it compiles with nvcc alone (and is checked that way in CI);
// the torch binding (tempotron_cuda.cpp) allocates, picks the stream and calls these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace snn_fast {
namespace tempotron_cuda {

enum Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Outputs per block of the forward kernel: its two [tile, T] fp32 histograms live in shared memory.
// Returns 0 when even one output row does not fit in max_smem_bytes (T too large).
int fwd_out_tile(int64_t O, int64_t T, int64_t max_smem_bytes);

// V [B, O, T] (`dtype`) from t_in [B, I] (float32 spike times) and weight [O, I] (`dtype`), contiguous;
// V = scale·Σ W·K̃ (csrc/include/snn_fast/tempotron.h).
cudaError_t launch_fwd(int dtype, const void* t_in, const void* weight, void* v, int64_t B, int64_t I, int64_t O,
                       int64_t T, int out_tile, double tau, double tau_s, double scale, cudaStream_t stream);

// Scratch (float32 unless noted), all contiguous: k [B·I] int32, ea/es/kt [B·I], gs/gl [B·O·T].
// grad_t [B, I] (float32, like t_in) and grad_w [O, I] (`dtype`) may be null when not needed.
cudaError_t launch_bwd(int dtype, const void* grad_v, const void* t_in, const void* weight, void* grad_t,
                       void* grad_w, int32_t* k, float* ea, float* es, float* kt, float* gs, float* gl, int64_t B,
                       int64_t I, int64_t O, int64_t T, double tau, double tau_s, double scale, cudaStream_t stream);

}  // namespace tempotron_cuda
}  // namespace snn_fast
