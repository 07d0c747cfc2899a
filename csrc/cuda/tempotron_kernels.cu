// Tempotron CUDA kernels (docs/spec.md §6; the math is shared with the CPU kernel in
// csrc/include/snn_fast/tempotron.h).
//
// Forward, one kernel: block (b, tile of ≤ 8 outputs); its threads stride over the I inputs,
// compute each input's grid step and entry weights once (not per output) and shared-memory
// atomic-add W[o,i]·ea (·kt) into two [tile, T] fp32 histograms; then one thread per output row
// runs the two filters along t and writes V. Spike times are float32 whatever the weight dtype.
// Global traffic: t_in and W read once per block, V written once; no [B, I, T] tensor and no global atomics.
// Backward: (1) per (b, i) the entries k, ea, es, kt into scratch (the only exps); (2) per (b, o)
// the reverse filters of grad_V into Gs, Gl; (3) per (o, i) ∂W summed over b in order
// (deterministic); (4) per (b, i) ∂t as a sum over o. The gathers of Gs/Gl hit a B·O·T·8-byte
// table (512 KB for W3) that stays in L2.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "snn_fast/tempotron.h"
#include "tempotron_launch.h"

namespace snn_fast {
namespace tempotron_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxOutTile = 8;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename scalar_t>
__global__ void tempotron_fwd_kernel(const float* __restrict__ t_in, const scalar_t* __restrict__ w,
                                                                 scalar_t* __restrict__ v, int64_t I, int64_t O,
                                                                 int64_t T, int out_tile, TempotronConsts<float> c) {
  extern __shared__ float smem[];
  float* ha = smem;
  float* hd = smem + int64_t(out_tile) * T;
  const int64_t b = blockIdx.x;
  const int64_t o0 = int64_t(blockIdx.y) * out_tile;
  const int no = int(O - o0 < int64_t(out_tile) ? O - o0 : int64_t(out_tile));
  for (int64_t j = threadIdx.x; j < 2 * int64_t(out_tile) * T; j += blockDim.x) smem[j] = 0.f;
  __syncthreads();
  const float* tb = t_in + b * I;  // int64 offsets: B·I, O·I may exceed 2^31
  for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
    float ea, es, kt;
    const int64_t k = tempotron_entry<float>(tb[i], T, c, &ea, &es, &kt);
    if (ea == 0.f) continue;  // silent input (or e^{−u/τ_slow} underflowed: contributes nothing)
    for (int j = 0; j < no; ++j) {
      const float wv = to_f(w[(o0 + j) * I + i]);
      atomicAdd(ha + j * T + k, wv * ea);
      atomicAdd(hd + j * T + k, wv * kt);
    }
  }
  __syncthreads();
  if (threadIdx.x < no) {
    const int j = threadIdx.x;
    float a = 0.f, d = 0.f;
    scalar_t* vr = v + (b * O + o0 + j) * T;
    for (int64_t t = 0; t < T; ++t)
      vr[t] = from_f<scalar_t>(tempotron_filter_step<float>(a, d, ha[j * T + t], hd[j * T + t], c));
  }
}

__global__ void tempotron_entry_kernel(const float* __restrict__ t_in, int32_t* __restrict__ k,
                                       float* __restrict__ ea, float* __restrict__ es, float* __restrict__ kt,
                                       int64_t n, int64_t T, TempotronConsts<float> c) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    k[j] = int32_t(tempotron_entry<float>(t_in[j], T, c, ea + j, es + j, kt + j));
}

template <typename scalar_t>
__global__ void tempotron_reverse_kernel(const scalar_t* __restrict__ gv, float* __restrict__ gs_out,
                                         float* __restrict__ gl_out, int64_t R, int64_t T, TempotronConsts<float> c) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  float a = 0.f, s = 0.f, l = 0.f;
  for (int64_t t = T - 1; t >= 0; --t) {
    tempotron_reverse_step<float>(a, s, l, to_f(gv[r * T + t]), c);
    gs_out[r * T + t] = s;
    gl_out[r * T + t] = l;
  }
}

template <typename scalar_t>
__global__ void tempotron_grad_w_kernel(const int32_t* __restrict__ k, const float* __restrict__ ea,
                                        const float* __restrict__ kt, const float* __restrict__ gs,
                                        const float* __restrict__ gl, scalar_t* __restrict__ gw, int64_t B,
                                        int64_t I, int64_t O, int64_t T, TempotronConsts<float> c) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t o = blockIdx.y;
  if (i >= I) return;
  float acc = 0.f;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t bi = b * I + i;
    const float e_a = ea[bi];
    if (e_a == 0.f) continue;  // silent input
    const int64_t g = (b * O + o) * T + k[bi];
    acc += tempotron_dw_term<float>(gs[g], gl[g], e_a, kt[bi]);
  }
  gw[o * I + i] = from_f<scalar_t>(c.scale * acc);
}

template <typename scalar_t>
__global__ void tempotron_grad_t_kernel(const scalar_t* __restrict__ w, const int32_t* __restrict__ k,
                                        const float* __restrict__ ea, const float* __restrict__ es,
                                        const float* __restrict__ kt, const float* __restrict__ gs,
                                        const float* __restrict__ gl, float* __restrict__ gt, int64_t I, int64_t O,
                                        int64_t T, TempotronConsts<float> c) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (i >= I) return;
  const int64_t bi = b * I + i;
  const float e_a = ea[bi], e_s = es[bi], k_t = kt[bi];
  float acc = 0.f;
  if (e_a != 0.f) {
    for (int64_t o = 0; o < O; ++o) {
      const int64_t g = (b * O + o) * T + k[bi];
      acc += tempotron_dt_term<float>(to_f(w[o * I + i]), gs[g], gl[g], e_a, e_s, k_t, c);
    }
  }
  gt[bi] = c.scale * acc;
}

template <typename scalar_t>
cudaError_t fwd_typed(const void* t_in, const void* w, void* v, int64_t B, int64_t I, int64_t O, int64_t T,
                      int out_tile, const TempotronConsts<float>& c, cudaStream_t stream) {
  const size_t smem = size_t(2) * out_tile * T * sizeof(float);
  auto kernel = tempotron_fwd_kernel<scalar_t>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  dim3 grid(unsigned(B), unsigned((O + out_tile - 1) / out_tile));
  kernel<<<grid, kThreads, smem, stream>>>(static_cast<const float*>(t_in), static_cast<const scalar_t*>(w),
                                           static_cast<scalar_t*>(v), I, O, T, out_tile, c);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bwd_typed(const void* gv, const void* t_in, const void* w, void* gt, void* gw, int32_t* k, float* ea,
                      float* es, float* kt, float* gs, float* gl, int64_t B, int64_t I, int64_t O, int64_t T,
                      const TempotronConsts<float>& c, cudaStream_t stream) {
  const int64_t n = B * I, R = B * O;
  const unsigned eblocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
  tempotron_entry_kernel<<<eblocks, kThreads, 0, stream>>>(static_cast<const float*>(t_in), k, ea, es, kt, n, T, c);
  tempotron_reverse_kernel<scalar_t><<<unsigned((R + 127) / 128), 128, 0, stream>>>(
      static_cast<const scalar_t*>(gv), gs, gl, R, T, c);
  const unsigned iblocks = unsigned((I + kThreads - 1) / kThreads);
  if (gw != nullptr)
    tempotron_grad_w_kernel<scalar_t><<<dim3(iblocks, unsigned(O)), kThreads, 0, stream>>>(
        k, ea, kt, gs, gl, static_cast<scalar_t*>(gw), B, I, O, T, c);
  if (gt != nullptr)
    tempotron_grad_t_kernel<scalar_t><<<dim3(iblocks, unsigned(B)), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(w), k, ea, es, kt, gs, gl, static_cast<float*>(gt), I, O, T, c);
  return cudaGetLastError();
}

}  // namespace

int fwd_out_tile(int64_t O, int64_t T, int64_t max_smem_bytes) {
  const int64_t per_row = 2 * T * int64_t(sizeof(float));
  return int(std::min<int64_t>({int64_t(kMaxOutTile), std::max<int64_t>(O, 1), max_smem_bytes / per_row}));
}

cudaError_t launch_fwd(int dtype, const void* t_in, const void* w, void* v, int64_t B, int64_t I, int64_t O,
                       int64_t T, int out_tile, double tau, double tau_s, double scale, cudaStream_t stream) {
  const auto c = tempotron_consts<float>(tau, tau_s, scale);
  switch (dtype) {
    case kFloat32: return fwd_typed<float>(t_in, w, v, B, I, O, T, out_tile, c, stream);
    case kFloat16: return fwd_typed<__half>(t_in, w, v, B, I, O, T, out_tile, c, stream);
    case kBFloat16: return fwd_typed<__nv_bfloat16>(t_in, w, v, B, I, O, T, out_tile, c, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_bwd(int dtype, const void* gv, const void* t_in, const void* w, void* gt, void* gw, int32_t* k,
                       float* ea, float* es, float* kt, float* gs, float* gl, int64_t B, int64_t I, int64_t O,
                       int64_t T, double tau, double tau_s, double scale, cudaStream_t stream) {
  const auto c = tempotron_consts<float>(tau, tau_s, scale);
  switch (dtype) {
    case kFloat32: return bwd_typed<float>(gv, t_in, w, gt, gw, k, ea, es, kt, gs, gl, B, I, O, T, c, stream);
    case kFloat16: return bwd_typed<__half>(gv, t_in, w, gt, gw, k, ea, es, kt, gs, gl, B, I, O, T, c, stream);
    case kBFloat16: return bwd_typed<__nv_bfloat16>(gv, t_in, w, gt, gw, k, ea, es, kt, gs, gl, B, I, O, T, c, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace tempotron_cuda
}  // namespace snn_fast
