// Host emulation of the fused batch-norm + LIF CUDA kernels (../bn_lif.cu), for checking their logic
// where there is no GPU.
//
// Runs the very thread bodies the __global__ kernels run (bnlif_fwd_thread / bnlif_bwd_thread /
// bnlif_dx_thread of ../bn_lif_kernels.cuh), for every thread index of the launchers' grid in turn
// (blocks_for(N, 1)·kThreads, so the threads past N run too and must return), on host memory;
// the backward block by block (C·P blocks of kThreads, the threads past the channel's end included),
// each block's thread sums through block_sum's tree; and the block reductions (the channel totals,
// ∂params, the statistics) as bn_lif.cu runs them: every thread's share (bnlif_*_share), the block's
// fixed tree of block_sum on the host in the same order, then the epilogue. The arguments are those of bn_lif_cuda.h's structs, flattened for
// ctypes; the launchers' early returns are kept. What this checks: the channel indexing, the
// per-channel scale a_c from weight, rstd and the gain, m, b, the forward and its checkpoints, the
// backward's segments re-run from them and walked back, the block sums and parameter-gradient terms,
// their channel sums and algebra, the
// dx pass, the statistics' chunking and shift, the optional inputs and the flag dispatch, with
// lif_step.h's functions in their order of operations. What it does not: the device's math library
// (expf etc.), FMA contraction of the plain a·b + c in the sums and in dx (the host build uses
// -ffp-contract=off), shared memory and __syncthreads (the tree runs level by level here).
//
// Built by tests/test_cuda_bn_lif_emulate.py as a host shared library (nvcc -shared) and called
// through ctypes. Not part of the extension (setup.py takes csrc/cuda/*.cu only, not this folder).
#include <vector>

#include "bn_lif_kernels.cuh"

using namespace snn_fast::cuda;

namespace {

// The 64-bit index instantiations of the statistics (bn_lif.cu takes them past 2^31 values per
// channel, beyond any test's size) on request: emu_bnlif_force_wide_index(1).
bool g_force_wide = false;

// bn_lif.cu's block_sum on the host: NT shares of K values, the same pairwise tree; the total in v[0].
template <int K>
void block_sum_host(std::vector<double>& v, int NT, int lanes = 1) {  // v[tid·K + j]; lane l's in v[l·K + j]
  for (int s = NT / 2; s >= lanes; s >>= 1)
    for (int tid = 0; tid < s; ++tid)
      for (int j = 0; j < K; ++j) v[tid * K + j] += v[(tid + s) * K + j];
}

LIFFlagsC flags_of(int sg, int hard_reset, double v_reset, int decay_input, int detach_reset, double kappa,
                   int strict) {
  return LIFFlagsC{sg, hard_reset != 0, v_reset, decay_input != 0, detach_reset != 0, kappa, strict != 0};
}

}  // namespace

extern "C" {

// dtype: DType (0 f32, 1 f16, 2 bf16, 3 f64). Pointers as in BNLIFFwdArgs (null where it allows).
int emu_bnlif_fwd(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const void* x, const void* v0,
                  const void* params, const void* w, const void* rstd, double tdbn_alpha, const void* m,
                  const void* b, const bool* mask, void* s,
                  void* v_last, void* v_seq, void* ck, int sg, int hard_reset, double v_reset, int decay_input,
                  int detach_reset, double kappa, int strict, int v0_uniform) {
  BNLIFFwdArgs f{};
  f.dtype = DType(dtype);
  f.T = T;
  f.N = N;
  f.C = C;
  f.inner = inner;
  f.x = x;
  f.v0 = v0;
  f.v0_uniform = v0_uniform != 0;
  f.params = params;
  f.w = w;
  f.rstd = rstd;
  f.tdbn_alpha = tdbn_alpha;
  f.m = m;
  f.b = b;
  f.mask = mask;
  f.s = s;
  f.v_last = v_last;
  f.v_seq = v_seq;
  f.ck = ck;
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
                  const void* wt, const void* rstd, double tdbn_alpha, const void* m, const void* b,
                  const bool* mask, const void* ck, int scale_by_a,
                  int need_param_grad, void* grad_x, void* grad_v0, double* part, int sg, int hard_reset,
                  double v_reset, int decay_input, int detach_reset, double kappa, int strict, int v0_uniform) {
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
  w.v0_uniform = v0_uniform != 0;
  w.params = params;
  w.w = wt;
  w.rstd = rstd;
  w.tdbn_alpha = tdbn_alpha;
  w.m = m;
  w.b = b;
  w.mask = mask;
  w.ck = ck;
  w.scale_by_a = scale_by_a != 0;
  w.need_param_grad = need_param_grad != 0;
  w.grad_x = grad_x;
  w.grad_v0 = grad_v0;
  w.G = bnlif_bwd_lanes(N, C, inner);
  w.P = bnlif_bwd_blocks(N, C, inner);
  w.part = part;
  w.flags = flags_of(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict);
  if (w.C == 0) return 0;
  return with_storage_type(w.dtype, [&](auto tag) {
    std::vector<double> v(kThreads * 5);
    const int64_t ng = (w.C + w.G - 1) / w.G;
    for (int64_t blk = 0; blk < ng * w.P; ++blk) {  // bn_lif.cu's order: channel groups fastest
      const int64_t cg = blk % ng, q = blk / ng;
      for (int tid = 0; tid < kThreads; ++tid) {
        double share[5];
        bnlif_bwd_thread<decltype(tag)>(w, cg, q, tid, share);
        for (int j = 0; j < 5; ++j) v[tid * 5 + j] = share[j];
      }
      block_sum_host<5>(v, kThreads, w.G);
      for (int l = 0; l < w.G && cg * w.G + l < w.C; ++l)
        for (int j = 0; j < 5; ++j) part[((cg * w.G + l) * w.P + q) * 5 + j] = v[l * 5 + j];
    }
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
    const int64_t threads = blocks_for(d.N, 1) * kThreads;
    for (int64_t n = 0; n < threads; ++n) bnlif_dx_thread<decltype(tag)>(d, n);
    return 0;
  });
}

// bn_lif_channels_launch then, with pchan, bn_lif_params_launch (BNLIFChannelArgs; null where it allows).
int emu_bnlif_channels(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const double* part,
                       const void* params, const void* w, const void* rstd, double tdbn_alpha, int batch_stats,
                       void* grad_w, void* grad_b, void* coef, double* pchan, void* grad_params) {
  BNLIFChannelArgs a{};
  a.dtype = DType(dtype);
  a.T = T;
  a.N = N;
  a.C = C;
  a.inner = inner;
  a.P = bnlif_bwd_blocks(N, C, inner);
  a.part = part;
  a.params = params;
  a.w = w;
  a.rstd = rstd;
  a.tdbn_alpha = tdbn_alpha;
  a.batch_stats = batch_stats != 0;
  a.grad_w = grad_w;
  a.grad_b = grad_b;
  a.coef = coef;
  a.pchan = pchan;
  a.grad_params = grad_params;
  if (a.C == 0) return 0;
  auto run = [&](auto tag) {
    using acc_t = decltype(tag);
    std::vector<double> v(kChanThreads * 5);
    for (int64_t c = 0; c < a.C; ++c) {
      for (int tid = 0; tid < kChanThreads; ++tid) {
        double share[5];
        bnlif_channel_share(a, c, tid, kChanThreads, share);
        for (int j = 0; j < 5; ++j) v[tid * 5 + j] = share[j];
      }
      block_sum_host<5>(v, kChanThreads);
      const double tot[5] = {v[0], v[1], v[2], v[3], v[4]};
      bnlif_channel_epilogue<acc_t>(a, c, tot);
    }
    if (a.pchan != nullptr) {
      std::vector<double> q(kParamThreads * 3);
      for (int tid = 0; tid < kParamThreads; ++tid) {
        double share[3];
        bnlif_params_share(a, tid, kParamThreads, share);
        for (int j = 0; j < 3; ++j) q[tid * 3 + j] = share[j];
      }
      block_sum_host<3>(q, kParamThreads);
      const double tot[3] = {q[0], q[1], q[2]};
      bnlif_params_epilogue<acc_t>(a, tot);
    }
    return 0;
  };
  return with_acc_type(a.dtype, run);
}

// bn_lif_stats_launch (BNStatsArgs); part: [C, P, 2] scratch with P = bn_lif_stats_chunks(…).
int emu_bnlif_stats(int dtype, int64_t T, int64_t N, int64_t C, int64_t inner, const void* x, double* part, double eps,
                    void* mean, void* rstd, void* var_unbiased) {
  BNStatsArgs a{};
  a.dtype = DType(dtype);
  a.T = T;
  a.N = N;
  a.C = C;
  a.inner = inner;
  a.P = bnlif_stats_chunks(T, N, C, inner);
  a.x = x;
  a.part = part;
  a.eps = eps;
  a.mean = mean;
  a.rstd = rstd;
  a.var_unbiased = var_unbiased;
  if (a.C == 0) return 0;
  return with_storage_type(a.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool narrow = !g_force_wide && bnlif_stats_narrow(a);
    std::vector<double> v(kStatsThreads * 2);
    for (int64_t blk = 0; blk < a.C * a.P; ++blk) {
      const int64_t c = blk / a.P, p = blk % a.P;
      for (int tid = 0; tid < kStatsThreads; ++tid) {
        double share[2];
        if (narrow)
          bnlif_stats_share<scalar_t, uint32_t>(a, c, p, tid, kStatsThreads, share);
        else
          bnlif_stats_share<scalar_t, uint64_t>(a, c, p, tid, kStatsThreads, share);
        v[tid * 2] = share[0];
        v[tid * 2 + 1] = share[1];
      }
      block_sum_host<2>(v, kStatsThreads);
      a.part[blk * 2] = v[0];
      a.part[blk * 2 + 1] = v[1];
    }
    const int64_t threads = blocks_for(a.C, 1) * kThreads;
    for (int64_t c = 0; c < threads; ++c) bnlif_stats_finish<scalar_t>(a, c);
    return 0;
  });
}

int emu_bnlif_bwd_lanes(int64_t N, int64_t C, int64_t inner) { return bnlif_bwd_lanes(N, C, inner); }

int64_t emu_bnlif_bwd_blocks(int64_t N, int64_t C, int64_t inner) { return bnlif_bwd_blocks(N, C, inner); }

int64_t emu_bnlif_checkpoints(int64_t T) { return bnlif_checkpoints(T); }

int64_t emu_bnlif_stats_chunks(int64_t T, int64_t N, int64_t C, int64_t inner) {
  return bnlif_stats_chunks(T, N, C, inner);
}

void emu_bnlif_force_wide_index(int on) { g_force_wide = on != 0; }

int emu_bnlif_threads() { return kThreads; }

}  // extern "C"
