// Fused LIF forward/backward on the CPU, the torch-facing ops. The kernels (lif_cpu_kernels_impl.h)
// run the whole T loop per block of neurons, parallel over blocks (a shared queue hands them to
// at::parallel_for's threads), the inner loop over contiguous neurons vectorised by the compiler.
//
// Bytes per element of [T, N] (storage dtype size b), the 5-pass floor of BENCHMARKS.md:
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
#include "output_cache.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace {

using at::Tensor;

template <typename acc_t>
LIFParams<acc_t> make_params(const Tensor& params, int64_t sg, bool hard_reset, double v_reset,
                             bool decay_input, bool detach_reset, double kappa, int64_t mode) {
  auto p = params.accessor<acc_t, 1>();
  LIFParams<acc_t> r;
  r.k = p[0];
  r.theta = p[1];
  r.alpha = p[2];
  r.vr = hard_reset ? acc_t(v_reset) : acc_t(0);
  r.kappa = acc_t(kappa);
  r.sg = int(sg);
  r.hard_reset = hard_reset;
  r.decay_input = decay_input;
  r.detach_reset = detach_reset;
  set_mode(r, int(mode));
  return r;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lif_fwd_cpu(const Tensor& x_, const Tensor& v0_, const Tensor& params,
                                                       const c10::optional<Tensor>& mask_, int64_t sg,
                                                       bool hard_reset, double v_reset, bool decay_input,
                                                       bool detach_reset, double kappa, bool return_v_seq,
                                                       int64_t mode) {
  check_lif_args(x_, v0_, params, mask_, sg, c10::DeviceType::CPU, "CPU kernel");
  check_lif_mode(mode);
  Tensor x = x_.contiguous(), v0 = v0_.contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor s = empty_cpu_cached(x.sizes(), x.scalar_type()), v_last = at::empty_like(v0);
  Tensor v_seq = return_v_seq ? empty_cpu_cached(x.sizes(), x.scalar_type()) : at::empty({0}, x.options());
  Tensor saved = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, mode);
    cpu_lif::lif_fwd_kernel<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(),
                              mask ? mask->const_data_ptr<bool>() : nullptr, s.mutable_data_ptr<scalar_t>(),
                              v_last.mutable_data_ptr<scalar_t>(),
                              return_v_seq ? v_seq.mutable_data_ptr<scalar_t>() : nullptr, T, N, p);
  });
  return {s, v_last, v_seq, saved};
}

std::tuple<Tensor, Tensor, Tensor> lif_bwd_cpu(const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_,
                                               const c10::optional<Tensor>& gvseq_, const Tensor& x_,
                                               const Tensor& v0_, const Tensor& params,
                                               const c10::optional<Tensor>& mask_, const Tensor& /*saved*/,
                                               const Tensor& /*s*/, int64_t sg, bool hard_reset, double v_reset,
                                               bool decay_input, bool detach_reset, double kappa,
                                               bool need_param_grad, int64_t mode) {
  check_lif_args(x_, v0_, params, mask_, sg, c10::DeviceType::CPU, "CPU kernel");
  check_lif_mode(mode);
  check_lif_bwd_args(grad_s_, gvlast_, gvseq_, x_, v0_);
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), gs = grad_s_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor gx = empty_cpu_cached(x.sizes(), x.scalar_type()), gv0 = at::empty_like(v0);
  std::vector<double> pg(3, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, mode);
    const scalar_t* gvl = gvlast.defined() ? gvlast.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* gvs = gvseq.defined() ? gvseq.const_data_ptr<scalar_t>() : nullptr;
    cpu_lif::lif_bwd_kernel<scalar_t, acc_t>(int(sg), gs.const_data_ptr<scalar_t>(), gvl, gvs, x.const_data_ptr<scalar_t>(),
                                   v0.const_data_ptr<scalar_t>(), mask ? mask->const_data_ptr<bool>() : nullptr,
                                   gx.mutable_data_ptr<scalar_t>(), gv0.mutable_data_ptr<scalar_t>(), T, N, p,
                                   need_param_grad, pg.data());
  });
  Tensor grad_params = at::tensor(pg, params.options().dtype(at::kDouble)).to(params.scalar_type());
  return {gx, gv0, grad_params};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace snn_fast
