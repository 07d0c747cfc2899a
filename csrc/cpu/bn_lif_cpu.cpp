// Fused batch norm + LIF on the CPU (docs/spec.md §12), the torch-facing ops: bn_lif_stats,
// bn_lif_fwd, bn_lif_bwd (schemas in csrc/ops.cpp; kernels in bn_lif_cpu_kernels_impl.h).
//
// Passes over [T, N] in the storage dtype (b bytes per element; snn_fast/ops/bn_lif/memory.py counts
// them, against 13 for batch norm followed by the LIF op):
//   forward   bn_lif_stats: read x;  bn_lif_fwd: read x, write s                        3
//   backward  the walk: read x, read ∂L/∂S, write a·∂L/∂X' (its re-run keeps x − m in L2); then,
//             training only, the batch-statistics pass: read a·∂L/∂X', x, write ∂L/∂x      6 (eval: 3)
//             Channel by channel (bn_lif_cpu_kernels.h backward_by_channel: long runs, a
//             channel's elements within the cache) that pass runs on a channel right after its
//             walk, from cache: the backward reads x and ∂L/∂S and writes ∂L/∂x once          3
// Nothing is saved between forward and backward: the backward re-runs the forward per block.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/bn_lif_checks.h"
#include "../common/lif_checks.h"
#include "bn_lif_cpu_kernels.h"
#include "lif_params.h"
#include "output_cache.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace {

using at::Tensor;

template <typename acc_t>
LIFParams<acc_t> bn_make_params(const Tensor& params, int64_t sg, bool hard_reset, double v_reset, bool decay_input,
                                bool detach_reset, double kappa, bool strict, int64_t timing) {
  // The kernels run the reset after the spike only (bn_lif_cpu_kernels_impl.h kAfter); the Python
  // routing sends the other timings to the reference.
  check_reset_timing(timing, "bn_lif");
  TORCH_CHECK(timing == kResetAfterFire, "bn_lif (CPU kernel): reset_timing must be 0 (after the spike), got ",
              timing, "; backend='reference' runs the delayed and no-reset timings");
  return make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict);
}

// gain of the normalised input: α_tdBN·θ (tdBN, docs/spec.md §7.1) or 1 (plain batch norm).
template <typename acc_t>
acc_t bn_gain(double tdbn_alpha, acc_t theta) {
  return tdbn_alpha > 0 ? acc_t(tdbn_alpha) * theta : acc_t(1);
}

// a_c = weight_c·(rstd_c·gain), the scale of the charge's input, [C] in acc_t.
template <typename acc_t>
std::vector<acc_t> bn_scale(const Tensor& weight, const Tensor& rstd, acc_t gain) {
  const int64_t C = weight.numel();
  auto w = weight.accessor<acc_t, 1>();
  auto r = rstd.accessor<acc_t, 1>();
  std::vector<acc_t> a(C);
  for (int64_t c = 0; c < C; ++c) a[c] = w[c] * (r[c] * gain);
  return a;
}

std::tuple<Tensor, Tensor, Tensor> bn_lif_stats_cpu(const Tensor& x_, int64_t C, int64_t inner, double eps) {
  TORCH_CHECK(x_.dim() == 2 && x_.device().is_cpu(), "bn_lif_stats: x must be a [T, N] CPU tensor");
  TORCH_CHECK(C >= 1 && inner >= 1 && x_.size(1) % (C * inner) == 0, "bn_lif_stats: x's N = ", x_.size(1),
              " is not a multiple of C·inner = ", C, "·", inner);
  TORCH_CHECK(x_.size(0) * (x_.size(1) / C) > 1,
              "bn_lif_stats: expected more than 1 value per channel (the unbiased variance), x is ", x_.sizes());
  Tensor x = x_.contiguous();
  std::vector<double> mean(C), var(C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_lif_stats_cpu", [&] {
    cpu_bn_lif::bn_stats_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), C, inner, mean.data(),
                                          var.data());
  });
  const double n = double(x.size(0)) * double(x.size(1) / C);
  const auto opt = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  Tensor m = at::empty({C}, opt), r = at::empty({C}, opt), vu = at::empty({C}, opt);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "bn_lif_stats_cpu_out", [&] {
    scalar_t *pm = m.mutable_data_ptr<scalar_t>(), *pr = r.mutable_data_ptr<scalar_t>(),
             *pv = vu.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {  // as csrc/cuda/bn_lif_kernels.cuh's bnlif_stats_finish
      pm[c] = scalar_t(mean[c]);
      pr[c] = scalar_t(1.0 / std::sqrt(var[c] + eps));
      pv[c] = scalar_t(var[c] * n / (n - 1));
    }
  });
  return {m, r, vu};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_lif_fwd_cpu(
    const Tensor& x_, const Tensor& v0_, const Tensor& params, const Tensor& weight_, const Tensor& bias_,
    const Tensor& mean_, const Tensor& rstd_, double tdbn_alpha, int64_t inner, bool /*batch_stats*/,
    const c10::optional<Tensor>& mask_, int64_t sg, bool hard_reset, double v_reset, bool decay_input, bool detach_reset, double kappa,
    bool strict, int64_t timing, bool return_v_seq,
    int64_t save) {
  check_lif_args(x_, v0_, params, mask_, sg, c10::DeviceType::CPU, "CPU kernel", "bn_lif");
  check_save(save, "CPU kernel", false, "bn_lif");
  const int64_t C = check_bn_args(x_, params, weight_, bias_, mean_, rstd_, inner);
  Tensor x = x_.contiguous(), v0 = v0_.contiguous();
  Tensor weight = weight_.contiguous(), bias = bias_.contiguous(), mean = mean_.contiguous(), rstd = rstd_.contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  Tensor s = empty_cpu_cached(x.sizes(), x.scalar_type()), v_last = empty_cpu_cached({N}, x.scalar_type());
  Tensor v_seq = return_v_seq ? empty_cpu_cached(x.sizes(), x.scalar_type()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_lif_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = bn_make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
    const auto a = bn_scale<acc_t>(weight, rstd, bn_gain<acc_t>(tdbn_alpha, p.theta));
    cpu_bn_lif::BNAffine<acc_t> f{a.data(), mean.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), C, inner,
                                  uniform_v0(v0, N)};
    cpu_bn_lif::bn_lif_fwd_kernel<scalar_t, acc_t>(
        x.const_data_ptr<scalar_t>(), v0.const_data_ptr<scalar_t>(), mask ? mask->const_data_ptr<bool>() : nullptr,
        s.mutable_data_ptr<scalar_t>(), v_last.mutable_data_ptr<scalar_t>(),
        return_v_seq ? v_seq.mutable_data_ptr<scalar_t>() : nullptr, T, N, p, f);
  });
  return {s, v_last, v_seq, at::empty({0}, x.options())};
}

// Returns (grad_x, grad_v0, grad_params [3], grad_weight [C], grad_bias [C]). With batch_stats, mean
// and rstd are the batch's own (training): grad_x includes their dependence on x. `walk(tag, args)`
// runs the LIF walk of the surrogate (built-in or compiled: bn_lif_bwd_kernel's arguments after its
// id) for the storage type of `tag` and returns whether it ran the batch-statistics pass too; the
// rest, around it, is the same for both.
template <typename Walk>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_lif_bwd_common(
    const Tensor& grad_s_, const c10::optional<Tensor>& gvlast_, const c10::optional<Tensor>& gvseq_,
    const Tensor& x_, const Tensor& v0_, const Tensor& params, const Tensor& weight_, const Tensor& bias_,
    const Tensor& mean_, const Tensor& rstd_, double tdbn_alpha, int64_t inner, bool batch_stats,
    const c10::optional<Tensor>& mask_, int64_t sg, bool hard_reset, double v_reset, bool decay_input,
    bool detach_reset, double kappa, bool strict, int64_t timing, bool need_param_grad, const Walk& walk) {
  const int64_t C = check_bn_args(x_, params, weight_, bias_, mean_, rstd_, inner);
  Tensor x = x_.contiguous(), v0 = v0_.contiguous(), gs = grad_s_.contiguous();
  Tensor weight = weight_.contiguous(), mean = mean_.contiguous(), rstd = rstd_.contiguous(), bias = bias_.contiguous();
  Tensor gvlast, gvseq;
  if (gvlast_.has_value()) gvlast = gvlast_->to(x.scalar_type()).contiguous();
  if (gvseq_.has_value() && gvseq_->numel() > 0) gvseq = gvseq_->to(x.scalar_type()).contiguous();
  c10::optional<Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t T = x.size(0), N = x.size(1);
  const bool uniform = uniform_v0(v0, N);
  Tensor gx = empty_cpu_cached(x.sizes(), x.scalar_type()), gv0 = empty_cpu_cached_grad_v0(v0, uniform);
  std::vector<double> pg(3, 0.0), gw(C), gb(C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bn_lif_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto p = bn_make_params<acc_t>(params, sg, hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing);
    const acc_t gain = bn_gain<acc_t>(tdbn_alpha, p.theta);
    const auto a = bn_scale<acc_t>(weight, rstd, gain);
    cpu_bn_lif::BNAffine<acc_t> f{a.data(), mean.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), C, inner,
                                  uniform};
    std::vector<double> sums(2 * C);  // [Σ∂X' | Σ∂X'·(x − m)] per channel
    const double n = double(T) * double(N / C);
    const cpu_bn_lif::BNBatchStats<acc_t> stats{rstd.const_data_ptr<acc_t>(), n};
    // With batch statistics the walk may also run their pass (channel by channel: dx_done)
    const bool dx_done = walk(
        scalar_t(), gs.const_data_ptr<scalar_t>(), gvlast.defined() ? gvlast.const_data_ptr<scalar_t>() : nullptr,
        gvseq.defined() ? gvseq.const_data_ptr<scalar_t>() : nullptr, x.const_data_ptr<scalar_t>(),
        v0.const_data_ptr<scalar_t>(), mask ? mask->const_data_ptr<bool>() : nullptr, gx.mutable_data_ptr<scalar_t>(),
        gv0.mutable_data_ptr<scalar_t>(), T, N, p, f, need_param_grad, pg.data(), sums.data(),
        batch_stats ? &stats : nullptr);
    // The per-channel algebra (docs/spec.md §12), in double: X' = (x − m)·a + b, a = w·rstd·gain.
    auto w = weight.accessor<acc_t, 1>();
    auto r = rstd.accessor<acc_t, 1>();
    double dgain = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double g1 = sums[C + c], rc = double(r[c]);
      gb[c] = sums[c];
      gw[c] = g1 * rc * double(gain);
      dgain += g1 * double(w[c]) * rc;
    }
    if (need_param_grad && tdbn_alpha > 0) pg[1] += tdbn_alpha * dgain;  // θ in the gain α·θ
    if (batch_stats && !dx_done) {  // the batch-statistics pass as a pass of its own
      std::vector<acc_t> coef(3 * C);
      for (int64_t c = 0; c < C; ++c)
        cpu_bn_lif::dx_coefficients<acc_t>(double(a[c]), double(r[c]), sums[c], sums[C + c], n, coef[c], coef[C + c],
                                           coef[2 * C + c]);
      cpu_bn_lif::bn_lif_dx_kernel<scalar_t, acc_t>(x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), T,
                                                    N, coef.data(), f);
    }
  });
  const auto pt = params.scalar_type();
  return {gx, gv0, cpu_tensor_of(pg, pt), cpu_tensor_of(gw, pt), cpu_tensor_of(gb, pt)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_lif_bwd_cpu(
    const Tensor& grad_s, const c10::optional<Tensor>& gvlast, const c10::optional<Tensor>& gvseq, const Tensor& x,
    const Tensor& v0, const Tensor& params, const Tensor& weight, const Tensor& bias, const Tensor& mean,
    const Tensor& rstd, double tdbn_alpha, int64_t inner, bool batch_stats, const c10::optional<Tensor>& mask,
    const Tensor& /*saved*/, const Tensor& /*s*/, int64_t sg, bool hard_reset, double v_reset, bool decay_input,
    bool detach_reset, double kappa, bool strict, int64_t timing, int64_t save, bool need_param_grad) {
  check_lif_args(x, v0, params, mask, sg, c10::DeviceType::CPU, "CPU kernel", "bn_lif");
  check_lif_bwd_args(grad_s, gvlast, gvseq, x, v0, "bn_lif");
  check_save(save, "CPU kernel", false, "bn_lif");
  return bn_lif_bwd_common(
      grad_s, gvlast, gvseq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, mask, sg,
      hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing, need_param_grad,
      [&](auto tag, auto... args) {
        using scalar_t = decltype(tag);
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        return cpu_bn_lif::bn_lif_bwd_kernel<scalar_t, acc_t>(int(sg), args...);
      });
}

// A user's surrogate compiled to C++ (cpu_bn_lif::NativeBnBwdFn): the built-in backward's walk with that
// surrogate inline, from a library built on this machine. Bytes as the built-in's.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bn_lif_bwd_native_cpu(
    const Tensor& grad_s, const c10::optional<Tensor>& gvlast, const c10::optional<Tensor>& gvseq, const Tensor& x,
    const Tensor& v0, const Tensor& params, const Tensor& weight, const Tensor& bias, const Tensor& mean,
    const Tensor& rstd, double tdbn_alpha, int64_t inner, bool batch_stats, int64_t kernel, int64_t abi,
    bool hard_reset, double v_reset, bool decay_input, bool detach_reset, double kappa, bool strict,
    bool need_param_grad) {
  check_lif_args(x, v0, params, c10::nullopt, 0, c10::DeviceType::CPU, "CPU kernel", "bn_lif");
  check_lif_bwd_args(grad_s, gvlast, gvseq, x, v0, "bn_lif");
  TORCH_CHECK(kernel != 0, "bn_lif_bwd_native: kernel is a null address");
  // The walk does not read p.sg: 0 (a built-in id) only passes bn_make_params's check.
  return bn_lif_bwd_common(
      grad_s, gvlast, gvseq, x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, c10::nullopt, 0,
      hard_reset, v_reset, decay_input, detach_reset, kappa, strict, kResetAfterFire, need_param_grad,
      [&](auto tag, auto gs, auto gvl, auto gvs, auto xp, auto v0p, const bool* /*mask*/, auto... rest) {
        using scalar_t = decltype(tag);
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        constexpr int64_t want = cpu_bn_lif::bn_native_abi_tag<scalar_t, acc_t>();
        TORCH_CHECK(abi == want, "bn_lif_bwd_native: the compiled surrogate's library has ABI tag ", abi,
                    ", this build expects ", want, " for x's dtype ", x.scalar_type(),
                    " (a library for another dtype, or built from other headers)");
        auto fn = reinterpret_cast<cpu_bn_lif::NativeBnBwdFn<scalar_t, acc_t>>(static_cast<intptr_t>(kernel));
        return fn(gs, gvl, gvs, xp, v0p, rest...);
      });
}

bool bn_lif_cpu_backward_by_channel(int64_t T, int64_t N, int64_t C, int64_t inner, int64_t element_size,
                                    bool grad_v_seq, bool mask) {
  TORCH_CHECK(T >= 1 && C >= 1 && inner >= 1 && N % (C * inner) == 0 && element_size >= 1,
              "bn_lif_cpu_backward_by_channel: need T, C, inner, element_size >= 1 and N a multiple of C·inner");
  return cpu_bn_lif::backward_by_channel(T, N, C, inner, element_size, grad_v_seq, mask);
}

}  // namespace

// No tensor arguments: CompositeImplicitAutograd, as output_cache.cpp's introspection ops.
TORCH_LIBRARY_IMPL(snn_fast, CompositeImplicitAutograd, m) {
  m.impl("bn_lif_cpu_backward_by_channel", &bn_lif_cpu_backward_by_channel);
}

TORCH_LIBRARY_IMPL(snn_fast, CPU, m) {
  m.impl("bn_lif_stats", &bn_lif_stats_cpu);
  m.impl("bn_lif_fwd", &bn_lif_fwd_cpu);
  m.impl("bn_lif_bwd", &bn_lif_bwd_cpu);
  m.impl("bn_lif_bwd_native", &bn_lif_bwd_native_cpu);
}

}  // namespace snn_fast
