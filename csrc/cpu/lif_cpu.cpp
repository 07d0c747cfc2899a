// Fused LIF forward/backward on the CPU, the torch-facing ops. The kernels (lif_cpu_kernels_impl.h)
// run the whole T loop per block of neurons, parallel over blocks (a shared queue hands them to
// at::parallel_for's threads), the inner loop over contiguous neurons vectorised by the compiler.
//
// Bytes per element of [T, N] (storage dtype size b), the 5-pass floor of docs/spec.md §10:
//   forward   read x, write s                         2b   (+ b for v_seq when asked)
//   backward  read x, read grad_s, write grad_x       3b   (+ 1 B mask in noisy mode)
// The forward saves nothing: the backward re-runs the forward for one block of neurons into a
// scratch (T × block × 4 B, sized to stay in L2) and walks it back. Saving H instead would cost 2b
// more per element (a write and a read), i.e. 7 passes instead of 5. Large outputs come from the
// output cache (output_cache.h), which keeps page faults out of the step.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/lif_checks.h"
#include "lif_cpu_kernels.h"
#include "lif_params.h"
#include "output_cache.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace {

using at::Tensor;

// save: kSaveSgArg writes D = H − θ of every step into `saved`, [T, N] in params' dtype; every other
// mode saves nothing (the backward re-runs the forward).
std::tuple<Tensor, Tensor, Tensor, Tensor> lif_fwd_cpu(const Tensor& x_, const Tensor& v0_, const Tensor& params,
                                                       const c10::optional<Tensor>& mask_, int64_t sg,
                                                       bool hard_reset, double v_reset, bool decay_input,
                                                       bool detach_reset, double kappa, bool strict,
                                                       int64_t timing, bool return_v_seq, int64_t save) {
  check_lif_args(x_, v0_, params, mask_, sg, c10::DeviceType::CPU, "CPU kernel");
  check_save(save, "CPU kernel", true);
  check_reset_timing(timing);
  TORCH_CHECK(save != kSaveSgArg || (!strict && timing == kResetAfterFire),
              "lif_fwd (CPU kernel): save=3 (D for a user's surrogate) runs strict_threshold=false and ",
              "reset_timing=0 only");
  const bool keep_arg = save == kSaveSgArg;
  Tensor x = x_.contiguous(), v0 = v0_.contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor s = empty_cpu_cached(x.sizes(), x.scalar_type()), v_last = empty_cpu_cached({N}, x.scalar_type());
  Tensor v_seq = return_v_seq ? empty_cpu_cached(x.sizes(), x.scalar_type()) : at::empty({0}, x.options());
  Tensor saved = keep_arg ? empty_cpu_cached(x.sizes(), params.scalar_type()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
    cpu_lif::lif_fwd_kernel<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(),
                              mask ? mask->const_data_ptr<bool>() : nullptr, s.mutable_data_ptr<scalar_t>(),
                              v_last.mutable_data_ptr<scalar_t>(),
                              return_v_seq ? v_seq.mutable_data_ptr<scalar_t>() : nullptr, T, N, p,
                              keep_arg ? saved.mutable_data_ptr<acc_t>() : nullptr, uniform_v0(v0, N));
  });
  return {s, v_last, v_seq, saved};
}

// The backward of a built-in surrogate: re-runs the forward per block of neurons (lif_bwd_cpu).
std::tuple<Tensor, Tensor, Tensor> lif_bwd_builtin(const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_,
                                                   const c10::optional<Tensor>& gvseq_, const Tensor& x_,
                                                   const Tensor& v0_, const Tensor& params,
                                                   const c10::optional<Tensor>& mask_, int64_t sg, bool hard_reset,
                                                   double v_reset, bool decay_input, bool detach_reset, double kappa,
                                                   bool strict, int64_t timing, bool need_param_grad) {
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), gs = grad_s_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor gx = empty_cpu_cached(x.sizes(), x.scalar_type()), gv0 = empty_cpu_cached_grad_v0(v0, uniform_v0(v0, N));
  std::vector<double> pg(3, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
    const scalar_t* gvl = gvlast.defined() ? gvlast.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gvs = gvseq.defined() ? gvseq.const_data_ptr<scalar_t>() : nullptr;
    cpu_lif::lif_bwd_kernel<scalar_t, acc_t>(int(sg), gs.const_data_ptr<scalar_t>(), gvl, gvs, x.const_data_ptr<scalar_t>(),
                                   v0.const_data_ptr<scalar_t>(), mask ? mask->const_data_ptr<bool>() : nullptr,
                                   gx.mutable_data_ptr<scalar_t>(), gv0.mutable_data_ptr<scalar_t>(), T, N, p,
                                   need_param_grad, pg.data(), uniform_v0(v0, N));
  });
  Tensor grad_params = cpu_tensor_of(pg, params.scalar_type());
  return {gx, gv0, grad_params};
}

// A user's surrogate (snn_fast/ops/lif/custom_cpu.py), around its torch g′ (bytes per element):
//   lif_fwd, save=3  the forward, also writing D = H − θ in acc_t (save="state")      + a
//   lif_sg_arg       read x (and s under a noise mask), write D (save="recompute")    b + a (+ b)
//   lif_bwd, sg_grad the backward above with g′ (and ∂g/∂α) read from [T, N] acc_t buffers:
//                    + a (+ a with parameter gradients) (+ b: s under a noise mask)
// The surrogate id plays no part there: the flags alone pick the kernel.

// s under a noise mask: the forward's emitted values, [T, N] like x.
void check_given_s(const Tensor& x, const c10::optional<Tensor>& mask, const Tensor& s) {
  if (mask.has_value())
    TORCH_CHECK(s.sizes() == x.sizes() && s.scalar_type() == x.scalar_type() && s.device() == x.device(),
                "lif (user surrogate): s must match x in shape, dtype and device under a noise mask");
}

void check_given_buf(const Tensor& x, const Tensor& params, const Tensor& b, const char* name) {
  TORCH_CHECK(b.sizes() == x.sizes() && b.scalar_type() == params.scalar_type() && b.device() == x.device(),
              "lif_bwd: ", name, " must be [T, N] like x in params' dtype (", params.scalar_type(),
              "), got ", b.sizes(), " ", b.scalar_type());
}

Tensor lif_sg_arg_cpu(const Tensor& x_, const Tensor& v0_, const Tensor& params, const c10::optional<Tensor>& mask,
                      const Tensor& s_, bool hard_reset, double v_reset, bool decay_input) {
  check_lif_args(x_, v0_, params, mask, 0, c10::DeviceType::CPU, "CPU kernel");
  check_given_s(x_, mask, s_);
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), s;
  if (mask.has_value()) s = s_.contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor d = empty_cpu_cached(x.sizes(), params.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_sg_arg_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, 0, hard_reset, v_reset, decay_input, false, 0.0);
    cpu_lif::lif_sg_arg_kernel<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(),
                                                s.defined() ? s.const_data_ptr<scalar_t>() : nullptr,
                                                d.mutable_data_ptr<acc_t>(), T, N, p, uniform_v0(v0, N));
  });
  return d;
}

std::tuple<Tensor, Tensor, Tensor> lif_bwd_given(
    const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_, const c10::optional<Tensor>& gvseq_, const Tensor& x_,
    const Tensor& v0_, const Tensor& params, const c10::optional<Tensor>& mask_, const Tensor& s_,
    const Tensor& sg_grad_, const c10::optional<Tensor>& sg_dalpha_, bool hard_reset, double v_reset,
    bool decay_input, bool detach_reset, double kappa, bool need_param_grad) {
  check_given_s(x_, mask_, s_);
  check_given_buf(x_, params, sg_grad_, "sg_grad");
  TORCH_CHECK(!need_param_grad || sg_dalpha_.has_value(),
              "lif_bwd: need_param_grad with sg_grad needs sg_dalpha (zeros for a surrogate without a width)");
  if (sg_dalpha_.has_value()) check_given_buf(x_, params, *sg_dalpha_, "sg_dalpha");
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), gs = grad_s_.contiguous(), gp = sg_grad_.contiguous();
  Tensor gvlast, gvseq, s, dga;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  if (need_param_grad) dga = sg_dalpha_->contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) {
    mask = mask_->contiguous();
    s = s_.contiguous();
  }
  const int64_t T = x.size(0), N = x.size(1);
  Tensor gx = empty_cpu_cached(x.sizes(), x.scalar_type()), gv0 = empty_cpu_cached_grad_v0(v0, uniform_v0(v0, N));
  std::vector<double> pg(3, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_bwd_given_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, 0, hard_reset, v_reset, decay_input, detach_reset, kappa);
    cpu_lif::Given<scalar_t, acc_t> given{gp.const_data_ptr<acc_t>(),
                                          dga.defined() ? dga.const_data_ptr<acc_t>() : nullptr,
                                          s.defined() ? s.const_data_ptr<scalar_t>() : nullptr};
    const scalar_t* gvl = gvlast.defined() ? gvlast.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gvs = gvseq.defined() ? gvseq.const_data_ptr<scalar_t>() : nullptr;
    cpu_lif::lif_bwd_given_kernel<scalar_t, acc_t>(
        given, gs.const_data_ptr<scalar_t>(), gvl, gvs, x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(),
        mask ? mask->const_data_ptr<bool>() : nullptr, gx.mutable_data_ptr<scalar_t>(),
        gv0.mutable_data_ptr<scalar_t>(), T, N, p, need_param_grad, pg.data(), uniform_v0(v0, N));
  });
  Tensor grad_params = cpu_tensor_of(pg, params.scalar_type());
  return {gx, gv0, grad_params};
}

// A user's surrogate compiled to C++ (cpu_lif::NativeBwdFn): the built-in backward's walk with that
// surrogate inline, from a library built on this machine; no buffer of g′. Bytes as the built-in's.
std::tuple<Tensor, Tensor, Tensor> lif_bwd_native_cpu(const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_,
                                                      const c10::optional<Tensor>& gvseq_, const Tensor& x_,
                                                      const Tensor& v0_, const Tensor& params, int64_t kernel,
                                                      int64_t abi, bool hard_reset, double v_reset, bool decay_input,
                                                      bool detach_reset, double kappa, bool need_param_grad) {
  check_lif_args(x_, v0_, params, c10::nullopt, 0, c10::DeviceType::CPU, "CPU kernel");
  check_lif_bwd_args(grad_s_, gvlast_, gvseq_, x_, v0_);
  TORCH_CHECK(kernel != 0, "lif_bwd_native: kernel is a null address");
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), gs = grad_s_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor gx = empty_cpu_cached(x.sizes(), x.scalar_type()), gv0 = empty_cpu_cached_grad_v0(v0, uniform_v0(v0, N));
  std::vector<double> pg(3, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_bwd_native_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr int64_t want = cpu_lif::native_abi_tag<scalar_t, acc_t>();
    TORCH_CHECK(abi == want, "lif_bwd_native: the compiled surrogate's library has ABI tag ", abi,
                ", this build expects ", want, " for x's dtype ", x.scalar_type(),
                " (a library for another dtype, or built from other headers)");
    auto p = make_params<acc_t>(params, 0, hard_reset, v_reset, decay_input, detach_reset, kappa);
    auto fn = reinterpret_cast<cpu_lif::NativeBwdFn<scalar_t, acc_t>>(static_cast<intptr_t>(kernel));
    fn(gs.const_data_ptr<scalar_t>(), gvlast.defined() ? gvlast.const_data_ptr<scalar_t>() : nullptr,
       gvseq.defined() ? gvseq.const_data_ptr<scalar_t>() : nullptr, x.const_data_ptr<scalar_t>(),
       v0.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gv0.mutable_data_ptr<scalar_t>(), T, N, p,
       need_param_grad, pg.data(), uniform_v0(v0, N));
  });
  Tensor grad_params = cpu_tensor_of(pg, params.scalar_type());
  return {gx, gv0, grad_params};
}

// lif_bwd: with sg_grad, the walk reads the given g′ (a user's surrogate); else the built-in one.
std::tuple<Tensor, Tensor, Tensor> lif_bwd_cpu(const Tensor& grad_s, const c10::optional<Tensor>& gvlast,
                                               const c10::optional<Tensor>& gvseq, const Tensor& x,
                                               const Tensor& v0, const Tensor& params,
                                               const c10::optional<Tensor>& mask, const Tensor& /*saved*/,
                                               const Tensor& s, const c10::optional<Tensor>& sg_grad,
                                               const c10::optional<Tensor>& sg_dalpha, int64_t sg, bool hard_reset,
                                               double v_reset, bool decay_input, bool detach_reset, double kappa,
                                               bool strict, int64_t timing, int64_t save, bool need_param_grad) {
  check_lif_args(x, v0, params, mask, sg, c10::DeviceType::CPU, "CPU kernel");
  check_lif_bwd_args(grad_s, gvlast, gvseq, x, v0);
  check_save(save, "CPU kernel", true);
  check_reset_timing(timing);
  if (sg_grad.has_value()) {
    TORCH_CHECK(!strict && timing == kResetAfterFire, "lif_bwd (CPU kernel): sg_grad (a user's surrogate) runs ",
                "strict_threshold=false and reset_timing=0 only");
    return lif_bwd_given(grad_s, gvlast, gvseq, x, v0, params, mask, s, *sg_grad, sg_dalpha, hard_reset, v_reset,
                         decay_input, detach_reset, kappa, need_param_grad);
  }
  TORCH_CHECK(!sg_dalpha.has_value(), "lif_bwd: sg_dalpha is given without sg_grad");
  return lif_bwd_builtin(grad_s, gvlast, gvseq, x, v0, params, mask, sg, hard_reset, v_reset, decay_input,
                         detach_reset, kappa, strict, timing, need_param_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
  m.impl("lif_sg_arg", &lif_sg_arg_cpu);
  m.impl("lif_bwd_native", &lif_bwd_native_cpu);
}

}  // namespace snn_fast
