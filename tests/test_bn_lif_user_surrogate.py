"""bn_lif with a user-registered surrogate on the CPU (snn_fast/ops/bn_lif/custom_cpu.py).

Both backward paths against the reference (batch norm, then the LIF reference), with tests/test_bn_lif.py's
harness: the user's g′ compiled into bn_lif's own walk (``snn_fast::bn_lif_bwd_native``, counted), and
without it (SNN_FAST_NATIVE_SURROGATES=0, or a surrogate that does not translate) the unfused path,
batch norm's affine in torch around the LIF op's backward for a user surrogate. Also: float16/bfloat16,
the edge shapes, 1 and 2 threads, the routing limits (a noise mask, the strict threshold), learnable
α without ∂g/∂α, torch.compile, and the op's checks and opcheck.
"""
from __future__ import annotations

import pytest
import torch

import snn_fast
from snn_fast import surrogate as sgm

import user_surrogates
from conftest import assert_close_lowp
from test_bn_lif import BY_CHANNEL, EDGES, MODES, OPTIONS, check, make_inputs, run
from test_custom_surrogate import _CountCalls

native_surrogate = pytest.importorskip("snn_fast.ops.lif.native_surrogate")
pytestmark = pytest.mark.skipif(not snn_fast.HAS_C or not snn_fast._ext.has_kernel("bn_lif_bwd_native", "CPU"),
                                reason="needs snn_fast._C with the bn_lif CPU ops")
NATIVE = native_surrogate.unavailable("bn_lif")
needs_native = pytest.mark.skipif(NATIVE is not None, reason=f"the compiled walk cannot be built here: {NATIVE}")

PATHS = ["native", "unfused"]


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory):
    d = tmp_path_factory.getbasetemp().parent / "native_surrogates_cache"  # shared by the xdist workers
    d.mkdir(exist_ok=True)
    return str(d)


@pytest.fixture(autouse=True)
def registered():
    user_surrogates.register_all()


def _set_path(monkeypatch, path, cache):
    if path == "native" and NATIVE is not None:
        pytest.skip(f"the compiled walk cannot be built here: {NATIVE}")
    monkeypatch.setenv("SNN_FAST_COMPILE_SURROGATES", "1")
    monkeypatch.setenv(native_surrogate.ENV_NATIVE, "1" if path == "native" else "0")
    monkeypatch.setenv(native_surrogate.ENV_CACHE, cache)


def _counted(fn):
    """fn()'s result, and how many bn_lif_bwd_native / given-g′ lif_bwd calls it made."""
    with _CountCalls() as c:
        out = fn()
    return out, c.calls.count("snn_fast.bn_lif_bwd_native"), c.calls.count("snn_fast.lif_bwd")


def _run_path(path, *args, **kw):
    """run('cpu', ...) checked to have taken ``path``'s backward."""
    out, native, given = _counted(lambda: run("cpu", *args, **kw))
    assert (native, given) == ((1, 0) if path == "native" else (0, 1)), (path, native, given)
    return out


# (option, surrogate, learn τ/θ/α, (training, tdbn_alpha)): the three kinds of user surrogate (∂g/∂α
# derived, given, none) over test_bn_lif.py's options and modes
USER = ["user_sigmoid", "user_shifted", "user_box"]
GRID = [(o, sg, sg != "user_box" and (i + j) % 2 == 0, m) for i, o in enumerate(OPTIONS)
        for j, sg in enumerate(USER) for m in MODES]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", GRID, ids=lambda c: f"{c[0]}-{c[1]}-{'learn' if c[2] else 'fixed'}-{c[3]}")
def test_matches_reference_float64(path, case, monkeypatch, native_cache):
    _set_path(monkeypatch, path, native_cache)
    opt, sg, learn, (training, tdbn) = case
    inp = make_inputs((5, 3, 4, 3, 5), torch.float64, learn=learn)
    opts = dict(OPTIONS[opt], **({} if sg == "user_box" else {"alpha": 2.0}))
    ref = run("reference", inp, torch.float64, training, tdbn, opts, sg)
    got = _run_path(path, inp, torch.float64, training, tdbn, opts, sg)
    check(got, ref, torch.float64)
    assert ref["s"].any() and not ref["s"].all()
    if learn:
        assert ref["grad_alpha"].abs() > 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("opt,learn,mode", [(o, lrn, m) for o in OPTIONS for lrn in (False, True) for m in MODES[:2]])
def test_matches_reference_float32(path, opt, learn, mode, monkeypatch, native_cache):
    _set_path(monkeypatch, path, native_cache)
    training, tdbn = mode
    inp = make_inputs((6, 4, 8, 7, 7), torch.float32, learn=learn)
    opts = dict(OPTIONS[opt], alpha=2.0)
    ref = run("reference", inp, torch.float32, training, tdbn, opts, "user_shifted")
    got = _run_path(path, inp, torch.float32, training, tdbn, opts, "user_shifted")
    check(got, ref, torch.float32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,training", [(torch.float16, True), (torch.bfloat16, False)])
def test_low_precision_within_torch_error(path, dtype, training, monkeypatch, native_cache):
    _set_path(monkeypatch, path, native_cache)
    inp = make_inputs((6, 4, 8, 5, 5), dtype)
    opts = dict(OPTIONS["hard-di"], alpha=4.0)
    ref64 = run("reference", inp, torch.float64, training, None, opts, "user_sigmoid")
    ref_lp = run("reference", inp, dtype, training, None, opts, "user_sigmoid")
    got = _run_path(path, inp, dtype, training, None, opts, "user_sigmoid")
    for k in ("v_last", "v_seq", "grad_x", "grad_v0", "grad_w", "grad_b"):
        assert_close_lowp(got[k], ref64[k], ref_lp[k].to(dtype), name=k)
    flips = (got["s"].double() != ref64["s"]).float().mean().item()
    flips_torch = (ref_lp["s"].double() != ref64["s"]).float().mean().item()
    assert flips <= 2 * flips_torch + 1e-3, (flips, flips_torch)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("edge,training", [(e, t) for e in EDGES for t in (True, False)])
def test_edge_shapes(path, edge, training, monkeypatch, native_cache):
    _set_path(monkeypatch, path, native_cache)
    inp = make_inputs(EDGES[edge], torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, training, 0.7, {"alpha": 2.0}, "user_shifted")
    got = _run_path(path, inp, torch.float64, training, 0.7, {"alpha": 2.0}, "user_shifted")
    check(got, ref, torch.float64)


@pytest.mark.parametrize("path", PATHS)
def test_zero_variance_channel_and_noncontiguous(path, monkeypatch, native_cache):
    _set_path(monkeypatch, path, native_cache)
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64, learn=True)
    inp["x"][:, :, 2] = 0.8  # constant channel: var 0, rstd = 1/√ε
    ref = run("reference", inp, torch.float64, surrogate="user_sigmoid", noncontig=True)
    got = _run_path(path, inp, torch.float64, surrogate="user_sigmoid", noncontig=True)
    check(got, ref, torch.float64)


@needs_native
@pytest.mark.parametrize("shape", list(BY_CHANNEL))
def test_native_by_channel(shape, monkeypatch, native_cache):
    """The compiled walk at shapes whose training backward goes channel by channel (test_bn_lif.py
    BY_CHANNEL: each channel's batch-statistics pass runs inside the library's kernel), learnable τ/θ/α
    and tdBN, against the reference; and in eval, by blocks of the row."""
    _set_path(monkeypatch, "native", native_cache)
    inp = make_inputs(BY_CHANNEL[shape], torch.float64, learn=True)
    for training in (True, False):
        ref = run("reference", inp, torch.float64, training, 0.7, {"alpha": 2.0}, "user_shifted")
        check(_run_path("native", inp, torch.float64, training, 0.7, {"alpha": 2.0}, "user_shifted"), ref,
              torch.float64)


@needs_native
def test_native_threads_give_the_same_bits(monkeypatch, native_cache):
    """Many blocks of the walk whose channel runs end inside blocks, learnable τ/θ/α: 1 and 2 threads
    give the same bits, and the reference's values."""
    _set_path(monkeypatch, "native", native_cache)
    inp = make_inputs((4, 8, 24, 13, 11), torch.float32, seed=4, learn=True)
    before = torch.get_num_threads()
    out = {}
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            out[nt] = _run_path("native", inp, torch.float32, True, 0.7, {"alpha": 2.0}, "user_shifted")
    finally:
        torch.set_num_threads(before)
    for k in out[1]:
        assert torch.equal(out[1][k], out[2][k]), k
    check(out[1], run("reference", inp, torch.float32, True, 0.7, {"alpha": 2.0}, "user_shifted"), torch.float32)


@needs_native
def test_native_equals_the_builtin_walk_for_the_same_formula(monkeypatch, native_cache):
    """user_sigmoid is the built-in sigmoid's formula: its compiled walk gives the built-in kernel's
    forward bits and gradients within the float32 tolerance (the translation's operation order)."""
    _set_path(monkeypatch, "native", native_cache)
    inp = make_inputs((5, 4, 6, 5, 5), torch.float32, seed=2, learn=True)
    opts = {"alpha": 4.0}
    builtin = run("cpu", inp, torch.float32, True, None, opts, "sigmoid")
    user = _run_path("native", inp, torch.float32, True, None, opts, "user_sigmoid")
    for k in ("s", "v_last", "v_seq", "running_mean", "running_var"):
        assert torch.equal(user[k], builtin[k]), k
    check(user, builtin, torch.float32)


def test_untranslatable_surrogate_takes_the_unfused_path(monkeypatch, native_cache):
    """A g′ outside the translator's list (erf) is refused by name; the unfused path runs it."""
    _set_path(monkeypatch, "native" if NATIVE is None else "unfused", native_cache)
    name = "bn_lif_user_erf"  # tests/test_native_surrogate.py's erf_op: the sigmoid's g′ plus 0·erf(x)
    if name not in sgm.names():
        sgm.register_surrogate(name, g=lambda x, a: torch.sigmoid(a * x),
                               dg=lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)) + 0 * torch.erf(x),
                               alpha=2.0, scaling=True)
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64, learn=True)
    ref = run("reference", inp, torch.float64, True, 0.7, {"alpha": 2.0}, name)
    got = _run_path("unfused", inp, torch.float64, True, 0.7, {"alpha": 2.0}, name)
    check(got, ref, torch.float64)
    if NATIVE is None:
        assert "not translated" in native_surrogate.why_not(sgm.get(name), torch.float64, op="bn_lif")


@pytest.mark.parametrize("path", PATHS)
def test_noise_mask_and_strict_threshold_run_on_the_reference(path, monkeypatch, native_cache):
    """No noise mask (its emitted value needs the user's g) and not fire_at_threshold=False on the CPU
    kernel: 'auto' runs the reference (its values), 'cpu' by name is an error naming the limit."""
    _set_path(monkeypatch, path, native_cache)
    inp = make_inputs((4, 3, 4, 3, 3), torch.float64, learn=True)
    mask = torch.rand(inp["x"].shape, generator=torch.Generator().manual_seed(1)) > 0.5
    for kw in (dict(noise_mask=mask), dict(opts={"fire_at_threshold": False, "alpha": 2.0})):
        ref = run("reference", inp, torch.float64, surrogate="user_sigmoid", **kw)
        got, native, given = _counted(lambda: run("auto", inp, torch.float64, surrogate="user_sigmoid", **kw))
        assert native == 0 and given == 0
        check(got, ref, torch.float64)
        with pytest.raises(ValueError, match="noise mask or fire_at_threshold=False"):
            run("cpu", inp, torch.float64, surrogate="user_sigmoid", **kw)


def test_learnable_alpha_needs_dg_dalpha():
    name = "bn_lif_user_no_dalpha"  # a width, not scaling=True, no dg_dalpha
    if name not in sgm.names():
        sgm.register_surrogate(name, g=lambda x, a: torch.sigmoid((a + 1) * x),
                               dg=lambda x, a: (a + 1) * torch.sigmoid((a + 1) * x) * (1 - torch.sigmoid((a + 1) * x)),
                               alpha=2.0)
    x = torch.randn(3, 2, 4, 5)
    alpha = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="no dg_dalpha: alpha cannot be learned"):
        snn_fast.bn_lif(x, surrogate=name, alpha=alpha, backend="cpu")
    snn_fast.bn_lif(x, surrogate=name, alpha=1.0, backend="cpu")  # a fixed α runs


@pytest.mark.parametrize("path", PATHS)
def test_torch_compile_fullgraph(path, monkeypatch, native_cache):
    """One graph through the custom ops, gradients equal to eager."""
    _set_path(monkeypatch, path, native_cache)
    x = torch.randn(5, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(4, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)

    def f(x, w, tau):
        s, v = snn_fast.bn_lif(x, w, tau=tau, surrogate="user_shifted", alpha=2.0, tdbn_alpha=0.7, backend="cpu")
        return (s * torch.arange(6, dtype=x.dtype)).sum() + v.sum()

    eager = torch.autograd.grad(f(x, w, tau), [x, w, tau])
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, tau), [x, w, tau])
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- the op ------------------------------------------------------------------------------------------------
def _op_args(dtype, N=60, C=3, inner=5, gvl=True):
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(4, N, dtype=dtype)
    return (torch.randn_like(x), torch.randn(N, dtype=dtype) if gvl else None, torch.randn_like(x), x,
            torch.randn(N, dtype=dtype), torch.tensor([0.5, 0.8, 2.0], dtype=pdt), torch.rand(C, dtype=pdt) + 0.5,
            torch.randn(C, dtype=pdt), torch.randn(C, dtype=pdt), torch.rand(C, dtype=pdt) + 0.5, 0.7, inner)


@needs_native
def test_bn_lif_bwd_native_checks_its_arguments(monkeypatch, native_cache):
    _set_path(monkeypatch, "native", native_cache)
    sg = sgm.get("user_sigmoid")
    nat = native_surrogate.lookup(sg, torch.float32, op="bn_lif")
    assert nat is not None, native_surrogate.why_not(sg, torch.float32, op="bn_lif")
    lif = native_surrogate.lookup(sg, torch.float32)  # the LIF op's library: another walk, another tag
    args = _op_args(torch.float32)
    flags = (False, 0.0, True, False, 0.0, False, True)
    with pytest.raises(RuntimeError, match="ABI tag"):
        torch.ops.snn_fast.bn_lif_bwd_native(*args, True, lif.address, lif.abi, *flags)
    args64 = _op_args(torch.float64)
    with pytest.raises(RuntimeError, match="for x's dtype Double"):
        torch.ops.snn_fast.bn_lif_bwd_native(*args64, True, nat.address, nat.abi, *flags)
    with pytest.raises(RuntimeError, match="null address"):
        torch.ops.snn_fast.bn_lif_bwd_native(*args, True, 0, nat.abi, *flags)
    with pytest.raises(RuntimeError, match="not a multiple|inner"):
        torch.ops.snn_fast.bn_lif_bwd_native(*args[:-1], 7, True, nat.address, nat.abi, *flags)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bn_lif_bwd_native_opcheck(dtype, monkeypatch, native_cache):
    _set_path(monkeypatch, "native", native_cache)
    nat = native_surrogate.lookup(sgm.get("user_shifted"), dtype, op="bn_lif")
    for need, batch, gvl in ((False, True, True), (True, False, False)):
        args = _op_args(dtype, gvl=gvl) + (batch, nat.address, nat.abi, True, 0.0, True, False, 0.2, False, need)
        torch.library.opcheck(torch.ops.snn_fast.bn_lif_bwd_native.default, args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("save,need", [(0, True), (1, False)])
def test_custom_ops_opcheck(path, save, need, monkeypatch, native_cache):
    """torch.library.opcheck of the Python pair behind a user surrogate (autograd registered by the
    table), its backward on both paths."""
    from snn_fast.ops.bn_lif.function import BACKENDS

    _set_path(monkeypatch, path, native_cache)
    BACKENDS.load("cpu", custom=True)
    T, B, C, S = 3, 2, 4, 5
    x = torch.randn(T, B * C * S, dtype=torch.float64, requires_grad=True)
    v0 = torch.zeros(B * C * S, dtype=torch.float64, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=need)
    w = torch.rand(C, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, dtype=torch.float64, requires_grad=True)
    mean, rstd, _ = torch.ops.snn_fast.bn_lif_stats(x.detach(), C, S, 1e-5)
    flags = (sgm.get("user_shifted").id, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
    fwd = (x, v0, params, w, b, mean, rstd, 0.7, S, True, None, *flags, True, save)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_fwd_custom_cpu.default, fwd)
    det = [a.detach() if isinstance(a, torch.Tensor) else a for a in fwd]
    s, _, _, saved = torch.ops.snn_fast.bn_lif_fwd_custom_cpu(*det)
    bwd = (torch.randn_like(x), torch.randn_like(v0), None, *det[:10], None, saved, s, *flags, save, need)
    torch.library.opcheck(torch.ops.snn_fast.bn_lif_bwd_custom_cpu.default, bwd,
                          test_utils=("test_schema", "test_faketensor"))


@needs_native
@pytest.mark.parametrize("learn", [False, True])
def test_native_backward_is_a_fixed_handful_of_calls(learn, monkeypatch, native_cache):
    """The backward with the compiled walk: the same calls at T = 3 and 11, 2 and 40 channels, one of them
    bn_lif_bwd_native; no LIF-op walk, no D re-run, no call of the user's torch functions."""
    _set_path(monkeypatch, "native", native_cache)
    seen = {}
    for T in (3, 11):
        for C in (2, 40):
            x = torch.randn(T, 4, C, 5, requires_grad=True)
            tau = torch.tensor(2.0, requires_grad=True) if learn else 2.0
            s, v = snn_fast.bn_lif(x, torch.rand(C) + 0.5, tau=tau, surrogate="user_shifted", alpha=2.0,
                                   tdbn_alpha=0.7, backend="cpu")
            with _CountCalls() as c:
                (s.sum() + v.sum()).backward()
            assert c.calls.count("snn_fast.bn_lif_bwd_native") == 1, c.calls
            assert not {"snn_fast.lif_bwd", "snn_fast.lif_sg_arg", "aten.sigmoid"} & set(c.calls), c.calls
            seen[T, C] = c.calls
    first = next(iter(seen.values()))
    assert all(v == first for v in seen.values()) and len(first) <= 60, first
