// Host emulation of the fused batch-norm + LIF CUDA kernels (../bn_lif.cu), for checking their logic
// where there is no GPU.
//
// Runs the very thread bodies the __global__ kernels run (bnlif_fwd_thread / bnlif_bwd_thread /
// bnlif_dx_thread of ../bn_lif_kernels.cuh), for every thread index of the launchers' grid in turn
// (blocks_for(·, 1)·kThreads, so the threads past N or T·N run too and must return), on host memory.
// The arguments are those of BNLIFFwdArgs / BNLIFBwdArgs / BNLIFDxArgs (bn_lif_cuda.h), flattened for
// ctypes; the launchers' early return on N = 0 or T = 0 is kept. What this checks: the channel
// indexing, the per-channel a, m, b, the forward, the saved or re-run H, the backward walk, the
// per-neuron sums and parameter-gradient terms, the dx pass, the optional inputs and the flag dispatch,
// with lif_step.h's functions in their order of operations. What it does not: the device's math
// library (expf etc.), FMA contraction of the plain a·b + c in the sums and in dx (the host build
// uses -ffp-contract=off), memory ordering between threads (none of these kernels shares data
// between threads).
//
// Built by tests/test_cuda_bn_lif_emulate.py as a host shared library (nvcc -shared) and called
// through ctypes. Not part of the extension (setup.py takes csrc/cuda/*.cu only, not this folder).
#include "bn_lif_kernels.cuh"

using namespace snn_fast::cuda;

namespace {

LIFFlagsC flags_of(int sg, int hard_reset, double v_reset, int decay_input, int detach_reset, double kappa,
                   int strict) {
  return LIFFlagsC{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
}

}  // namespace

extern "C" {

// dtype: DType (0 f32, 1 f16, 2 bf16, 3 f64). Pointers as in BNLIFFwdArgs (null where it allows).
int emu_bnlif_fwd(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const void* x, const void* v0,
                  const void* params, const void* a, const void* m, const void* b, const bool* mask, void* s,
                  void* v_last, void* v_seq, void* h, int sg, int hard_reset, double v_reset, int decay_input,
                  int detach_reset, double kappa, int strict) {
  BNLIFFwdArgs f{};
  f.dtype = DType(dtype);
  f.T = T;
  f.N = N;
  f.C = C;
  f.inner = inner;
  f.x = x;
  f.v0 = v0;
  f.params = params;
  f.a = a;
  f.m = m;
  f.b = b;
  f.mask = mask;
  f.s = s;
  f.v_last = v_last;
  f.v_seq = v_seq;
  f.h = h;
  f.flags = flags_of(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict);
  if (f.N == 0 || f.T == 0) return 0;
  return with_storage_type(f.dtype, [&](auto tag) {
    const int64_t threads = blocks_for(f.N, 1) * kThreads;
    for (int64_t n = 0; n < threads; ++n) bnlif_fwd_thread<decltype(tag)>(f, n);
    return 0;
  });
}

// Pointers as in BNLIFBwdArgs.
int emu_bnlif_bwd(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const void* grad_s,
                  const void* grad_v_last, const void* grad_v_seq, const void* x, const void* v0, const void* params,
                  const void* a, const void* m, const void* b, const bool* mask, void* h, int rerun, int scale_by_a,
                  int need_param_grad, void* grad_x, void* grad_v0, void* sums, void* psum, int sg, int hard_reset,
                  double v_reset, int decay_input, int detach_reset, double kappa, int strict) {
  BNLIFBwdArgs w{};
  w.dtype = DType(dtype);
  w.T = T;
  w.N = N;
  w.C = C;
  w.inner = inner;
  w.grad_s = grad_s;
  w.grad_v_last = grad_v_last;
  w.grad_v_seq = grad_v_seq;
  w.x = x;
  w.v0 = v0;
  w.params = params;
  w.a = a;
  w.m = m;
  w.b = b;
  w.mask = mask;
  w.h = h;
  w.rerun = rerun != 0;
  w.scale_by_a = scale_by_a != 0;
  w.need_param_grad = need_param_grad != 0;
  w.grad_x = grad_x;
  w.grad_v0 = grad_v0;
  w.sums = sums;
  w.psum = psum;
  w.flags = flags_of(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict);
  if (w.N == 0 || w.T == 0) return 0;
  return with_storage_type(w.dtype, [&](auto tag) {
    const int64_t threads = blocks_for(w.N, 1) * kThreads;
    for (int64_t n = 0; n < threads; ++n) bnlif_bwd_thread<decltype(tag)>(w, n);
    return 0;
  });
}

// Pointers as in BNLIFDxArgs; grad_x in place.
int emu_bnlif_dx(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const void* x, void* grad_x,
                 const void* coef, const void* m) {
  BNLIFDxArgs d{};
  d.dtype = DType(dtype);
  d.T = T;
  d.N = N;
  d.C = C;
  d.inner = inner;
  d.x = x;
  d.grad_x = grad_x;
  d.coef = coef;
  d.m = m;
  if (d.N == 0 || d.T == 0) return 0;
  return with_storage_type(d.dtype, [&](auto tag) {
    const int64_t threads = blocks_for(d.T * d.N, 1) * kThreads;
    for (int64_t i = 0; i < threads; ++i) bnlif_dx_thread<decltype(tag)>(d, i);
    return 0;
  });
}

int emu_bnlif_threads() { return kThreads; }

}  // extern "C"
