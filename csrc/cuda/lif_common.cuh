// Helpers shared by lif_fwd.cu and lif_bwd.cu: storage types, packed 16-byte loads/stores, the
// saved-H codec, parameter loading and launch geometry. CUDA headers and snn_fast/*.h only.
// Everything is __host__ __device__ (SNN_HD) so that the per-thread kernel bodies (lif_kernels.cuh)
// can also run on the host: csrc/cuda/emulate/ executes them thread by thread on the CPU, which is
// how tests/test_cuda_compile.py checks the kernels' logic on machines without a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "lif_cuda.h"
#include "snn_fast/lif_step.h"

namespace snn_fast {
namespace cuda {

// 256 threads: 8 warps per block keep enough loads in flight per SM for a streaming kernel while a
// block's parameter-gradient partial stays cheap to reduce (8 warp sums in shared memory).
constexpr int kThreads = 256;

template <typename scalar_t> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename scalar_t> using acc_of_t = typename AccOf<scalar_t>::type;

SNN_HD float to_acc(float v) { return v; }
SNN_HD double to_acc(double v) { return v; }
SNN_HD float to_acc(__half v) { return __half2float(v); }
SNN_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t> SNN_HD scalar_t from_acc(acc_of_t<scalar_t> v);
template <> SNN_HD float from_acc<float>(float v) { return v; }
template <> SNN_HD double from_acc<double>(double v) { return v; }
template <> SNN_HD __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> SNN_HD __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// VEC contiguous elements, loaded and stored as one access (16 B for the data tensors, VEC bytes for
// the bool mask). Only used when N % VEC == 0 and every pointer is aligned to the pack size.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Raw read-only load of B bytes. On the device through the non-coherent path (ld.global.nc): every
// tensor the kernels read is read-only for their lifetime, and saying so lets the compiler move
// these loads ahead of the stores to other tensors (it cannot prove the pointers do not alias).
template <int B> struct RawOf;
template <> struct RawOf<16> { using type = uint4; };
template <> struct RawOf<8> { using type = uint2; };
template <> struct RawOf<4> { using type = unsigned int; };
template <> struct RawOf<2> { using type = unsigned short; };
template <> struct RawOf<1> { using type = unsigned char; };

template <typename P>
SNN_HD P load_ro(const P* p) {
  static_assert(sizeof(P) == sizeof(typename RawOf<sizeof(P)>::type), "pack size");
#ifdef __CUDA_ARCH__
  using R = typename RawOf<sizeof(P)>::type;
  const R r = __ldg(reinterpret_cast<const R*>(p));
  P out;
  memcpy(&out, &r, sizeof(P));
  return out;
#else
  return *p;
#endif
}

template <int VEC, typename T>
SNN_HD void load_pack(const T* __restrict__ base, int64_t off, T (&out)[VEC]) {
  const Pack<T, VEC> pk = load_ro(reinterpret_cast<const Pack<T, VEC>*>(base + off));
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = pk.v[j];
}

template <int VEC, typename T>
SNN_HD void store_pack(T* __restrict__ base, int64_t off, const T (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int j = 0; j < VEC; ++j) pk.v[j] = in[j];
  *reinterpret_cast<Pack<T, VEC>*>(base + off) = pk;
}

// Load VEC storage values converted to the accumulation type.
template <int VEC, typename scalar_t>
SNN_HD void load_acc(const scalar_t* __restrict__ base, int64_t off,
                                         acc_of_t<scalar_t> (&out)[VEC]) {
  scalar_t raw[VEC];
  load_pack<VEC>(base, off, raw);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_acc(raw[j]);
}

// A quiet NaN as a constant: nan("") is a call that parses its string (a stack frame and spilled
// registers in the bf16 backward for sm_80).
template <typename T>
SNN_HD constexpr T quiet_nan() {
  return T(__builtin_nan(""));
}

// V_0 of neurons n0 … n0 + VEC − 1: v0[n0 …], or v0[0] for a start every neuron shares (uniform: v0 [1],
// one value read instead of a row of N).
template <int VEC, typename scalar_t>
SNN_HD void load_start(const scalar_t* __restrict__ v0, bool uniform, int64_t n0, acc_of_t<scalar_t> (&out)[VEC]) {
  if (uniform) {
    const acc_of_t<scalar_t> u = to_acc(v0[0]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = u;
  } else {
    load_acc<VEC>(v0, n0, out);
  }
}

template <int VEC, typename scalar_t>
SNN_HD void store_acc(scalar_t* __restrict__ base, int64_t off,
                                          const acc_of_t<scalar_t> (&in)[VEC]) {
  scalar_t raw[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) raw[j] = from_acc<scalar_t>(in[j]);
  store_pack<VEC>(base, off, raw);
}

// ∂L/∂V_0 of neurons n0 … n0 + VEC − 1; a start every neuron shares (uniform) has none here: its one
// element gets NaN, from the thread of neuron 0, never a number.
template <int VEC, typename scalar_t>
SNN_HD void store_grad_start(scalar_t* __restrict__ gv0, bool uniform, int64_t n0,
                             const acc_of_t<scalar_t> (&dv)[VEC]) {
  if (!uniform)
    store_acc<VEC>(gv0, n0, dv);
  else if (n0 == 0)
    gv0[0] = from_acc<scalar_t>(quiet_nan<acc_of_t<scalar_t>>());
}

template <int VEC>
SNN_HD void load_mask(const bool* __restrict__ base, int64_t off, bool (&out)[VEC]) {
  const Pack<uint8_t, VEC> pk = load_ro(reinterpret_cast<const Pack<uint8_t, VEC>*>(
      reinterpret_cast<const uint8_t*>(base) + off));
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = pk.v[j] != 0;
}

// The saved state of one element (lif_step.h documents the encoding): encode in the forward,
// decode in the backward into H, H − θ and the forward's hard spike Θ(H − θ).
template <typename scalar_t>
struct SavedCodec {  // float32 / float64: H itself
  using acc_t = acc_of_t<scalar_t>;
  SNN_HD static scalar_t encode(acc_t h, const LIFParams<acc_t>& /*p*/) { return h; }
  SNN_HD static void decode(scalar_t raw, const LIFParams<acc_t>& p, acc_t& h, acc_t& xs, bool& spike) {
    h = raw;
    xs = h - p.theta;
    spike = lif_fires(xs, p);  // the forward's own comparison on the same H: bitwise equal
  }
};

template <typename scalar_t>
struct SavedCodec16 {  // float16 / bfloat16: D = H − θ in the storage dtype, S = sign bit clear
  SNN_HD static unsigned short bits(scalar_t v);
  SNN_HD static scalar_t from_bits(unsigned short b);
  SNN_HD static scalar_t encode(float h, const LIFParams<float>& p) {
    const float xs = h - p.theta;
    const unsigned short b = bits(from_acc<scalar_t>(xs));
    // The sign bit is set to "no spike". Rounding to nearest keeps the sign of every other value
    // (this changes no bit there); it matters for the values that would lie: H − θ = −0 (a spike:
    // −0 ≥ 0), +0 under the strict threshold (no spike) and NaN (no spike, whatever NaN's sign).
    return from_bits(lif_fires(xs, p) ? static_cast<unsigned short>(b & 0x7FFFu) : static_cast<unsigned short>(b | 0x8000u));
  }
  SNN_HD static void decode(scalar_t raw, const LIFParams<float>& p, float& h, float& xs, bool& spike) {
    spike = (bits(raw) & 0x8000u) == 0;
    xs = to_acc(raw);
    h = xs + p.theta;
  }
};
template <> SNN_HD unsigned short SavedCodec16<__half>::bits(__half v) {
  return __half_as_ushort(v);
}
template <> SNN_HD __half SavedCodec16<__half>::from_bits(unsigned short b) {
  return __ushort_as_half(b);
}
template <> SNN_HD unsigned short SavedCodec16<__nv_bfloat16>::bits(__nv_bfloat16 v) {
  return __bfloat16_as_ushort(v);
}
template <> SNN_HD __nv_bfloat16 SavedCodec16<__nv_bfloat16>::from_bits(unsigned short b) {
  return __ushort_as_bfloat16(b);
}
template <> struct SavedCodec<__half> : SavedCodec16<__half> {};
template <> struct SavedCodec<__nv_bfloat16> : SavedCodec16<__nv_bfloat16> {};

// Parameters: (k, θ, α) read from device memory (no host sync), the flags from the launch.
template <typename acc_t>
SNN_HD LIFParams<acc_t> load_params(const acc_t* __restrict__ params, const LIFFlagsC& f) {
  LIFParams<acc_t> p;
#ifdef __CUDA_ARCH__
  p.k = __ldg(params + 0);
  p.theta = __ldg(params + 1);
  p.alpha = __ldg(params + 2);
#else  // the host emulation of the thread bodies (csrc/cuda/emulate/)
  p.k = params[0];
  p.theta = params[1];
  p.alpha = params[2];
#endif
  p.vr = f.hard_reset ? acc_t(f.v_reset) : acc_t(0);
  p.kappa = acc_t(f.reset_residual);
  p.sg = f.surrogate;
  p.hard_reset = f.hard_reset;
  p.decay_input = f.decay_input;
  p.detach_reset = f.detach_reset;
  // The strict threshold from the launch; the timing a constant: the CUDA kernels run the reset after
  // the spike only (the binding refuses the others), so lif_step.h's timing branches fold away here.
  // With them compiled in, ptxas spilled the parameter-gradient backwards (fp16/bf16 ×8, fp32 ×4,
  // fp64; sm_80) however the timing was dispatched.
  set_firing(p, f.strict_threshold, kResetAfterFire);
  return p;
}

// The emitted value given H − θ and the forward's hard spike: the spike where the mask is on (or
// there is no mask), g(H − θ) elsewhere. lif_fire_rt of lif_step.h with both already decoded.
template <typename acc_t>
SNN_HD acc_t emitted(acc_t xs, bool spike, bool mask_on, const LIFParams<acc_t>& p) {
  return mask_on ? (spike ? acc_t(1) : acc_t(0)) : sg_prim_rt<acc_t>(p.sg, xs, p.alpha);
}

// Calls f(scalar_t{}) for the storage type of `dtype` and returns its result (a cudaError_t as int);
// cudaErrorInvalidValue for an unknown dtype. One switch for the launchers and the emulator.
template <typename F>
int with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat64: return f(double{});
  }
  return int(cudaErrorInvalidValue);
}

// Elements per thread: 16 B of storage (4 fp32, 8 fp16/bf16, 2 fp64) when the layout allows.
template <typename scalar_t>
constexpr int vec_width() {
  return int(16 / sizeof(scalar_t));
}

// Neurons per thread of the recompute backward (lif_bwd_rc_kernel): registers hold K of each.
constexpr int kRcVec = 1;

inline bool aligned(const void* p, int64_t bytes) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes)) == 0;
}

inline int64_t blocks_for(int64_t N, int vec) {
  const int64_t threads_needed = (N + vec - 1) / vec;
  return (threads_needed + kThreads - 1) / kThreads;
}

}  // namespace cuda
}  // namespace snn_fast
