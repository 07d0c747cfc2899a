// Every schema of snn_fast, declared once. Each device registers its kernels with
// TORCH_LIBRARY_IMPL(snn_fast, CPU|CUDA, m) in csrc/cpu/ and csrc/cuda/; Python adds the fake
// (meta) functions and autograd in snn_fast/ops/*/function.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import snn_fast._C` loads this library, which runs the registrations below. The module itself is
// empty: Python reaches the ops through torch.ops.snn_fast, never through pybind.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(snn_fast, m) {
  // LIF family over the whole T loop. x [T, N] contiguous, v0 [N] (x.dtype; or [1] for N > 1: one start
  // for every neuron, no gradient computed for it, lif_checks.h uniform_v0), params [3] = (k = 1/τ,
  // θ, α) in float32 (float64 for float64 x). strict_threshold: fire on H > θ only (Θ(0) = 0);
  // reset_timing: 0 after the spike, 1 delayed, 2 none (snn_fast/ops/lif/args.py RESET_TIMINGS;
  // docs/spec.md §2; the CUDA kernels run 0 only). Returns (s [T, N], v_last [N], v_seq [T, N] or [0],
  // saved). `save` (csrc/common/lif_checks.h) says what `saved` holds for lif_bwd: 0 "state" (CUDA:
  // H, [T, N] in x's dtype), 1 "recompute" (CUDA: V every K = 8 steps, [ceil(T/K) − 1, N] in params'
  // dtype, csrc/cuda/lif_cuda.h), 2 nothing (inference), 3 (CPU) D = H − θ of every step, [T, N] in
  // params' dtype, for a surrogate evaluated outside the kernel. The CPU kernel saves nothing for 0-2:
  // its backward re-runs the forward. The Triton ops (snn_fast/ops/lif/triton.py) and the
  // user-surrogate ops (custom_cpu.py) have these same two schemas (contract.py holds them too;
  // tests/test_lif.py checks that they agree).
  m.def(
      "lif_fwd(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, int surrogate, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, "
      "int reset_timing, bool return_v_seq, int save) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T, N], grad_v0 like v0 (NaN for a [1] v0), grad_params [3] (zeros unless
  // need_param_grad)). `saved` and `save` are the forward's. sg_grad (and sg_dalpha, required with
  // need_param_grad): g′(H − θ) and ∂g/∂α(H − θ) given per element, [T, N] in params' dtype, instead
  // of the built-in surrogate's (the CPU kernel only: a user's surrogate, evaluated in torch); `s` is
  // read only then, under a noise mask (the emitted values stand in the reset).
  m.def(
      "lif_bwd(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
      "Tensor? noise_mask, Tensor saved, Tensor s, Tensor? sg_grad, Tensor? sg_dalpha, int surrogate, "
      "bool hard_reset, float v_reset, bool decay_input, bool detach_reset, float reset_residual, "
      "bool strict_threshold, int reset_timing, int save, bool need_param_grad) -> (Tensor, Tensor, Tensor)");
  // D = H − θ for every step, re-running the forward (CPU): what save=3 keeps, for a backward whose
  // forward saved nothing. Under a noise mask the emitted values s replace the spike in the reset.
  m.def(
      "lif_sg_arg(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, Tensor s, bool hard_reset, "
      "float v_reset, bool decay_input) -> Tensor");
  // lif_bwd for a user's surrogate compiled to C++ on this machine (snn_fast/ops/lif/native_surrogate.py):
  // `kernel` is the address of that library's walk for x's dtype, `abi` its ABI version (checked
  // against this build's). The default firing and reset, no noise mask. Returns what lif_bwd returns.
  m.def(
      "lif_bwd_native(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
      "int kernel, int abi, bool hard_reset, float v_reset, bool decay_input, bool detach_reset, "
      "float reset_residual, bool need_param_grad) -> (Tensor, Tensor, Tensor)");

  // Batch norm + LIF in one op (docs/spec.md §12): x [T, N] with N = B·C·inner (channel of element n:
  // (n / inner) % C), the LIF op's v0, params and flags, and per channel weight, bias, mean, rstd
  // ([C] in params' dtype). The charge's input is X' = (x − mean)·a + bias with a = weight·rstd·gain,
  // gain = tdbn_alpha·θ when tdbn_alpha > 0 (tdBN), else 1. Returns what lif_fwd returns; `save` as
  // lif_fwd's (the CPU kernel saves nothing: its backward re-runs the forward). batch_stats: mean and
  // rstd are x's own (training); the forward does not read it, the backward does.
  m.def(
      "bn_lif_fwd(Tensor x, Tensor v0, Tensor params, Tensor weight, Tensor bias, Tensor mean, Tensor rstd, "
      "float tdbn_alpha, int inner, bool batch_stats, Tensor? noise_mask, int surrogate, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, "
      "int reset_timing, bool return_v_seq, int save) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_v0, grad_params [3], grad_weight [C], grad_bias [C]). batch_stats: mean and
  // rstd are x's own batch statistics (training), so grad_x includes the gradient through them.
  m.def(
      "bn_lif_bwd(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
      "Tensor weight, Tensor bias, Tensor mean, Tensor rstd, float tdbn_alpha, int inner, bool batch_stats, "
      "Tensor? noise_mask, Tensor saved, Tensor s, int surrogate, bool hard_reset, float v_reset, "
      "bool decay_input, bool detach_reset, float reset_residual, bool strict_threshold, int reset_timing, "
      "int save, bool need_param_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // bn_lif_bwd for a user's surrogate compiled to C++ on this machine (snn_fast/ops/lif/native_surrogate.py,
  // as lif_bwd_native): `kernel` the address of that library's bn_lif walk for x's dtype, `abi` its
  // ABI tag (checked against this build's). The reset after the spike, no noise mask.
  m.def(
      "bn_lif_bwd_native(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, "
      "Tensor params, Tensor weight, Tensor bias, Tensor mean, Tensor rstd, float tdbn_alpha, int inner, "
      "bool batch_stats, int kernel, int abi, bool hard_reset, float v_reset, bool decay_input, "
      "bool detach_reset, float reset_residual, bool strict_threshold, bool need_param_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Per-channel batch statistics of x [T, N] over (T, B, inner), in params' dtype (float64 for
  // float64 x, else float32), computed in double from one read of x: (mean, rstd = 1/√(var + eps) of
  // the biased variance, the unbiased variance for the running statistics). One op for what took
  // var_mean, add, rsqrt and a scale (a small layer's step is host-bound on a GPU).
  m.def("bn_lif_stats(Tensor x, int C, int inner, float eps) -> (Tensor, Tensor, Tensor)");
  // Whether the CPU kernel's training backward goes channel by channel for x [T, N] of C channels'
  // runs of `inner` in a storage dtype of `element_size` bytes, with ∂L/∂v_seq and a noise mask given
  // or not (csrc/cpu/bn_lif_cpu_kernels.h backward_by_channel; snn_fast/ops/bn_lif/memory.py mirrors
  // it for the byte model, and tests hold the two equal).
  m.def("bn_lif_cpu_backward_by_channel(int T, int N, int C, int inner, int element_size, bool grad_v_seq, "
        "bool mask) -> bool");

  // Introspection of the CPU output cache (csrc/cpu/output_cache.h):
  // [cached bytes, live bytes, hits, misses], and a way to give its blocks back.
  m.def("cpu_cache_stats() -> int[]");
  m.def("cpu_cache_clear() -> ()");
  // An uninitialised contiguous tensor shaped like `like`, of its dtype, from that cache: for large
  // buffers filled from Python (custom_cpu.py's g′), which would otherwise fault their pages in anew
  // on every call.
  m.def("cpu_cache_empty_like(Tensor like) -> Tensor");

  // Tempotron (docs/spec.md §6): the membrane V [B, O, T] of O tempotrons driven by input spike times
  // t_in [B, I] (negative = no spike; float32, float64 with a float64 weight) through weight [O, I],
  // without the [B, I, T] PSP tensor. V = scale·Σ W·K̃ with K̃ = K/(1/τ_s − 1/τ) (snn_fast/tempotron.h;
  // scale = v0·(1/τ_s − 1/τ), finite at τ = τ_s). 'v_max' and 'spikes' are computed from V.
  m.def("tempotron_fwd(Tensor t_in, Tensor weight, int T, float tau, float tau_s, float scale) -> Tensor");
  // Returns (grad_t_in [B, I] or [0] unless need_t_grad, grad_weight [O, I] or [0] unless need_w_grad).
  m.def(
      "tempotron_bwd(Tensor grad_v, Tensor t_in, Tensor weight, float tau, float tau_s, float scale, "
      "bool need_t_grad, bool need_w_grad) -> (Tensor, Tensor)");
}
