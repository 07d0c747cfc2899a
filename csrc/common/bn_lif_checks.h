// Argument checks of the fused batch-norm + LIF ops (bn_lif_fwd / bn_lif_bwd, schemas in csrc/ops.cpp)
// beyond the LIF op's (lif_checks.h): shared by the CPU binding (csrc/cpu/bn_lif_cpu.cpp) and the CUDA
// binding (csrc/cuda/bn_lif_cuda_binding.cpp). Host only (torch headers).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace snn_fast {

// x [T, N] with N = B·C·inner; weight, bias, mean, rstd [C] in params' dtype on x's device. Returns C.
inline int64_t check_bn_args(const at::Tensor& x, const at::Tensor& params, const at::Tensor& weight,
                             const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, int64_t inner) {
  const int64_t C = weight.numel();
  TORCH_CHECK(inner >= 1, "bn_lif: inner (the spatial size S) must be >= 1, got ", inner);
  TORCH_CHECK(C >= 1 && x.size(1) % (C * inner) == 0, "bn_lif: x's N = ", x.size(1),
              " is not a multiple of C·inner = ", C, "·", inner);
  for (const at::Tensor* t : {&weight, &bias, &mean, &rstd})
    TORCH_CHECK(t->dim() == 1 && t->numel() == C && t->scalar_type() == params.scalar_type() &&
                    t->device() == x.device(),
                "bn_lif: weight, bias, mean and rstd must be [C] = [", C, "] in params' dtype (",
                params.scalar_type(), ") on x's device, got ", t->sizes(), " ", t->scalar_type());
  return C;
}

}  // namespace snn_fast
