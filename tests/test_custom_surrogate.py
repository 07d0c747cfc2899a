"""User-registered surrogates in the fused backends.

- registration refuses a g′ or ∂g/∂α that is not the derivative of g, non-finite values, wrong shapes
  and malformed Triton functions, naming the surrogate (and the worst point), registering nothing;
- backend choice: 'auto' takes the fastest backend that runs the surrogate; one named that cannot
  says so, naming backend and surrogate;
- the 'cpu' (custom_cpu.py) and 'triton' paths against the reference over the option grid of
  test_lif.py, in float64 and float32, with and without learnable τ/θ/α, noise mask and v_seq, and
  in float16/bfloat16 (test_lif.py's low-precision bound);
- the built-in sigmoid re-registered by a user gives Triton results equal to the built-in's bit for
  bit (the same code, inlined: no switch cost), and the CPU path's equal to the C++ kernel's within
  the float32 tolerance;
- torch.compile through the custom CPU ops (opaque custom ops, one graph);
- the CPU backward's user functions compiled by torch.compile: the eager path's gradients, one call
  per backward, the fallback (with its warning) when compilation fails, and the switches.
The surrogate contract itself (g′ against finite differences, through every kernel) runs on these
surrogates in test_surrogate.py; pickling in test_pickle.py.
"""
from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import snn_fast
from snn_fast import surrogate as sgm
from snn_fast.ops.lif.function import BACKENDS as LIF

import user_surrogates
from test_lif import BY_ID, LEARN, OPTIONS, SKIP, cases, check, compare, make, opt, run

HAS_C = snn_fast.HAS_C


@pytest.fixture(autouse=True, scope="module")
def _registered():
    user_surrogates.register_all()


def _sig(x, a):
    return torch.sigmoid(a * x)


def _sig_dg(x, a):
    s = torch.sigmoid(a * x)
    return a * s * (1 - s)


# --- registration checks ----------------------------------------------------------------------------
def test_wrong_derivative_refused_naming_the_worst_point():
    with pytest.raises(ValueError, match=r"surrogate 'bad_dg': g′ is not the derivative of g: worst at x = "
                                         r"[-0-9.e]+, a = 4"):
        sgm.register_surrogate("bad_dg", g=_sig, dg=lambda x, a: torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
                               alpha=4.0)
    assert "bad_dg" not in sgm.names()  # nothing registered


def test_wrong_dalpha_refused():
    with pytest.raises(ValueError, match="surrogate 'bad_da': dg_dalpha is not ∂g/∂α"):
        sgm.register_surrogate("bad_da", g=_sig, dg=_sig_dg, dg_dalpha=lambda x, a: _sig_dg(x, a), alpha=4.0)
    assert "bad_da" not in sgm.names()


def test_non_finite_refused():
    with pytest.raises(ValueError, match=r"surrogate 'bad_inf': dg\(x, a\) is not finite"):
        sgm.register_surrogate("bad_inf", g=lambda x, a: x + 0.5,
                               dg=lambda x, a: torch.where(x.abs() > 7, math.inf, 1.0).to(x.dtype))
    with pytest.raises(ValueError, match=r"surrogate 'bad_nan': g\(x, a\) is not finite \(nan\)"):
        sgm.register_surrogate("bad_nan", g=lambda x, a: torch.sqrt(x), dg=lambda x, a: 0.5 / torch.sqrt(x))


def test_bad_shape_and_alpha_refused():
    with pytest.raises(ValueError, match="dg\\(x, a\\) must return a tensor shaped like x"):
        sgm.register_surrogate("bad_shape", g=lambda x, a: x + 0.5, dg=lambda x, a: torch.ones(()))
    with pytest.raises(ValueError, match="default alpha 0.5 must exceed alpha_min 1"):
        sgm.register_surrogate("bad_alpha", g=_sig, dg=_sig_dg, alpha=0.5, alpha_min=1.0, scaling=True)


def test_builtins_pass_the_registration_check():
    for name in sgm.names()[: sgm.NUM_KERNEL_SURROGATES]:
        sgm.check_derivatives(sgm.get(name))


def test_triton_functions_checked():
    triton = pytest.importorskip("triton")
    with pytest.raises(TypeError, match="triton dg must be a @triton.jit function"):
        sgm.register_surrogate("bad_tr", g=_sig, dg=_sig_dg, alpha=4.0, scaling=True,
                               triton=(user_surrogates.sig_g_tl, _sig_dg))
    with pytest.raises(ValueError, match=r"triton= takes \(g, dg\) or \(g, dg, dg_dalpha\)"):
        sgm.register_surrogate("bad_tr", g=_sig, dg=_sig_dg, alpha=4.0, scaling=True,
                               triton=(user_surrogates.sig_g_tl,))
    # a width that is not a scaling one: the Triton ∂g/∂α is needed
    with pytest.raises(ValueError, match=r"give triton=\(g, dg, dg_dalpha\)"):
        sgm.register_surrogate("bad_tr", g=user_surrogates._shift_g, dg=user_surrogates._shift_dg,
                               dg_dalpha=user_surrogates._shift_da, alpha=2.0,
                               triton=(user_surrogates.shift_g_tl, user_surrogates.shift_dg_tl))
    assert "bad_tr" not in sgm.names()
    del triton


def test_ids_and_unregister():
    s = sgm.register_surrogate("tmp_sig", g=_sig, dg=_sig_dg, alpha=4.0, scaling=True)
    try:
        assert s.custom and not s.builtin and s.id >= sgm.CUSTOM_ID_BASE
        assert sgm.by_id(s.id) is s
    finally:
        sgm.unregister_surrogate("tmp_sig")
    s2 = sgm.register_surrogate("tmp_sig", g=_sig, dg=_sig_dg, alpha=4.0, scaling=True)
    try:
        assert s2.id != s.id  # ids are never reused: a kernel variant compiled for one never runs for another
    finally:
        sgm.unregister_surrogate("tmp_sig")
    with pytest.raises(ValueError, match="built-in surrogate 'sigmoid' cannot be unregistered"):
        sgm.unregister_surrogate("sigmoid")


def test_learnable_alpha_needs_dalpha():
    sgm.register_surrogate("tmp_noda", g=_sig, dg=_sig_dg, alpha=4.0)  # neither dg_dalpha nor scaling
    try:
        x = torch.randn(3, 5, dtype=torch.float64)
        alpha = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        for be in ["reference"] + (["cpu"] if HAS_C else []):
            with pytest.raises(ValueError, match="has no dg_dalpha: alpha cannot be learned"):
                s, _ = snn_fast.lif_multistep(x, surrogate="tmp_noda", alpha=alpha, backend=be)
                s.sum().backward()
        with pytest.raises(ValueError, match="has no dg_dalpha"):
            snn_fast.nn.LIF(surrogate="tmp_noda", learnable_alpha=True)
    finally:
        sgm.unregister_surrogate("tmp_noda")


# --- backend choice ---------------------------------------------------------------------------------
def test_auto_picks_a_backend_that_runs_it(monkeypatch):
    x = torch.zeros(2, 3)
    if HAS_C:
        assert LIF.select("auto", x, True, sgm.get("user_torch_only")) == "cpu"
        assert LIF.entry("cpu", custom=True).fwd == "snn_fast::lif_fwd_custom_cpu"
        assert LIF.entry("cpu").fwd == "snn_fast::lif_fwd"
    # On a GPU: the measured order is cuda, triton; a user surrogate skips 'cuda' (and 'triton' when
    # it has no Triton functions). Simulated: every backend available, a tensor that says it is on cuda.
    monkeypatch.setattr(LIF, "unavailable", lambda name, x: None)
    monkeypatch.setattr(LIF, "gpu_preference", lambda x: ("cuda", "triton"))
    on_gpu = types.SimpleNamespace(device=torch.device("cuda"))  # select reads only x.device here
    assert LIF.select("auto", on_gpu, True, sgm.get("sigmoid")) == "cuda"
    assert LIF.select("auto", on_gpu, True, sgm.get("user_sigmoid")) == "triton"
    assert LIF.select("auto", on_gpu, True, sgm.get("user_torch_only")) == "reference"


def test_named_backend_that_cannot_says_so():
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend 'cuda' cannot run the user-registered surrogate 'user_sigmoid': "
                                         "its kernels are compiled with the built-in surrogates only"):
        snn_fast.lif_multistep(x, surrogate="user_sigmoid", backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton' cannot run the user-registered surrogate "
                                         "'user_torch_only': it was registered without triton="):
        snn_fast.lif_multistep(x, surrogate="user_torch_only", backend="triton")


# --- against the reference ----------------------------------------------------------------------------
FUSED = [BY_ID["cpu"], BY_ID["triton-interp"], BY_ID["triton-cuda"]]
USER = list(user_surrogates.WITH_TRITON) + ["user_torch_only"]


def _skip_user(be, surrogate):
    if SKIP[be.id]:
        return
    user_surrogates.register_all()
    why = LIF.cannot_run(be.name, sgm.get(surrogate))
    if why:
        pytest.skip(f"{be.name} cannot run {surrogate}: {why}")


def _grid():
    """test_lif.py's option grid: every option in float64 on the CPU; every third (and float32 every
    fifth) on Triton in the interpreter, which is slow."""
    out = []
    for be in FUSED:
        if be.interpreted:
            out += cases([be], [torch.float64], OPTIONS[::3], USER, LEARN)
            out += cases([be], [torch.float32], OPTIONS[1::5], USER, LEARN)
        elif be.name == "cpu":  # custom_cpu.py has no strict threshold or reset timing: reference only
            out += cases([be], [torch.float64, torch.float32], OPTIONS_AFTER_FIRE, USER, LEARN)
        else:
            out += cases([be], [torch.float64, torch.float32], OPTIONS, USER, LEARN)
    return out


OPTIONS_AFTER_FIRE = [o for o in OPTIONS if "fire_at_threshold" not in o and "reset_timing" not in o]


@pytest.mark.parametrize("be,dtype,opts,surrogate,learn", _grid())
def test_matches_reference(be, dtype, opts, surrogate, learn, nan_alloc):
    _skip_user(be, surrogate)
    T, N = be.grid_shape
    x, v0, grads = make(T, N)
    ref = compare(be, x, v0, opts, dtype, surrogate=surrogate, learn=learn, grads=grads)
    assert ref["s"].any() and not ref["s"].all()
    if learn and sgm.get(surrogate).alpha is not None:
        assert ref["grad_alpha"].abs() > 0


@pytest.mark.parametrize("be,dtype,v_reset,surrogate", cases(FUSED, [torch.float64, torch.float32],
                                                                [("hard", 0.0), ("soft", None)], USER))
def test_noisy_spike(be, dtype, v_reset, surrogate, nan_alloc):
    """With a noise mask the emitted value is the user's g (the CPU path's forward is then the loop)."""
    _skip_user(be, surrogate)
    T, N = (5, 37) if be.interpreted else (10, 1000)
    x, v0, grads = make(T, N, seed=9)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1))
    ref = compare(be, x, v0, opt(v_reset, tau=2.0), dtype, mask=mask, surrogate=surrogate, learn=True, grads=grads)
    analog = ~mask & (ref["s"].cpu() != 0) & (ref["s"].cpu() != 1)
    assert analog.any()


@pytest.mark.parametrize("be,dtype,surrogate", cases(FUSED, [torch.float16, torch.bfloat16],
                                                     ["user_sigmoid", "user_shifted"]))
def test_low_precision(be, dtype, surrogate):
    _skip_user(be, surrogate)
    T, N = be.lowp_shape
    x, v0, grads = make(T, N, seed=3)
    for learn in (False, True):
        compare(be, x, v0, opt(0.0, reset_residual=0.2), dtype, surrogate=surrogate, learn=learn, grads=grads)


@pytest.mark.parametrize("be", cases([BY_ID["triton-interp"], BY_ID["triton-cuda"]]))
def test_triton_user_sigmoid_is_the_builtin_bit_for_bit(be):
    """The same arithmetic as the built-in, inlined as a constexpr function: every output and
    gradient equal, in float32 and float64, with a mask and learnable parameters."""
    T, N = be.grid_shape
    x, v0, grads = make(T, N, seed=5)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(2))
    for dtype in (torch.float32, torch.float64):
        for o in (opt(0.0, reset_residual=0.2), opt(None, decay_input=False, detach_reset=True)):
            kw = dict(learn=True, grads=grads, noise_mask=mask, dtype=dtype, alpha=4.0)
            a = run("triton", be.device, x, v0, o, surrogate="sigmoid", **kw)
            b = run("triton", be.device, x, v0, o, surrogate="user_sigmoid", **kw)
            for k in a:
                assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_cpu_user_sigmoid_matches_the_cpp_kernel():
    """Same spikes and states as the built-in's C++ kernel (the forward is that kernel), gradients
    within the float32 tolerance (the walk is the same; g′ comes from torch's sigmoid instead of the
    kernel's own exp, which may differ by an ulp)."""
    from conftest import assert_close

    x, v0, grads = make(16, 3000, seed=6)
    for o in OPTIONS_AFTER_FIRE[::4]:
        kw = dict(learn=True, grads=grads, dtype=torch.float32, alpha=4.0)
        a = run("cpu", "cpu", x, v0, o, surrogate="sigmoid", **kw)
        b = run("cpu", "cpu", x, v0, o, surrogate="user_sigmoid", **kw)
        for k in ("s", "v_T", "v_seq"):
            assert torch.equal(a[k], b[k]), k
        for k in a:
            assert_close(b[k], a[k], name=k)


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_torch_compile_cpu_custom_ops(monkeypatch):
    """The custom CPU ops are opaque custom ops with fakes and the shared autograd: one graph, same
    result as eager; the user's functions compiled inside the backward op at run time (an outer
    torch.compile does not trace into the op, so the inner one runs as in eager mode)."""
    from snn_fast.ops.lif import custom_cpu

    monkeypatch.setenv("SNN_FAST_COMPILE_SURROGATES", "1")
    monkeypatch.setattr(custom_cpu, "_COMPILE_MIN_BYTES", 0)
    x = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(x, tau):
        s, v = snn_fast.lif_multistep(x, tau=tau, surrogate="user_shifted", backend="cpu")
        return (s * torch.arange(40, dtype=x.dtype)).sum() + v.sum()

    eager = torch.autograd.grad(f(x, tau), [x, tau])
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, tau), [x, tau])
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unregistered_id_is_a_clear_error():
    from snn_fast.ops.lif import custom_cpu

    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="no registered surrogate has id 999999"):
        custom_cpu.lif_bwd_custom_cpu(x, None, None, x, x[0], torch.tensor([0.5, 1.0, 4.0]), None, x, x, None, None,
                                      999999, True, 0.0, True, False, 0.0, False, 0, 0, False)


def test_triton_functions_that_disagree_with_torch_are_refused():
    """The Triton versions are checked against the torch ones the first time the Triton backend runs
    them: a wrong factor in the Triton g′ (the torch pair is right, so registration passes) is an
    error naming the surrogate and the point, not a silently different gradient on the GPU."""
    if SKIP["triton-interp"] and SKIP["triton-cuda"]:
        pytest.skip(SKIP["triton-interp"])
    sgm.register_surrogate("tmp_wrong_tl", g=_sig, dg=_sig_dg, alpha=4.0, scaling=True,
                           triton=(user_surrogates.sig_g_tl, user_surrogates.sig_dg_wrong_tl))
    try:
        device = "cuda" if not SKIP["triton-cuda"] else "cpu"
        x = torch.randn(3, 5, device=device)
        with pytest.raises(ValueError, match="surrogate 'tmp_wrong_tl': its Triton dg disagrees with its torch dg"):
            snn_fast.lif_multistep(x, surrogate="tmp_wrong_tl", backend="triton")
    finally:
        sgm.unregister_surrogate("tmp_wrong_tl")


# --- the CPU backward: one walk, a fixed number of calls --------------------------------------------
class _CountCalls(TorchDispatchMode):
    """Every op dispatched while active, those that the CPU custom ops (Python) run included."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from snn_fast.ops.bn_lif import custom_cpu as bn_custom_cpu
        from snn_fast.ops.lif import custom_cpu

        self.calls.append(str(func.overloadpacket))
        python_impl = {custom_cpu.BWD_NAME: custom_cpu.lif_bwd_custom_cpu,
                       custom_cpu.FWD_NAME: custom_cpu.lif_fwd_custom_cpu,
                       bn_custom_cpu.BWD_NAME: bn_custom_cpu.bn_lif_bwd_custom_cpu,
                       bn_custom_cpu.FWD_NAME: bn_custom_cpu.bn_lif_fwd_custom_cpu}.get(func.name())
        if python_impl is not None:
            with self:  # count what it runs
                return python_impl(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _backward_calls(T, N, surrogate, learn, masked, v_seq):
    x, v0, grads = make(T, N, seed=T + N)
    x, v0 = x.float().requires_grad_(True), v0.float()
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1)) if masked else None
    alpha = torch.tensor(3.0, requires_grad=True) if learn else 3.0
    tau = torch.tensor(2.0, requires_grad=True) if learn else 2.0
    out = snn_fast.lif_multistep(x, v0, tau=tau, surrogate=surrogate, alpha=alpha, noise_mask=mask,
                                 return_v_seq=v_seq, backend="cpu")
    loss = sum((t * g.float()).sum() for t, g in zip(out, grads))
    with _CountCalls() as c:
        loss.backward()
    return c.calls


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("surrogate,learn,masked,v_seq", [("user_sigmoid", False, False, False),
                                                          ("user_sigmoid", True, False, True),
                                                          ("user_shifted", True, True, False),
                                                          ("user_box", False, True, True)])
def test_cpu_backward_calls_do_not_grow_with_T_or_N(surrogate, learn, masked, v_seq, monkeypatch):
    """The backward of a user surrogate on the CPU is a fixed number of torch calls: the same at
    T = 4 and 33, N = 40 and 5000 (a per-block loop would add calls with N, a per-step one with T),
    and few: the user's g′ (and ∂g/∂α) on all of H − θ at once, the C++ walk. Counted by a
    TorchDispatchMode, so this is the eager path (the compiled one: test_cpu_compiled_backward_is_one_call).
    Beyond ``_CHUNK_BYTES`` of H − θ the user's functions run once per piece of that many bytes: the
    count then follows the number of pieces only (the same for [4, 1024] and [16, 256]), a few calls
    per piece."""
    from snn_fast.ops.lif import custom_cpu

    assert 33 * 5000 * 4 <= custom_cpu._CHUNK_BYTES
    counts = {(T, N): _backward_calls(T, N, surrogate, learn, masked, v_seq) for T in (4, 33) for N in (40, 5000)}
    first = next(iter(counts.values()))
    for shape, calls in counts.items():
        assert calls == first, f"{shape}: {len(calls)} calls, {len(first)} at {next(iter(counts))}"
    # H − θ: saved by the forward (save="state"), re-run under a noise mask (the forward is the loop)
    assert first.count("snn_fast.lif_sg_arg") == int(masked) and first.count("snn_fast.lif_bwd") == 1, first
    assert len(first) <= 40, first

    monkeypatch.setattr(custom_cpu, "_CHUNK_BYTES", 1024 * 4)  # pieces of 1024 float32 elements
    four = [_backward_calls(T, N, surrogate, learn, masked, v_seq) for T, N in ((4, 1024), (16, 256), (2, 2048))]
    assert four[0] == four[1] == four[2]
    eight, twelve = (len(_backward_calls(T, 1024, surrogate, learn, masked, v_seq)) for T in (8, 12))
    per_piece = (eight - len(four[0])) / 4
    assert twelve - eight == eight - len(four[0]) and 0 < per_piece <= 20, (len(four[0]), eight, twelve)


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("save", ["state", "recompute"])
@pytest.mark.parametrize("surrogate", ["user_shifted", "user_sigmoid"])
def test_cpu_learnable_alpha_mask_float64(surrogate, save, nan_alloc):
    """Learnable τ, θ and α (∂g/∂α given, or derived by scaling=True), a noise mask and v_seq, in
    float64 against the reference; both save modes (the CPU saves nothing in either: same results)."""
    x, v0, grads = make(19, 300, seed=4)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(3))
    for o in (opt(0.0, reset_residual=0.2), opt(None, decay_input=False), opt(-0.3, detach_reset=True)):
        for m in (None, mask):
            got = run("cpu", "cpu", x, v0, o, surrogate=surrogate, learn=True, noise_mask=m, grads=grads, save=save)
            ref = run("reference", "cpu", x, v0, o, surrogate=surrogate, learn=True, noise_mask=m, grads=grads)
            check(got, ref, mask=m)
            assert ref["grad_alpha"].abs() > 0


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_cpu_given_sg_ops_check_their_arguments():
    """The C++ ops behind the CPU backward name what is wrong instead of reading past a buffer."""
    x = torch.zeros(3, 5)
    v0, params = x[0].clone(), torch.tensor([0.5, 1.0, 4.0])
    d = torch.ops.snn_fast.lif_sg_arg(x, v0, params, None, x, True, 0.0, True)
    assert d.shape == x.shape and d.dtype == torch.float32
    torch.testing.assert_close(d, torch.full_like(x, -1.0))  # H = 0, θ = 1
    with pytest.raises(RuntimeError, match="s must match x"):
        torch.ops.snn_fast.lif_sg_arg(x, v0, params, torch.ones(3, 5, dtype=torch.bool), x[:2], True, 0.0, True)
    e = x.new_empty(0)

    def bwd(sg_grad, sg_dalpha, need_param_grad):
        return torch.ops.snn_fast.lif_bwd(x, None, None, x, v0, params, None, e, x, sg_grad, sg_dalpha, 0, True, 0.0,
                                          True, False, 0.0, False, 0, 0, need_param_grad)

    with pytest.raises(RuntimeError, match="sg_grad must be \\[T, N\\] like x"):
        bwd(x[:2], None, False)
    with pytest.raises(RuntimeError, match="sg_grad must be .* in params' dtype"):
        bwd(x.double(), None, False)
    with pytest.raises(RuntimeError, match="need_param_grad with sg_grad needs sg_dalpha"):
        bwd(x, None, True)


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cpu_saved_state_is_what_memory_counts(dtype):
    """What autograd keeps for a user surrogate on the CPU beyond x, v0, the parameters and the spikes:
    D = H − θ in the compute dtype with save="state", nothing with "recompute" or under a noise mask
    (``memory.saved_bytes(backend="cpu_custom")``); both give the same gradient."""
    from snn_fast.ops.lif import memory
    from test_lif import _saved_bytes

    T, N = 9, 300
    x = torch.randn(T, N).to(dtype).requires_grad_(True)
    v0 = torch.zeros(N, dtype=dtype)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1))
    grads = {}
    for save in ("recompute", "state"):
        for m in (None, mask):
            out, seen = _saved_bytes(lambda: snn_fast.lif_multistep(x, v0, backend="cpu", save=save, noise_mask=m,
                                                                    surrogate="user_sigmoid"))
            known = {t.untyped_storage().data_ptr() for t in (x, v0, out[0], mask)}
            extra = sum(n for (ptr, _), n in seen.items() if ptr not in known and n > 24)
            want = 0 if m is not None else memory.saved_bytes(T, N, dtype, save, backend="cpu_custom")
            assert extra == want, (save, m is None, extra, want)
            grads[save, m is None] = torch.autograd.grad(out[0].sum(), x)[0]
    assert memory.saved_bytes(T, N, dtype, "state", backend="cpu_custom") == T * N * (8 if dtype == torch.float64
                                                                                    else 4)
    for m in (True, False):
        assert torch.equal(grads["state", m], grads["recompute", m])
    b = memory.custom_cpu_bytes(16, 262144, torch.float32)
    # rows of N: v0 and v_last (forward); grad_v_last, v0 (the walk's re-run) and grad_v0 (backward)
    assert b["total"] == 36 * 16 * 262144 + 5 * 262144 * 4 and b["saved"] == 16 * 262144 * 4
    # recompute: lif_sg_arg writes D (4 bytes an element) and re-runs the forward from v0: a row more
    assert memory.custom_cpu_bytes(16, 262144, torch.float32, "recompute")["total"] == \
        b["total"] + 4 * 16 * 262144 + 262144 * 4
    # a learnable α: ∂g/∂α written and read; eagerly D (and g′) read again for it
    learn = {c: memory.custom_cpu_bytes(16, 262144, torch.float32, param_grad=True, compiled=c)["total"]
             for c in (True, False)}
    assert learn[True] == b["total"] + 2 * 4 * 16 * 262144 and learn[False] == b["total"] + 4 * 4 * 16 * 262144


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("masked", [False, True])
def test_cpu_given_sg_opcheck(masked):
    """torch.library.opcheck of the ops behind a user surrogate on the CPU: the C++ forward saving
    D = H − θ (save=3), lif_sg_arg, the C++ backward given g′ (fakes: contract.py, custom_cpu.py),
    and the Python pair that runs them (``lif_fwd_custom_cpu``/``lif_bwd_custom_cpu``, autograd
    registered by the table), with every save mode."""
    from snn_fast.ops.lif import custom_cpu  # noqa: F401
    from snn_fast.ops.lif.function import BACKENDS

    BACKENDS.load("cpu", custom=True)
    x, v0, grads = make(6, 50, dtype=torch.float32, seed=2)
    params = torch.tensor([0.5, 0.8, 4.0])
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1)) if masked else None
    ops = torch.ops.snn_fast
    s, _, _, d = ops.lif_fwd(x, v0, params, mask, 0, True, 0.0, True, False, 0.0, False, 0, True, 3)
    assert d.shape == x.shape and d.dtype == params.dtype
    torch.library.opcheck(ops.lif_fwd.default, (x, v0, params, mask, 0, True, 0.0, True, False, 0.0, False, 0, True, 3))
    torch.library.opcheck(ops.lif_sg_arg.default, (x, v0, params, mask, s, True, 0.0, True))
    if not masked:  # the re-run gives the forward's H − θ bit for bit
        assert torch.equal(ops.lif_sg_arg(x, v0, params, None, s, True, 0.0, True), d)
    gp, dga = torch.sigmoid(d), torch.tanh(d)
    gs, gvl, gvs = (g.float() for g in grads)
    torch.library.opcheck(ops.lif_bwd.default, (gs, gvl, gvs, x, v0, params, mask, d, s, gp, dga, 0, True, 0.0,
                                                True, False, 0.2, False, 0, 3, True))
    sid = sgm.get("user_sigmoid").id
    xg = x.clone().requires_grad_()
    for save in (0, 1, 2):
        fwd_args = (xg, v0, params, mask, sid, True, 0.0, True, False, 0.2, False, 0, True, save)
        torch.library.opcheck(ops.lif_fwd_custom_cpu.default, fwd_args)
        s, _, _, saved = ops.lif_fwd_custom_cpu(*fwd_args)
        if save != 2:
            # a backward op has no autograd of its own (double backward is refused)
            torch.library.opcheck(ops.lif_bwd_custom_cpu.default,
                                  (gs, gvl, gvs, x, v0, params, mask, saved.detach(), s.detach(), None, None, sid, True,
                                   0.0, True, False, 0.2, False, 0, save, True),
                                  test_utils=("test_schema", "test_faketensor"))


# --- the CPU backward compiled (torch.compile of the user's functions) -------------------------------
# The suite runs these functions eagerly (conftest.py sets SNN_FAST_COMPILE_SURROGATES=0: each
# compilation costs seconds). The tests below turn compilation on; those that only check the switches,
# the fallback and the number of calls replace torch.compile by a stand-in (``_fake_compile``), so that
# only test_cpu_compiled_matches_eager compiles for real: five (surrogate, kind, dtype) entries.
COMPILE_ENV = "SNN_FAST_COMPILE_SURROGATES"


@pytest.fixture
def compile_on(monkeypatch):
    """Compilation on, for layers of any size (the tests' are below custom_cpu._COMPILE_MIN_BYTES)."""
    from snn_fast.ops.lif import custom_cpu

    monkeypatch.setenv(COMPILE_ENV, "1")
    monkeypatch.setattr(custom_cpu, "_COMPILE_MIN_BYTES", 0)


def _fake_compile(calls, fail=None):
    """A stand-in for custom_cpu._torch_compile: the function to compile runs as it is; every call is
    recorded in ``calls`` as (kernel name, numel of D); ``fail``: raised instead."""
    def compile_(fn):
        def run(d, *rest):
            calls.append((fn.__name__, d.numel()))
            if fail is not None:
                raise fail
            return fn(d, *rest)
        return run
    return compile_


@pytest.fixture
def fresh_user_sigmoid():
    """The sigmoid registered under a name of its own for one test (no entry of the compile cache is
    shared with another test), unregistered after; the compile cache entries of its id are dropped."""
    from snn_fast.ops.lif import custom_cpu

    made = []

    def register(name, dg=_sig_dg, **kw):
        s = sgm.register_surrogate(name, g=_sig, dg=dg, alpha=4.0, scaling=True, **kw)
        made.append(s)
        return s

    yield register
    for s in made:
        sgm.unregister_surrogate(s.name)
        for key in [k for k in custom_cpu._COMPILED if k[0] == s.id]:
            del custom_cpu._COMPILED[key]


def _grads_cpu(surrogate, dtype, learn, T=12, N=700, masked=False, save=None, o=None):
    x, v0, grads = make(T, N, seed=7)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(5)) if masked else None
    return run("cpu", "cpu", x, v0, o or opt(0.0, reset_residual=0.2), surrogate=surrogate, learn=learn,
               noise_mask=mask, grads=grads, dtype=dtype, save=save)


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_compiled_matches_eager(dtype, monkeypatch, compile_on):
    """g′ and ∂g/∂α compiled by torch.compile (one fused loop) give the eager path's gradients: within
    the float64 tolerance (1e-10; in practice equal) and the float32 one, for a derived ∂g/∂α
    (scaling=True: x·g′/α from the same g′), a given one, and none (no width: 0); with a noise mask and
    both save modes. Compiles for real (user_sigmoid both kinds, user_shifted and user_box in float64;
    user_sigmoid with ∂g/∂α in float32) and checks that the compiled functions ran, without a warning."""
    from conftest import assert_close
    from snn_fast.ops.lif import custom_cpu

    cases_ = ([("user_sigmoid", False, False, None), ("user_sigmoid", True, True, "recompute"),
               ("user_shifted", True, False, None), ("user_box", True, True, None)]
              if dtype == torch.float64 else [("user_sigmoid", True, False, None)])
    for surrogate, learn, masked, save in cases_:
        monkeypatch.setenv(COMPILE_ENV, "0")
        eager = _grads_cpu(surrogate, dtype, learn, masked=masked, save=save)
        monkeypatch.setenv(COMPILE_ENV, "1")
        with warnings.catch_warnings():
            warnings.simplefilter("error", sgm.SurrogateCompileWarning)
            compiled = _grads_cpu(surrogate, dtype, learn, masked=masked, save=save)
        sid = sgm.get(surrogate).id
        kind = custom_cpu._kind(sgm.get(surrogate), learn)
        kind = custom_cpu.KIND_GP if kind == custom_cpu.KIND_ZERO else kind
        assert custom_cpu._COMPILED.get((sid, kind, dtype)) is not None, (surrogate, kind, dtype)
        for k in eager:
            if k in ("s", "v_T", "v_seq"):
                assert torch.equal(compiled[k], eager[k]), k  # the forward does not involve g′
            else:
                assert_close(compiled[k], eager[k], name=f"{surrogate} learn={learn}: {k}")


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_cpu_compile_failure_falls_back_with_one_warning(fresh_user_sigmoid, monkeypatch, compile_on):
    """A compilation that fails (here: made to, as with no C++ compiler) warns once per surrogate,
    kind and dtype, naming the surrogate and the way to turn it off, and the eager path gives the
    gradients; later backwards do not try again."""
    from snn_fast.ops.lif import custom_cpu

    fresh_user_sigmoid("tmp_nocc")
    monkeypatch.setenv(COMPILE_ENV, "0")
    want = _grads_cpu("tmp_nocc", torch.float64, True)
    monkeypatch.setenv(COMPILE_ENV, "1")
    calls = []
    monkeypatch.setattr(custom_cpu, "_torch_compile",
                        _fake_compile(calls, fail=RuntimeError("InductorError: no C++ compiler found")))
    with pytest.warns(sgm.SurrogateCompileWarning,
                      match=r"could not compile the surrogate 'tmp_nocc' \(g′ and ∂g/∂α, torch.float64\).*"
                            r"no C\+\+ compiler found.*run eagerly.*compile=False.*SNN_FAST_COMPILE_SURROGATES=0"):
        got = _grads_cpu("tmp_nocc", torch.float64, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sgm.SurrogateCompileWarning)
        again = _grads_cpu("tmp_nocc", torch.float64, True)
    assert len(calls) == 1, calls
    for k in want:
        assert torch.equal(got[k], want[k]) and torch.equal(again[k], want[k]), k

    def refuses(fn):  # torch.compile itself raising (as on a Python version Dynamo does not support)
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(custom_cpu, "_torch_compile", refuses)
    with pytest.warns(sgm.SurrogateCompileWarning, match=r"'tmp_nocc' \(g′, torch.float32\).*not supported"):
        got = _grads_cpu("tmp_nocc", torch.float32, False)
    monkeypatch.setenv(COMPILE_ENV, "0")
    want = _grads_cpu("tmp_nocc", torch.float32, False)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_cpu_untraceable_surrogate_falls_back(fresh_user_sigmoid, monkeypatch, compile_on):
    """A g′ that torch.compile cannot trace in one graph (a graph break) is refused by Dynamo (it
    compiles nothing: fullgraph), with the warning; the eager path runs it."""
    def dg_breaks(x, a):
        torch._dynamo.graph_break()
        return _sig_dg(x, a)

    fresh_user_sigmoid("tmp_breaks", dg=dg_breaks)
    monkeypatch.setenv(COMPILE_ENV, "0")
    want = _grads_cpu("tmp_breaks", torch.float64, False)
    monkeypatch.setenv(COMPILE_ENV, "1")
    with pytest.warns(sgm.SurrogateCompileWarning, match="could not compile the surrogate 'tmp_breaks' \\(g′,"):
        got = _grads_cpu("tmp_breaks", torch.float64, False)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
def test_cpu_compile_switches(fresh_user_sigmoid, monkeypatch, compile_on):
    """Compiled unless register_surrogate(compile=False), SNN_FAST_COMPILE_SURROGATES=0, a
    TorchDispatchMode is active (Dynamo does not compile under one), or H − θ is under 1 MiB; unset
    or empty means on."""
    from snn_fast.ops.lif import custom_cpu

    on, off = fresh_user_sigmoid("tmp_on"), fresh_user_sigmoid("tmp_off", compile=False)
    assert on.compile and not off.compile
    calls = []
    monkeypatch.setattr(custom_cpu, "_torch_compile", _fake_compile(calls))

    def tried(name, env):
        if env is None:
            monkeypatch.delenv(COMPILE_ENV, raising=False)
        else:
            monkeypatch.setenv(COMPILE_ENV, env)
        calls.clear()
        _grads_cpu(name, torch.float32, False)
        return len(calls)

    assert tried("tmp_on", None) == 1 and tried("tmp_on", "") == 1 and tried("tmp_on", "1") == 1
    assert tried("tmp_on", "0") == 0
    assert tried("tmp_off", None) == 0 and tried("tmp_off", "1") == 0
    monkeypatch.setenv(COMPILE_ENV, "1")
    calls.clear()
    with _CountCalls() as c:
        _grads_cpu("tmp_on", torch.float32, False)
    assert not calls and "aten.sigmoid" in c.calls  # the eager path, seen by the mode
    # by default only a layer whose H − θ takes at least 1 MiB: [16, 16384] float32 is compiled,
    # [16, 16383] is not
    monkeypatch.setattr(custom_cpu, "_COMPILE_MIN_BYTES", 1 << 20)
    for N, want in ((16383, 0), (16384, 1)):
        calls.clear()
        _grads_cpu("tmp_on", torch.float32, False, T=16, N=N)
        assert len(calls) == want, (N, calls)


@pytest.mark.skipif(not HAS_C, reason="snn_fast._C not built")
@pytest.mark.parametrize("surrogate,learn,masked", [("user_sigmoid", False, False), ("user_sigmoid", True, True),
                                                    ("user_shifted", True, False), ("user_box", True, False)])
def test_cpu_compiled_backward_is_one_call(surrogate, learn, masked, monkeypatch, compile_on):
    """On the compiled path the user's functions are one call per backward on all of H − θ, whatever
    T and N (a per-step or per-block loop would make T or N/block calls, on parts of it), also
    beyond the eager path's piece size; g′ with ∂g/∂α in the same call when α is learned."""
    from snn_fast.ops.lif import custom_cpu

    calls = []
    monkeypatch.setattr(custom_cpu, "_torch_compile", _fake_compile(calls))
    monkeypatch.setattr(custom_cpu, "_COMPILED", {})
    monkeypatch.setenv(COMPILE_ENV, "1")
    kind = custom_cpu._kind(sgm.get(surrogate), learn)
    kind = custom_cpu.KIND_GP if kind == custom_cpu.KIND_ZERO else kind
    for T, N in ((4, 40), (33, 40), (4, 5000), (33, 5000), (16, 3 * custom_cpu._CHUNK_BYTES // 4 // 16)):
        calls.clear()
        _grads_cpu(surrogate, torch.float32, learn, T=T, N=N, masked=masked)
        assert calls == [(f"snn_fast_surrogate_{surrogate}_{kind}", T * N)], (T, N, calls)
