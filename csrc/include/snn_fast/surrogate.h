// Surrogate gradients (docs/spec.md §3), shared by the CPU and CUDA kernels.
//
// For each surrogate: prim (g, the analog forward of the noisy spike), grad (g′, the surrogate
// gradient) and dalpha (∂g/∂α). x = H − θ, a = α. The ids are the ABI of snn_fast/surrogate.py and
// must never be renumbered. Everything is header-only and __host__ __device__ so one definition
// serves both the CPU build (tested in CI) and the CUDA build.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SNN_HD __host__ __device__ __forceinline__
#else
#define SNN_HD inline
#endif

namespace snn_fast {

enum SurrogateId : int {
  kSigmoid = 0,
  kAtan = 1,
  kRectangle = 2,
  kTriangle = 3,
  kPiecewiseExp = 4,
  kSoftSign = 5,
  kSuperSpike = 6,
  kErf = 7,
  kQPseudoSpike = 8,
  kStraightThrough = 9,
  kSpikeGate = 10,
};
constexpr int kNumSurrogates = 11;  // ids 0 … 10: the bindings check ids against this (csrc/common/lif_checks.h)

constexpr double kPi = 3.14159265358979323846;
constexpr double kInvSqrtPi = 0.56418958354775628695;
constexpr double kLog2e = 1.44269504088896340736;

namespace detail {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
// Host float exp and log as plain arithmetic (Cephes-style, |rel err| < 2 ulp) so the compiler can
// vectorise the CPU inner loops; a libm call keeps them scalar (4–16× slower; log: 18×).
// exp_poly_core takes x in [−87.3, 88.7] (or NaN); the callers clamp only the sides they can reach.
// Below the normal range the callers return 0, as libm's exp does for −inf (and from −103.9 on):
// g′(±inf) of sigmoid, erf, piecewise_exp and q_pseudo_spike is then exactly 0 like the reference's,
// so an infinite ∂L/∂S times g′ gives the reference's NaN, not ±inf (the result of the clamp,
// 2^−126, times inf). Between −87.3 and −103.9 libm gives subnormals: an absolute error < 1.2e-38.
inline float exp_poly_core(float x) {
  // n = round(x·log2 e) with the 1.5·2^23 shifter (exact for |x·log2 e| < 2^22). The shifter carries
  // the exponent bias too: t's low mantissa bits are n + 127, shifted into place below with no
  // float-to-int conversion.
  const float t = x * 1.44269504088896341f + 12583039.0f;  // 1.5·2^23 + 127
  const float n = t - 12583039.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // e^r ≈ 1 + r + r²·q(r) on |r| ≤ ln2/2, q of degree 3 fitted for relative error (1.1e-7 before
  // rounding, about one ulp): two multiply-adds fewer than Cephes' degree-7 form, in the loop that
  // bounds the backward.
  float y = 8.312469348e-3f;
  y = y * r + 4.189000279e-2f;
  y = y * r + 1.666711420e-1f;
  y = y * r + 4.999923110e-1f;
  y = y * r * r + r + 1.0f;
  return y * __builtin_bit_cast(float, __builtin_bit_cast(unsigned int, t) << 23);
}
inline float exp_poly(float x) {
  const float c = x < -87.3f ? -87.3f : x;
  const float r = exp_poly_core(c > 88.7f ? 88.7f : c);
  return x < -87.3f ? 0.0f : r;
}
// exp for x <= 0 (or NaN): one clamp less in the hot backward loops.
inline float exp_poly_nonpos(float x) {
  const float r = exp_poly_core(x < -87.3f ? -87.3f : x);
  return x < -87.3f ? 0.0f : r;
}
// 2^z for z <= 0 (or NaN), the same scheme in base 2: the reduction r = z − round(z) is exact (no
// two-constant ln 2 split), and the polynomial runs in Estrin's order (a shorter dependency chain
// than Horner's). The sigmoid surrogate's backward is bound by that chain's latency, not by
// arithmetic throughput: in cache, that loop measured 12–25 % faster than with exp_poly_nonpos.
// Max relative error 2.1e-7 over [−126, 0] (tests/test_cpu_math.py scans the floats there).
inline float exp2_poly_nonpos(float z0) {
  const float z = z0 < -126.0f ? -126.0f : z0;  // 2^−126: the smallest normal, n + 127 >= 1
  const float t = z + 12583039.0f;              // 1.5·2^23 + 127, as in exp_poly_core
  const float r = z - (t - 12583039.0f);        // exact, |r| <= 1/2
  // 2^r ≈ 1 + c1 r + … + c5 r⁵, fitted for relative error (9.5e-8 before rounding).
  const float r2 = r * r;
  const float p01 = 6.931470037e-1f * r + 1.0f;
  const float p23 = 5.550692603e-2f * r + 2.402224243e-1f;
  const float p45 = 1.327670878e-3f * r + 9.671509266e-3f;
  const float y = (p45 * r2 + p23) * r2 + p01;
  const float e = y * __builtin_bit_cast(float, __builtin_bit_cast(unsigned int, t) << 23);
  return z0 < -126.0f ? 0.0f : e;  // 0 below the normal range, as exp_poly
}
// log for finite x > 0 (the surrogates take logs of u >= 1); NaN passes through.
inline float log_poly(float x) {
  const int xi = __builtin_bit_cast(int, x);
  int e = ((xi >> 23) & 0xff) - 126;  // x = m·2^e, m in [0.5, 1)
  float m = __builtin_bit_cast(float, (xi & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;  // fold m into [√½, √2) − 1
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = float(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  const float r = m + y + fe * 0.693359375f;
  return x == x ? r : x;
}
SNN_HD float vexp(float x) { return exp_poly(x); }
SNN_HD float vexp_nonpos(float x) { return exp_poly_nonpos(x); }
SNN_HD float vexp2_nonpos(float x) { return exp2_poly_nonpos(x); }
SNN_HD float vlog(float x) { return log_poly(x); }
SNN_HD double vexp(double x) { return std::exp(x); }
SNN_HD double vexp_nonpos(double x) { return std::exp(x); }
SNN_HD double vexp2_nonpos(double x) { return std::exp2(x); }
#else
template <typename T> SNN_HD T vexp(T x) { return exp(x); }
template <typename T> SNN_HD T vexp_nonpos(T x) { return exp(x); }
template <typename T> SNN_HD T vexp2_nonpos(T x) { return exp2(x); }
#endif
// Overload resolution picks the float or double version on host and device alike.
template <typename T> SNN_HD T vlog(T x) { using std::log; return log(x); }
template <typename T> SNN_HD T vatan(T x) { using std::atan; return atan(x); }
template <typename T> SNN_HD T verfc(T x) { using std::erfc; return erfc(x); }
// fabs, not x < 0 ? −x : x: a sign-bit mask (one vector op) rather than a compare and a blend.
template <typename T> SNN_HD T vabs(T x) { using std::fabs; return fabs(x); }
template <typename T> SNN_HD T vclamp01(T x) { return x < T(0) ? T(0) : (x > T(1) ? T(1) : x); }
template <typename T> SNN_HD T vsigmoid(T x) { return T(1) / (T(1) + vexp(-x)); }
}  // namespace detail

// g′(x; a): the surrogate gradient.
template <int SG, typename T>
SNN_HD T sg_grad(T x, T a) {
  using namespace detail;
  if constexpr (SG == kSigmoid) {
    // a·σ(ax)·(1 − σ(ax)) = a·e/(1 + e)² with e = exp(−|ax|): one exp with no overflow side, and no
    // cancellation in 1 − σ where σ rounds to 1. e = 2^(−|(a·log2 e)·x|): the loops hoist a·log2 e.
    T e = vexp2_nonpos(-vabs((a * T(kLog2e)) * x)), u = T(1) + e;
    return a * e / (u * u);
  } else if constexpr (SG == kAtan) {
    T u = T(kPi / 2) * a * x;
    return a / (T(2) * (T(1) + u * u));
  } else if constexpr (SG == kRectangle) {
    return vabs(x) < T(0.5) / a ? a : T(0);
  } else if constexpr (SG == kTriangle) {
    T d = a - a * a * vabs(x);
    return d < T(0) ? T(0) : d;  // NaN passes, as torch.clamp(min=0)
  } else if constexpr (SG == kPiecewiseExp) {
    return a / T(2) * vexp(-a * vabs(x));
  } else if constexpr (SG == kSoftSign) {
    T u = T(1) + vabs(a * x);
    return a / (T(2) * u * u);
  } else if constexpr (SG == kSuperSpike) {
    T u = T(1) + a * vabs(x);
    return T(1) / (u * u);
  } else if constexpr (SG == kErf) {
    return a * T(kInvSqrtPi) * vexp_nonpos(-(a * x) * (a * x));
  } else if constexpr (SG == kQPseudoSpike) {
    T u = T(1) + T(2) * vabs(x) / (a - T(1));
    return vexp(-a * vlog(u));
  } else if constexpr (SG == kStraightThrough) {
    return T(1);
  } else {  // kSpikeGate
    return x >= T(0) ? T(1) : T(0);
  }
}

// g(x; a): the primitive, emitted by the noisy spike where the mask is 0.
template <int SG, typename T>
SNN_HD T sg_prim(T x, T a) {
  using namespace detail;
  if constexpr (SG == kSigmoid) {
    return vsigmoid(a * x);
  } else if constexpr (SG == kAtan) {
    return T(0.5) + vatan(T(kPi / 2) * a * x) / T(kPi);
  } else if constexpr (SG == kRectangle) {
    return vclamp01(a * x + T(0.5));
  } else if constexpr (SG == kTriangle) {
    T ax = a * x;
    if (ax <= T(-1)) return T(0);
    if (ax >= T(1)) return T(1);
    return ax < T(0) ? T(0.5) * (ax + T(1)) * (ax + T(1)) : T(1) - T(0.5) * (T(1) - ax) * (T(1) - ax);
  } else if constexpr (SG == kPiecewiseExp) {
    T e = T(0.5) * vexp(-a * vabs(x));
    return x < T(0) ? e : T(1) - e;
  } else if constexpr (SG == kSoftSign) {
    T ax = a * x;
    return T(0.5) * (ax / (T(1) + vabs(ax)) + T(1));
  } else if constexpr (SG == kSuperSpike) {
    return T(0.5) + x / (T(1) + a * vabs(x));
  } else if constexpr (SG == kErf) {
    return T(0.5) * verfc(-a * x);
  } else if constexpr (SG == kQPseudoSpike) {
    T u = T(1) + T(2) * vabs(x) / (a - T(1));
    T h = T(0.5) * vexp((T(1) - a) * vlog(u));
    return x >= T(0) ? T(1) - h : h;
  } else if constexpr (SG == kStraightThrough) {
    return x + T(0.5);
  } else {  // kSpikeGate
    return x < T(0) ? T(0) : x;  // NaN passes, as torch.clamp(min=0)
  }
}

// ∂g/∂a. Scaling family g = G(a x): x · g′(x) / a. Surrogates without a width: 0.
template <int SG, typename T>
SNN_HD T sg_dalpha(T x, T a) {
  using namespace detail;
  if constexpr (SG == kSuperSpike) {
    T u = T(1) + a * vabs(x);
    return -x * vabs(x) / (u * u);
  } else if constexpr (SG == kQPseudoSpike) {
    T ax = vabs(x);
    T u = T(1) + T(2) * ax / (a - T(1));
    T lu = vlog(u);
    T dh = T(0.5) * vexp((T(1) - a) * lu) * (-lu + T(2) * ax / ((a - T(1)) * u));
    return x >= T(0) ? -dh : dh;
  } else if constexpr (SG == kStraightThrough || SG == kSpikeGate) {
    return T(0);
  } else {
    return x * sg_grad<SG>(x, a) / a;
  }
}

// Runtime dispatch for code paths where a uniform switch is cheaper than instantiating per id.
#define SNN_FAST_SURROGATE_CASES(MACRO) \
  MACRO(kSigmoid) MACRO(kAtan) MACRO(kRectangle) MACRO(kTriangle) MACRO(kPiecewiseExp) \
  MACRO(kSoftSign) MACRO(kSuperSpike) MACRO(kErf) MACRO(kQPseudoSpike) MACRO(kStraightThrough) \
  MACRO(kSpikeGate)
#define SNN_COUNT(ID) +1
static_assert(0 SNN_FAST_SURROGATE_CASES(SNN_COUNT) == kNumSurrogates, "one case per surrogate id");
#undef SNN_COUNT

template <typename T>
SNN_HD T sg_prim_rt(int sg, T x, T a) {
  switch (sg) {
#define SNN_CASE(ID) case ID: return sg_prim<ID>(x, a);
    SNN_FAST_SURROGATE_CASES(SNN_CASE)
#undef SNN_CASE
  }
  return T(0);
}

// g′ and, when WANT_DALPHA, ∂g/∂α in one switch, so each case shares its subexpressions
// (sg_dalpha of the scaling family reuses sg_grad). The CUDA backward calls this once per element.
template <bool WANT_DALPHA, typename T>
SNN_HD void sg_grad_dalpha_rt(int sg, T x, T a, T& gp, T& dga) {
  switch (sg) {
#define SNN_CASE(ID)                                           \
  case ID:                                                     \
    gp = sg_grad<ID>(x, a);                                    \
    dga = WANT_DALPHA ? sg_dalpha<ID>(x, a) : T(0);            \
    return;
    SNN_FAST_SURROGATE_CASES(SNN_CASE)
#undef SNN_CASE
  }
  gp = T(0);
  dga = T(0);
}

}  // namespace snn_fast
