"""Property tests (hypothesis): every fused backend equals the reference on random cases.

A case is drawn whole: the shape (T from 1 to 300, N from 1 to a few thousand, with extra weight on
the SIMD widths and block sizes the CPU kernel splits N by, and on the interpreter's 128-lane block),
every LIF option of ``snn_fast/ops/lif/args.py`` (hard or soft reset, v_reset, decay_input, detach,
κ, τ or decay or IF, learnable τ/θ/α each on its own), the surrogate and α, the noise mask (none,
all True, random), v0 (none, float, full or broadcast tensor), ``return_v_seq``, the dtype, strided
(non-contiguous) inputs and output gradients, and special values planted in x (±inf, NaN, ±max, ±0,
subnormals). Then, per backend available here (``tests/test_lif.py``'s ``BACKENDS``):

- float64/float32 without special values: spikes exactly the reference's (no flip where the mask is
  on), every other output and gradient within conftest's ``assert_close``, all finite;
- with special values (ARCHITECTURE.md "Special values"): the forward bitwise the reference's (NaN at
  the same places; with a noise mask the analog values are compared with ``assert_close``), every
  gradient NaN and ±inf at the reference's places and otherwise within ``assert_close``;
- float16/bfloat16: within conftest's ``assert_close_lowp`` of the float64 reference, spike flips no
  more frequent than plain PyTorch's in that dtype (``tests/test_lif.py``'s ``check_lowp``), and with
  ±inf/NaN/±0/subnormals the reference's NaN and infinity positions.

Tempotron: the membrane, 'v_max' and 'spikes' and both gradients against
``snn_fast/ops/tempotron/reference.py`` on random shapes, τ, τ_s (kept ≥ 1.5× apart: the τ ≈ τ_s
formulation is being reworked separately), thresholds and spike times (integer, fractional, silent,
±inf), strided inputs.

Profiles (registered in conftest): ``ci`` (the default: derandomized, so CI runs the same examples
every time and cannot flake; no example database) and ``long`` (``--hypothesis-profile=long``:
random, 20× the examples, for local runs). Budget: the interpreter runs a few small examples only.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import snn_fast  # noqa: E402
from snn_fast import surrogate as sgm  # noqa: E402
from snn_fast.ops.tempotron import tempotron  # noqa: E402


from conftest import assert_close, assert_close_lowp  # noqa: E402
from test_lif import BY_ID, SKIP, check_lowp  # noqa: E402
from test_tempotron import SKIP as TEMPOTRON_SKIP  # noqa: E402

LOWP = (torch.float16, torch.bfloat16)
SURROGATES = list(sgm.names())
# The CPU kernel's vector widths (4/8/16 lanes of fp32, 8 of fp64) and block sizes (multiples of 16,
# 16 at least; 208 = 65536/300 rounded down to 16, the backward's block at T = 300), the interpreter's
# 128-lane block: N one below, at and one above each.
EDGES = sorted({e + d for e in (4, 8, 16, 32, 64, 128, 208, 256, 512, 1024, 2048, 4096) for d in (-1, 0, 1)})


def _budget(be):
    """(max T, max N, max T·N) for a backend: the interpreter costs ~1 ms per step per 128 lanes."""
    return (24, 260, 2000) if be.interpreted else (300, 4100, 60000)


def _special_values(dtype):
    fi = torch.finfo(dtype)
    vals = [math.inf, -math.inf, math.nan, 0.0, -0.0, fi.tiny / 4, -fi.tiny / 2]
    if dtype not in LOWP:
        # ±max: finite inputs whose charge overflows; in fp16/bf16 the reference overflows in that
        # dtype where the kernels (fp32 arithmetic) do not, so there the two answers legitimately differ.
        vals += [fi.max, -fi.max, 0.9 * fi.max]
    return vals


def _layout(draw):
    return draw(st.sampled_from(["contiguous", "transposed", "strided"]))


def _as_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in a non-contiguous [T, N] view (transposed storage, or every other column)."""
    if t.dim() != 2 or layout == "contiguous":
        return t
    if layout == "transposed":
        return t.t().contiguous().t()
    wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    return wide[:, ::2]


@st.composite
def lif_cases(draw, be, dtypes):
    max_t, max_n, max_tn = _budget(be)
    dtype = draw(st.sampled_from(dtypes))
    T = draw(st.one_of(st.integers(1, 8), st.integers(1, max_t)))
    n_choices = [st.integers(1, 20), st.sampled_from([e for e in EDGES if e <= max_n]), st.integers(1, max_n)]
    N = draw(st.one_of(*n_choices).filter(lambda n: n * T <= max_tn))
    sg = draw(st.sampled_from(SURROGATES))
    entry = sgm.get(sg)
    hard = draw(st.booleans())
    tau_kind = draw(st.sampled_from(["tau", "tau", "decay", "if"]))
    case = dict(
        dtype=dtype, T=T, N=N, surrogate=sg,
        v_reset=draw(st.sampled_from([0.0, -0.3, 0.5])) if hard else None,
        decay_input=draw(st.booleans()),
        detach_reset=draw(st.booleans()),
        reset_residual=draw(st.sampled_from([0.0, 0.0, 0.2, -0.1])),
        tau_kind=tau_kind,
        tau=draw(st.floats(1.05, 40.0)) if tau_kind == "tau" else math.inf,
        decay=draw(st.floats(0.05, 0.95)) if tau_kind == "decay" else None,
        theta=draw(st.floats(0.1, 2.0)),
        alpha=(None if entry.alpha is None or draw(st.booleans())
               else entry.alpha * draw(st.floats(0.3, 3.0)) + (1.0 if entry.alpha_min >= 1.0 else 0.0)),
        learn_k=tau_kind != "if" and draw(st.booleans()),
        learn_theta=draw(st.booleans()),
        # a learnable α only where it has a gradient (a width); a constant ∂g/∂α = 0 is no property
        learn_alpha=entry.alpha is not None and draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "none", "all", "random"])),
        v0=draw(st.sampled_from(["none", "float", "tensor", "broadcast"])),
        return_v_seq=draw(st.booleans()),
        layout=_layout(draw),
        grad_layout=_layout(draw),
        nd=N % 2 == 0 and draw(st.booleans()),  # [T, 2, N/2] instead of [T, N]
        seed=draw(st.integers(0, 2 ** 31 - 1)),
        scale=draw(st.sampled_from([0.5, 1.5, 4.0])),
    )
    n_special = draw(st.sampled_from([0, 0, 0, 1, 3]))
    specials = []
    for _ in range(n_special):
        specials.append((draw(st.integers(0, T - 1)), draw(st.integers(0, N - 1)),
                         draw(st.sampled_from(_special_values(dtype)))))
    case["specials"] = specials
    # drawn last, so the cases drawn before it stay the same; the CPU kernel and the reference ignore it
    case["save"] = draw(st.sampled_from(["state", "recompute"]))
    return case


def _inputs(case, device):
    """x [T, N] (or [T, 2, N/2]), v0, output gradients, mask: made in float64, cast, laid out."""
    T, N, dtype = case["T"], case["N"], case["dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(T, N, generator=g, dtype=torch.float64) * case["scale"]
    for t, n, val in case["specials"]:
        x[t, n] = val
    v0 = torch.randn(N, generator=g, dtype=torch.float64) * 0.5
    grads = [torch.randn(T, N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64),
             torch.randn(T, N, generator=g, dtype=torch.float64)]
    mask = None
    if case["mask"] == "all":
        mask = torch.ones(T, N, dtype=torch.bool)
    elif case["mask"] == "random":
        mask = torch.rand(T, N, generator=g) >= 0.4
    # representable in the dtype, so only the arithmetic differs between the backends and float64
    x, v0, grads = x.to(dtype), v0.to(dtype), [gr.to(dtype) for gr in grads]
    return x, v0, grads, mask


def run_lif(backend, device, case, dtype=None):
    """Forward + backward of a fixed random linear loss of every output; every output and gradient."""
    dtype = dtype or case["dtype"]
    x, v0, grads, mask = _inputs(case, "cpu")
    shape = (case["T"], 2, case["N"] // 2) if case["nd"] else None
    x = _as_layout(x.to(dtype).to(device), case["layout"])
    x = (x.reshape(shape) if shape else x).requires_grad_(True)
    wrt, names = [x], ["grad_x"]
    if case["v0"] == "float":
        v0 = 0.25
    elif case["v0"] == "none":
        v0 = None
    else:
        v0 = v0[:1] if case["v0"] == "broadcast" else v0
        v0 = v0.to(dtype).to(device)
        v0 = (v0.reshape(shape[1:]) if shape and v0.numel() > 1 else v0).requires_grad_(True)
        wrt.append(v0)
        names.append("grad_v0")
    pdt = torch.float64 if dtype == torch.float64 else torch.float32

    def param(name, value, learn):
        if not learn:
            return value
        t = torch.tensor(value, dtype=pdt, device=device, requires_grad=True)
        wrt.append(t)
        names.append("grad_" + name)
        return t

    kw = dict(v_reset=case["v_reset"], decay_input=case["decay_input"], detach_reset=case["detach_reset"],
              reset_residual=case["reset_residual"], surrogate=case["surrogate"])
    if case["tau_kind"] == "decay":
        kw["decay"] = param("decay", case["decay"], case["learn_k"])
    else:
        kw["tau"] = param("tau", case["tau"], case["learn_k"])
    kw["v_threshold"] = param("theta", case["theta"], case["learn_theta"])
    alpha = case["alpha"] if case["alpha"] is not None else (sgm.get(case["surrogate"]).alpha or 1.0)
    kw["alpha"] = param("alpha", alpha, case["learn_alpha"]) if case["learn_alpha"] else case["alpha"]
    if mask is not None:
        mask = mask.to(device)
        kw["noise_mask"] = mask.reshape(shape) if shape else mask
    out = snn_fast.lif_multistep(x, v0, return_v_seq=case["return_v_seq"], backend=backend,
                                 save=case.get("save", "state"), **kw)
    loss = 0
    for o, gr in zip(out, grads):
        gr = _as_layout(gr.to(dtype).to(device), case["grad_layout"])
        loss = loss + (o * gr.reshape(o.shape)).sum()
    g = torch.autograd.grad(loss, wrt)
    # flattened: positions are what the comparisons need, whatever the layout
    res = dict(zip(["s", "v_T", "v_seq"][: len(out)], [o.detach().reshape(-1) for o in out]))
    res.update(zip(names, [t.detach().reshape(-1) for t in g]))
    return res


def _same_specials(got, want, name):
    got = got.to(want.dtype)
    assert torch.equal(got.isnan(), want.isnan()), (
        f"{name}: NaN at other places than the reference: got {got[got.isnan() != want.isnan()][:6].tolist()}, "
        f"reference {want[got.isnan() != want.isnan()][:6].tolist()}")
    inf = want.isinf() | got.isinf()
    assert torch.equal(got[inf], want[inf]), f"{name}: ±inf differ: got {got[inf][:6].tolist()}, " \
                                             f"reference {want[inf][:6].tolist()}"


def check_case(be, case):
    dtype = case["dtype"]
    got = run_lif(be.name, be.device, case)
    if dtype in LOWP:
        ref64 = run_lif("reference", be.device, case, torch.float64)
        if case["specials"]:
            for k in ref64:
                _same_specials(got[k], ref64[k], k)
            return
        ref_lowp = run_lif("reference", be.device, case)
        if be.name == "triton" and dtype == torch.bfloat16:
            # test_lif.py KNOWN_FAILURES (_TRITON_BF16): Triton's bf16 parameter gradients exceed the
            # low-precision bound (a known failure); the rest is compared
            for d in (got, ref64, ref_lowp):
                for k in ("grad_tau", "grad_decay", "grad_theta", "grad_alpha"):
                    d.pop(k, None)
        mask = _inputs(case, "cpu")[3]
        check_lowp(got, ref64, ref_lowp, dtype, mask=None if mask is None else mask.reshape(-1), tag=f"{be.id} ")
        return
    ref = run_lif("reference", be.device, case)
    assert got.keys() == ref.keys()
    mask = _inputs(case, "cpu")[3]
    spikes = torch.ones_like(ref["s"], dtype=torch.bool) if mask is None else mask.reshape(-1)
    spikes = spikes.to(ref["s"].device)
    if not case["specials"]:
        flips = int(((got["s"] != ref["s"]) & spikes).sum())
        assert flips == 0, f"{flips} spikes differ from the reference"
        for k in ref:
            assert torch.isfinite(got[k]).all(), f"{k} is not finite"
            assert_close(got[k], ref[k], name=k)
        return
    for k in ref:
        _same_specials(got[k], ref[k], k)
        if k in ("s", "v_T", "v_seq") and case["mask"] in ("none", "all"):
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{k}: {m}")
        else:
            assert_close(got[k], ref[k], name=k, equal_nan=True)


def _case(**over):
    """A whole case from a few fields (the explicit examples below)."""
    base = dict(dtype=torch.float32, T=8, N=12, surrogate="sigmoid", v_reset=0.0, decay_input=True,
                detach_reset=False, reset_residual=0.0, tau_kind="tau", tau=2.0, decay=None, theta=0.8, alpha=None,
                learn_k=True, learn_theta=True, learn_alpha=False, mask="none", v0="tensor", return_v_seq=True,
                layout="contiguous", grad_layout="contiguous", nd=False, seed=1, scale=1.5, specials=[])
    return dict(base, **over)


_F32MAX = torch.finfo(torch.float32).max
# Cases the drawn ones find rarely, each a kernel/reference disagreement once; run on every backend.
LIF_EXAMPLES = [
    # Triton: ∂L/∂V_{t−1} = ε·(1 − k) gave ±inf where autograd has inf − inf = NaN (g′ ≡ 1, hard reset)
    _case(surrogate="straight_through", specials=[(2, 1, -_F32MAX), (3, 3, math.inf)]),
    # C++ and Triton: detach_reset, κ = 0, NaN after an analog reset: 0·NaN reached ∂L/∂θ (the reference
    # never forms it); Triton: g(NaN) of rectangle and spike_gate was 0 (tl.maximum drops NaN), not NaN
    _case(surrogate="rectangle", detach_reset=True, v_reset=0.5, mask="random", specials=[(5, 3, math.nan),
                                                                                        (6, 7, math.nan)]),
    _case(surrogate="spike_gate", detach_reset=True, v_reset=0.5, mask="random", specials=[(5, 3, math.nan),
                                                                                         (1, 0, math.inf)]),
]


def _backend_params(ids):
    return [pytest.param(BY_ID[i], id=i, marks=[pytest.mark.skip(reason=SKIP[i])] if SKIP[i] else [])
            for i in ids]


# How many examples per test: the interpreter ~0.1–0.5 s per example, the CPU kernel ~10–50 ms
# (the reference's Python loop over up to 300 steps dominates).
def _examples(be, compiled, interpreted):
    return interpreted if be.interpreted else compiled


def _learnable_k_with_large_input(case):
    return case["learn_k"] and any(math.isfinite(v) and abs(v) > 1e8 for *_, v in case["specials"])


# A learnable τ or decay with a large finite input (found by CI's first run of this file, 2026-11-30):
# grad_k sums terms ε·(X − V) whose size follows the input, and the v_T / v_seq gradients carry them
# even where g′ = 0. Their sum rounds to within eps·|largest term| in any order, and the reference and
# the kernels sum in different orders: at x = 1e10, grad_decay −0.19333411 vs −0.19333398 (1.3e-7, within the
# bound 8.9e-4 below); at x = 1e300 or the float64 max the terms cancel to rounding noise (−0.0358 vs −0.0),
# which no tolerance relative to the result can compare. The random cases leave these out; this test
# keeps the case, with the bound its rounding allows.
LEARNABLE_DECAY_LARGE = dict(
    dtype=torch.float64, T=2, N=3, surrogate="sigmoid", v_reset=None, decay_input=True, detach_reset=False,
    reset_residual=0.0, tau_kind="decay", tau=math.inf, decay=0.5, theta=1.0, alpha=None, learn_k=True,
    learn_theta=False, learn_alpha=False, mask="none", v0="none", return_v_seq=False, layout="contiguous",
    grad_layout="contiguous", nd=False, seed=0, scale=0.5, specials=[(0, 0, 1e10)])


@pytest.mark.parametrize("be", _backend_params(["cpu", "triton-interp"]))
def test_learnable_decay_with_large_input_within_summation_rounding(be):
    case = LEARNABLE_DECAY_LARGE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run_lif(be.name, be.device, case)
        ref = run_lif("reference", be.device, case)
    # |terms| ≤ |X − V| · |output gradients| ≲ 1e10 · (2·T·N = 12 gradients of |g| ≤ ~3): 10 ulps of 4e11
    bound = 10 * 2.0 ** -52 * 4e11
    assert abs(got["grad_decay"].item() - ref["grad_decay"].item()) <= bound, (got["grad_decay"], ref["grad_decay"])
    for k in ("s", "grad_x"):
        assert_close(got[k], ref[k], name=k)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("be", _backend_params(["cpu", "triton-interp", "cuda", "triton-cuda"]))
def test_lif_matches_reference_fp64_fp32(be):
    n = _examples(be, 40, 10)

    @settings(max_examples=max(1, n * settings().max_examples // 100))
    @given(case=lif_cases(be, [torch.float64, torch.float32]))
    @example(case=LIF_EXAMPLES[0])
    @example(case=LIF_EXAMPLES[1])
    @example(case=LIF_EXAMPLES[2])
    def prop(case):
        note(f"case: {case}")
        assume(not _learnable_k_with_large_input(case))  # rounding: test_learnable_decay_with_large_input_…
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_case(be, case)

    prop()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("be", _backend_params(["cpu", "triton-interp", "cuda", "triton-cuda"]))
def test_lif_low_precision_matches_reference(be):
    n = _examples(be, 20, 5)

    @settings(max_examples=max(1, n * settings().max_examples // 100))
    @given(case=lif_cases(be, list(LOWP)))
    def prop(case):
        note(f"case: {case}")
        assume(not _learnable_k_with_large_input(case))  # rounding: test_learnable_decay_with_large_input_…
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_case(be, case)

    prop()


# --- Tempotron -------------------------------------------------------------------------------------
TEMPOTRON_SPECIAL_TIMES = [math.inf, -math.inf, math.nan, 1e30, -0.0]  # none of them ever arrives, but −0 (t = 0)


@st.composite
def tempotron_cases(draw, be, dtypes):
    small = be.interpreted
    dtype = draw(st.sampled_from(dtypes))
    T = draw(st.integers(1, 24 if small else 120))
    tau = draw(st.floats(1.0, 40.0))
    # τ_s at least 1.5× away from τ either way: near τ = τ_s the PSP is a difference of nearly equal
    # exponentials, a regime with its own tests (test_tempotron.py, near τ = τ_s), not this file's subject.
    ratio = draw(st.one_of(st.floats(0.05, 1 / 1.5), st.floats(1.5, 6.0)))
    return dict(
        dtype=dtype, T=T, B=draw(st.integers(1, 3 if small else 6)), I=draw(st.integers(1, 40 if small else 300)),
        O=draw(st.integers(1, 6 if small else 17)), tau=tau, tau_s=tau * ratio,
        v_threshold=draw(st.floats(0.2, 2.0)),
        kind=draw(st.sampled_from(["int", "frac"])),
        ret_type=draw(st.sampled_from(["v", "v_max", "spikes"])),
        silent=draw(st.floats(0.0, 0.6)),
        specials=draw(st.lists(st.sampled_from(TEMPOTRON_SPECIAL_TIMES), max_size=3)),
        layout=_layout(draw), w_layout=_layout(draw),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
    )


def _tempotron_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    B, I, O, T = case["B"], case["I"], case["O"], case["T"]
    t = torch.rand(B, I, generator=g, dtype=torch.float64) * (T + 3)
    if case["kind"] == "int":
        t = t.floor()  # < T + 3 ≤ 123: exact in every dtype (bfloat16 holds integers up to 256)
    else:  # clear of integers: the kernel K has a kink at u = 0
        t = t.floor() + 0.05 + 0.9 * torch.rand(B, I, generator=g, dtype=torch.float64)
    t[torch.rand(B, I, generator=g) < case["silent"]] = -1.0
    for j, val in enumerate(case["specials"]):
        t[j % B, (7 * j) % I] = val
    w = torch.randn(O, I, generator=g, dtype=torch.float64) / math.sqrt(I) * 3
    gout = torch.randn(B, O, T, generator=g, dtype=torch.float64)
    return t, w, gout


def run_tempotron(backend, device, case, dtype=None):
    dtype = dtype or case["dtype"]
    t, w, gout = _tempotron_inputs(case)
    t = _as_layout(t.to(case["dtype"]).to(dtype).to(device), case["layout"]).requires_grad_(case["kind"] == "frac")
    w = _as_layout(w.to(case["dtype"]).to(dtype).to(device), case["w_layout"]).requires_grad_(True)
    out = tempotron(t, w, case["T"], case["tau"], case["tau_s"], case["v_threshold"], case["ret_type"],
                             backend=backend)
    g = gout.to(dtype).to(device)
    g = g if case["ret_type"] == "v" else g[..., 0]
    wrt = [w] + ([t] if t.requires_grad else [])
    grads = torch.autograd.grad((out * g).sum(), wrt)
    return dict(zip(["out", "grad_w", "grad_t"], [out.detach()] + [x.detach() for x in grads]))


def _argmax_is_clear(case, device):
    """'v_max' / 'spikes' pick one time step per neuron: where the top two of the reference's V are
    within rounding of each other the backends may pick different steps, and both are right."""
    c = dict(case, ret_type="v")
    v = run_tempotron("reference", device, c)["out"].double()
    if v.shape[-1] < 2:
        return True
    top = v.topk(2, dim=-1).values
    gap = (top[..., 0] - top[..., 1]).abs()
    tol = 1e-6 if case["dtype"] == torch.float32 else 1e-12
    return bool(((gap > tol * max(v.abs().max().item(), 1.0)) | (gap == 0)).all())


def _tempotron_params(ids):
    return [pytest.param(BY_ID[i], id=i, marks=[pytest.mark.skip(reason=TEMPOTRON_SKIP[i])] if TEMPOTRON_SKIP[i]
                         else []) for i in ids]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("be", _tempotron_params(["cpu", "triton-interp", "cuda", "triton-cuda"]))
def test_tempotron_matches_reference(be):
    n = _examples(be, 25, 8)

    @settings(max_examples=max(1, n * settings().max_examples // 100))
    @given(case=tempotron_cases(be, [torch.float64, torch.float32]))
    def prop(case):
        note(f"case: {case}")
        # 'spikes' (a softmax of V·T) is compared in float64 only: in float32 e^{V·T} rounds differently
        assume(case["ret_type"] != "spikes" or case["dtype"] == torch.float64)
        assume(case["ret_type"] == "v" or _argmax_is_clear(case, be.device))
        got = run_tempotron(be.name, be.device, case)
        ref = run_tempotron("reference", be.device, case)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype, k
            assert_close(got[k], ref[k], name=k)

    prop()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("be", _tempotron_params(["cpu", "triton-interp", "cuda", "triton-cuda"]))
def test_tempotron_low_precision_membrane(be):
    """float16/bfloat16 weights, integer spike times (exact in both): V and ∂L/∂W at least as close to
    the float64 reference as plain PyTorch in that dtype."""
    n = _examples(be, 10, 4)

    @settings(max_examples=max(1, n * settings().max_examples // 100))
    @given(case=tempotron_cases(be, list(LOWP)))
    def prop(case):
        note(f"case: {case}")
        case = dict(case, kind="int", ret_type="v")
        got = run_tempotron(be.name, be.device, case)
        ref64 = run_tempotron("reference", be.device, case, torch.float64)
        ref_lp = run_tempotron("reference", be.device, case)
        for k in ("out", "grad_w"):
            assert_close_lowp(got[k], ref64[k], ref_lp[k], name=k)

    prop()


# --------------------------------------------------------------------------------------------------
# bn_lif (docs/spec.md §12): batch norm + LIF fused, every backend against batch norm then the LIF
# reference, on random layouts [T, B, C, *spatial] (runs of one element and long ones: the two
# statistics paths of the CPU kernel), options, train/eval, plain BN/tdBN, learnable τ/θ/α. float64:
# the batch statistics are summed in different orders on each side, which float32 spikes may notice.
import test_bn_lif as tbl  # noqa: E402


@st.composite
def bn_lif_cases(draw, interpreted):
    T = draw(st.integers(1, 3 if interpreted else 6))
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 4 if interpreted else 9))
    spatial = draw(st.sampled_from([(), (1,), (3,), (2, 3), (5, 4)] + ([] if interpreted else [(17,), (6, 7)])))
    training = draw(st.booleans())
    running = draw(st.booleans()) or not training  # eval needs running statistics
    count = T * B * math.prod(spatial)
    assume(count > 1 or not (training or not running))  # batch statistics of one value are refused
    hard = draw(st.booleans())
    tau = draw(st.sampled_from([2.0, 3.5, math.inf]))
    sg = draw(st.sampled_from(["sigmoid", "atan", "rectangle", "q_pseudo_spike", "spike_gate"]))
    opts = dict(tau=tau, v_reset=draw(st.sampled_from([0.0, -0.2])) if hard else None,
                decay_input=draw(st.booleans()), detach_reset=draw(st.booleans()),
                reset_residual=draw(st.sampled_from([0.0, 0.0, 0.2])),
                fire_at_threshold=draw(st.booleans()))
    return dict(shape=(T, B, C) + spatial, opts=opts, surrogate=sg, training=training,
                tdbn=draw(st.sampled_from([None, 0.7])), learn=draw(st.booleans()), affine=draw(st.booleans()),
                running=running, seed=draw(st.integers(0, 2 ** 31 - 1)))


@pytest.mark.parametrize("be", [pytest.param(b, marks=[pytest.mark.skip(reason=tbl.SKIP[b])] if tbl.SKIP[b] else [])
                                for b in tbl.BACKENDS])
def test_bn_lif_matches_reference_fp64(be):
    interpreted = be == "triton" and tbl.name_dev(be)[1] == "cpu"

    @settings(max_examples=max(1, (8 if interpreted else 30) * settings().max_examples // 100))
    @given(case=bn_lif_cases(interpreted))
    def prop(case):
        note(f"case: {case}")
        inp = tbl.make_inputs(case["shape"], torch.float64, seed=case["seed"] % 1000, learn=case["learn"],
                              affine=case["affine"], running=case["running"])
        args = (inp, torch.float64, case["training"], case["tdbn"], case["opts"], case["surrogate"])
        tbl.check(tbl.run(be, *args), tbl.run("reference", *args), torch.float64)

    prop()
