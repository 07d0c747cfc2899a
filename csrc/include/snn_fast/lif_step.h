// One LIF step, forward and backward (docs/spec.md §2, §4), shared by the CPU kernels, the CUDA kernels and
// the CUDA kernels' host emulator: the same functions, with the same flags, in all three.
//
// Parametrisation: k = 1/τ (0 for IF), cx = k (decay_input) or 1, vr = v_reset (hard) or 0 (soft).
//   charge  H = V + (X − (V − vr))·k        (decay_input)
//           H = V − (V − vr)·k + X          (otherwise)
//   fire    S = Θ(H − θ) (Θ(0) = 1; Θ(0) = 0 with strict), or g(H − θ) where the noise mask is 0
//   reset   V = S·vr + (1 − S)·H (hard)  |  V = H − S·θ (soft)          (timing kResetAfterFire)
// Reset timings (snn_fast/ops/lif/args.py RESET_TIMINGS):
//   kResetDelayed: V = H (the pre-reset membrane is carried); the next step first applies the pending
//     reset R = Θ(V − θ), recomputed from V without a gradient: hard V ← R·vr + (1 − R)·V before
//     the charge, soft H ← H − R·θ after it.
//   kResetNone: V = H, no reset.
// The strict threshold and the timing are fields of LIFParams (set_firing). The strictness is read at
// run time by every caller: the spike is d ≥ p.fire_min, one comparison against a loop-invariant
// bound (0, or the least subnormal for Θ(0) = 0), which vectorises like d ≥ 0. The timing is the
// template argument TIMING of the functions below: a constant for the CPU kernels (one instantiation
// per timing, so each loop holds only its own step: a runtime timing test inside the step keeps GCC
// from vectorising it, an order of magnitude slower), or kRuntimeTiming, p.timing, for the CUDA
// kernels (load_params sets it to a constant, so its branches fold away there too).
//
// Every function evaluates the reference's expression (snn_fast/ops/lif/reference.py) in the
// reference's operation order under IEEE arithmetic, so fp32 kernels round exactly like the fp32
// reference (spikes do not flip between them) and ±inf, NaN and values near the dtype's max give
// the reference's answer: e.g. a hard reset of H = +inf is 1·vr + 0·inf = NaN there and here.
//
// The flags are template parameters (HARD: hard reset, DI: decay_input, DETACH: detach_reset), so
// each instantiation holds its own formula and nothing else. Two forms once lived here and must not
// come back: blending both forms with 0/1 factors (0·inf = NaN: an infinite X or H gave NaN, or lost
// a spike, where the reference has a number) and forking on __CUDA_ARCH__ (the CPU tests and the
// emulator never ran the device branch they vouch for). Callers turn runtime flags into template
// arguments with with_flags: the CPU kernels once per block, the CUDA kernels per element (a
// uniform branch, free there).
#pragma once

#include "snn_fast/surrogate.h"

namespace snn_fast {

// LIFParams::timing (the ops' reset_timing; args.RESET_TIMINGS' order). kResetAfterFirePending
// (snnTorch reset_delay=False) exists only in the reference; the bindings refuse it.
constexpr int kResetAfterFire = 0;
constexpr int kResetDelayed = 1;
constexpr int kResetNone = 2;

template <typename T>
struct LIFParams {
  T k;       // leak 1/τ
  T theta;   // threshold θ
  T alpha;   // surrogate width α
  T vr;      // reset value (hard) or 0 (soft)
  T kappa;   // reset_residual κ
  int sg;    // surrogate id
  bool hard_reset;
  bool decay_input;
  bool detach_reset;
  T fire_min = T(0);             // fire on H − θ ≥ fire_min: 0, or (strict, Θ(0) = 0) the least subnormal
  int timing = kResetAfterFire;  // kResetAfterFire | kResetDelayed | kResetNone
};

// The least positive subnormal: d > 0 ⇔ d ≥ it for every d, NaN included (false), as long as
// subnormal operands are not read as zero (no build of ours sets denormals-are-zero; under
// torch.set_flush_denormal(True) a strict threshold fires at H = θ). So the strict threshold is the
// same single comparison as Θ(0) = 1 against another loop-invariant bound, not a select between two
// comparisons.
SNN_HD constexpr float least_subnormal(float) { return 0x1p-149f; }
SNN_HD constexpr double least_subnormal(double) { return 0x1p-1074; }

// The ops' strict_threshold and reset_timing into p.
template <typename T>
SNN_HD void set_firing(LIFParams<T>& p, bool strict, int timing) {
  p.fire_min = strict ? least_subnormal(T(0)) : T(0);
  p.timing = timing;
}
// The default firing and reset (Θ(0) = 1, reset after the spike): what a user's surrogate runs.
template <typename T>
SNN_HD bool default_firing(const LIFParams<T>& p) {
  return p.fire_min == T(0) && p.timing == kResetAfterFire;
}

// TIMING: the reset timing as a compile-time constant (kResetAfterFire, kResetDelayed, kResetNone),
// or kRuntimeTiming: p.timing.
constexpr int kRuntimeTiming = -1;

// HARDF: the hard reset as a compile-time flag (0, 1) for the timing branches below, or kRuntimeFlag:
// p.hard_reset. The CPU kernels fix it, so that the delayed timing's pending reset is no
// loop-invariant test inside their loops (GCC did not vectorise the backward walk with it).
constexpr int kRuntimeFlag = -1;
template <int F>
SNN_HD bool flag_or(bool runtime) {
  if constexpr (F == kRuntimeFlag) {
    return runtime;
  } else {
    return F != 0;
  }
}

// The reset timing under TIMING: a constant unless TIMING is kRuntimeTiming, so the timing branches of
// the functions below fold away in a fixed-timing instantiation.
template <int TIMING, typename T>
SNN_HD int lif_timing(const LIFParams<T>& p) {
  if constexpr (TIMING == kRuntimeTiming) {
    return p.timing;
  } else {
    return TIMING;
  }
}

// A compile-time flag (std::bool_constant without <type_traits>' host-only parts).
template <bool B>
struct Flag {
  static constexpr bool value = B;
};

namespace detail {
template <bool... Bs, typename F>
SNN_HD void with_flags_impl(F& f) {
  f(Flag<Bs>{}...);
}
template <bool... Bs, typename F, typename... Rest>
SNN_HD void with_flags_impl(F& f, bool b, Rest... rest) {
  if (b) with_flags_impl<Bs..., true>(f, rest...);
  else with_flags_impl<Bs..., false>(f, rest...);
}
}  // namespace detail

// Calls f(Flag<b0>{}, Flag<b1>{}, …) for runtime bools b0, b1, …: one instantiation of f per
// combination, selected by branches.
template <typename F, typename... Bools>
SNN_HD void with_flags(F&& f, Bools... b) {
  detail::with_flags_impl<>(f, bool(b)...);
}

namespace detail {
// a·b rounded on its own: the one device/host shim of the step math. nvcc contracts a·b + c into an
// FMA by default (--fmad=true), which rounds once instead of twice and would let the CUDA charge
// drift from the fp32 reference by an ulp, enough to flip a spike sitting on θ. __fmul_rn is never
// contracted, and every product of the charge and the reset goes through here, so the adds around
// them have no product left to fuse with. The host twin is the plain product: host code is built
// with -ffp-contract=off (setup.py, and the emulator's build in tests/test_cuda_compile.py: nvcc's
// host compiler contracts by default where the target has FMA), so it rounds once, the same.
// tests/test_cuda_compile.py checks both sides: the host charge against step-by-step correctly rounded
// arithmetic, and the device charge's PTX for the absence of fma.
SNN_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SNN_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Forward

// Θ(d) as a bool, Θ(0) = 1 or (strict) 0; NaN: false, as the reference's comparison.
template <typename T>
SNN_HD bool lif_fires(T d, const LIFParams<T>& p) {
  return d >= p.fire_min;
}

// The hard spike Θ(H − θ) as 0/1.
template <typename T>
SNN_HD T lif_spike(T h, const LIFParams<T>& p) {
  return lif_fires(h - p.theta, p) ? T(1) : T(0);
}

// The membrane the charge starts from: V itself, or with kResetDelayed and a hard reset the pending
// reset R·vr + (1 − R)·V applied first (R = Θ(V − θ)).
template <typename T, int TIMING = kRuntimeTiming, int HARDF = kRuntimeFlag>
SNN_HD T lif_pending_hard(T v, const LIFParams<T>& p) {
  using detail::mul_rn;
  if (lif_timing<TIMING>(p) == kResetDelayed && flag_or<HARDF>(p.hard_reset)) {
    const T r = lif_spike(v, p);
    return mul_rn(r, p.vr) + mul_rn(T(1) - r, v);
  }
  return v;
}

template <bool DI, typename T, int TIMING = kRuntimeTiming, int HARDF = kRuntimeFlag>
SNN_HD T lif_charge(T v, T x, const LIFParams<T>& p) {
  using detail::mul_rn;
  if (lif_timing<TIMING>(p) == kResetDelayed) {  // the pending reset of the carried (pre-reset) membrane
    const bool hard = flag_or<HARDF>(p.hard_reset);
    const T r = lif_spike(v, p);
    if (hard) v = mul_rn(r, p.vr) + mul_rn(T(1) - r, v);
    T h;
    if constexpr (DI) {
      h = v + mul_rn(x - (v - p.vr), p.k);
    } else {
      h = (v - mul_rn(v - p.vr, p.k)) + x;
    }
    return hard ? h : h - mul_rn(r, p.theta);
  }
  if constexpr (DI) {
    return v + mul_rn(x - (v - p.vr), p.k);
  } else {
    return (v - mul_rn(v - p.vr, p.k)) + x;
  }
}

// The input of bn_lif (docs/spec.md §12): batch norm folded into the charge, X' = (x − m)·a + b per
// channel, with xc = x − m formed by the caller (the backward keeps it for the channel sums). The
// product is rounded on its own like the charge's, so CPU and CUDA give the same X'.
template <typename T>
SNN_HD T bn_input(T xc, T a, T b) {
  return detail::mul_rn(xc, a) + b;
}

// Emitted value: the spike where the mask is on, g(H − θ) where it is off (docs/spec.md §4). A select, so an
// all-True mask gives exactly the unmasked result. lif_fire_rt: the surrogate as a runtime id.
template <int SG, typename T>
SNN_HD T lif_fire(T h, bool mask_on, const LIFParams<T>& p) {
  return mask_on ? lif_spike(h, p) : sg_prim<SG>(h - p.theta, p.alpha);
}
template <typename T>
SNN_HD T lif_fire_rt(T h, bool mask_on, const LIFParams<T>& p) {
  return mask_on ? lif_spike(h, p) : sg_prim_rt<T>(p.sg, h - p.theta, p.alpha);
}

// Unfused like the charge: with an analog (noisy) s these roundings matter; with a 0/1 spike the
// blend is still evaluated as written (H = ±inf or NaN with S = 1 gives NaN, as the reference).
template <bool HARD, typename T, int TIMING = kRuntimeTiming>
SNN_HD T lif_reset(T h, T s, const LIFParams<T>& p) {
  using detail::mul_rn;
  if (lif_timing<TIMING>(p) != kResetAfterFire) return h;  // the pre-reset membrane is carried
  if constexpr (HARD) {
    return mul_rn(s, p.vr) + mul_rn(T(1) - s, h);
  } else {
    return h - mul_rn(s, p.theta);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward: the reference's autograd graph of one step. dv = ∂L/∂V_t (all paths), grad_s = ∂L/∂S_t
// from the output, gp = g′(H − θ), dga = ∂g/∂α there. Flags select terms, nothing is multiplied by a
// 0/1 flag, and 1 − S, ε − ε·k keep the reference's products, so for finite incoming gradients a
// non-finite H, X or V gives NaN and ±inf exactly where the reference does (the CPU kernel and the
// emulator are tested on that). One grouping differs: ∂L/∂S_t takes dv·((vr + κ) − H) where autograd
// adds dv·vr − dv·H + κ·dv; they differ only for an infinite ∂L/∂V supplied by the caller.

// ∂L/∂S_t: the output's gradient, the reset's (unless detached) and κ's. vr + κ is loop-invariant
// (hoisted by the compiler): one subtraction per element, as many operations as the earlier
// c0 + c1·H form.
// EXACT_K0 (detach_reset only): the reference adds κ·(S − detach(S)) only for κ ≠ 0, so with κ = 0
// its ∂L/∂S_t never sees dv; 0·dv would be NaN for a NaN or infinite dv (after a NaN step) and reach
// ∂L/∂θ, ∂L/∂α where the reference's stay finite (g′(NaN) is finite for straight_through, rectangle,
// spike_gate; docs/spec.md §9). The select on the loop-invariant κ costs the CPU
// loops a blend. The CUDA kernels pass false: the select (or a κ = 0 flag) pushes their fp16/bf16 ×8
// parameter-gradient instantiations over the 128-register cap (8 B spilled, sm_80 and sm_90),
// so there alone that case keeps 0·dv until a register-lighter backward.
template <bool HARD, bool DETACH, typename T, bool EXACT_K0 = true>
SNN_HD T lif_grad_s(T grad_s, T dv, T h, const LIFParams<T>& p) {
  if constexpr (DETACH) {
    if constexpr (EXACT_K0) {
      return p.kappa != T(0) ? grad_s + dv * p.kappa : grad_s;
    } else {
      return grad_s + dv * p.kappa;
    }
  } else if constexpr (HARD) {
    return grad_s + dv * ((p.vr + p.kappa) - h);
  } else {
    return grad_s + dv * (p.kappa - p.theta);
  }
}

// ε = ∂L/∂H_t: through the reset (1 − S, or 1 for soft) and through the spike.
template <bool HARD, typename T>
SNN_HD T lif_grad_h(T dv, T s, T ds, T gp) {
  if constexpr (HARD) {
    return dv * (T(1) - s) + ds * gp;
  } else {
    return dv + ds * gp;
  }
}

// ∂L/∂X_t = ε·cx.
template <bool DI, typename T>
SNN_HD T lif_grad_x(T eps, const LIFParams<T>& p) {
  if constexpr (DI) {
    return eps * p.k;
  } else {
    return eps;
  }
}

// ∂L/∂V_{t−1} = ε − ε·k, as the reference's autograd adds the paths through V_{t−1} (ε) and through
// V_{t−1} − vr (−ε·k). Written ε·(1 − k), an infinite ε would give ±inf where the reference gets
// NaN. Same cost where FMAs are allowed (one fnmadd).
template <typename T>
SNN_HD T lif_grad_v_prev(T eps, const LIFParams<T>& p) {
  return eps - eps * p.k;
}
// The same where a pending hard reset (kResetDelayed) may sit between V_{t−1} and the charge:
// ∂V′/∂V_{t−1} = 1 − R. Needs V_{t−1}; the other timings give lif_grad_v_prev(eps, p).
template <typename T, int TIMING = kRuntimeTiming, int HARDF = kRuntimeFlag>
SNN_HD T lif_grad_v_prev(T eps, T v_prev, const LIFParams<T>& p) {
  const T d = eps - eps * p.k;
  if (lif_timing<TIMING>(p) == kResetDelayed && flag_or<HARDF>(p.hard_reset)) return d * (T(1) - lif_spike(v_prev, p));
  return d;
}

// ∂H_t/∂k of the charge (default timing; the delayed one with V′ for V_{t−1}): X − (V_{t−1} − vr) with
// decay_input, else −(V_{t−1} − vr). A step's ∂L/∂k is ε times this; negation is exact, so ε·(−a)
// rounds as −(ε·a) does.
template <bool DI, typename T>
SNN_HD T lif_dh_dk(T v_prev, T x, const LIFParams<T>& p) {
  if constexpr (DI) {
    return x - (v_prev - p.vr);
  } else {
    return -(v_prev - p.vr);
  }
}

// One step with parameter gradients, the default timing, with q = ∂H_t/∂k (lif_dh_dk) given: the CPU
// walk keeps q from its re-run instead of V_{t−1} and X. In: H, the emitted S, q, ∂L/∂S_t, dv, gp, dga.
template <bool HARD, bool DETACH, typename T, bool EXACT_K0 = true>
SNN_HD T lif_step_backward_q(T h, T s, T q, T grad_s, T dv, T gp, T dga, const LIFParams<T>& p, T& dk, T& dtheta,
                             T& dalpha) {
  const T ds = lif_grad_s<HARD, DETACH, T, EXACT_K0>(grad_s, dv, h, p);
  const T eps = lif_grad_h<HARD>(dv, s, ds, gp);
  if constexpr (HARD) {
    dtheta = -(ds * gp);
  } else {
    dtheta = -(ds * gp) - dv * s;  // θ also enters the soft reset directly
  }
  dalpha = ds * dga;
  dk = eps * q;
  return eps;
}

// One step with parameter gradients. In: H, the emitted S, V_{t−1}, X, ∂L/∂S_t, dv, gp, dga. Returns
// ε; writes this step's contributions to ∂L/∂k, ∂L/∂θ, ∂L/∂α. Scalars, not a struct: GCC's
// `omp simd` cannot vectorise a loop holding an aggregate local.
template <bool HARD, bool DI, bool DETACH, typename T, bool EXACT_K0 = true, int TIMING = kRuntimeTiming>
SNN_HD T lif_step_backward_g(T h, T s, T v_prev, T x, T grad_s, T dv, T gp, T dga, const LIFParams<T>& p,
                             T& dk, T& dtheta, T& dalpha) {
  if (lif_timing<TIMING>(p) != kResetAfterFire) {
    // V_t = H_t (+ κ·(S − detach S)): ∂L/∂S_t = grad_s + κ·dv, ε = dv + ∂L/∂S_t·g′. With kResetDelayed
    // the charge starts from V′ = the pending hard reset of V_{t−1}, and a soft one adds −R·θ to H.
    const T ds = lif_grad_s<false, true, T, EXACT_K0>(grad_s, dv, h, p);
    const T eps = dv + ds * gp;
    const bool pending = lif_timing<TIMING>(p) == kResetDelayed;
    const T vp = lif_pending_hard<T, TIMING, HARD>(v_prev, p);
    dtheta = -(ds * gp);
    if (pending && !HARD) dtheta = dtheta - eps * lif_spike(v_prev, p);
    dalpha = ds * dga;
    dk = eps * lif_dh_dk<DI>(vp, x, p);
    return eps;
  }
  return lif_step_backward_q<HARD, DETACH, T, EXACT_K0>(h, s, lif_dh_dk<DI>(v_prev, x, p), grad_s, dv, gp, dga, p,
                                                        dk, dtheta, dalpha);
}

// The same with the surrogate as a template argument (the CPU kernels: their loops vectorise).
template <int SG, bool HARD, bool DI, bool DETACH, typename T>
SNN_HD T lif_step_backward(T h, T s, T v_prev, T x, T grad_s, T dv, const LIFParams<T>& p, T& dk, T& dtheta,
                           T& dalpha) {
  const T xs = h - p.theta;
  return lif_step_backward_g<HARD, DI, DETACH, T>(h, s, v_prev, x, grad_s, dv, sg_grad<SG>(xs, p.alpha),
                                                  sg_dalpha<SG>(xs, p.alpha), p, dk, dtheta, dalpha);
}

// ------------------------------------------------------------------------------------------------
// The state the CUDA (and Triton) forward saves for the backward, one element of [T, N]:
//   float32 / float64: H itself. The backward recomputes S = Θ(H − θ) with the forward's own
//     comparison on the same H: bitwise the forward's spike.
//   float16 / bfloat16: D = H − θ rounded to the storage dtype, its sign bit then set to "no spike"
//     (cleared where H − θ ≥ 0, set elsewhere), so S = [sign bit of D clear] exactly. Rounding to
//     nearest keeps the sign of every other value (a negative H − θ that underflows is −0), so this
//     changes a bit only for H − θ = −0 (a spike: −0 ≥ 0) and NaN (no spike); testing D ≥ 0 after
//     rounding instead would flip spikes near θ. Where g′(H − θ) matters (H near θ) D keeps full
//     relative precision, which a rounded H would lose to cancellation; g′ and ∂g/∂α take D itself,
//     and H = D + θ serves the reset terms. Measured against the float64 reference
//     (snn_fast/ops/lif/triton.py's docstring has the table): grad_x errors 2–3× smaller than
//     storing H with the spike in its mantissa's lowest bit, the encoding this replaced.
//   Cost: b B/element written and read (b = storage size); saving H in float32 would cost 4.
// ------------------------------------------------------------------------------------------------

}  // namespace snn_fast
