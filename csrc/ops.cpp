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
  // LIF family over the whole T loop. x [T, N] contiguous, v0 [N] (x.dtype), params [3] = (k = 1/τ,
  // θ, α) in float32 (float64 for float64 x). mode: bit 0 = fire only on H > θ (Θ(0) = 0), bits 1–2 =
  // the reset timing (0 after the spike, 1 delayed, 2 none: snn_fast/ops/lif/config.py). Returns (s [T, N], v_last [N], v_seq [T, N] or [0],
  // saved: whatever this backend keeps for the backward, possibly empty).
  m.def(
      "lif_fwd(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, int surrogate, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool return_v_seq, int mode=0) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x [T, N], grad_v0 [N], grad_params [3] (zeros unless need_param_grad)).
  m.def(
      "lif_bwd(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, Tensor params, "
      "Tensor? noise_mask, Tensor saved, Tensor s, int surrogate, bool hard_reset, float v_reset, "
      "bool decay_input, bool detach_reset, float reset_residual, bool need_param_grad, int mode=0) "
      "-> (Tensor, Tensor, Tensor)");
  // The same pair with save="recompute" (CUDA only): `saved` is the membrane V every K = 8 steps,
  // [ceil(T/K) − 1, N] in the accumulation dtype (float32; float64 for float64 x), empty for T <= K;
  // the backward re-runs the forward from x and those checkpoints (csrc/cuda/lif_cuda.h).
  m.def(
      "lif_fwd_recompute(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, int surrogate, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool return_v_seq, int mode=0) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lif_bwd_recompute(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, "
      "Tensor params, Tensor? noise_mask, Tensor saved, Tensor s, int surrogate, bool hard_reset, float v_reset, "
      "bool decay_input, bool detach_reset, float reset_residual, bool need_param_grad, int mode=0) "
      "-> (Tensor, Tensor, Tensor)");
  // A user-registered surrogate on the CPU (snn_fast/ops/lif/custom_cpu.py), whose g′ only torch can
  // evaluate: lif_fwd_keep_arg is lif_fwd whose `saved` is D = H − θ for every step, [T, N] in params'
  // dtype (save="state"); lif_sg_arg re-runs the forward and returns that D (save="recompute"; the
  // emitted values s replace the spike in the reset where noise_mask is given: the forward's analog
  // ones, from the user's g); the caller evaluates g′(D) (and ∂g/∂α(D)) in torch; lif_bwd_given_sg is
  // lif_bwd's walk with those read per element instead of a built-in surrogate (sg_dalpha required
  // with need_param_grad). Same flags and results as lif_fwd / lif_bwd otherwise. CPU only.
  m.def(
      "lif_fwd_keep_arg(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, int surrogate, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool return_v_seq) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lif_sg_arg(Tensor x, Tensor v0, Tensor params, Tensor? noise_mask, Tensor s, bool hard_reset, "
      "float v_reset, bool decay_input) -> Tensor");
  m.def(
      "lif_bwd_given_sg(Tensor grad_s, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor x, Tensor v0, "
      "Tensor params, Tensor? noise_mask, Tensor s, Tensor sg_grad, Tensor? sg_dalpha, bool hard_reset, "
      "float v_reset, bool decay_input, bool detach_reset, float reset_residual, bool need_param_grad) "
      "-> (Tensor, Tensor, Tensor)");

  // Introspection of the CPU output cache (csrc/cpu/output_cache.h):
  // [cached bytes, live bytes, hits, misses], and a way to give its blocks back.
  m.def("cpu_cache_stats() -> int[]");
  m.def("cpu_cache_clear() -> ()");
  // An uninitialised contiguous tensor shaped like `like`, of its dtype, from that cache: for large
  // buffers filled from Python (custom_cpu.py's g′), which would otherwise fault their pages in anew
  // on every call.
  m.def("cpu_cache_empty_like(Tensor like) -> Tensor");

  // Tempotron (SPEC §5): the membrane V [B, O, T] of O tempotrons driven by input spike times
  // t_in [B, I] (negative = no spike; float32, float64 with a float64 weight) through weight [O, I],
  // without the [B, I, T] PSP tensor. V = scale·Σ W·K̃ with K̃ = K/(1/τ_s − 1/τ) (snn_fast/tempotron.h;
  // scale = v0·(1/τ_s − 1/τ), finite at τ = τ_s). 'v_max' and 'spikes' are computed from V.
  m.def("tempotron_fwd(Tensor t_in, Tensor weight, int T, float tau, float tau_s, float scale) -> Tensor");
  // Returns (grad_t_in [B, I] or [0] unless need_t_grad, grad_weight [O, I] or [0] unless need_w_grad).
  m.def(
      "tempotron_bwd(Tensor grad_v, Tensor t_in, Tensor weight, float tau, float tau_s, float scale, "
      "bool need_t_grad, bool need_w_grad) -> (Tensor, Tensor)");
}
