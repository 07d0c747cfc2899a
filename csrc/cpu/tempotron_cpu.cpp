// Fused Tempotron forward/backward on the CPU (docs/spec.md §6; the math is in snn_fast/tempotron.h).
//
// Forward: per (b, i) the grid step k = ⌈t_i⌉ and its entry weights (ea, kt: computed once,
// outside the loop over outputs); per sample b two [T, O] histograms in L1, filled by one vector
// FMA over o per spiking input (from the transposed weight Wt [I, O]), then filtered along t into
// V[b, :, :]. Spike times are float32 (float64 with a float64 weight) whatever the weight dtype. Memory: V [B, O, T] and Wt [I, O]; the reference's [B, I, T] PSP tensor (B = 32,
// I = 12544, T = 100: 160 MB in fp32) is never built, nor any [B, I] scratch.
// Backward: reverse filters of grad_V per (b, o) into Gs, Gl [B, T, O] (math-dtype scratch), then
// per chunk of inputs one gather per (b, i) that adds into ∂W^T[i, :] (summed over b in order, so
// the result is independent of the thread count) and forms ∂t_in[b, i].
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

// Below this much work (multiply-adds) a call stays on the calling thread: opening a parallel
// region wakes the pool (~10-30 µs), and on an oversubscribed CPU waits a scheduler time slice
// for the other thread (a tiny LIF call went from 0.44 ms to 1-16 ms with one core
// busy). The size is the LIF forward's (kFwdParallelMinWork in lif_cpu_kernels_impl.h, measured: one
// multiply-add per unit here, a few per element-step there, so this errs on the serial side).
constexpr int64_t kParallelMinWork = int64_t(1) << 18;

// at::parallel_for's grain (items per chunk) for `items` items of `work_per_item` each: the whole
// range on one thread when the total is below kParallelMinWork.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelMinWork / std::max<int64_t>(work_per_item, 1));
}

// The spike-time dtype of a weight dtype: float64 for float64, else float32 (half precision would
// round times > 256 (bf16) or > 2048 (fp16) to a neighbouring step).
at::ScalarType times_dtype(at::ScalarType w) { return w == at::kDouble ? at::kDouble : at::kFloat; }

void check_inputs(const Tensor& t_in, const Tensor& w, int64_t T, double tau, double tau_s, double scale) {
  TORCH_CHECK(t_in.dim() == 2, "tempotron: t_in must be [B, I], got ", t_in.dim(), " dims");
  TORCH_CHECK(w.dim() == 2, "tempotron: weight must be [O, I], got ", w.dim(), " dims");
  TORCH_CHECK(t_in.size(1) == w.size(1), "tempotron: t_in has ", t_in.size(1), " inputs, weight expects ",
              w.size(1));
  TORCH_CHECK(t_in.scalar_type() == times_dtype(w.scalar_type()), "tempotron: t_in dtype ", t_in.scalar_type(),
              " must be ", times_dtype(w.scalar_type()), " for weight dtype ", w.scalar_type());
  TORCH_CHECK(t_in.device().is_cpu() && w.device().is_cpu(), "tempotron (CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(T >= 1 && T < (int64_t(1) << 31), "tempotron: T must be in [1, 2^31), got ", T);
  TORCH_CHECK(tau > 0 && tau_s > 0 && std::isfinite(tau) && std::isfinite(tau_s),
              "tempotron: need finite tau > 0, tau_s > 0");
  TORCH_CHECK(std::isfinite(scale), "tempotron: scale must be finite");
}

// Transposed weight Wt [I, O] in the math dtype: the inner loops run over o, contiguously.
// A serial loop (O·I = 125 K elements for MNIST, ~0.1 ms) rather than a torch copy: every
// parallel region costs a thread wake-up, and on an oversubscribed CPU a scheduler time slice.
template <typename scalar_t, typename acc_t>
Tensor transposed_weight(const Tensor& w_) {
  Tensor w = w_.contiguous();
  const int64_t O = w.size(0), I = w.size(1);
  Tensor wt = at::empty({I, O}, w.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const scalar_t* src = w.const_data_ptr<scalar_t>();
  acc_t* dst = wt.mutable_data_ptr<acc_t>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) dst[i * O + o] = acc_t(src[o * I + i]);
  return wt;
}

template <typename scalar_t, typename acc_t>
void fwd_impl(const acc_t* t, const acc_t* wt, scalar_t* v, int64_t B, int64_t I, int64_t O, int64_t T,
              const TempotronConsts<acc_t>& c) {
  // Per sample b: histograms laid out [T, O] so that adding input i's weight column Wt[i, :] into
  // bin k is one contiguous vector FMA over o; silent inputs (ea = 0; half or more of them in the
  // Gaussian-encoded MNIST) are skipped, which also avoids a serial read-modify-write chain on bin 0.
  at::parallel_for(0, B, grain_for(I * O + O * T), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> ha(T * O), hd(T * O), a(O), d(O);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(ha.begin(), ha.end(), acc_t(0));
      std::fill(hd.begin(), hd.end(), acc_t(0));
      const int64_t bi = b * I;  // int64: B·I and O·I may exceed 2^31
      for (int64_t i = 0; i < I; ++i) {
        acc_t ea, es, kt;
        const int64_t k = tempotron_entry<acc_t>(t[bi + i], T, c, &ea, &es, &kt);
        if (ea == acc_t(0)) continue;  // silent (or e^{−u/τ_slow} underflowed: contributes nothing)
        acc_t* pa = ha.data() + k * O;
        acc_t* pd = hd.data() + k * O;
        const acc_t* wi = wt + i * O;
#pragma omp simd
        for (int64_t o = 0; o < O; ++o) {
          pa[o] += wi[o] * ea;
          pd[o] += wi[o] * kt;
        }
      }
      std::fill(a.begin(), a.end(), acc_t(0));
      std::fill(d.begin(), d.end(), acc_t(0));
      scalar_t* vb = v + b * O * T;
      for (int64_t tt = 0; tt < T; ++tt)
        for (int64_t o = 0; o < O; ++o)
          vb[o * T + tt] = scalar_t(tempotron_filter_step<acc_t>(a[o], d[o], ha[tt * O + o], hd[tt * O + o], c));
    }
  });
}

Tensor tempotron_fwd_cpu(const Tensor& t_in_, const Tensor& w_, int64_t T, double tau, double tau_s, double scale) {
  check_inputs(t_in_, w_, T, tau, tau_s, scale);
  Tensor t_in = t_in_.contiguous();
  const int64_t B = t_in.size(0), I = t_in.size(1), O = w_.size(0);
  Tensor v = at::empty({B, O, T}, w_.options());
  if (v.numel() == 0) return v;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w_.scalar_type(), "tempotron_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    // The weight is read B times: one transposed copy in the math dtype (O·I elements) up front.
    Tensor wt = transposed_weight<scalar_t, acc_t>(w_);
    if (I == 0) {
      v.zero_();
      return;
    }
    auto c = tempotron_consts<acc_t>(tau, tau_s, scale);
    fwd_impl<scalar_t, acc_t>(t_in.const_data_ptr<acc_t>(), wt.const_data_ptr<acc_t>(),
                              v.mutable_data_ptr<scalar_t>(), B, I, O, T, c);
  });
  return v;
}

template <typename scalar_t, typename acc_t>
void bwd_impl(const scalar_t* gv, const acc_t* t, const acc_t* wt, acc_t* gt, acc_t* gwt, scalar_t* gw, int64_t B,
              int64_t I, int64_t O, int64_t T, const TempotronConsts<acc_t>& c) {
  // Reverse filters of grad_V [B, O, T] into Gs, Gl laid out [B, T, O] (contiguous over o).
  Tensor g_buf = at::empty({2, B * O * T}, c10::CppTypeToScalarType<acc_t>::value);
  acc_t* Gs = g_buf.mutable_data_ptr<acc_t>();
  acc_t* Gl = Gs + B * O * T;
  // Serial: B·O·T = 32 000 steps for W3/W4, less than a parallel region's wake-up.
  {
    for (int64_t p = 0; p < B * O; ++p) {
      const int64_t b = p / O, o = p % O;
      acc_t ga = 0, gs = 0, gl = 0;
      for (int64_t tt = T - 1; tt >= 0; --tt) {
        tempotron_reverse_step<acc_t>(ga, gs, gl, acc_t(gv[p * T + tt]), c);
        Gs[(b * T + tt) * O + o] = gs;
        Gl[(b * T + tt) * O + o] = gl;
      }
    }
  }
  // One pass per chunk of inputs: ∂W^T[i, :] accumulated over b in order (deterministic for any
  // thread count), ∂t[b, i] a dot product over o. Silent inputs contribute nothing and are skipped.
  constexpr int64_t kChunk = 256;
  const int64_t nchunks = (I + kChunk - 1) / kChunk;
  at::parallel_for(0, nchunks, grain_for(B * kChunk * O), [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i0 = q * kChunk, i1 = std::min(I, i0 + kChunk);
      if (gwt != nullptr) std::fill(gwt + i0 * O, gwt + i1 * O, acc_t(0));
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t bi = b * I + i;
          acc_t ea, es, kt;
          const int64_t k = tempotron_entry<acc_t>(t[bi], T, c, &ea, &es, &kt);  // each (b, i) once
          if (ea == acc_t(0)) {  // silent (or e^{−u/τ_slow} underflowed: contributes nothing)
            if (gt != nullptr) gt[bi] = acc_t(0);
            continue;
          }
          const acc_t* gs = Gs + (b * T + k) * O;
          const acc_t* gl = Gl + (b * T + k) * O;
          if (gwt != nullptr) {
            acc_t* g = gwt + i * O;
#pragma omp simd
            for (int64_t o = 0; o < O; ++o) g[o] += tempotron_dw_term<acc_t>(gs[o], gl[o], ea, kt);
          }
          if (gt != nullptr) {
            const acc_t* wi = wt + i * O;
            acc_t d = 0;  // plain ordered sum: a vectorised reduction would depend on the alignment
            for (int64_t o = 0; o < O; ++o) d += tempotron_dt_term<acc_t>(wi[o], gs[o], gl[o], ea, es, kt, c);
            gt[bi] = c.scale * d;
          }
        }
      }
      if (gwt != nullptr)  // transpose the chunk back into ∂W [O, I] in the storage dtype
        for (int64_t o = 0; o < O; ++o)
          for (int64_t i = i0; i < i1; ++i) gw[o * I + i] = scalar_t(c.scale * gwt[i * O + o]);
    }
  });
}

std::tuple<Tensor, Tensor> tempotron_bwd_cpu(const Tensor& grad_v_, const Tensor& t_in_, const Tensor& w_,
                                             double tau, double tau_s, double scale, bool need_t_grad,
                                             bool need_w_grad) {
  check_inputs(t_in_, w_, grad_v_.dim() == 3 ? grad_v_.size(2) : 1, tau, tau_s, scale);
  const int64_t B = t_in_.size(0), I = t_in_.size(1), O = w_.size(0);
  TORCH_CHECK(grad_v_.dim() == 3 && grad_v_.size(0) == B && grad_v_.size(1) == O,
              "tempotron_bwd: grad_v must be [B, O, T] = [", B, ", ", O, ", T], got ", grad_v_.sizes());
  const int64_t T = grad_v_.size(2);
  Tensor t_in = t_in_.contiguous(), gv = grad_v_.to(w_.scalar_type()).contiguous();
  Tensor gt = need_t_grad ? at::empty_like(t_in) : at::empty({0}, t_in.options());
  Tensor gw = need_w_grad ? at::empty_like(w_, at::MemoryFormat::Contiguous) : at::empty({0}, w_.options());
  if (B * I == 0 || O == 0) {
    gt.zero_();
    gw.zero_();
    return {gt, gw};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w_.scalar_type(), "tempotron_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Tensor wt = transposed_weight<scalar_t, acc_t>(w_);
    // ∂W is accumulated transposed ([I, O], math dtype) and transposed back chunk by chunk.
    Tensor gwt = need_w_grad ? at::empty({I, O}, wt.options()) : Tensor();
    auto c = tempotron_consts<acc_t>(tau, tau_s, scale);
    bwd_impl<scalar_t, acc_t>(gv.const_data_ptr<scalar_t>(), t_in.const_data_ptr<acc_t>(),
                              wt.const_data_ptr<acc_t>(), need_t_grad ? gt.mutable_data_ptr<acc_t>() : nullptr,
                              need_w_grad ? gwt.mutable_data_ptr<acc_t>() : nullptr,
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
