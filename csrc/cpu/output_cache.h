// A small cache of large CPU blocks for the fused kernels' outputs (s, v_seq, grad_x, v_T, grad_v0).
//
// Why: glibc returns a freed block of tens of MiB to the OS (trim / munmap) and the next step's
// allocation of the same size faults every 4 KiB page in again. At W4 ([16, 32, 8192] float32) that
// was ~8000 page faults and 10–14 ms per forward+backward on the dev VM, three times the kernels'
// own time, and it came and went with the allocator's state. Training repeats the same shapes, so a
// freed block is kept (up to a cap) and handed to the next request of the same size, as the CUDA
// caching allocator does on the GPU.
//
// Only blocks >= 1 MiB go through it. The cap is SNN_FAST_CPU_CACHE_MB (default 1024; 0 turns the
// cache off), read once. Allocations are reported to the torch profiler like any CPU allocation, so
// memory profiles (and our peak-memory benchmark column) still see them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace snn_fast {

// at::empty(sizes, dtype) on the CPU, contiguous, through the cache when large enough.
at::Tensor empty_cpu_cached(at::IntArrayRef sizes, at::ScalarType dtype);

// ∂L/∂v0 of the LIF and bn_lif backwards, shaped like v0 (contiguous), from the cache. For a start
// that every neuron shares (`uniform`: v0 is [1], lif_checks.h uniform_v0) the kernels compute none,
// so it is NaN, never a number that could pass for a gradient.
at::Tensor empty_cpu_cached_grad_v0(const at::Tensor& v0, bool uniform);

// A small CPU tensor of `values` in `dtype` (the backwards' parameter gradients), written in place:
// at::tensor(values, double).to(dtype) took ~15 µs of dispatch and a conversion kernel per tensor,
// a third of a small layer's backward node (W1s: [4, 2, 64] fwd+bwd, 1 thread).
at::Tensor cpu_tensor_of(const std::vector<double>& values, at::ScalarType dtype);

// {bytes held in free blocks, bytes live in handed-out blocks, cache hits, misses}.
std::vector<int64_t> cpu_cache_stats();
// Frees every cached block (live blocks are unaffected).
void cpu_cache_clear();

}  // namespace snn_fast
