// Fused batch norm + LIF on CUDA (docs/spec.md §12; launch API and bytes: bn_lif_cuda.h): the
// launchers and one-line __global__ wrappers around the per-thread bodies of bn_lif_kernels.cuh (which
// csrc/cuda/emulate/bn_lif_emulate.cu also runs on the host). The per-element math is lif_step.h's, the
// functions the CPU kernels run; the flags become template arguments per thread (uniform branches).
#include "bn_lif_cuda.h"
#include "bn_lif_kernels.cuh"

namespace snn_fast {
namespace cuda {
namespace {

// One thread per neuron (forward, backward) or element (dx); the bodies are bn_lif_kernels.cuh's.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_forward(BNLIFFwdArgs args) {
  bnlif_fwd_thread<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_backward(BNLIFBwdArgs args) {
  bnlif_bwd_thread<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) bnlif_dx(BNLIFDxArgs args) {
  bnlif_dx_thread<scalar_t>(args, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

}  // namespace

int bn_lif_fwd_launch(const BNLIFFwdArgs& args, void* stream) {
  if (args.N == 0 || args.T == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_forward<decltype(tag)><<<dim3(unsigned(blocks_for(args.N, 1))), kThreads, 0,
                                   static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_bwd_launch(const BNLIFBwdArgs& args, void* stream) {
  if (args.N == 0 || args.T == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_backward<decltype(tag)><<<dim3(unsigned(blocks_for(args.N, 1))), kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

int bn_lif_dx_launch(const BNLIFDxArgs& args, void* stream) {
  if (args.N == 0 || args.T == 0) return 0;
  return with_storage_type(args.dtype, [&](auto tag) {
    bnlif_dx<decltype(tag)><<<dim3(unsigned(blocks_for(args.T * args.N, 1))), kThreads, 0,
                              static_cast<cudaStream_t>(stream)>>>(args);
    return int(cudaGetLastError());
  });
}

}  // namespace cuda
}  // namespace snn_fast
