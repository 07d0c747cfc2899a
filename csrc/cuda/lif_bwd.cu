// Fused LIF backward (BPTT, docs/spec.md §2) over the whole T loop, walking t = T−1 … 0 with ∂L/∂V in
// registers. Reads the forward's saved H (lif_cuda.h: exact spikes in every dtype) instead of
// re-running the forward, so the pass count is grad_s + H + grad_x.
//
// Learnable k, θ, α (PARAM = true): each thread sums its contributions over T in registers, a block
// reduces them (warp shuffles, then one value per warp through shared memory) into one double
// triple per block, and a second one-block kernel adds those partials in a fixed order. No atomics:
// the parameter gradients are bitwise reproducible run to run (torch.use_deterministic_algorithms
// holds), for 3 × 8 B × N/(256·VEC) of scratch, e.g. 48 KiB for N = 4M fp32.
// ∂H/∂k needs V_{t−1} = reset(H_{t−1}, S_{t−1}): the saved H of step t−1 (carried to the next
// iteration, so still one read per element) or v0; and X_t under decay_input (one extra read).
//
// save="recompute" (lif_bwd_rc_kernel): the same with x and the forward's V checkpoints instead of the
// saved H (lif_cuda.h has the byte counts), per storage dtype × PARAM at kRcVec neurons per thread.
//
// Instantiated per storage dtype × vector width × PARAM (16 kernels); the surrogate is a switch on a
// uniform id per element (sg_grad_dalpha_rt), not a template argument: 11× fewer kernels to build.
#include "lif_kernels.cuh"

namespace snn_fast {
namespace cuda {
namespace {

// Sum of v over the block, valid in thread 0. Fixed shuffle tree: deterministic.
__device__ __forceinline__ void block_sum3(double (&v)[3], double (*smem)[3]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < 3; ++c)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[c] += __shfl_down_sync(0xffffffffu, v[c], o);
  if (lane == 0)
#pragma unroll
    for (int c = 0; c < 3; ++c) smem[warp][c] = v[c];
  __syncthreads();
  if (warp == 0) {
    constexpr int kWarps = kThreads / 32;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      v[c] = lane < kWarps ? smem[lane][c] : 0.0;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v[c] += __shfl_down_sync(0xffffffffu, v[c], o);
    }
  }
}

// This block's parameter-gradient partial. Every thread must reach it (no early return).
template <typename acc_t>
__device__ __forceinline__ void write_partial(acc_t dk, acc_t dth, acc_t dal, double* __restrict__ partial) {
  __shared__ double smem[kThreads / 32][3];
  double v[3] = {double(dk), double(dth), double(dal)};
  block_sum3(v, smem);
  if (threadIdx.x == 0)
#pragma unroll
    for (int c = 0; c < 3; ++c) partial[int64_t(blockIdx.x) * 3 + c] = v[c];
}

template <typename scalar_t, int VEC, bool PARAM>
__global__ void __launch_bounds__(kThreads)
    lif_bwd_kernel(BwdPtrs<scalar_t> a, int64_t T, int64_t N, LIFFlagsC flags) {
  using acc_t = acc_of_t<scalar_t>;
  acc_t dk = 0, dth = 0, dal = 0;
  lif_bwd_thread<scalar_t, VEC, PARAM>(a, T, N, flags, int64_t(blockIdx.x) * kThreads + threadIdx.x, dk, dth, dal);
  if (PARAM) write_partial(dk, dth, dal, a.partial);
}

// save="recompute" (lif_kernels.cuh lif_bwd_rc_thread): x and the V checkpoints instead of H.
// A segment's H in shared memory, one column per thread (bank-conflict free: consecutive threads,
// consecutive words): 8 KiB per block in fp32, 16 KiB in fp64. Min. 1 block per SM in the launch
// bounds: with (kThreads) alone ptxas held the fp32 PARAM kernel to 48 registers and spilled 12 B
// (sm_90, CUDA 13.0); with it, 56 registers and no spill (46 without PARAM, 110 fp64 PARAM).
template <typename scalar_t, int VEC, bool PARAM>
__global__ void __launch_bounds__(kThreads, 1)
    lif_bwd_rc_kernel(BwdPtrs<scalar_t> a, int64_t T, int64_t N, LIFFlagsC flags) {
  static_assert(VEC == 1, "one neuron per thread (kRcVec)");
  using acc_t = acc_of_t<scalar_t>;
  __shared__ acc_t hbuf[kRcChunk][kThreads];
  acc_t dk = 0, dth = 0, dal = 0;
  lif_bwd_rc_thread<scalar_t, PARAM>(a, T, N, flags, int64_t(blockIdx.x) * kThreads + threadIdx.x,
                                     &hbuf[0][threadIdx.x], kThreads, dk, dth, dal);
  if (PARAM) write_partial(dk, dth, dal, a.partial);
}

// One block adds the per-block partials: thread j takes blocks j, j + 256, … in order, then the
// same shuffle tree. Fixed order for a given N: deterministic.
template <typename param_t>
__global__ void __launch_bounds__(kThreads)
    lif_param_grad_finalize(const double* __restrict__ partial, int64_t nblocks, param_t* __restrict__ out) {
  __shared__ double smem[kThreads / 32][3];
  double v[3] = {0.0, 0.0, 0.0};
  for (int64_t b = threadIdx.x; b < nblocks; b += kThreads)
#pragma unroll
    for (int c = 0; c < 3; ++c) v[c] += partial[b * 3 + c];
  block_sum3(v, smem);
  if (threadIdx.x == 0)
#pragma unroll
    for (int c = 0; c < 3; ++c) out[c] = param_t(v[c]);
}

template <typename scalar_t, int VEC, bool RC, bool PARAM>
void launch_kernel(const BwdPtrs<scalar_t>& a, const LIFBwdArgs& args, dim3 grid, cudaStream_t stream) {
  if constexpr (RC) {
    lif_bwd_rc_kernel<scalar_t, VEC, PARAM><<<grid, kThreads, 0, stream>>>(a, args.T, args.N, args.flags);
  } else {
    lif_bwd_kernel<scalar_t, VEC, PARAM><<<grid, kThreads, 0, stream>>>(a, args.T, args.N, args.flags);
  }
}

template <typename scalar_t, int VEC, bool RC>
int launch_vec(const BwdPtrs<scalar_t>& a, const LIFBwdArgs& args, cudaStream_t stream) {
  const int64_t blocks = blocks_for(args.N, VEC);
  const dim3 grid{unsigned(blocks)};
  if (args.need_param_grad) {
    launch_kernel<scalar_t, VEC, RC, true>(a, args, grid, stream);
    using param_t = acc_of_t<scalar_t>;
    lif_param_grad_finalize<param_t><<<1, kThreads, 0, stream>>>(args.workspace, blocks,
                                                                 static_cast<param_t*>(args.grad_params));
  } else {
    launch_kernel<scalar_t, VEC, RC, false>(a, args, grid, stream);
  }
  return int(cudaGetLastError());
}

template <typename scalar_t>
int launch(const LIFBwdArgs& args, cudaStream_t stream) {
  BwdPtrs<scalar_t> a{static_cast<const scalar_t*>(args.grad_s),
                      static_cast<const scalar_t*>(args.grad_v_last),
                      static_cast<const scalar_t*>(args.grad_v_seq),
                      static_cast<const scalar_t*>(args.x),
                      static_cast<const scalar_t*>(args.v0),
                      static_cast<const acc_of_t<scalar_t>*>(args.params),
                      args.mask,
                      static_cast<const scalar_t*>(args.saved),
                      static_cast<scalar_t*>(args.grad_x),
                      static_cast<scalar_t*>(args.grad_v0),
                      args.workspace,
                      nullptr,
                      args.v0_uniform};
  if (args.recompute) {  // `saved` holds the V checkpoints (accumulation dtype), not H
    a.saved = nullptr;
    a.ckpt = static_cast<const acc_of_t<scalar_t>*>(args.saved);
  }
  if (args.N == 0 || args.T == 0) {
    if (args.need_param_grad) {  // empty sums: zero gradients
      using param_t = acc_of_t<scalar_t>;
      lif_param_grad_finalize<param_t><<<1, kThreads, 0, stream>>>(args.workspace, 0,
                                                                   static_cast<param_t*>(args.grad_params));
      return int(cudaGetLastError());
    }
    return 0;
  }
  if (args.recompute) {
    // One neuron per thread: a segment's K values of H (and with PARAM, of V_{t−1} and X) per neuron
    // live in registers; a warp still touches 32 contiguous elements per tensor and step.
    return launch_vec<scalar_t, kRcVec, true>(a, args, stream);
  }
  constexpr int V = vec_width<scalar_t>();
  const int64_t bytes = int64_t(sizeof(scalar_t)) * V;
  const bool wide = args.N % V == 0 && aligned(a.grad_s, bytes) && aligned(a.grad_v_last, bytes) &&
                    aligned(a.grad_v_seq, bytes) && aligned(a.x, bytes) &&
                    (a.v0_uniform || (aligned(a.v0, bytes) && aligned(a.grad_v0, bytes))) &&
                    aligned(a.saved, bytes) && aligned(a.grad_x, bytes) &&
                    aligned(a.mask, V);
  return wide ? launch_vec<scalar_t, V, false>(a, args, stream) : launch_vec<scalar_t, 1, false>(a, args, stream);
}

}  // namespace

int64_t lif_bwd_workspace_doubles(int64_t N, DType /*dtype*/) {
  return 3 * blocks_for(N, 1);  // the scalar fallback has the most blocks
}

int lif_bwd_launch(const LIFBwdArgs& args, void* stream) {
  return with_storage_type(args.dtype, [&](auto tag) {
    return launch<decltype(tag)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace snn_fast
