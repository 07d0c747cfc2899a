// Autograd of the C++ LIF op (snn_fast::lif_fwd on CPU and CUDA, every save mode), in C++.
//
// Why C++: a Python torch.autograd.Function costs ~35 us of host time per forward+backward (its apply,
// the context, the Python backward), more than the CPU kernels take at small sizes and far more than a
// GPU kernel of a small layer. Here the forward is one dispatcher call and the backward runs without
// Python. torch.compile traces through this kernel with the ops' registered fakes (as it does for
// torchvision's C++ autograd ops). The backward is the contract of snn_fast/ops/lif/function.py:
// no gradient for s means zeros, the v_seq placeholder's gradient (return_v_seq false) means none,
// and the parameter gradients are computed only when params needs one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../common/lif_checks.h"
#include "packed_flags.h"

namespace snn_fast {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         const c10::optional<Tensor>&, int64_t, bool, double,
                                                         bool, bool, double, bool, int64_t, bool, int64_t);
using BwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const c10::optional<Tensor>&,
                                                  const c10::optional<Tensor>&, const Tensor&, const Tensor&,
                                                  const Tensor&, const c10::optional<Tensor>&, const Tensor&,
                                                  const Tensor&, const c10::optional<Tensor>&,
                                                  const c10::optional<Tensor>&, int64_t, bool, double, bool, bool,
                                                  double, bool, int64_t, int64_t, bool);

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("snn_fast::lif_fwd", "").typed<FwdSig>();
  return op;
}

const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("snn_fast::lif_bwd", "").typed<BwdSig>();
  return op;
}

using namespace autograd_flags;

struct LIFFunction : public torch::autograd::Function<LIFFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& v0, const Tensor& params,
                               const c10::optional<Tensor>& mask, int64_t sg, bool hard_reset, double v_reset,
                               bool decay_input, bool detach_reset, double kappa, bool strict, int64_t timing,
                               bool return_v_seq, int64_t save) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [s, v_last, v_seq, saved] = fwd_op().call(x, v0, params, mask, sg, hard_reset, v_reset, decay_input,
                                                   detach_reset, kappa, strict, timing, return_v_seq, save);
    ctx->save_for_backward({x, v0, params, mask.has_value() ? *mask : Tensor(), saved, s});
    // The flags as one integer and two floats (packed_flags.h says why).
    ctx->saved_data["flags"] = pack_flags(sg, hard_reset, decay_input, detach_reset, strict, timing, return_v_seq,
                                          save);
    ctx->saved_data["v_reset"] = v_reset;
    ctx->saved_data["kappa"] = kappa;
    ctx->mark_non_differentiable({saved});
    ctx->set_materialize_grads(false);
    return {s, v_last, v_seq, saved};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sv = ctx->get_saved_variables();
    const Tensor &x = sv[0], &v0 = sv[1], &params = sv[2], &saved = sv[4], &s = sv[5];
    const c10::optional<Tensor> mask = sv[3].defined() ? c10::optional<Tensor>(sv[3]) : c10::nullopt;
    Tensor gs = grads[0];
    // The backward kernels have no backward of their own: under create_graph=True their result would
    // silently carry no graph (a second gradient of 0). Refuse instead.
    TORCH_CHECK_NOT_IMPLEMENTED(
        !(at::GradMode::is_enabled() && (requires_grad(gs) || requires_grad(grads[1]) || requires_grad(grads[2]) ||
                                         requires_grad(x) || requires_grad(v0) || requires_grad(params))),
        "double backward (create_graph=True) through the fused LIF kernels is not supported; "
        "use backend='reference' for higher-order gradients");
    if (!gs.defined()) gs = at::zeros_like(x);
    c10::optional<Tensor> gvl, gvs;
    if (grads[1].defined()) gvl = grads[1];
    // without return_v_seq, v_seq is an empty placeholder: a gradient for it carries nothing
    const auto& d = ctx->saved_data;
    const int64_t f = d.at("flags").toInt();
    if (grads[2].defined() && flag(f, kReturnVSeq)) gvs = grads[2];
    const bool need_param_grad = ctx->needs_input_grad(2);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gx, gv0, gp] = bwd_op().call(
        gs.contiguous(), gvl, gvs, x, v0, params, mask, saved, s, c10::nullopt, c10::nullopt, surrogate_of(f),
        flag(f, kHardReset), d.at("v_reset").toDouble(), flag(f, kDecayInput), flag(f, kDetachReset),
        d.at("kappa").toDouble(), flag(f, kStrict), timing_of(f), save_of(f),
        need_param_grad);
    // one entry per forward argument: x, v0, params, then none for the mask, the 8 flags,
    // return_v_seq and save. No grad_v0 where v0 needs none: a [1] start's is NaN (lif_checks.h), and
    // anomaly mode checks every output for NaN, used or not.
    return {gx, ctx->needs_input_grad(1) ? gv0 : Tensor(), need_param_grad ? gp : Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> lif_fwd_autograd(const Tensor& x, const Tensor& v0, const Tensor& params,
                                                            const c10::optional<Tensor>& mask, int64_t sg,
                                                            bool hard_reset, double v_reset, bool decay_input,
                                                            bool detach_reset, double kappa, bool strict,
                                                            int64_t timing, bool return_v_seq, int64_t save) {
  refuse_uniform_v0_grad(x, v0, "lif");  // v0 [1]: one start for every neuron (lif_checks.h)
  auto out = LIFFunction::apply(x, v0, params, mask, sg, hard_reset, v_reset, decay_input, detach_reset, kappa,
                                strict, timing, return_v_seq, save);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, Autograd, m) { m.impl("lif_fwd", &lif_fwd_autograd); }

}  // namespace snn_fast
