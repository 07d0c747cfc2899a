// The LIF ops' scalar arguments into lif_step.h's LIFParams, on the CPU: shared by the LIF op
// (lif_cpu.cpp) and the fused batch-norm + LIF op (bn_lif_cpu.cpp), so the two read them alike.
#pragma once

#include <ATen/core/Tensor.h>

#include "snn_fast/lif_step.h"

namespace snn_fast {

// params [3] = (k, θ, α) in acc_t on the CPU.
template <typename acc_t>
LIFParams<acc_t> make_params(const at::Tensor& params, int64_t sg, bool hard_reset, double v_reset, bool decay_input,
                             bool detach_reset, double kappa, bool strict = false,
                             int64_t timing = kResetAfterFire) {
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
  set_firing(r, strict, int(timing));
  return r;
}

}  // namespace snn_fast
