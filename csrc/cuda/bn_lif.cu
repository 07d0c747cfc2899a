// Fused batch norm + LIF on CUDA (docs/spec.md §12; launch API and bytes: bn_lif_cuda.h): the
// launchers and one-line __global__ wrappers around the per-thread bodies of bn_lif_kernels.cuh (which
// csrc/cuda/emulate/bn_lif_emulate.cu also runs on the host). The per-element math is lif_step.h's, the
// functions the CPU kernels run; the flags become template arguments per thread (uniform branches).
#include "bn_lif_cuda.h"
#include "bn_lif_kernels.cuh"

namespace snn_fast {
namespace cuda {
namespace {

// One thread per neuron (forward, dx), blocks of one channel's neurons (backward), one block per
// channel (the backward's channel totals) or per channel chunk (statistics); the bodies are
// bn_lif_kernels.cuh's.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_forward(BNLIFFwdArgs args) {
  bnlif_fwd_thread<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_dx(BNLIFDxArgs args) {
  bnlif_dx_thread<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

// The block's totals of K values per thread, summed in a fixed tree (the emulator sums in the same
// order); with `lanes` (a power of two <= NT) one total per lane l of the threads tid ≡ l (mod lanes),
// valid in thread l (lanes = 1: the block's total, in thread 0). NT: the block size, a power of two.
template <int NT, int K>
__device__ void block_sum(double (&v)[K], int lanes = 1) {
  __shared__ double sh[K][NT];
  const int tid = threadIdx.x;
  for (int j = 0; j < K; ++j) sh[j][tid] = v[j];
  __syncthreads();
  for (int s = NT / 2; s >= lanes; s >>= 1) {
    if (tid < s)
      for (int j = 0; j < K; ++j) sh[j][tid] += sh[j][tid + s];
    __syncthreads();
  }
  for (int j = 0; j < K; ++j) v[j] = sh[j][tid < lanes ? tid : 0];
}

// Block (cg, q) = (blockIdx.x % ⌈C / G⌉, blockIdx.x / ⌈C / G⌉): its neurons' walks, then each lane's
// (channel's) sums into part[c, q]. Channel groups fastest, so that blocks running together read
// neighbouring channels' elements (sectors shared in L2 where a run is short).
// Launch bounds: up to 85 registers for fp32/16/bf16 (3 blocks of 256 per SM), 255 for fp64, whose
// 8-step segments would spill in 128 (fp32 spilled a few bytes in 64).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, sizeof(scalar_t) == 8 ? 1 : 3) bnlif_backward(BNLIFBwdArgs args) {
  const unsigned ng = unsigned((args.C + args.G - 1) / args.G), cg = blockIdx.x % ng, q = blockIdx.x / ng;
  double v[5];
  bnlif_bwd_thread<scalar_t>(args, cg, q, threadIdx.x, v);
  block_sum<kThreads>(v, args.G);
  const int64_t c = int64_t(cg) * args.G + threadIdx.x;
  if (int(threadIdx.x) < args.G && c < args.C)
    for (int j = 0; j < 5; ++j) args.part[(c * args.P + q) * 5 + j] = v[j];
}

template <typename acc_t>
__global__ void __launch_bounds__(kChanThreads) bnlif_channels(BNLIFChannelArgs args) {
  double v[5];
  bnlif_channel_share(args, blockIdx.x, threadIdx.x, kChanThreads, v);
  block_sum<kChanThreads>(v);
  if (threadIdx.x == 0) bnlif_channel_epilogue<acc_t>(args, blockIdx.x, v);
}

template <typename acc_t>
__global__ void __launch_bounds__(kParamThreads) bnlif_params(BNLIFChannelArgs args) {
  double v[3];
  bnlif_params_share(args, threadIdx.x, kParamThreads, v);
  block_sum<kParamThreads>(v);
  if (threadIdx.x == 0) bnlif_params_epilogue<acc_t>(args, v);
}

template <typename scalar_t, typename idx_t>
__global__ void __launch_bounds__(kStatsThreads) bnlif_stats_part(BNStatsArgs args) {
  const int64_t c = blockIdx.x / args.P, p = blockIdx.x % args.P;
  double v[2];
  bnlif_stats_share<scalar_t, idx_t>(args, c, p, threadIdx.x, kStatsThreads, v);
  block_sum<kStatsThreads>(v);
  if (threadIdx.x == 0) {
    args.part[blockIdx.x * 2] = v[0];
    args.part[blockIdx.x * 2 + 1] = v[1];
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_stats_finish_kernel(BNStatsArgs args) {
  bnlif_stats_finish<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

}  // namespace

int64_t bn_lif_stats_chunks(int64_t T, int64_t N, int64_t C, int64_t inner) {
  return bnlif_stats_chunks(T, N, C, inner);
}

int bn_lif_channels_launch(const BNLIFChannelArgs& args, void* stream) {
  if (args.C == 0) return 0;
  return with_acc_type(args.dtype, [&](auto tag) {
    bnlif_channels<decltype(tag)><<<dim3(unsigned(args.C)), kChanThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        args);
    return int(cudaGetLastError());
  });
}

int bn_lif_params_launch(const BNLIFChannelArgs& args, void* stream) {
  return with_acc_type(args.dtype, [&](auto tag) {
    bnlif_params<decltype(tag)><<<1, kParamThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_stats_launch(const BNStatsArgs& args, void* stream) {
  if (args.C == 0) return 0;
  const bool narrow = bnlif_stats_narrow(args);
  return with_storage_type(args.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    auto st = static_cast<cudaStream_t>(stream);
    const dim3 grid(unsigned(args.C * args.P));
    if (narrow)
      bnlif_stats_part<scalar_t, uint32_t><<<grid, kStatsThreads, 0, st>>>(args);
    else
      bnlif_stats_part<scalar_t, uint64_t><<<grid, kStatsThreads, 0, st>>>(args);
    int err = int(cudaGetLastError());
    if (err != 0) return err;
    bnlif_stats_finish_kernel<scalar_t><<<dim3(unsigned(blocks_for(args.C, 1))), kThreads, 0, st>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_fwd_launch(const BNLIFFwdArgs& args, void* stream) {
  if (args.N == 0 || args.T == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_forward<decltype(tag)><<<dim3(unsigned(blocks_for(args.N, 1))), kThreads, 0,
                                   static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_bwd_lanes(int64_t N, int64_t C, int64_t inner) { return bnlif_bwd_lanes(N, C, inner); }
int64_t bn_lif_bwd_blocks(int64_t N, int64_t C, int64_t inner) { return bnlif_bwd_blocks(N, C, inner); }

// With N = 0 (B = 0) the blocks still run: they write the zero totals the channel pass reads.
int bn_lif_bwd_launch(const BNLIFBwdArgs& args, void* stream) {
  if (args.C == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_backward<decltype(tag)><<<dim3(unsigned((args.C + args.G - 1) / args.G * args.P)), kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_dx_launch(const BNLIFDxArgs& args, void* stream) {
  if (args.N == 0 || args.T == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_dx<decltype(tag)><<<dim3(unsigned(blocks_for(args.N, 1))), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace snn_fast
