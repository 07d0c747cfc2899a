// The LIF flags as one saved integer, shared by the C++ autograd of lif_fwd and bn_lif_fwd: each
// ctx->saved_data entry is a hash-map insert in the forward and a lookup in the backward, per layer
// and step (ten entries cost ~1 µs of host time, measured), so the flags travel packed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace snn_fast {
namespace autograd_flags {

// The surrogate id in the low 32 bits, then one bit per bool, then reset_timing and save (each < 256:
// the ops refuse other codes before anything is saved). Bits 37-39 are free for an op's own bools.
constexpr int kHardReset = 32, kDecayInput = 33, kDetachReset = 34, kStrict = 35, kReturnVSeq = 36;
constexpr int kOpBit0 = 37;
constexpr int kTimingShift = 40, kSaveShift = 48;

inline int64_t pack_flags(int64_t sg, bool hard_reset, bool decay_input, bool detach_reset, bool strict,
                          int64_t timing, bool return_v_seq, int64_t save) {
  return (sg & 0xffffffff) | int64_t(hard_reset) << kHardReset | int64_t(decay_input) << kDecayInput |
         int64_t(detach_reset) << kDetachReset | int64_t(strict) << kStrict | int64_t(return_v_seq) << kReturnVSeq |
         (timing & 0xff) << kTimingShift | (save & 0xff) << kSaveShift;
}

inline bool flag(int64_t f, int bit) { return (f >> bit) & 1; }
inline int64_t surrogate_of(int64_t f) { return f & 0xffffffff; }
inline int64_t timing_of(int64_t f) { return (f >> kTimingShift) & 0xff; }
inline int64_t save_of(int64_t f) { return (f >> kSaveShift) & 0xff; }

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

}  // namespace autograd_flags
}  // namespace snn_fast
