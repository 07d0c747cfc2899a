// Fused Tempotron forward/backward on the CPU (SPEC §5; the math is in snn_fast/tempotron.h).
//
// Forward: per (b, i) the grid step k = ⌈t_i⌉ and the two exponentials (B·I·2 exp, once); per
// (b, o) two T-long histograms in L1, filled by a pass over the contiguous weight row W[o, :], then
// filtered along t into V[b, o, :]. Memory: V [B, O, T] plus O(B·I) scratch; the reference's
// [B, I, T] PSP tensor (B = 32, I = 12544, T = 100: 160 MB in fp32) is never built.
// Backward: reverse filters of grad_V per (b, o) into Ga, Gs [B, O, T] (fp32 scratch), then one
// gather per (o, i) for ∂W (summed over b in order, so the result is independent of the thread
// count) and one per (b, i) for ∂t_in.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "snn_fast/tempotron.h"

namespace snn_fast {
namespace {

using at::Tensor;

void check_inputs(const Tensor& t_in, const Tensor& w, int64_t T, double tau, double tau_s, double v0) {
  TORCH_CHECK(t_in.dim() == 2, "tempotron: t_in must be [B, I], got ", t_in.dim(), " dims");
  TORCH_CHECK(w.dim() == 2, "tempotron: weight must be [O, I], got ", w.dim(), " dims");
  TORCH_CHECK(t_in.size(1) == w.size(1), "tempotron: t_in has ", t_in.size(1), " inputs, weight expects ",
              w.size(1));
  TORCH_CHECK(t_in.scalar_type() == w.scalar_type(), "tempotron: t_in dtype ", t_in.scalar_type(),
              " != weight dtype ", w.scalar_type());
  TORCH_CHECK(t_in.device().is_cpu() && w.device().is_cpu(), "tempotron (CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(T >= 1 && T < (int64_t(1) << 31), "tempotron: T must be in [1, 2^31), got ", T);
  TORCH_CHECK(tau > 0 && tau_s > 0 && tau != tau_s, "tempotron: need tau > 0, tau_s > 0, tau != tau_s");
  TORCH_CHECK(std::isfinite(v0), "tempotron: v0 must be finite");
}

// k [B·I] and (ea, es) [B·I] for every input spike.
template <typename scalar_t, typename acc_t>
void entries(const scalar_t* t, int64_t BI, int64_t T, const TempotronConsts<acc_t>& c, int32_t* k, acc_t* ea,
             acc_t* es) {
  at::parallel_for(0, BI, 4096, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) k[j] = int32_t(tempotron_entry<acc_t>(acc_t(t[j]), T, c, ea + j, es + j));
  });
}

template <typename scalar_t, typename acc_t>
void fwd_impl(const scalar_t* t, const acc_t* w, scalar_t* v, int64_t B, int64_t I, int64_t O, int64_t T,
              const TempotronConsts<acc_t>& c) {
  std::vector<int32_t> k(B * I);
  std::vector<acc_t> ea(B * I), es(B * I);
  entries<scalar_t, acc_t>(t, B * I, T, c, k.data(), ea.data(), es.data());
  at::parallel_for(0, B * O, 1, [&](int64_t p0, int64_t p1) {
    std::vector<acc_t> ha(T), hs(T);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / O, o = p % O;
      std::fill(ha.begin(), ha.end(), acc_t(0));
      std::fill(hs.begin(), hs.end(), acc_t(0));
      const int64_t bi = b * I;  // int64: B·I and O·I may exceed 2^31
      const acc_t* wr = w + o * I;
      const int32_t* kb = k.data() + bi;
      const acc_t* eab = ea.data() + bi;
      const acc_t* esb = es.data() + bi;
      for (int64_t i = 0; i < I; ++i) {
        const acc_t wi = wr[i];
        ha[kb[i]] += wi * eab[i];
        hs[kb[i]] += wi * esb[i];
      }
      acc_t a = 0, s = 0;
      scalar_t* vp = v + p * T;
      for (int64_t tt = 0; tt < T; ++tt) vp[tt] = scalar_t(tempotron_filter_step<acc_t>(a, s, ha[tt], hs[tt], c));
    }
  });
}

Tensor tempotron_fwd_cpu(const Tensor& t_in_, const Tensor& w_, int64_t T, double tau, double tau_s, double v0) {
  check_inputs(t_in_, w_, T, tau, tau_s, v0);
  Tensor t_in = t_in_.contiguous();
  const int64_t B = t_in.size(0), I = t_in.size(1), O = w_.size(0);
  Tensor v = at::empty({B, O, T}, w_.options());
  if (v.numel() == 0) return v;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t_in.scalar_type(), "tempotron_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    // The weight is read B times: one conversion to the math dtype (O·I elements) up front.
    Tensor w = w_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    if (I == 0) {
      v.zero_();
      return;
    }
    auto c = tempotron_consts<acc_t>(tau, tau_s, v0);
    fwd_impl<scalar_t, acc_t>(t_in.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(),
                              v.mutable_data_ptr<scalar_t>(), B, I, O, T, c);
  });
  return v;
}

template <typename scalar_t, typename acc_t>
void bwd_impl(const scalar_t* gv, const scalar_t* t, const acc_t* w, scalar_t* gt, scalar_t* gw, int64_t B,
              int64_t I, int64_t O, int64_t T, const TempotronConsts<acc_t>& c) {
  std::vector<int32_t> k(B * I);
  std::vector<acc_t> ea(B * I), es(B * I);
  entries<scalar_t, acc_t>(t, B * I, T, c, k.data(), ea.data(), es.data());
  // Reverse filters: Ga, Gs [B, O, T].
  std::vector<acc_t> Ga(B * O * T), Gs(B * O * T);
  at::parallel_for(0, B * O, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      acc_t ga = 0, gs = 0;
      for (int64_t tt = T - 1; tt >= 0; --tt) {
        tempotron_reverse_step<acc_t>(ga, gs, acc_t(gv[p * T + tt]), c);
        Ga[p * T + tt] = ga;
        Gs[p * T + tt] = gs;
      }
    }
  });
  constexpr int64_t kChunk = 1024;  // inputs per task: the accumulators stay in L1
  const int64_t nchunks = (I + kChunk - 1) / kChunk;
  if (gw != nullptr) {
    at::parallel_for(0, O * nchunks, 1, [&](int64_t q0, int64_t q1) {
      std::vector<acc_t> acc(kChunk);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t o = q / nchunks, i0 = (q % nchunks) * kChunk, n = std::min(kChunk, I - i0);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t b = 0; b < B; ++b) {
          const acc_t* ga = Ga.data() + (b * O + o) * T;
          const acc_t* gs = Gs.data() + (b * O + o) * T;
          const int64_t bi = b * I + i0;
          for (int64_t j = 0; j < n; ++j) {
            const int32_t kk = k[bi + j];
            acc[j] += tempotron_dw_term<acc_t>(ga[kk], gs[kk], ea[bi + j], es[bi + j]);
          }
        }
        for (int64_t j = 0; j < n; ++j) gw[o * I + i0 + j] = scalar_t(c.v0 * acc[j]);
      }
    });
  }
  if (gt != nullptr) {
    at::parallel_for(0, B * nchunks, 1, [&](int64_t q0, int64_t q1) {
      std::vector<acc_t> acc(kChunk);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t b = q / nchunks, i0 = (q % nchunks) * kChunk, n = std::min(kChunk, I - i0);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t bi = b * I + i0;
        for (int64_t o = 0; o < O; ++o) {
          const acc_t* ga = Ga.data() + (b * O + o) * T;
          const acc_t* gs = Gs.data() + (b * O + o) * T;
          const acc_t* wr = w + o * I + i0;
          for (int64_t j = 0; j < n; ++j) {
            const int32_t kk = k[bi + j];
            acc[j] += tempotron_dt_term<acc_t>(wr[j], ga[kk], gs[kk], ea[bi + j], es[bi + j], c);
          }
        }
        for (int64_t j = 0; j < n; ++j) gt[bi + j] = scalar_t(c.v0 * acc[j]);
      }
    });
  }
}

std::tuple<Tensor, Tensor> tempotron_bwd_cpu(const Tensor& grad_v_, const Tensor& t_in_, const Tensor& w_,
                                             double tau, double tau_s, double v0, bool need_t_grad,
                                             bool need_w_grad) {
  check_inputs(t_in_, w_, grad_v_.dim() == 3 ? grad_v_.size(2) : 1, tau, tau_s, v0);
  const int64_t B = t_in_.size(0), I = t_in_.size(1), O = w_.size(0);
  TORCH_CHECK(grad_v_.dim() == 3 && grad_v_.size(0) == B && grad_v_.size(1) == O,
              "tempotron_bwd: grad_v must be [B, O, T] = [", B, ", ", O, ", T], got ", grad_v_.sizes());
  const int64_t T = grad_v_.size(2);
  Tensor t_in = t_in_.contiguous(), gv = grad_v_.to(t_in.scalar_type()).contiguous();
  Tensor gt = need_t_grad ? at::empty_like(t_in) : at::empty({0}, t_in.options());
  Tensor gw = need_w_grad ? at::empty_like(w_, at::MemoryFormat::Contiguous) : at::empty({0}, w_.options());
  if (B * I == 0 || O == 0) {
    gt.zero_();
    gw.zero_();
    return {gt, gw};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t_in.scalar_type(), "tempotron_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Tensor w = w_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto c = tempotron_consts<acc_t>(tau, tau_s, v0);
    bwd_impl<scalar_t, acc_t>(gv.const_data_ptr<scalar_t>(), t_in.const_data_ptr<scalar_t>(),
                              w.const_data_ptr<acc_t>(), need_t_grad ? gt.mutable_data_ptr<scalar_t>() : nullptr,
                              need_w_grad ? gw.mutable_data_ptr<scalar_t>() : nullptr, B, I, O, T, c);
  });
  return {gt, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(snn_fast, CPU, m) {
  m.impl("tempotron_fwd", &tempotron_fwd_cpu);
  m.impl("tempotron_bwd", &tempotron_bwd_cpu);
}

}  // namespace snn_fast
