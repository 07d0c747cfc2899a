// A tensor's storage dtype as the launch APIs' DType (lif_cuda.h), for the torch bindings of the LIF and
// bn_lif CUDA kernels; `op` names the op in the error. Host only (torch headers).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "lif_cuda.h"

namespace snn_fast {
namespace cuda {

inline DType dtype_of(const at::Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, op, " (CUDA kernel): unsupported dtype ", x.scalar_type(),
                         "; use float32, float16, bfloat16 or float64");
  }
}

}  // namespace cuda
}  // namespace snn_fast
