// torch binding of the fused batch-norm + LIF CUDA kernels (bn_lif.cu; launch API and bytes in
// bn_lif_cuda.h; docs/spec.md §12): checks, contiguity, allocation, device guard and current stream,
// and the per-channel algebra between the walk and the dx pass, as bn_lif_cpu.cpp does it on the CPU
// and snn_fast/ops/bn_lif/triton.py on Triton. Compiled only in CUDA builds (setup.py).
//
// `saved` (the fourth output of bn_lif_fwd) is, with save 0 ("state") or 1 ("recompute") alike, the
// membrane every 8 steps, [⌈T/8⌉ − 1, N] in params' dtype (empty rows for T <= 8): the backward re-runs
// the forward from them in registers, since it reads x anyway for batch norm's sums, so keeping H would
// only add two passes; with 2 (inference), nothing. bn_lif_stats: the batch's per-channel mean, rstd and unbiased variance (one read of x).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/bn_lif_checks.h"
#include "../common/lif_checks.h"
#include "bn_lif_cuda.h"
#include "torch_dtype.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cuda {
namespace {

using at::Tensor;

// The LIF op's checks, then batch norm's (bn_lif_checks.h, shared with the CPU binding). Returns C.
int64_t check_bn(const Tensor& x, const Tensor& v0, const Tensor& params, const c10::optional<Tensor>& mask,
                 int64_t sg, const Tensor& weight, const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                 int64_t inner, int64_t save) {
  check_lif_args(x, v0, params, mask, sg, c10::DeviceType::CUDA, "CUDA kernel", "bn_lif");
  check_save(save, "CUDA kernel", false, "bn_lif");
  dtype_of(x, "bn_lif");
  return check_bn_args(x, params, weight, bias, mean, rstd, inner);
}

LIFFlagsC bn_flags(int64_t sg, bool hard_reset, double v_reset, bool decay_input, bool detach_reset, double kappa,
                   bool strict, int64_t timing) {
  check_reset_timing(timing, "bn_lif");
  TORCH_CHECK(timing == kResetAfterFire, "bn_lif (CUDA kernel): reset_timing must be 0 (after the spike), got ",
              timing, "; backend='reference' runs the delayed and no-reset timings");
  return LIFFlagsC{int(sg), hard_reset, v_reset, decay_input, detach_reset, kappa, strict};
}

std::tuple<Tensor, Tensor, Tensor> bn_lif_stats_cuda(const Tensor& x_, int64_t C, int64_t inner, double eps) {
  TORCH_CHECK(x_.dim() == 2 && x_.is_cuda(), "bn_lif_stats: x must be a [T, N] CUDA tensor");
  TORCH_CHECK(C >= 1 && inner >= 1 && x_.size(1) % (C * inner) == 0, "bn_lif_stats: x's N = ", x_.size(1),
              " is not a multiple of C·inner = ", C, "·", inner);
  TORCH_CHECK(x_.size(0) * (x_.size(1) / C) > 1,
              "bn_lif_stats: expected more than 1 value per channel (the unbiased variance), x is ", x_.sizes());
  const c10::cuda::CUDAGuard guard(x_.device());
  const Tensor x = x_.contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opt = x.options().dtype(acc);
  Tensor mean = at::empty({C}, opt), rstd = at::empty({C}, opt), var_unbiased = at::empty({C}, opt);
  BNStatsArgs a{};
  a.dtype = dtype_of(x, "bn_lif_stats");
  a.T = T;
  a.N = N;
  a.C = C;
  a.inner = inner;
  a.P = bn_lif_stats_chunks(T, N, C, inner);
  const Tensor part = at::empty({C * a.P * 2}, x.options().dtype(at::kDouble));
  a.x = x.const_data_ptr();
  a.part = part.mutable_data_ptr<double>();
  a.eps = eps;
  a.mean = mean.mutable_data_ptr();
  a.rstd = rstd.mutable_data_ptr();
  a.var_unbiased = var_unbiased.mutable_data_ptr();
  C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_stats_launch(a, c10::cuda::getCurrentCUDAStream().stream())));
  return {mean, rstd, var_unbiased};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_lif_fwd_cuda(
    const Tensor& x_, const Tensor& v0_, const Tensor& params_, const Tensor& weight, const Tensor& bias,
    const Tensor& mean, const Tensor& rstd, double tdbn_alpha, int64_t inner, bool /*batch_stats*/,
    const c10::optional<Tensor>& mask_, int64_t sg, bool hard_reset, double v_reset, bool decay_input,
    bool detach_reset, double kappa, bool strict, int64_t timing, bool return_v_seq, int64_t save) {
  const int64_t C = check_bn(x_, v0_, params_, mask_, sg, weight, bias, mean, rstd, inner, save);
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), params = params_.contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  const Tensor w = weight.contiguous(), r = rstd.contiguous(), m = mean.contiguous(), b = bias.contiguous();
  Tensor s = at::empty_like(x), v_last = at::empty({N}, x.options());
  Tensor v_seq = return_v_seq ? at::empty_like(x) : at::empty({0}, x.options());
  const bool keep = save != kSaveNone;
  Tensor saved = keep ? at::empty({bn_lif_checkpoints(T), N}, params.options()) : at::empty({0}, x.options());
  BNLIFFwdArgs f{};
  f.dtype = dtype_of(x, "bn_lif");
  f.T = T;
  f.N = N;
  f.C = C;
  f.inner = inner;
  f.x = x.const_data_ptr();
  f.v0 = v0.const_data_ptr();
  f.v0_uniform = uniform_v0(v0, N);
  f.params = params.const_data_ptr();
  f.w = w.const_data_ptr();
  f.rstd = r.const_data_ptr();
  f.m = m.const_data_ptr();
  f.b = b.const_data_ptr();
  f.tdbn_alpha = tdbn_alpha;
  f.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  f.s = s.mutable_data_ptr();
  f.v_last = v_last.mutable_data_ptr();
  f.v_seq = return_v_seq ? v_seq.mutable_data_ptr() : nullptr;
  f.ck = keep && bn_lif_checkpoints(T) > 0 ? saved.mutable_data_ptr() : nullptr;
  f.flags = bn_flags(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
  C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_fwd_launch(f, c10::cuda::getCurrentCUDAStream().stream())));
  return {s, v_last, v_seq, saved};
}

// Returns (grad_x, grad_v0, grad_params [3], grad_weight [C], grad_bias [C]); with batch_stats, grad_x
// includes the path through the batch's mean and variance (the dx pass).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_lif_bwd_cuda(
    const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_, const c10::optional<Tensor>& gvseq_,
    const Tensor& x_, const Tensor& v0_, const Tensor& params_, const Tensor& weight, const Tensor& bias,
    const Tensor& mean, const Tensor& rstd, double tdbn_alpha, int64_t inner, bool batch_stats,
    const c10::optional<Tensor>& mask_, const Tensor& saved_, const Tensor& /*s*/, int64_t sg, bool hard_reset,
    double v_reset, bool decay_input, bool detach_reset, double kappa, bool strict, int64_t timing, int64_t save,
    bool need_param_grad) {
  const int64_t C = check_bn(x_, v0_, params_, mask_, sg, weight, bias, mean, rstd, inner, save);
  check_lif_bwd_args(grad_s_, gvlast_, gvseq_, x_, v0_, "bn_lif");
  TORCH_CHECK(save != kSaveNone, "bn_lif_bwd (CUDA kernel): the forward ran with save=2 (inference) and kept "
              "nothing for a backward");
  const int64_t n_ck = bn_lif_checkpoints(x_.size(0));
  TORCH_CHECK(saved_.dim() == 2 && saved_.size(0) == n_ck && saved_.size(1) == x_.size(1) &&
                  saved_.scalar_type() == params_.scalar_type() && saved_.device() == x_.device(),
              "bn_lif_bwd (CUDA kernel): `saved` must be the forward's membrane checkpoints, [", n_ck, ", ",
              x_.size(1), "] ", params_.scalar_type(), ", written by the CUDA bn_lif_fwd, got ", saved_.sizes(), " ",
              saved_.scalar_type());
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), params = params_.contiguous(), gs = grad_s_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  const Tensor w = weight.contiguous(), r = rstd.contiguous(), m = mean.contiguous(), b = bias.contiguous();
  const Tensor ck = saved_.contiguous();
  Tensor gx = at::empty_like(x), gv0 = at::empty_like(v0);
  // one scratch in double: the backward blocks' sums [C, P, 5], the channels' parameter terms [3, C];
  // the dx coefficients [3, C] in params' dtype
  const int G = bn_lif_bwd_lanes(N, C, inner);
  const int64_t P = bn_lif_bwd_blocks(N, C, inner);
  const Tensor scratch = at::empty({C * P * 5 + (need_param_grad ? 3 * C : 0)}, params.options().dtype(at::kDouble));
  const Tensor coef = batch_stats ? at::empty({3 * C}, params.options()) : Tensor();
  Tensor gp = at::empty({3}, params.options()), gw = at::empty({C}, params.options()),
         gb = at::empty({C}, params.options());
  double* part = scratch.mutable_data_ptr<double>();
  BNLIFBwdArgs wa{};
  wa.dtype = dtype_of(x, "bn_lif");
  wa.T = T;
  wa.N = N;
  wa.C = C;
  wa.inner = inner;
  wa.grad_s = gs.const_data_ptr();
  wa.grad_v_last = gvlast.defined() ? gvlast.const_data_ptr() : nullptr;
  wa.grad_v_seq = gvseq.defined() ? gvseq.const_data_ptr() : nullptr;
  wa.x = x.const_data_ptr();
  wa.v0 = v0.const_data_ptr();
  wa.v0_uniform = uniform_v0(v0, N);
  wa.params = params.const_data_ptr();
  wa.w = w.const_data_ptr();
  wa.rstd = r.const_data_ptr();
  wa.m = m.const_data_ptr();
  wa.b = b.const_data_ptr();
  wa.tdbn_alpha = tdbn_alpha;
  wa.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  wa.ck = n_ck > 0 ? ck.const_data_ptr() : nullptr;
  wa.scale_by_a = !batch_stats;
  wa.need_param_grad = need_param_grad;
  wa.grad_x = gx.mutable_data_ptr();
  wa.grad_v0 = gv0.mutable_data_ptr();
  wa.G = G;
  wa.P = P;
  wa.part = part;
  wa.flags = bn_flags(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_bwd_launch(wa, stream)));
  // Per channel (docs/spec.md §12), in double: ∂weight, ∂bias, the dx coefficients, ∂params.
  BNLIFChannelArgs ca{};
  ca.dtype = wa.dtype;
  ca.T = T;
  ca.N = N;
  ca.C = C;
  ca.inner = inner;
  ca.P = P;
  ca.part = part;
  ca.params = wa.params;
  ca.w = wa.w;
  ca.rstd = wa.rstd;
  ca.tdbn_alpha = tdbn_alpha;
  ca.batch_stats = batch_stats;
  ca.grad_w = gw.mutable_data_ptr();
  ca.grad_b = gb.mutable_data_ptr();
  ca.coef = batch_stats ? coef.mutable_data_ptr() : nullptr;
  ca.pchan = need_param_grad ? part + C * P * 5 : nullptr;
  ca.grad_params = gp.mutable_data_ptr();
  C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_channels_launch(ca, stream)));
  if (need_param_grad) C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_params_launch(ca, stream)));
  if (batch_stats && N > 0) {
    BNLIFDxArgs d{};
    d.dtype = wa.dtype;
    d.T = T;
    d.N = N;
    d.C = C;
    d.inner = inner;
    d.x = x.const_data_ptr();
    d.grad_x = gx.mutable_data_ptr();
    d.coef = coef.const_data_ptr();
    d.m = m.const_data_ptr();
    C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_dx_launch(d, stream)));
  }
  return {gx, gv0, gp, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CUDA, m) {
  m.impl("bn_lif_fwd", &bn_lif_fwd_cuda);
  m.impl("bn_lif_bwd", &bn_lif_bwd_cuda);
  m.impl("bn_lif_stats", &bn_lif_stats_cuda);
}

}  // namespace cuda
}  // namespace snn_fast
