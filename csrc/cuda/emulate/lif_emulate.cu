// Host emulation of the CUDA LIF kernels, for checking their logic where there is no GPU.
//
// Runs the very thread bodies the __global__ kernels run (lif_fwd_thread / lif_bwd_thread of
// ../lif_kernels.cuh), for every thread index in turn, on host memory, with the same vector-width
// choice as the launchers. What this checks: indexing, the 16-byte packs and the scalar fallback,
// the saved-state codec (H − θ with the spike in its sign bit for fp16/bf16), the one-step-ahead
// carry, V_{t−1} for ∂L/∂k, the optional inputs, the flag dispatch and lif_step.h's functions in
// their order of operations (the CPU kernels run the same; the one device-only line in them is the
// mul_rn shim). What it does not: the device's own math library (expf etc. round differently from
// the host's), warp shuffles, memory coalescing.
// The per-block parameter-gradient partials are summed per block in double, like the kernel (in
// thread order instead of the shuffle tree).
//
// save="recompute" (emu_lif_fwd_rc / emu_lif_bwd_rc): the same for lif_bwd_rc_thread and the forward's
// checkpoint writes.
//
// Built by tests/test_cuda_compile.py as a host shared library (nvcc -shared) and called through
// ctypes. Not part of the extension (setup.py takes csrc/cuda/*.cu only, not this folder).
#include <vector>

#include "lif_kernels.cuh"

using namespace snn_fast::cuda;

namespace {

template <typename scalar_t>
void fwd(bool wide, int64_t T, int64_t N, const void* x, const void* v0, const void* params, const bool* mask,
         void* s, void* v_last, void* v_seq, void* saved, const LIFFlagsC& f, bool v0_uniform, void* ckpt = nullptr) {
  FwdPtrs<scalar_t> a{static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(v0),
                      static_cast<const acc_of_t<scalar_t>*>(params), mask, static_cast<scalar_t*>(s),
                      static_cast<scalar_t*>(v_last), static_cast<scalar_t*>(v_seq), static_cast<scalar_t*>(saved),
                      static_cast<acc_of_t<scalar_t>*>(ckpt), v0_uniform};
  constexpr int V = vec_width<scalar_t>();
  const int vec = wide ? V : 1;
  const int64_t threads = blocks_for(N, vec) * kThreads;
  for (int64_t i = 0; i < threads; ++i) {
    if (wide) lif_fwd_thread<scalar_t, V>(a, T, N, f, i);
    else lif_fwd_thread<scalar_t, 1>(a, T, N, f, i);
  }
}

template <typename scalar_t, int VEC, bool RC = false>
void bwd_vec(const BwdPtrs<scalar_t>& a, int64_t T, int64_t N, const LIFFlagsC& f, bool need_param, void* gp) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t blocks = blocks_for(N, VEC);
  double total[3] = {0, 0, 0};
  for (int64_t b = 0; b < blocks; ++b) {
    double blk[3] = {0, 0, 0};
    for (int64_t t = 0; t < kThreads; ++t) {
      acc_t dk = 0, dth = 0, dal = 0;
      const int64_t i = b * kThreads + t;
      if constexpr (RC) {  // save="recompute" (lif_bwd_rc_kernel's thread body; H in a local array)
        acc_t hbuf[kRcChunk];
        if (need_param) lif_bwd_rc_thread<scalar_t, true>(a, T, N, f, i, hbuf, 1, dk, dth, dal);
        else lif_bwd_rc_thread<scalar_t, false>(a, T, N, f, i, hbuf, 1, dk, dth, dal);
      } else {
        if (need_param) lif_bwd_thread<scalar_t, VEC, true>(a, T, N, f, i, dk, dth, dal);
        else lif_bwd_thread<scalar_t, VEC, false>(a, T, N, f, i, dk, dth, dal);
      }
      blk[0] += double(dk);
      blk[1] += double(dth);
      blk[2] += double(dal);
    }
    for (int c = 0; c < 3; ++c) total[c] += blk[c];
  }
  if (need_param)
    for (int c = 0; c < 3; ++c) static_cast<acc_t*>(gp)[c] = acc_t(total[c]);
}

template <typename scalar_t>
void bwd(bool wide, int64_t T, int64_t N, const void* gs, const void* gvl, const void* gvs, const void* x,
         const void* v0, const void* params, const bool* mask, const void* saved, void* gx, void* gv0,
         bool need_param, void* grad_params, const LIFFlagsC& f, bool v0_uniform) {
  BwdPtrs<scalar_t> a{static_cast<const scalar_t*>(gs), static_cast<const scalar_t*>(gvl),
                      static_cast<const scalar_t*>(gvs), static_cast<const scalar_t*>(x),
                      static_cast<const scalar_t*>(v0), static_cast<const acc_of_t<scalar_t>*>(params), mask,
                      static_cast<const scalar_t*>(saved), static_cast<scalar_t*>(gx), static_cast<scalar_t*>(gv0),
                      nullptr, nullptr, v0_uniform};
  if (wide) bwd_vec<scalar_t, vec_width<scalar_t>()>(a, T, N, f, need_param, grad_params);
  else bwd_vec<scalar_t, 1>(a, T, N, f, need_param, grad_params);
}

template <typename scalar_t>
void bwd_rc(int64_t T, int64_t N, const void* gs, const void* gvl, const void* gvs, const void* x, const void* v0,
            const void* params, const bool* mask, const void* ckpt, void* gx, void* gv0, bool need_param,
            void* grad_params, const LIFFlagsC& f, bool v0_uniform) {
  BwdPtrs<scalar_t> a{static_cast<const scalar_t*>(gs), static_cast<const scalar_t*>(gvl),
                      static_cast<const scalar_t*>(gvs), static_cast<const scalar_t*>(x),
                      static_cast<const scalar_t*>(v0), static_cast<const acc_of_t<scalar_t>*>(params), mask,
                      nullptr, static_cast<scalar_t*>(gx), static_cast<scalar_t*>(gv0), nullptr,
                      static_cast<const acc_of_t<scalar_t>*>(ckpt), v0_uniform};
  bwd_vec<scalar_t, kRcVec, true>(a, T, N, f, need_param, grad_params);
}

}  // namespace

extern "C" {

// save="recompute": the forward writes the V checkpoints ([lif_checkpoint_rows(T), N], accumulation
// dtype) instead of H; the backward re-runs it from x and them (one neuron per thread, kRcVec).
int emu_lif_fwd_rc(int dtype, int wide, int64_t T, int64_t N, const void* x, const void* v0, const void* params,
                   const bool* mask, void* s, void* v_last, void* v_seq, void* ckpt, int sg, int hard_reset,
                   double v_reset, int decay_input, int detach_reset, double kappa, int strict, int v0_uniform) {
  const LIFFlagsC f{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
  return with_storage_type(DType(dtype), [&](auto tag) {
    fwd<decltype(tag)>(wide, T, N, x, v0, params, mask, s, v_last, v_seq, nullptr, f, v0_uniform != 0, ckpt);
    return 0;
  });
}

int emu_lif_bwd_rc(int dtype, int64_t T, int64_t N, const void* gs, const void* gvl, const void* gvs, const void* x,
                   const void* v0, const void* params, const bool* mask, const void* ckpt, void* gx, void* gv0,
                   int need_param, void* grad_params, int sg, int hard_reset, double v_reset, int decay_input,
                   int detach_reset, double kappa, int strict, int v0_uniform) {
  const LIFFlagsC f{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
  return with_storage_type(DType(dtype), [&](auto tag) {
    bwd_rc<decltype(tag)>(T, N, gs, gvl, gvs, x, v0, params, mask, ckpt, gx, gv0, need_param, grad_params, f,
                          v0_uniform != 0);
    return 0;
  });
}

int emu_rc_chunk() { return kRcChunk; }

// dtype: DType (0 f32, 1 f16, 2 bf16, 3 f64). wide: use the 16-byte path (the caller checks that
// N and the alignments allow it, as the launcher would).
int emu_lif_fwd(int dtype, int wide, int64_t T, int64_t N, const void* x, const void* v0, const void* params,
                const bool* mask, void* s, void* v_last, void* v_seq, void* saved, int sg, int hard_reset,
                double v_reset, int decay_input, int detach_reset, double kappa, int strict, int v0_uniform) {
  const LIFFlagsC f{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
  return with_storage_type(DType(dtype), [&](auto tag) {
    fwd<decltype(tag)>(wide, T, N, x, v0, params, mask, s, v_last, v_seq, saved, f, v0_uniform != 0);
    return 0;
  });
}

int emu_lif_bwd(int dtype, int wide, int64_t T, int64_t N, const void* gs, const void* gvl, const void* gvs,
                const void* x, const void* v0, const void* params, const bool* mask, const void* saved, void* gx,
                void* gv0, int need_param, void* grad_params, int sg, int hard_reset, double v_reset,
                int decay_input, int detach_reset, double kappa, int strict, int v0_uniform) {
  const LIFFlagsC f{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
  return with_storage_type(DType(dtype), [&](auto tag) {
    bwd<decltype(tag)>(wide, T, N, gs, gvl, gvs, x, v0, params, mask, saved, gx, gv0, need_param, grad_params, f,
                       v0_uniform != 0);
    return 0;
  });
}

}  // extern "C"
