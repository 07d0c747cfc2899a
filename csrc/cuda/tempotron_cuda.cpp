// Torch binding of the Tempotron CUDA kernels: checks, allocation, device guard and current
// stream; the kernels themselves are in tempotron_kernels.cu behind tempotron_launch.h. Compiled
// only in CUDA builds (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "tempotron_launch.h"

namespace snn_fast {
namespace {

using at::Tensor;

int dtype_code(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return tempotron_cuda::kFloat32;
    case at::kHalf: return tempotron_cuda::kFloat16;
    case at::kBFloat16: return tempotron_cuda::kBFloat16;
    default: TORCH_CHECK(false, "tempotron (CUDA): dtype must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return -1;
}

void check(const Tensor& t_in, const Tensor& w, int64_t T, double tau, double tau_s) {
  TORCH_CHECK(t_in.dim() == 2 && w.dim() == 2, "tempotron: t_in must be [B, I] and weight [O, I]");
  TORCH_CHECK(t_in.size(1) == w.size(1), "tempotron: t_in has ", t_in.size(1), " inputs, weight expects ", w.size(1));
  TORCH_CHECK(t_in.scalar_type() == at::kFloat, "tempotron (CUDA): t_in (spike times) must be float32, got ",
              t_in.scalar_type());
  TORCH_CHECK(t_in.is_cuda() && w.is_cuda() && t_in.device() == w.device(),
              "tempotron (CUDA kernel): t_in and weight must be on the same CUDA device");
  TORCH_CHECK(T >= 1 && T < (int64_t(1) << 31), "tempotron: T must be in [1, 2^31), got ", T);
  TORCH_CHECK(tau > 0 && tau_s > 0 && std::isfinite(tau) && std::isfinite(tau_s),
              "tempotron: need finite tau > 0, tau_s > 0");
}

Tensor tempotron_fwd_cuda(const Tensor& t_in_, const Tensor& w_, int64_t T, double tau, double tau_s, double scale) {
  const int code = dtype_code(w_);  // first: a float64 weight is refused by name, not via t_in's dtype
  check(t_in_, w_, T, tau, tau_s);
  c10::cuda::CUDAGuard guard(t_in_.device());
  Tensor t_in = t_in_.contiguous(), w = w_.contiguous();
  const int64_t B = t_in.size(0), I = t_in.size(1), O = w.size(0);
  Tensor v = at::empty({B, O, T}, w.options());
  if (v.numel() == 0) return v;
  if (I == 0) return v.zero_();
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, t_in.get_device()));
  const int tile = tempotron_cuda::fwd_out_tile(O, T, max_smem);
  TORCH_CHECK(tile >= 1, "tempotron (CUDA): T = ", T, " needs ", 8 * T,
              " bytes of shared memory per output, more than this GPU has; use backend='triton'");
  C10_CUDA_CHECK(tempotron_cuda::launch_fwd(code, t_in.const_data_ptr(), w.const_data_ptr(), v.mutable_data_ptr(),
                                            B, I, O, T, tile, tau, tau_s, scale,
                                            c10::cuda::getCurrentCUDAStream().stream()));
  return v;
}

std::tuple<Tensor, Tensor> tempotron_bwd_cuda(const Tensor& grad_v_, const Tensor& t_in_, const Tensor& w_,
                                              double tau, double tau_s, double scale, bool need_t_grad,
                                              bool need_w_grad) {
  TORCH_CHECK(grad_v_.dim() == 3, "tempotron_bwd: grad_v must be [B, O, T]");
  const int64_t T = grad_v_.size(2);
  const int code = dtype_code(w_);  // first: a float64 weight is refused by name, not via t_in's dtype
  check(t_in_, w_, T, tau, tau_s);
  c10::cuda::CUDAGuard guard(t_in_.device());
  Tensor t_in = t_in_.contiguous(), w = w_.contiguous();
  const int64_t B = t_in.size(0), I = t_in.size(1), O = w.size(0);
  TORCH_CHECK(grad_v_.size(0) == B && grad_v_.size(1) == O, "tempotron_bwd: grad_v must be [", B, ", ", O, ", T]");
  Tensor gv = grad_v_.to(w.scalar_type()).contiguous();
  Tensor gt = need_t_grad ? at::empty_like(t_in) : at::empty({0}, t_in.options());
  Tensor gw = need_w_grad ? at::empty_like(w) : at::empty({0}, w.options());
  if (B * I == 0 || O == 0 || !(need_t_grad || need_w_grad)) {
    gt.zero_();
    gw.zero_();
    return {gt, gw};
  }
  auto f32 = t_in.options().dtype(at::kFloat);
  Tensor k = at::empty({B * I}, t_in.options().dtype(at::kInt));
  Tensor e = at::empty({3, B * I}, f32);
  Tensor g = at::empty({2, B * O * T}, f32);
  C10_CUDA_CHECK(tempotron_cuda::launch_bwd(
      code, gv.const_data_ptr(), t_in.const_data_ptr(), w.const_data_ptr(),
      need_t_grad ? gt.mutable_data_ptr() : nullptr, need_w_grad ? gw.mutable_data_ptr() : nullptr,
      k.mutable_data_ptr<int32_t>(), e[0].mutable_data_ptr<float>(), e[1].mutable_data_ptr<float>(),
      e[2].mutable_data_ptr<float>(), g[0].mutable_data_ptr<float>(), g[1].mutable_data_ptr<float>(), B, I, O, T,
      tau, tau_s, scale,
      c10::cuda::getCurrentCUDAStream().stream()));
  return {gt, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CUDA, m) {
  m.impl("tempotron_fwd", &tempotron_fwd_cuda);
  m.impl("tempotron_bwd", &tempotron_bwd_cuda);
}

}  // namespace snn_fast
