// Argument checks of the LIF ops (lif_fwd / lif_bwd, schemas in csrc/ops.cpp), shared by the CPU
// binding (csrc/cpu/lif_cpu.cpp) and the CUDA binding (csrc/cuda/lif_cuda_binding.cpp): one place
// for what the kernels assume, so the two cannot drift. Host only (torch headers). Each message
// names the argument. The Python layer (snn_fast/ops/lif/args.py) checks the user-facing
// arguments first; these guard the ops themselves, which torch.ops.snn_fast exposes directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "snn_fast/surrogate.h"

namespace snn_fast {

// The ops' `save` argument: what lif_fwd keeps in its fourth output for lif_bwd
// (snn_fast/ops/lif/contract.py SAVE, the same codes).
constexpr int64_t kSaveState = 0;      // the GPU kernels: H for every step (the CPU kernel: nothing;
                                       // bn_lif's CUDA kernels: as recompute, its backward reads x anyway)
constexpr int64_t kSaveRecompute = 1;  // the GPU kernels: V every K steps (the CPU kernel: nothing)
constexpr int64_t kSaveNone = 2;       // inference: nothing, no backward follows
constexpr int64_t kSaveSgArg = 3;      // the CPU kernel: D = H − θ of every step, for a user's g′

// `op` names the op in the messages ("lif", "bn_lif").
inline void check_save(int64_t save, const char* kernel, bool sg_arg_ok, const char* op = "lif") {
  TORCH_CHECK(save == kSaveState || save == kSaveRecompute || save == kSaveNone || (sg_arg_ok && save == kSaveSgArg),
              op, " (", kernel, "): unknown save mode ", save, " (0 state, 1 recompute, 2 none",
              sg_arg_ok ? ", 3 sg_arg)" : "; 3 sg_arg is the CPU kernel's)");
}

// v0 [1] for N > 1: one start for every neuron (v0=None or a float). The kernels read v0[0] for
// every neuron and compute no ∂L/∂v0: their grad_v0 is [1] and NaN, never a number (the autograds refuse
// such a v0 that requires a gradient). snn_fast/ops/lif/contract.py uniform_v0 is the same rule.
inline bool uniform_v0(const at::Tensor& v0, int64_t N) { return v0.numel() == 1 && N > 1; }

// The autograds' refusal of such a v0 that requires a gradient: where autograd records, not in forward
// (which autograd runs with grad mode off); sym sizes, for traced shapes too.
inline void refuse_uniform_v0_grad(const at::Tensor& x, const at::Tensor& v0, const char* op) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && v0.requires_grad() && x.dim() == 2 && v0.dim() == 1 &&
                v0.sym_size(0) == 1 && x.sym_size(1) > 1),
              op, ": v0 of one element starts all ", x.sym_size(1), " neurons and gets no gradient; "
              "pass v0 as [N] to differentiate it");
}

// x [T, N] with T >= 1, v0 [N] (or [1] for N > 1: uniform_v0) of x's dtype,
// params [3] in float32 (float64 for float64 x), a bool noise_mask shaped like x, all on x's device,
// which must be of type `device`; sg a known surrogate id. `kernel` names the backend in the device
// messages ("CPU kernel", "CUDA kernel").
inline void check_lif_args(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& params,
                           const c10::optional<at::Tensor>& mask, int64_t sg, c10::DeviceType device,
                           const char* kernel, const char* op = "lif") {
  TORCH_CHECK(x.dim() == 2, op, ": x must be [T, N], got ", x.dim(), " dims");
  TORCH_CHECK(x.size(0) >= 1, op, ": x needs T >= 1 time steps");
  TORCH_CHECK(v0.dim() == 1 && (v0.size(0) == x.size(1) || uniform_v0(v0, x.size(1))), op, ": v0 must be [N] = [",
              x.size(1), "] (or [1] for N > 1), got ", v0.sizes());
  TORCH_CHECK(v0.scalar_type() == x.scalar_type(), op, ": v0 dtype ", v0.scalar_type(), " != x dtype ",
              x.scalar_type());
  TORCH_CHECK(params.dim() == 1 && params.size(0) == 3, op, ": params must be [3] = (k, theta, alpha)");
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(params.scalar_type() == want, op, ": params must be ", want, " for x of ", x.scalar_type());
  TORCH_CHECK(x.device().type() == device && v0.device() == x.device() && params.device() == x.device(),
              op, " (", kernel, "): x, v0 and params must be on the same ", c10::DeviceTypeName(device),
              " device, got ", x.device(), ", ", v0.device(), ", ", params.device());
  TORCH_CHECK(sg >= 0 && sg < kNumSurrogates, op, ": unknown surrogate id ", sg);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->sizes() == x.sizes() && mask->device() == x.device(),
                op, ": noise_mask must be a bool tensor shaped like x on x's device, got ", mask->scalar_type(),
                " ", mask->sizes(), " on ", mask->device());
  }
}

// The ops' reset_timing (lif_step.h kResetAfterFire…; snn_fast/ops/lif/contract.py the same codes):
// the kernels run 0 (after the spike), 1 (delayed) and 2 (none); snnTorch's reset_delay=False form
// runs on the reference only.
inline void check_reset_timing(int64_t timing, const char* op = "lif") {
  TORCH_CHECK(timing >= 0 && timing <= 2, op, ": reset_timing must be 0 (after the spike), 1 (delayed) or 2 (none), ",
              "got ", timing);
}

// The backward's own inputs: grad_s like x; grad_v_last [N] and grad_v_seq [T, N] (or empty) when given.
inline void check_lif_bwd_args(const at::Tensor& grad_s, const c10::optional<at::Tensor>& grad_v_last,
                               const c10::optional<at::Tensor>& grad_v_seq, const at::Tensor& x,
                               const at::Tensor& v0, const char* op = "lif") {
  TORCH_CHECK(grad_s.sizes() == x.sizes() && grad_s.scalar_type() == x.scalar_type() &&
                  grad_s.device() == x.device(),
              op, "_bwd: grad_s must match x in shape, dtype and device");
  TORCH_CHECK(!grad_v_last.has_value() || (grad_v_last->dim() == 1 && grad_v_last->size(0) == x.size(1) &&
                                           grad_v_last->device() == x.device()),
              op, "_bwd: grad_v_last must be [N] = [", x.size(1), "] on x's device, got ",
              grad_v_last.has_value() ? grad_v_last->sizes() : at::IntArrayRef{});
  TORCH_CHECK(!grad_v_seq.has_value() || grad_v_seq->numel() == 0 ||
                  (grad_v_seq->sizes() == x.sizes() && grad_v_seq->device() == x.device()),
              op, "_bwd: grad_v_seq must be [T, N] like x, got ",
              grad_v_seq.has_value() ? grad_v_seq->sizes() : at::IntArrayRef{});
}

}  // namespace snn_fast
