// Fused LIF forward over the whole T loop (docs/spec.md §2–§4). One thread owns VEC contiguous neurons and
// keeps their membranes in registers for all T steps; every [T, N] tensor is touched once per step
// with one 16-byte access per thread (coalesced across the warp). The thread body is
// lif_fwd_thread (lif_kernels.cuh); per-element math comes from snn_fast/lif_step.h.
//
// Instantiated per storage dtype and vector width only (8 kernels); the optional mask and v_seq are
// null-pointer checks (uniform branches), the surrogate (needed only for the noisy spike's analog
// value) a switch on a uniform id.
#include "lif_kernels.cuh"

namespace snn_fast {
namespace cuda {
namespace {

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    lif_fwd_kernel(FwdPtrs<scalar_t> a, int64_t T, int64_t N, LIFFlagsC flags) {
  lif_fwd_thread<scalar_t, VEC>(a, T, N, flags, int64_t(blockIdx.x) * kThreads + threadIdx.x);
}

template <typename scalar_t>
int launch(const LIFFwdArgs& args, cudaStream_t stream) {
  FwdPtrs<scalar_t> a{static_cast<const scalar_t*>(args.x),
                      static_cast<const scalar_t*>(args.v0),
                      static_cast<const acc_of_t<scalar_t>*>(args.params),
                      args.mask,
                      static_cast<scalar_t*>(args.s),
                      static_cast<scalar_t*>(args.v_last),
                      static_cast<scalar_t*>(args.v_seq),
                      static_cast<scalar_t*>(args.saved),
                      static_cast<acc_of_t<scalar_t>*>(args.ckpt),
                      args.v0_uniform};
  if (args.N == 0 || args.T == 0) return 0;
  constexpr int V = vec_width<scalar_t>();
  const int64_t bytes = int64_t(sizeof(scalar_t)) * V;
  const bool wide = args.N % V == 0 && aligned(a.x, bytes) && (a.v0_uniform || aligned(a.v0, bytes)) &&
                    aligned(a.s, bytes) &&
                    aligned(a.v_last, bytes) && aligned(a.v_seq, bytes) && aligned(a.saved, bytes) &&
                    aligned(a.mask, V) && aligned(a.ckpt, int64_t(sizeof(acc_of_t<scalar_t>)) * V);
  if (wide) {
    lif_fwd_kernel<scalar_t, V><<<dim3(unsigned(blocks_for(args.N, V))), kThreads, 0, stream>>>(a, args.T, args.N,
                                                                                             args.flags);
  } else {
    lif_fwd_kernel<scalar_t, 1><<<dim3(unsigned(blocks_for(args.N, 1))), kThreads, 0, stream>>>(a, args.T, args.N,
                                                                                             args.flags);
  }
  return int(cudaGetLastError());
}

}  // namespace

int lif_fwd_launch(const LIFFwdArgs& args, void* stream) {
  return with_storage_type(args.dtype, [&](auto tag) {
    return launch<decltype(tag)>(args, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace cuda
}  // namespace snn_fast
