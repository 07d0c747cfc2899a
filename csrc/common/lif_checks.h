// Argument checks of the LIF ops (lif_fwd / lif_bwd, schemas in csrc/ops.cpp), shared by the CPU
// binding (csrc/cpu/lif_cpu.cpp) and the CUDA binding (csrc/cuda/lif_cuda_binding.cpp): one place
// for what the kernels assume, so the two cannot drift. Host only (torch headers). Each message
// names the argument. The Python layer (snn_fast/ops/lif/config.py) checks the user-facing
// arguments first; these guard the ops themselves, which torch.ops.snn_fast exposes directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "snn_fast/surrogate.h"

namespace snn_fast {

// x [T, N] with T >= 1, v0 [N] of x's dtype, params [3] in float32 (float64 for float64 x), a bool
// noise_mask shaped like x, all on x's device, which must be of type `device`; sg a known
// surrogate id. `kernel` names the backend in the device messages ("CPU kernel", "CUDA kernel").
inline void check_lif_args(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& params,
                           const c10::optional<at::Tensor>& mask, int64_t sg, c10::DeviceType device,
                           const char* kernel) {
  TORCH_CHECK(x.dim() == 2, "lif: x must be [T, N], got ", x.dim(), " dims");
  TORCH_CHECK(x.size(0) >= 1, "lif: x needs T >= 1 time steps");
  TORCH_CHECK(v0.dim() == 1 && v0.size(0) == x.size(1), "lif: v0 must be [N] = [", x.size(1), "], got ",
              v0.sizes());
  TORCH_CHECK(v0.scalar_type() == x.scalar_type(), "lif: v0 dtype ", v0.scalar_type(), " != x dtype ",
              x.scalar_type());
  TORCH_CHECK(params.dim() == 1 && params.size(0) == 3, "lif: params must be [3] = (k, theta, alpha)");
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(params.scalar_type() == want, "lif: params must be ", want, " for x of ", x.scalar_type());
  TORCH_CHECK(x.device().type() == device && v0.device() == x.device() && params.device() == x.device(),
              "lif (", kernel, "): x, v0 and params must be on the same ", c10::DeviceTypeName(device),
              " device, got ", x.device(), ", ", v0.device(), ", ", params.device());
  TORCH_CHECK(sg >= 0 && sg < kNumSurrogates, "lif: unknown surrogate id ", sg);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->sizes() == x.sizes() && mask->device() == x.device(),
                "lif: noise_mask must be a bool tensor shaped like x on x's device, got ", mask->scalar_type(),
                " ", mask->sizes(), " on ", mask->device());
  }
}

// The op's `mode` (csrc/ops.cpp): bit 0 strict threshold, bits 1–2 the reset timing the kernels run
// (after the spike, delayed, none; snnTorch's reset_delay=False form runs on the reference only).
inline void check_lif_mode(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode < 6, "lif: mode must be (timing << 1) | strict with timing 0 (after the spike), ",
              "1 (delayed) or 2 (none), got ", mode);
}

// The backward's own inputs: grad_s like x; grad_v_last [N] and grad_v_seq [T, N] (or empty) when given.
inline void check_lif_bwd_args(const at::Tensor& grad_s, const c10::optional<at::Tensor>& grad_v_last,
                               const c10::optional<at::Tensor>& grad_v_seq, const at::Tensor& x,
                               const at::Tensor& v0) {
  TORCH_CHECK(grad_s.sizes() == x.sizes() && grad_s.scalar_type() == x.scalar_type() &&
                  grad_s.device() == x.device(),
              "lif_bwd: grad_s must match x in shape, dtype and device");
  TORCH_CHECK(!grad_v_last.has_value() || (grad_v_last->sizes() == v0.sizes() && grad_v_last->device() == x.device()),
              "lif_bwd: grad_v_last must be [N] = [", x.size(1), "] on x's device, got ",
              grad_v_last.has_value() ? grad_v_last->sizes() : at::IntArrayRef{});
  TORCH_CHECK(!grad_v_seq.has_value() || grad_v_seq->numel() == 0 ||
                  (grad_v_seq->sizes() == x.sizes() && grad_v_seq->device() == x.device()),
              "lif_bwd: grad_v_seq must be [T, N] like x, got ",
              grad_v_seq.has_value() ? grad_v_seq->sizes() : at::IntArrayRef{});
}

}  // namespace snn_fast
