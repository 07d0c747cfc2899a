// torch binding of the fused batch-norm + LIF CUDA kernels (bn_lif.cu; launch API and bytes in
// bn_lif_cuda.h; docs/spec.md §12): checks, contiguity, allocation, device guard and current stream,
// and the per-channel algebra between the walk and the dx pass, as bn_lif_cpu.cpp does it on the CPU
// and snn_fast/ops/bn_lif/triton.py on Triton. Compiled only in CUDA builds (setup.py).
//
// `saved` (the fourth output of bn_lif_fwd) is, by `save`: the forward's H, [T, N] in params' dtype
// (0, "state"), or nothing (1, "recompute": the backward re-runs the forward into a scratch H; 2,
// inference). The batch statistics come from torch (snn_fast/ops/bn_lif/function.py), not from here.
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

// (a [C], gain []): a_c = weight_c·(rstd_c·gain), gain = tdbn_alpha·θ (tdBN) or 1, in params' dtype.
std::pair<Tensor, Tensor> bn_scale(const Tensor& weight, const Tensor& rstd, const Tensor& params, double tdbn_alpha) {
  Tensor gain = tdbn_alpha > 0 ? params.select(0, 1) * tdbn_alpha : at::ones({}, params.options());
  return {(weight * (rstd * gain)).contiguous(), gain};
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
  const Tensor a = bn_scale(weight, rstd, params, tdbn_alpha).first;
  const Tensor m = mean.contiguous(), b = bias.contiguous();
  Tensor s = at::empty_like(x), v_last = at::empty_like(v0);
  Tensor v_seq = return_v_seq ? at::empty_like(x) : at::empty({0}, x.options());
  const bool keep_h = save == kSaveState;
  Tensor saved = keep_h ? at::empty({T, N}, params.options()) : at::empty({0}, x.options());
  BNLIFFwdArgs f{};
  f.dtype = dtype_of(x, "bn_lif");
  f.T = T;
  f.N = N;
  f.C = C;
  f.inner = inner;
  f.x = x.const_data_ptr();
  f.v0 = v0.const_data_ptr();
  f.params = params.const_data_ptr();
  f.a = a.const_data_ptr();
  f.m = m.const_data_ptr();
  f.b = b.const_data_ptr();
  f.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  f.s = s.mutable_data_ptr();
  f.v_last = v_last.mutable_data_ptr();
  f.v_seq = return_v_seq ? v_seq.mutable_data_ptr() : nullptr;
  f.h = keep_h ? saved.mutable_data_ptr() : nullptr;
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
  const bool rerun = save != kSaveState;
  if (!rerun)
    TORCH_CHECK(saved_.sizes() == x_.sizes() && saved_.scalar_type() == params_.scalar_type() &&
                    saved_.device() == x_.device(),
                "bn_lif_bwd (CUDA kernel, save=0): `saved` must be the forward's H, [T, N] ", params_.scalar_type(),
                ", written by the CUDA bn_lif_fwd, got ", saved_.sizes(), " ", saved_.scalar_type());
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), params = params_.contiguous(), gs = grad_s_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  auto [a, gain] = bn_scale(weight, rstd, params, tdbn_alpha);
  const Tensor m = mean.contiguous(), b = bias.contiguous();
  Tensor h = rerun ? at::empty({T, N}, params.options()) : saved_.contiguous();
  Tensor gx = at::empty_like(x), gv0 = at::empty_like(v0);
  Tensor sums = at::empty({2, N}, params.options());
  Tensor psum = need_param_grad ? at::empty({3, N}, params.options()) : Tensor();
  BNLIFBwdArgs w{};
  w.dtype = dtype_of(x, "bn_lif");
  w.T = T;
  w.N = N;
  w.C = C;
  w.inner = inner;
  w.grad_s = gs.const_data_ptr();
  w.grad_v_last = gvlast.defined() ? gvlast.const_data_ptr() : nullptr;
  w.grad_v_seq = gvseq.defined() ? gvseq.const_data_ptr() : nullptr;
  w.x = x.const_data_ptr();
  w.v0 = v0.const_data_ptr();
  w.params = params.const_data_ptr();
  w.a = a.const_data_ptr();
  w.m = m.const_data_ptr();
  w.b = b.const_data_ptr();
  w.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  w.h = h.mutable_data_ptr();
  w.rerun = rerun;
  w.scale_by_a = !batch_stats;
  w.need_param_grad = need_param_grad;
  w.grad_x = gx.mutable_data_ptr();
  w.grad_v0 = gv0.mutable_data_ptr();
  w.sums = sums.mutable_data_ptr();
  w.psum = need_param_grad ? psum.mutable_data_ptr() : nullptr;
  w.flags = bn_flags(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  C10_CUDA_CHECK(static_cast<cudaError_t>(bn_lif_bwd_launch(w, stream)));
  // The per-channel algebra (docs/spec.md §12) in float64, as the CPU op and Triton do it.
  const Tensor ch = sums.view({2, N / (C * inner), C, inner}).to(at::kDouble).sum({1, 3});
  const Tensor g0 = ch.select(0, 0), g1 = ch.select(0, 1), r = rstd.to(at::kDouble);
  const Tensor gw = g1 * r * gain.to(at::kDouble);
  Tensor gp = need_param_grad ? psum.to(at::kDouble).sum(1) : at::zeros({3}, params.options().dtype(at::kDouble));
  if (need_param_grad && tdbn_alpha > 0) {  // θ in the gain α·θ
    gp.select(0, 1).add_((g1 * weight.to(at::kDouble) * r).sum() * tdbn_alpha);
  }
  if (batch_stats && N > 0) {
    const double n = double(T) * double(N / C);
    const Tensor ad = a.to(at::kDouble);
    const Tensor coef = at::cat({ad, -ad * r * r * g1 / n, -ad * g0 / n}).to(params.scalar_type()).contiguous();
    BNLIFDxArgs d{};
    d.dtype = w.dtype;
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
  const auto pt = params.scalar_type();
  return {gx, gv0, gp.to(pt), gw.to(pt), g0.to(pt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CUDA, m) {
  m.impl("bn_lif_fwd", &bn_lif_fwd_cuda);
  m.impl("bn_lif_bwd", &bn_lif_bwd_cuda);
}

}  // namespace cuda
}  // namespace snn_fast
