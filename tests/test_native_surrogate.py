"""A user's surrogate compiled into the C++ backward walk (snn_fast/ops/lif/native_surrogate.py).

- the translator: common surrogate formulas become C++ whose g′ and ∂g/∂α agree with torch in float64
  (the float32 library within the float32 tolerance of the exact values, the float64 one within 1e-12);
  what it cannot translate (reductions, a branch on a value, ops outside its list) is refused by name
  and the other paths run;
- the compiled walk against the reference over the option grid (after-fire timings: custom_cpu.py's
  scope), float64 and float32, learnable τ/θ/α, v_seq, both save modes; float16/bfloat16 against
  the low-precision bound; with 1 and 2 threads the same bits;
- the backward is one op call and the forward keeps no D; torch.compile (fullgraph) through it;
- the switches (compile=False, both environment variables, a noise mask), the disk cache, and the
  fallbacks with a warning: no compiler, a translation whose values disagree with torch.
The libraries are built once per test session into a shared temporary cache (~5-10 s each).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import snn_fast
from snn_fast import surrogate as sgm

import user_surrogates
from test_custom_surrogate import OPTIONS_AFTER_FIRE, _CountCalls
from test_lif import BY_ID, LEARN, cases, check, compare, make, opt, run

native_surrogate = pytest.importorskip("snn_fast.ops.lif.native_surrogate")
pytestmark = pytest.mark.skipif(not snn_fast.HAS_C or native_surrogate.unavailable() is not None,
                                reason=f"needs snn_fast._C, a C++ compiler and the kernel headers: "
                                       f"{native_surrogate.unavailable()}")

CPU = BY_ID["cpu"]


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory):
    # one directory for every xdist worker of the session (the parent of the per-worker base)
    d = tmp_path_factory.getbasetemp().parent / "native_surrogates_cache"
    d.mkdir(exist_ok=True)
    return str(d)


@pytest.fixture(autouse=True)
def native_on(monkeypatch, native_cache):
    from snn_fast.ops.lif import custom_cpu

    user_surrogates.register_all()
    # the forward's decision per surrogate is fixed at its first use in a process: fresh per test, and
    # the suite's other tests (the compiled walk off) keep theirs
    monkeypatch.setattr(custom_cpu, "_FWD_KEEPS_D", {})
    monkeypatch.setenv("SNN_FAST_COMPILE_SURROGATES", "1")
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1")
    monkeypatch.setenv(native_surrogate.ENV_CACHE, native_cache)


def _native_calls(fn):
    """fn() under a dispatch mode; how many lif_bwd_native calls it made, and all calls."""
    with _CountCalls() as c:
        fn()
    return c.calls.count("snn_fast.lif_bwd_native"), c.calls


@pytest.fixture
def fresh(monkeypatch):
    """Surrogates registered for one test under names of their own, unregistered after."""
    made = []

    def register(name, **kw):
        s = sgm.register_surrogate(name, **kw)
        made.append(s)
        return s

    yield register
    for s in made:
        sgm.unregister_surrogate(s.name)
        for key in [k for k in native_surrogate._LOADED if k[0] == s.id]:
            del native_surrogate._LOADED[key]


# --- the translator ---------------------------------------------------------------------------------
# (name, g, g′, ∂g/∂α or None, α, scaling): formulas a user writes, each exercising some ops
def _sig(x, a):
    return torch.sigmoid(a * x)


FORMULAS = [
    ("sigmoid", _sig, lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)), None, 4.0, True),
    ("atan", lambda x, a: 0.5 + torch.atan(math.pi / 2 * a * x) / math.pi,
     lambda x, a: a / (2 * (1 + (math.pi / 2 * a * x) ** 2)), None, 2.0, True),
    ("fast_sigmoid", lambda x, a: 0.5 + 0.5 * a * x / (1 + (a * x).abs()),
     lambda x, a: 0.5 * a / (1 + (a * x).abs()).pow(2), None, 3.0, True),
    ("tanh", lambda x, a: 0.5 + 0.5 * torch.tanh(a * x), lambda x, a: 0.5 * a * (1 - torch.tanh(a * x) ** 2),
     None, 2.0, True),
    ("gauss", lambda x, a: 0.5 * (1 + torch.erf(a * x / math.sqrt(2))),
     lambda x, a: a / math.sqrt(2 * math.pi) * torch.exp(-0.5 * (a * x) ** 2), None, 2.0, True),
    ("triangle", lambda x, a: torch.where(x < 0, 0.5 * torch.clamp(1 + a * x, min=0) ** 2,
                                          1 - 0.5 * torch.clamp(1 - a * x, min=0) ** 2),
     lambda x, a: torch.clamp(a - a * a * x.abs(), min=0), None, 1.0, True),
    ("box_where", lambda x, a: torch.clamp(a * x + 0.5, 0, 1),
     lambda x, a: torch.where(x.abs() < 0.5 / a, a, torch.zeros_like(x)), None, 1.0, True),
    ("relu_max", lambda x, a: torch.maximum(x, torch.zeros_like(x)) + 0.5 * torch.minimum(x, torch.zeros_like(x)),
     lambda x, a: (x > 0).to(x.dtype) + 0.5 * (x <= 0).to(x.dtype), None, None, False),
    ("shifted", lambda x, a: torch.sigmoid((a + 1) * x),
     lambda x, a: (a + 1) * torch.sigmoid((a + 1) * x) * (1 - torch.sigmoid((a + 1) * x)),
     lambda x, a: x * torch.sigmoid((a + 1) * x) * (1 - torch.sigmoid((a + 1) * x)), 2.0, False),
]


def _register(fresh, row):
    name, g, dg, da, alpha, scaling = row
    return fresh(f"native_{name}", g=g, dg=dg, dg_dalpha=da, alpha=alpha, scaling=scaling)


@pytest.mark.parametrize("row", FORMULAS, ids=[r[0] for r in FORMULAS])
def test_translated_functions_agree_with_torch_in_float64(row, fresh):
    """The float32 library's g′ and ∂g/∂α against the torch functions in float64 (the truth) on a grid
    of x and two widths: its worst error, relative to |value| + 1e-3·max|value|, at most twice that of
    the same torch functions run in float32 (plus 1e-5: a formula that cancels loses digits on both
    sides); ±inf and NaN where torch gives them. Built and used: ``why_not`` says nothing."""
    sg = _register(fresh, row)
    nat = native_surrogate.lookup(sg, torch.float32)
    assert nat is not None, native_surrogate.why_not(sg, torch.float32)
    x64 = torch.cat([torch.linspace(-6, 6, 2401, dtype=torch.float64),
                     torch.tensor([0.0, -0.0, 1e-20, -1e-20, 80.0, -80.0, math.inf, -math.inf],
                                  dtype=torch.float64)])
    for alpha in (sg.alpha or 1.0, 2.5 * (sg.alpha or 1.0)):
        gp, dga = nat.evaluate(x64.float(), alpha)
        a = torch.tensor(alpha, dtype=torch.float64)
        x32 = x64.float().double()  # the points the float32 library saw

        def both(x, a):  # (g′, ∂g/∂α) as torch computes them in x's dtype
            gp = sg.dg(x, a).expand_as(x)
            da = (x * gp / a if row[5] and row[3] is None else
                  torch.zeros_like(x) if sg.alpha is None else sg.dg_dalpha(x, a))
            return gp, da

        wants = both(x32, a)
        torch32 = both(x64.float(), a.float())
        for what, got, want, t32 in zip(("g′", "∂g/∂α"), (gp, dga), wants, torch32):
            fin = torch.isfinite(want)
            scale = float(want[fin].abs().max()) or 1.0
            torch.testing.assert_close(got[~fin].double(), want[~fin], rtol=0, atol=0, equal_nan=True)

            def worst(v):
                return float(((v.double() - want).abs() / (want.abs() + 1e-3 * scale))[fin].max())

            assert worst(got) <= 2 * worst(t32) + 1e-5, (what, alpha, worst(got), worst(t32))


@pytest.mark.parametrize("row", [FORMULAS[0], FORMULAS[3], FORMULAS[8]], ids=["sigmoid", "tanh", "shifted"])
def test_float64_library_agrees_with_torch(row, fresh):
    sg = _register(fresh, row)
    nat = native_surrogate.lookup(sg, torch.float64)
    assert nat is not None, native_surrogate.why_not(sg, torch.float64)
    x = torch.linspace(-6, 6, 2401, dtype=torch.float64)
    a = torch.tensor(sg.alpha, dtype=torch.float64)
    gp, dga = nat.evaluate(x, sg.alpha)
    want_da = x * sg.dg(x, a) / a if row[3] is None else sg.dg_dalpha(x, a)
    torch.testing.assert_close(gp, sg.dg(x, a), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dga, want_da, rtol=1e-12, atol=1e-14)


UNTRANSLATABLE = [
    ("reduction", lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) + 0 * x.mean(), "mean"),
    ("value_branch", lambda x, a: (a * x if bool((a > 1).all()) else x).abs() * 0 + a * torch.sigmoid(a * x) *
     (1 - torch.sigmoid(a * x)), "tracing failed"),
    ("erf_op", lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) + 0 * torch.erf(x), "erf"),
    ("pow_tensor", lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) * torch.pow(x.abs() + 1, a * 0),
     "pow.Tensor_Tensor"),
    ("pow_odd", lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) * (x * x + 1) ** 0.0 *
     (x.abs() + 1) ** 1.5 / (x.abs() + 1) ** 1.5, "exponent 1.5"),
]


@pytest.mark.parametrize("name,dg,why", UNTRANSLATABLE, ids=[u[0] for u in UNTRANSLATABLE])
def test_untranslatable_is_refused_by_name_and_the_other_path_runs(name, dg, why, fresh):
    """Not translated (nothing compiled, no warning: the torch path is a normal outcome); the backward
    then runs the given-g′ walk, and matches the reference."""
    sg = fresh(f"untr_{name}", g=_sig, dg=dg, alpha=4.0, scaling=True)
    with pytest.raises(native_surrogate.Untranslatable, match=why):
        native_surrogate.source(sg, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sgm.SurrogateCompileWarning)
        assert native_surrogate.lookup(sg, torch.float64) is None
    assert why in native_surrogate.why_not(sg, torch.float64)
    x, v0, grads = make(9, 200, seed=2)
    n, _ = _native_calls(lambda: compare(CPU, x, v0, opt(0.0), torch.float64, surrogate=sg.name, learn=True,
                                         grads=grads))
    assert n == 0


# --- the compiled walk against the reference ----------------------------------------------------------
NATIVE_USER = ["user_sigmoid", "user_shifted", "user_box"]


@pytest.mark.parametrize("be,dtype,opts,surrogate,learn",
                         cases([CPU], [torch.float64, torch.float32], OPTIONS_AFTER_FIRE, NATIVE_USER, LEARN))
def test_native_matches_reference(be, dtype, opts, surrogate, learn, nan_alloc):
    """test_lif.py's grid (after-fire timings) against the reference, the compiled walk taking the
    backward (counted)."""
    T, N = CPU.grid_shape
    x, v0, grads = make(T, N)
    ref = {}
    n, _ = _native_calls(lambda: ref.update(compare(CPU, x, v0, opts, dtype, surrogate=surrogate, learn=learn,
                                                    grads=grads)))
    assert n == 1
    assert ref["s"].any() and not ref["s"].all()
    if learn and sgm.get(surrogate).alpha is not None:
        assert ref["grad_alpha"].abs() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("surrogate", ["user_sigmoid", "user_shifted"])
def test_native_low_precision(dtype, surrogate):
    T, N = CPU.lowp_shape
    x, v0, grads = make(T, N, seed=3)
    for learn in (False, True):
        n, _ = _native_calls(lambda: compare(CPU, x, v0, opt(0.0, reset_residual=0.2), dtype, surrogate=surrogate,
                                             learn=learn, grads=grads))
        assert n == 1


@pytest.mark.parametrize("save", ["state", "recompute"])
def test_native_many_blocks_threads_and_saves(save):
    """Several blocks of the walk ([7, 40000]: the parameter sums span blocks), both save modes, 1
    and 2 threads: the same bits for every thread count, and the reference's values."""
    x, v0, grads = make(7, 40000, seed=11)
    o = opt(None, reset_residual=0.2)
    before = torch.get_num_threads()
    out = {}
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            out[nt] = run("cpu", "cpu", x, v0, o, surrogate="user_shifted", learn=True, grads=grads, save=save)
    finally:
        torch.set_num_threads(before)
    for k in out[1]:
        assert torch.equal(out[1][k], out[2][k]), k
    check(out[1], run("reference", "cpu", x, v0, o, surrogate="user_shifted", learn=True, grads=grads))


def _loss_and_saved(T, N, surrogate, learn, v_seq=False):
    x, v0, grads = make(T, N, seed=T + N)
    x, v0 = x.float().requires_grad_(True), v0.float()
    alpha = torch.tensor(3.0, requires_grad=True) if learn else 3.0
    tau = torch.tensor(2.0, requires_grad=True) if learn else 2.0
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = snn_fast.lif_multistep(x, v0, tau=tau, surrogate=surrogate, alpha=alpha, return_v_seq=v_seq,
                                     backend="cpu")
    loss = sum((t * g.float()).sum() for t, g in zip(out, grads))
    return loss, sum(saved)


@pytest.mark.parametrize("surrogate,learn,v_seq", [("user_sigmoid", False, False), ("user_shifted", True, True),
                                                   ("user_box", True, False)])
def test_native_backward_is_one_call_and_the_forward_keeps_no_d(surrogate, learn, v_seq, monkeypatch):
    """The backward is the same handful of torch calls at T = 4 and 33, N = 40 and 5000, one of them
    the compiled walk (no lif_sg_arg, no given-g′ lif_bwd, no call of the user's functions); the
    forward saves T·N fewer elements than with the compiled walk off (no D)."""
    counts = {}
    for T in (4, 33):
        for N in (40, 5000):
            loss, _ = _loss_and_saved(T, N, surrogate, learn, v_seq)
            n, calls = _native_calls(loss.backward)
            assert n == 1 and "snn_fast.lif_sg_arg" not in calls and "snn_fast.lif_bwd" not in calls, calls
            assert not any(c.startswith("aten.sigmoid") for c in calls), calls
            counts[T, N] = calls
    first = counts[4, 40]
    assert all(c == first for c in counts.values()) and len(first) <= 40, first
    from snn_fast.ops.lif import custom_cpu

    _, with_native = _loss_and_saved(16, 300, surrogate, learn, v_seq)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    monkeypatch.setattr(custom_cpu, "_FWD_KEEPS_D", {})  # a new process, as it were
    _, without = _loss_and_saved(16, 300, surrogate, learn, v_seq)
    assert without - with_native == 16 * 300, (without, with_native)


def test_forward_decision_is_fixed_at_first_use(monkeypatch):
    """Whether the forward keeps D is decided at the first forward of a surrogate and dtype and kept
    (the fake forward under torch.compile and later real ones agree on the saved tensor's shape):
    after the switch is turned off the forward still keeps no D, and the backward, without the
    compiled walk, re-runs the forward for it (lif_sg_arg): the reference's gradients."""
    x, v0, grads = make(9, 300, seed=8)
    o = opt(0.0, reset_residual=0.2)
    _, first = _loss_and_saved(9, 300, "user_shifted", True)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    _, later = _loss_and_saved(9, 300, "user_shifted", True)
    assert later == first
    got = {}
    n, calls = _native_calls(lambda: got.update(run("cpu", "cpu", x, v0, o, surrogate="user_shifted", learn=True,
                                                    grads=grads, dtype=torch.float32)))
    assert n == 0 and "snn_fast.lif_sg_arg" in calls
    check(got, run("reference", "cpu", x, v0, o, surrogate="user_shifted", learn=True, grads=grads,
                   dtype=torch.float32))


def test_memory_counts_the_builtin_bytes():
    """``custom_cpu_bytes(native=True)``: the built-in CPU kernel's traffic (x, s; x, grad_s, grad_x and
    the [N] vectors), learnable α or not, nothing saved; a noise mask keeps the given path's count."""
    from snn_fast.ops.lif import memory

    T, N = 16, 262144
    for learn in (False, True):
        b = memory.custom_cpu_bytes(T, N, torch.float32, param_grad=learn, native=True)
        assert b["total"] == 5 * T * N * 4 + 5 * N * 4 and b["saved"] == 0, b
    given = memory.custom_cpu_bytes(T, N, torch.float32, param_grad=True)
    assert given["total"] - memory.custom_cpu_bytes(T, N, torch.float32, param_grad=True, native=True)["total"] \
        == 6 * T * N * 4  # D, g′, ∂g/∂α written and read; v0 read once by both walks (save="state")
    assert memory.custom_cpu_bytes(T, N, torch.float32, mask=True, native=True) == \
        memory.custom_cpu_bytes(T, N, torch.float32, mask=True)


def test_native_under_torch_compile_fullgraph():
    """One graph through the custom ops (the fake forward keeps no D either: Inductor's size checks
    of the op's outputs hold), gradients equal to eager."""
    x = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(x, tau):
        s, v = snn_fast.lif_multistep(x, tau=tau, surrogate="user_shifted", backend="cpu")
        return (s * torch.arange(40, dtype=x.dtype)).sum() + v.sum()

    eager = torch.autograd.grad(f(x, tau), [x, tau])
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        compiled = torch.compile(f, fullgraph=True, backend=backend)
        got = torch.autograd.grad(compiled(x, tau), [x, tau])
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- switches, cache, fallbacks -------------------------------------------------------------------------
def _grads(name, dtype=torch.float64, learn=True, mask=None):
    x, v0, grads = make(8, 300, seed=5)
    return run("cpu", "cpu", x, v0, opt(0.0, reset_residual=0.2), surrogate=name, learn=learn, noise_mask=mask,
               grads=grads, dtype=dtype)


def test_switches(fresh, monkeypatch):
    """Used unless register_surrogate(compile=False), SNN_FAST_COMPILE_SURROGATES=0,
    SNN_FAST_NATIVE_SURROGATES=0, or a noise mask; every way gives the reference's gradients."""
    on = fresh("sw_on", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    off = fresh("sw_off", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True, compile=False)
    x, v0, grads = make(8, 300, seed=5)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1))

    def used(name, env=None, m=None):
        for var in ("SNN_FAST_COMPILE_SURROGATES", native_surrogate.ENV_NATIVE):
            monkeypatch.setenv(var, "0" if var == env else "1")
        n, _ = _native_calls(lambda: compare(CPU, x, v0, opt(0.0), torch.float64, mask=m, surrogate=name,
                                             learn=True, grads=grads))
        return n

    assert used(on.name) == 1
    assert used(off.name) == 0
    assert used(on.name, "SNN_FAST_COMPILE_SURROGATES") == 0
    assert used(on.name, native_surrogate.ENV_NATIVE) == 0
    assert used(on.name, m=mask) == 0
    monkeypatch.delenv(native_surrogate.ENV_NATIVE)  # unset: on
    n, _ = _native_calls(lambda: _grads(on.name))
    assert n == 1


@pytest.mark.parametrize("way", ["native", "given", "given-noisy"])
def test_uniform_start(fresh, monkeypatch, way):
    """v0=None with a user's surrogate on the CPU: v0 [1] through lif_bwd_native (its ABI 2), or through
    lif_sg_arg and the walk with g′ given (native off; a noise mask), bit for bit the same start given
    per neuron, parameter gradients included."""
    sg = fresh("uni_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1" if way == "native" else "0")
    x, _, grads = make(8, 300, seed=6)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(2)) if way == "given-noisy" else None
    for save in ("state", "recompute"):
        kw = dict(surrogate=sg.name, learn=True, noise_mask=mask, grads=grads, save=save)
        n, calls = _native_calls(lambda: run("cpu", "cpu", x, None, opt(0.0, reset_residual=0.2), **kw))
        assert n == (1 if way == "native" else 0), calls
        got = run("cpu", "cpu", x, None, opt(0.0, reset_residual=0.2), **kw)
        want = run("cpu", "cpu", x, torch.zeros(300, dtype=torch.float64), opt(0.0, reset_residual=0.2), **kw)
        want.pop("grad_v0")
        for key in got:
            assert torch.equal(got[key], want[key]), (save, key)


def test_disk_cache_serves_a_later_lookup(fresh, monkeypatch):
    """A second lookup after the in-process entry is gone loads the library from the disk cache
    without compiling."""
    sg = fresh("cache_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    first = native_surrogate.lookup(sg, torch.float32)
    assert first is not None and os.path.exists(first.path)
    del native_surrogate._LOADED[(sg.id, torch.float32)]
    real = native_surrogate.subprocess.run

    def no_compile(cmd, *a, **kw):
        assert "--version" in cmd, "compiled again"
        return real(cmd, *a, **kw)

    monkeypatch.setattr(native_surrogate.subprocess, "run", no_compile)
    again = native_surrogate.lookup(sg, torch.float32)
    assert again is not None and again.path == first.path


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership")
def test_cache_of_another_user_is_refused(fresh, monkeypatch, tmp_path):
    """A cache directory another user owns is not loaded from (their library would run here): a warning
    naming the directory, the other path's gradients. One of our own that others could write is made
    writable by us only; a library in it that others could have written is built again."""
    sg = fresh("owner_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    want = _grads(sg.name)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1")
    monkeypatch.setenv(native_surrogate.ENV_CACHE, str(tmp_path))
    cache = tmp_path / "native_surrogates"
    cache.mkdir()
    os.chmod(cache, 0o777)
    me = os.getuid()
    monkeypatch.setattr(native_surrogate.os, "getuid", lambda: me + 1)
    with pytest.warns(sgm.SurrogateCompileWarning, match="belongs to another user.*SNN_FAST_CACHE_DIR"):
        got = _grads(sg.name)
    assert "belongs to another user" in native_surrogate.why_not(sg, torch.float64)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert not list(cache.glob("*.so")) and cache.stat().st_mode & 0o777 == 0o777  # untouched
    monkeypatch.setattr(native_surrogate.os, "getuid", lambda: me)
    native_surrogate._LOADED.pop((sg.id, torch.float64))
    nat = native_surrogate.lookup(sg, torch.float64)
    assert nat is not None, native_surrogate.why_not(sg, torch.float64)
    assert cache.stat().st_mode & 0o022 == 0 and os.stat(nat.path).st_mode & 0o022 == 0
    os.chmod(nat.path, 0o777)  # a library others could have written: not loaded, built again
    built = []
    real = native_surrogate.subprocess.run
    monkeypatch.setattr(native_surrogate.subprocess, "run",
                        lambda cmd, *a, **kw: built.append("--version" not in cmd) or real(cmd, *a, **kw))
    native_surrogate._LOADED.pop((sg.id, torch.float64))
    again = native_surrogate.lookup(sg, torch.float64)
    assert again is not None and again.path == nat.path and os.stat(nat.path).st_mode & 0o022 == 0
    assert any(built)


def test_disk_cache_serves_another_process():
    """Another process finds the library this one built and loads it without compiling."""
    nat = native_surrogate.lookup(sgm.get("user_sigmoid"), torch.float32)
    assert nat is not None
    # the package this process imported (make compat's copy comes first on PYTHONPATH; a bare ``-c``
    # would put the working directory's package, built for another torch, ahead of it)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(snn_fast.__file__)))
    script = "\n".join([
        "import sys",
        f"sys.path[:0] = [{pkg_root!r}, {os.path.dirname(os.path.abspath(__file__))!r}]",
        "import torch",
        "from snn_fast import surrogate as sgm",
        "from snn_fast.ops.lif import native_surrogate as ns",
        "import user_surrogates",
        "user_surrogates.register_all()",
        "real = ns.subprocess.run",
        "def no_compile(cmd, *a, **kw):",
        "    assert '--version' in cmd, 'compiled again'",
        "    return real(cmd, *a, **kw)",
        "ns.subprocess.run = no_compile",
        "n = ns.lookup(sgm.get('user_sigmoid'), torch.float32)",
        "assert n is not None, ns.why_not(sgm.get('user_sigmoid'), torch.float32)",
        "print(n.path)"])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == nat.path


def test_first_use_inside_torch_compile(fresh):
    """A surrogate whose library is first built while torch.compile traces the forward (dynamic
    shapes; the Surrogate reached through the closure, whose id Dynamo traces as a symbolic int):
    the build runs outside that trace (its own trace adds no symbol or guard to the user's graph:
    later sizes compile nothing new), and the gradients are eager's."""
    from torch._dynamo.testing import CompileCounterWithBackend

    sg = fresh("in_compile", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    assert (sg.id, torch.float64) not in native_surrogate._LOADED

    def f(x):
        s, v = snn_fast.lif_multistep(x, tau=2.0, surrogate=sg.name, backend="cpu")
        return (s * torch.arange(x.shape[1], dtype=x.dtype)).sum() + v.sum()

    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    cf = torch.compile(f, backend=cnt, dynamic=True, fullgraph=True)
    frames = []
    for N in (40, 57, 71):
        x = torch.randn(6, N, dtype=torch.float64, requires_grad=True)
        got = torch.autograd.grad(cf(x), x)[0]
        frames.append(cnt.frame_count)
        n, _ = _native_calls(lambda: torch.autograd.grad(f(x), x)[0])
        want = torch.autograd.grad(f(x), x)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert n == 1
    assert frames[0] >= 1 and frames[1] == frames[2] == frames[0], frames
    torch._dynamo.reset()


def test_compiler_failure_warns_once_and_falls_back(fresh, monkeypatch):
    sg = fresh("nocc_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    want = _grads(sg.name)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1")
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    monkeypatch.setattr(native_surrogate, "_compiler", lambda: "/bin/false")
    with pytest.warns(sgm.SurrogateCompileWarning,
                      match=r"'nocc_sig' could not be compiled into the C\+\+ backward.*compiler failed.*"
                            r"SNN_FAST_NATIVE_SURROGATES=0"):
        got = _grads(sg.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sgm.SurrogateCompileWarning)
        again = _grads(sg.name)
    for k in want:
        assert torch.equal(got[k], want[k]) and torch.equal(again[k], want[k]), k


def test_a_translation_that_disagrees_with_torch_is_refused(fresh, monkeypatch):
    """The check before first use: a translator bug (here: sigmoid emitted as 1/(2 + e^−x)) is caught on the
    probe grid, named with the worst point, and not used; the gradients are the torch path's."""
    sg = fresh("wrong_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    monkeypatch.setitem(native_surrogate._EMIT, torch.ops.aten.sigmoid.default,
                        native_surrogate._unary("({ct}(1) / ({ct}(2) + detail::vexp(-{x})))"))
    with pytest.warns(sgm.SurrogateCompileWarning, match=r"'wrong_sig'.*its C\+\+ g′ at x = .*torch"):
        got = _grads(sg.name, torch.float32)
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "0")
    want = _grads(sg.name, torch.float32)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_lif_bwd_native_checks_its_arguments():
    abi = native_surrogate.lookup(sgm.get("user_sigmoid"), torch.float32).abi
    x = torch.randn(4, 10)
    p = torch.tensor([0.5, 1.0, 4.0])
    args = (torch.zeros_like(x), None, None, x, torch.zeros(10), p)
    with pytest.raises(RuntimeError, match="ABI tag 999, this build expects"):
        torch.ops.snn_fast.lif_bwd_native(*args, 1234, 999, False, 0.0, True, False, 0.0, False)
    # the float32 library's address with float64 data: refused before the call
    x64 = x.double()
    args64 = (torch.zeros_like(x64), None, None, x64, torch.zeros(10, dtype=torch.float64), p.double())
    nat = native_surrogate.lookup(sgm.get("user_sigmoid"), torch.float32)
    with pytest.raises(RuntimeError, match="for x's dtype Double"):
        torch.ops.snn_fast.lif_bwd_native(*args64, nat.address, nat.abi, False, 0.0, True, False, 0.0, False)
    with pytest.raises(RuntimeError, match="null address"):
        torch.ops.snn_fast.lif_bwd_native(*args, 0, abi, False, 0.0, True, False, 0.0, False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GCC's vectoriser report, Linux flags")
@pytest.mark.parametrize("row", [FORMULAS[0], FORMULAS[3], FORMULAS[6]], ids=["sigmoid", "tanh", "box_where"])
def test_generated_walk_vectorises(row, fresh, tmp_path):
    """The generated unit compiled as the library is (its flags, -march=native) with GCC's vectoriser
    report: every ``// [vec]`` loop of lif_cpu_kernels_impl.h that the compiled walk instantiates
    (the re-run and the two walks, with and without parameter gradients) is vectorised, none left
    scalar; with the user's g′ inline, as test_cpu_vectorised.py requires of the built-ins."""
    import re

    from test_cpu_vectorised import HEADERS, _gcc, _marked_loops

    if _gcc() is None:
        pytest.skip("needs GCC (its -fopt-info-vec report)")
    sg = _register(fresh, row)
    src = tmp_path / "unit.cpp"
    src.write_text(native_surrogate.source(sg, torch.float32))
    report = tmp_path / "vec.txt"
    cmd = native_surrogate._command(_gcc(), str(src), str(tmp_path / "lib.so"))
    r = subprocess.run(cmd[:1] + [f"-fopt-info-vec-all={report}"] + cmd[1:], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = report.read_text()
    loops = _marked_loops(HEADERS[0])
    pattern = (r"(?<![\w])lif_cpu_kernels_impl\.h:(\d+):\d+: "
               r"(optimized: loop vectorized|missed: couldn't vectorize loop)")
    vec, missed = set(), set()
    for m in re.finditer(pattern, text):
        line = int(m.group(1))
        for lo in loops:
            if lo[0] <= line <= lo[1]:
                (vec if m.group(2).startswith("optimized") else missed).add(lo)
    assert not missed, f"marked loops left scalar: {sorted(missed)}"
    assert len(vec) >= 6, f"expected the re-run's and both walks' loops vectorised, got {sorted(vec)}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lif_bwd_native_opcheck(dtype):
    """Schema and fake of the op (a backward: no autograd of its own), with a real library's kernel."""
    nat = native_surrogate.lookup(sgm.get("user_sigmoid"), dtype)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(5, 33, dtype=dtype)
    for need in (False, True):
        for gvl in (None, torch.randn(33, dtype=dtype)):
            args = (torch.randn_like(x), gvl, torch.randn_like(x), x, torch.randn(33, dtype=dtype),
                    torch.tensor([0.5, 0.8, 4.0], dtype=pdt), nat.address, nat.abi, True, 0.0, True, False, 0.2, need)
            torch.library.opcheck(torch.ops.snn_fast.lif_bwd_native.default, args,
                                  test_utils=("test_schema", "test_faketensor"))


def test_no_headers_is_silent_and_says_why(fresh, monkeypatch, tmp_path):
    """An install without the C++ sources beside the package (not editable): nothing compiled, no
    warning (the machine, not the surrogate), ``why_not`` names the missing header; the gradients are
    the given-g′ path's."""
    sg = fresh("nohdr_sig", g=_sig, dg=FORMULAS[0][2], alpha=4.0, scaling=True)
    monkeypatch.setattr(native_surrogate, "_CSRC", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sgm.SurrogateCompileWarning)
        n, _ = _native_calls(lambda: _grads(sg.name))
    assert n == 0 and "lif_cpu_kernels_impl.h missing" in native_surrogate.why_not(sg, torch.float64)


# --- every translated op, against torch in float64 at special values ---------------------------------
# Surrogates built by hand (not registered: these are not derivatives of anything), one library per
# group of ops; float64, where the library's functions are libm's: equal to torch's up to an ulp of
# exp, and exactly where torch's result is ±inf, NaN or a signed zero's neighbour.
def _group_unary(x, a):
    return (torch.sign(x) + 0.5 * torch.relu(x) + torch.sqrt(x.abs()) + torch.rsqrt(x.abs() + 1)
            + torch.reciprocal(x + 3))


def _group_clamp(x, a):
    return (torch.clamp_max(x, 0.5) + torch.clamp(x, min=torch.tensor(-0.25, dtype=x.dtype), max=a)
            + torch.clamp_min(x, -1) + torch.where(x > 0, 1.0, x) + torch.where(x > 0, x, 2.0)
            + torch.where(x > 0.5, 3.0, -3.0))


def _group_bool(x, a):
    both = ((x > 0) & (x < 1)) | ~(x > -1)
    either = (x > 1 / a) + (x < 0.3)  # bool + bool: a logical or in torch
    also = (x > 0) * (x < 2)
    return (both.to(x.dtype) + 2 * either.to(x.dtype) + 4 * also.to(x.dtype)
            + 8 * torch.logical_or(torch.logical_not(x > 0), x > 3).to(x.dtype)
            + 16 * torch.full_like(x, 0.5, dtype=torch.bool).to(x.dtype) + 32 * torch.ne(x, 0).to(x.dtype))


def _group_arith(x, a):
    return (torch.add(x, a, alpha=2) + torch.sub(x, a, alpha=0.5) + (2 - x) + x ** 3 + (x.abs() + 5) ** 0.5
            + (x.abs() + 1) ** -0.5 + (x.abs() + 1) ** -2 + (x + 7) ** -1 + x ** 0 + x ** 1
            + torch.maximum(x, a) - torch.minimum(x, -a) + torch.square(x) - x + torch.zeros_like(x)
            + torch.ones_like(x) + torch.full_like(x, 0.25) + torch.exp(-x.abs()) + torch.tanh(x) + torch.sigmoid(x))


GROUPS = {"unary": _group_unary, "clamp_where": _group_clamp, "bool": _group_bool, "arith": _group_arith}


@pytest.mark.parametrize("name", list(GROUPS))
def test_each_translated_op_matches_torch_float64(name):
    fn = GROUPS[name]
    sg = sgm.Surrogate(name=f"ops_{name}", id=900_000 + list(GROUPS).index(name), alpha=1.5, g=fn, dg=fn,
                       dg_dalpha=lambda x, a: x * fn(x, a))
    try:
        nat = native_surrogate.lookup(sg, torch.float64)
        assert nat is not None, native_surrogate.why_not(sg, torch.float64)
        x = torch.cat([torch.linspace(-4, 4, 801, dtype=torch.float64),
                       torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, -3.0, math.inf, -math.inf, math.nan, 1e300,
                                     -1e300, 1e-300], dtype=torch.float64)])
        for alpha in (1.5, 0.7):
            gp, dga = nat.evaluate(x, alpha)
            a = torch.tensor(alpha, dtype=torch.float64)
            torch.testing.assert_close(gp, fn(x, a), rtol=1e-14, atol=0, equal_nan=True)
            torch.testing.assert_close(dga, x * fn(x, a), rtol=1e-14, atol=0, equal_nan=True)
    finally:
        native_surrogate._LOADED.pop((sg.id, torch.float64), None)
