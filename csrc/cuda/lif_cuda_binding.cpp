// torch binding of the CUDA LIF kernels: checks, contiguity, allocation, device guard and current
// stream, then the pointer-based launch API of lif_cuda.h. Compiled only in CUDA builds (setup.py).
//
// `saved` (the fourth output of lif_fwd) is, by `save`: the forward's H, [T, N] in x's dtype (0,
// "state"; see lif_cuda.h for its encoding), the V checkpoints (1, "recompute"), or nothing (2,
// inference: the forward skips the H write). lif_bwd refuses a `saved` of another shape or dtype
// (e.g. from another backend) and a g′ given from outside (the CPU kernel's).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/lif_checks.h"
#include "lif_cuda.h"
#include "torch_dtype.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cuda {
namespace {

using at::Tensor;

void check_common(const Tensor& x, const Tensor& v0, const Tensor& params, const c10::optional<Tensor>& mask,
                  int64_t sg) {
  check_lif_args(x, v0, params, mask, sg, c10::DeviceType::CUDA, "CUDA kernel");
  dtype_of(x, "lif");
}

LIFFlagsC make_flags(int64_t sg, bool hard_reset, double v_reset, bool decay_input, bool detach_reset,
                     double kappa, bool strict, int64_t timing) {
  check_reset_timing(timing);
  TORCH_CHECK(timing == kResetAfterFire, "lif (CUDA kernel): reset_timing ", timing, " (not after the spike) ",
              "does not run on the CUDA kernels; backend='triton' (or 'auto') runs it");
  return LIFFlagsC{int(sg), hard_reset, v_reset, decay_input, detach_reset, kappa, strict};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lif_fwd_cuda(const Tensor& x_, const Tensor& v0_, const Tensor& params_,
                                                        const c10::optional<Tensor>& mask_, int64_t sg,
                                                        bool hard_reset, double v_reset, bool decay_input,
                                                        bool detach_reset, double kappa, bool strict,
                                                        int64_t timing, bool return_v_seq, int64_t save) {
  check_common(x_, v0_, params_, mask_, sg);
  check_save(save, "CUDA kernel", false);
  const bool recompute = save == kSaveRecompute, keep_h = save == kSaveState;
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), params = params_.contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor s = at::empty_like(x), v_last = at::empty({N}, x.options());
  Tensor v_seq = return_v_seq ? at::empty_like(x) : at::empty({0}, x.options());
  // H (save="state"), the V checkpoints in the accumulation dtype (save="recompute", see lif_cuda.h) or nothing
  Tensor saved = recompute ? at::empty({lif_checkpoint_rows(T), N}, params.options())
                           : (keep_h ? at::empty_like(x) : at::empty({0}, x.options()));
  LIFFwdArgs a{};
  a.dtype = dtype_of(x, "lif");
  a.T = T;
  a.N = N;
  a.x = x.const_data_ptr();
  a.v0 = v0.const_data_ptr();
  a.params = params.const_data_ptr();
  a.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  a.s = s.mutable_data_ptr();
  a.v_last = v_last.mutable_data_ptr();
  a.v_seq = return_v_seq ? v_seq.mutable_data_ptr() : nullptr;
  a.saved = keep_h ? saved.mutable_data_ptr() : nullptr;
  a.ckpt = recompute && saved.numel() > 0 ? saved.mutable_data_ptr() : nullptr;
  a.flags = make_flags(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
  a.v0_uniform = uniform_v0(v0, N);
  C10_CUDA_CHECK(static_cast<cudaError_t>(lif_fwd_launch(a, c10::cuda::getCurrentCUDAStream().stream())));
  return {s, v_last, v_seq, saved};
}

std::tuple<Tensor, Tensor, Tensor> lif_bwd_cuda(const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_,
                                                const c10::optional<Tensor>& gvseq_, const Tensor& x_,
                                                const Tensor& v0_, const Tensor& params_,
                                                const c10::optional<Tensor>& mask_, const Tensor& saved_,
                                                const Tensor& /*s*/, const c10::optional<Tensor>& sg_grad,
                                                const c10::optional<Tensor>& sg_dalpha, int64_t sg, bool hard_reset,
                                                double v_reset, bool decay_input, bool detach_reset, double kappa,
                                                bool strict, int64_t timing, int64_t save, bool need_param_grad) {
  check_common(x_, v0_, params_, mask_, sg);
  check_lif_bwd_args(grad_s_, gvlast_, gvseq_, x_, v0_);
  check_save(save, "CUDA kernel", false);
  TORCH_CHECK(!sg_grad.has_value() && !sg_dalpha.has_value(),
              "lif_bwd (CUDA kernel): sg_grad/sg_dalpha (a g′ given per element) run on the CPU kernel only");
  TORCH_CHECK(save != kSaveNone, "lif_bwd (CUDA kernel): the forward ran with save=2 (inference) and kept nothing "
              "for a backward");
  const bool recompute = save == kSaveRecompute;
  if (recompute) {
    TORCH_CHECK(saved_.dim() == 2 && saved_.size(0) == lif_checkpoint_rows(x_.size(0)) &&
                    saved_.size(1) == x_.size(1) && saved_.scalar_type() == params_.scalar_type() &&
                    saved_.device() == x_.device(),
                "lif_bwd (CUDA kernel, save=1): `saved` must be the V checkpoints written by the CUDA "
                "lif_fwd with save=1, [", lif_checkpoint_rows(x_.size(0)), ", ", x_.size(1), "] ",
                params_.scalar_type(), ", got ", saved_.sizes(), " ", saved_.scalar_type());
  } else {
    TORCH_CHECK(saved_.sizes() == x_.sizes() && saved_.scalar_type() == x_.scalar_type() &&
                    saved_.device() == x_.device(),
                "lif_bwd (CUDA kernel): `saved` must be the [T, N] state written by the CUDA lif_fwd, got ",
                saved_.sizes(), " ", saved_.scalar_type(), " (from another backend?)");
  }
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), params = params_.contiguous();
  Tensor gs = grad_s_.contiguous(), saved = saved_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor gx = at::empty_like(x), gv0 = at::empty_like(v0);
  Tensor grad_params = need_param_grad ? at::empty({3}, params.options()) : at::zeros({3}, params.options());
  Tensor workspace;
  LIFBwdArgs a{};
  a.dtype = dtype_of(x, "lif");
  a.T = T;
  a.N = N;
  a.grad_s = gs.const_data_ptr();
  a.grad_v_last = gvlast.defined() ? gvlast.const_data_ptr() : nullptr;
  a.grad_v_seq = gvseq.defined() ? gvseq.const_data_ptr() : nullptr;
  a.x = x.const_data_ptr();
  a.v0 = v0.const_data_ptr();
  a.params = params.const_data_ptr();
  a.mask = mask ? mask->const_data_ptr<bool>() : nullptr;
  a.saved = saved.const_data_ptr();
  a.grad_x = gx.mutable_data_ptr();
  a.grad_v0 = gv0.mutable_data_ptr();
  a.need_param_grad = need_param_grad;
  a.grad_params = grad_params.mutable_data_ptr();
  if (need_param_grad) {
    workspace = at::empty({std::max<int64_t>(lif_bwd_workspace_doubles(N, a.dtype), 3)},
                          x.options().dtype(at::kDouble));
    a.workspace = workspace.mutable_data_ptr<double>();
  }
  a.flags = make_flags(sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
  a.recompute = recompute;
  a.v0_uniform = uniform_v0(v0, N);  // the kernel writes NaN into gv0 [1]
  C10_CUDA_CHECK(static_cast<cudaError_t>(lif_bwd_launch(a, c10::cuda::getCurrentCUDAStream().stream())));
  return {gx, gv0, grad_params};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CUDA, m) {
  m.impl("lif_fwd", &lif_fwd_cuda);
  m.impl("lif_bwd", &lif_bwd_cuda);
}

}  // namespace cuda
}  // namespace snn_fast
