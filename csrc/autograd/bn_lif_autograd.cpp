// Autograd of the C++ fused batch-norm + LIF op (snn_fast::bn_lif_fwd on CPU and CUDA), in C++.
//
// Why C++: as for lif_fwd (lif_autograd.cpp), a Python torch.autograd.Function costs host time on
// every layer and step. In SpikingJelly's spiking ResNet-18 at 32² (T 4, batch 4) it was ~55 µs per
// forward and ~80 µs per backward of each of the nine fused layers (torch profiler, 1 thread), more
// than the batch norm it replaced took. The backward is the contract of snn_fast/ops/bn_lif/function.py
// (_backward): no gradient for s means zeros, the v_seq placeholder's gradient (return_v_seq false)
// means none, and the parameter gradients are computed only when params needs one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../common/bn_lif_checks.h"
#include "../common/lif_checks.h"
#include "packed_flags.h"

namespace snn_fast {
namespace {

using at::Tensor;
using c10::optional;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
    int64_t, bool, const optional<Tensor>&, int64_t, bool, double, bool, bool, double, bool, int64_t, bool, int64_t);
using BwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const optional<Tensor>&, const optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, int64_t, bool, const optional<Tensor>&,
    const Tensor&, const Tensor&, int64_t, bool, double, bool, bool, double, bool, int64_t, int64_t, bool);

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("snn_fast::bn_lif_fwd", "").typed<FwdSig>();
  return op;
}

const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("snn_fast::bn_lif_bwd", "").typed<BwdSig>();
  return op;
}

using namespace autograd_flags;
constexpr int kBatch = kOpBit0;  // batch_stats

struct BNLIFFunction : public torch::autograd::Function<BNLIFFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& v0, const Tensor& params,
                               const Tensor& weight, const Tensor& bias, const Tensor& mean, const Tensor& rstd,
                               double tdbn_alpha, int64_t inner, bool batch_stats, const optional<Tensor>& mask,
                               int64_t sg, bool hard_reset, double v_reset, bool decay_input, bool detach_reset,
                               double kappa, bool strict, int64_t timing, bool return_v_seq, int64_t save) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [s, v_last, v_seq, saved] =
        fwd_op().call(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, mask, sg, hard_reset,
                      v_reset, decay_input, detach_reset, kappa, strict, timing, return_v_seq, save);
    ctx->save_for_backward(
        {x, v0, params, weight, bias, mean, rstd, mask.has_value() ? *mask : Tensor(), saved, s});
    ctx->saved_data["flags"] = pack_flags(sg, hard_reset, decay_input, detach_reset, strict, timing, return_v_seq,
                                          save) |
                               int64_t(batch_stats) << kBatch;
    ctx->saved_data["v_reset"] = v_reset;
    ctx->saved_data["kappa"] = kappa;
    ctx->saved_data["tdbn_alpha"] = tdbn_alpha;
    ctx->saved_data["inner"] = inner;
    ctx->mark_non_differentiable({saved});
    ctx->set_materialize_grads(false);
    return {s, v_last, v_seq, saved};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sv = ctx->get_saved_variables();
    const Tensor &x = sv[0], &v0 = sv[1], &params = sv[2], &weight = sv[3], &bias = sv[4], &mean = sv[5],
                 &rstd = sv[6], &saved = sv[8], &s = sv[9];
    const optional<Tensor> mask = sv[7].defined() ? optional<Tensor>(sv[7]) : c10::nullopt;
    Tensor gs = grads[0];
    // The backward kernels have no backward of their own: under create_graph=True their result would
    // silently carry no graph. Refuse instead (as lif_autograd.cpp and the Python autograd do).
    TORCH_CHECK_NOT_IMPLEMENTED(
        !(at::GradMode::is_enabled() && (requires_grad(gs) || requires_grad(grads[1]) || requires_grad(grads[2]) ||
                                         requires_grad(x) || requires_grad(v0) || requires_grad(params) ||
                                         requires_grad(weight) || requires_grad(bias))),
        "double backward (create_graph=True) through the fused BN-LIF kernels is not supported; "
        "use backend='reference' for higher-order gradients");
    if (!gs.defined()) gs = at::zeros_like(x);
    optional<Tensor> gvl, gvs;
    if (grads[1].defined()) gvl = grads[1];
    const auto& d = ctx->saved_data;
    const int64_t f = d.at("flags").toInt();
    // without return_v_seq, v_seq is an empty placeholder: a gradient for it carries nothing
    if (grads[2].defined() && flag(f, kReturnVSeq)) gvs = grads[2];
    const bool need_param_grad = ctx->needs_input_grad(2);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gv0, gp, gw, gb] =
        bwd_op().call(gs.contiguous(), gvl, gvs, x, v0, params, weight, bias, mean, rstd,
                      d.at("tdbn_alpha").toDouble(), d.at("inner").toInt(), flag(f, kBatch), mask, saved, s,
                      surrogate_of(f), flag(f, kHardReset), d.at("v_reset").toDouble(), flag(f, kDecayInput),
                      flag(f, kDetachReset), d.at("kappa").toDouble(), flag(f, kStrict), timing_of(f), save_of(f),
                      need_param_grad);
    // one entry per forward argument: x, v0, params, weight, bias, then none for mean, rstd, the three
    // batch-norm scalars, the mask, the 8 flags, return_v_seq and save
    variable_list out(21);
    out[0] = gx;
    if (ctx->needs_input_grad(1)) out[1] = gv0;  // a [1] start's is NaN: none where none is needed
    if (need_param_grad) out[2] = gp;
    out[3] = gw;
    out[4] = gb;
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> bn_lif_fwd_autograd(
    const Tensor& x, const Tensor& v0, const Tensor& params, const Tensor& weight, const Tensor& bias,
    const Tensor& mean, const Tensor& rstd, double tdbn_alpha, int64_t inner, bool batch_stats,
    const optional<Tensor>& mask, int64_t sg, bool hard_reset, double v_reset, bool decay_input, bool detach_reset,
    double kappa, bool strict, int64_t timing, bool return_v_seq, int64_t save) {
  refuse_uniform_v0_grad(x, v0, "bn_lif");  // v0 [1]: one start for every neuron (lif_checks.h)
  auto out = BNLIFFunction::apply(x, v0, params, weight, bias, mean, rstd, tdbn_alpha, inner, batch_stats, mask, sg,
                                  hard_reset, v_reset, decay_input, detach_reset, kappa, strict, timing, return_v_seq,
                                  save);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, Autograd, m) { m.impl("bn_lif_fwd", &bn_lif_fwd_autograd); }

}  // namespace snn_fast
