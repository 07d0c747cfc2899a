"""LIF (docs/spec.md §2–§4): every backend against the pure-PyTorch reference, by op.

How the backends are enumerated
-------------------------------
``BACKENDS`` lists every (backend, device) pair of the library: the reference, the C++ CPU kernel,
Triton in its interpreter on CPU tensors (``TRITON_INTERPRET=1``, which conftest sets when there is
no GPU), the CUDA C++ kernel on CUDA tensors and Triton on CUDA tensors. Each pair is probed once at
import by calling ``snn_fast.lif_multistep`` on a 1×1 input with that backend on that device; a pair
that cannot run here is still collected and skips with the library's own reason (no CUDA device,
``_C`` not built, triton missing, interpreter off), so CI without a GPU reports the CUDA cases as
skipped, never as passed.

Every cross-backend test uses ONE harness: ``run`` (forward + backward of a fixed random linear loss
of every output, returning every output and gradient) on the backend and on the reference on the
same device, then ``check`` (float64/float32) or ``check_lowp`` (float16/bfloat16), whose tolerances
all come from conftest. The option grid is ONE list, ``OPTIONS`` × ``SURROGATES`` × learnable or fixed
τ/θ/α × dtype; only the shapes depend on the backend (``Backend.grid_shape``, ``shapes_for``): the
interpreter is slow (~0.05 s per forward+backward even at 4 × 37), so it gets small ones.

To add a backend: append a ``Backend`` to ``BACKENDS`` (its ``backend=`` name, device, grid shape,
whether it is interpreted). Every test parametrised with ``cases(FUSED, ...)`` then runs it, and
``PAIRS`` says which other backend on the same device it must agree with. Known differences are
marked strict xfail by ``KNOWN_FAILURES`` (by case id) and the ``_xfail_*`` rules beside the
extreme-input tests: a fixed case then fails the run until its mark is removed. Tests of one
backend's own machinery (opcheck of its ops, thread-count determinism, CUDA streams and 64-bit
offsets, the Triton availability probe and inference op) are at the end, each skipped where its
backend is unavailable. The CUDA and Triton AOT compile checks are in test_cuda_compile.py and
test_triton_aot.py, the output cache in test_cpu_output_cache.py, the CPU math in test_cpu_math.py.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import snn_fast
from snn_fast import _ext
from snn_fast import surrogate as sgm
from snn_fast.ops.lif.reference import lif_multistep_reference

from conftest import HAS_CUDA, assert_close, assert_close_lowp, nan_filled_allocations, op_v0_shapes


# --- backends ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    id: str  # the test id
    name: str  # the backend= argument
    device: str
    grid_shape: tuple  # (T, N) of the option grid
    lowp_shape: tuple  # (T, N) of the fp16/bf16 cases
    interpreted: bool = False

    def __repr__(self):
        return self.id


BACKENDS = [
    # N = 127: SIMD bodies of the CPU kernel plus a tail that is not a multiple of any vector width.
    Backend("reference", "reference", "cpu", (7, 127), (8, 2000)),
    Backend("cpu", "cpu", "cpu", (7, 127), (8, 2000)),
    Backend("triton-interp", "triton", "cpu", (4, 37), (8, 300), interpreted=True),
    # N = 3 · 512: divisible by every vector width, the CUDA kernel's 16-byte path.
    Backend("cuda", "cuda", "cuda", (12, 1536), (16, 4096)),
    Backend("triton-cuda", "triton", "cuda", (12, 1536), (16, 4096)),
]
BY_ID = {b.id: b for b in BACKENDS}
FUSED = [b for b in BACKENDS if b.name != "reference"]
# Fused backends on the same device that must agree with each other (beyond both matching the reference).
PAIRS = [("cpu", "triton-interp"), ("cuda", "triton-cuda")]


def _unavailable(be: Backend) -> Optional[str]:
    if be.device == "cuda" and not HAS_CUDA:
        return f"{be.id}: needs a CUDA device"
    try:
        snn_fast.lif_multistep(torch.ones(1, 1, device=be.device), backend=be.name)
    except Exception as e:  # noqa: BLE001 - the library's own message is the skip reason
        return f"{be.id}: {type(e).__name__}: {e}"
    return None


SKIP = {b.id: _unavailable(b) for b in BACKENDS}

# Known failures by case id (strict xfail: a case that starts passing fails the run until its entry
# goes). The extreme-input ones are the rules ``_xfail_*`` next to their tests.
# Found by the fp16/bf16 grid: Triton's bf16
# parameter gradients exceed the conftest low-precision bound (2 × PyTorch's bf16 error + one ulp).
_TRITON_BF16 = ("triton-interp: bf16 parameter gradient (grad_tau/grad_theta/grad_alpha) beyond the conftest "
                "low-precision bound; not an item-3 case, found by the wider bf16 grid")
KNOWN_FAILURES = {
    # save="state" only (the default): with save="recompute" (test_low_precision_within_torch_error_recompute)
    # the backward re-runs the exact float32 H instead of reading H − θ rounded to bf16, and this case
    # passes.
    "triton-interp-bf16-atan-soft-di1-det0-k0-tau2.5-learn-noisy": _TRITON_BF16,
}


def _id(v):
    if isinstance(v, Backend):
        return v.id
    if isinstance(v, torch.dtype):
        return {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[v]
    if isinstance(v, dict):
        return opt_id(v)
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


def cases(backends, *axes, xfail=None, skip=None):
    """pytest.param for every backend × the product of ``axes`` (lists of values, or of (id, value)),
    skipped with the probe's reason (``skip``: id -> reason, this op's ``SKIP`` by default) where the
    backend cannot run, and marked xfail (strict) where ``xfail(backend, *values)`` or
    ``KNOWN_FAILURES`` gives a reason."""
    skip = SKIP if skip is None else skip
    out = []
    for be in backends:
        for combo in itertools.product(*axes):
            vals, ids = [], [be.id]
            for v in combo:
                if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str):
                    ids.append(v[0])
                    vals.append(v[1])
                else:
                    ids.append(_id(v))
                    vals.append(v)
            cid = "-".join(ids)
            marks = []
            reason = (xfail and xfail(be, *vals)) or KNOWN_FAILURES.get(cid)
            if skip[be.id]:
                marks.append(pytest.mark.skip(reason=skip[be.id]))
            elif reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            out.append(pytest.param(be, *vals, id=cid, marks=marks))
    return out


def only(*ids):
    return [BY_ID[i] for i in ids]


# --- the option grid (docs/spec.md §2) ------------------------------------------------------------
def opt(v_reset=0.0, decay_input=True, detach_reset=False, reset_residual=0.0, tau=2.5, **extra):
    """``extra``: fire_at_threshold, reset_timing (present only where not the default)."""
    return dict(v_reset=v_reset, decay_input=decay_input, detach_reset=detach_reset, reset_residual=reset_residual,
                tau=tau, **extra)


# (v_reset, decay_input, detach_reset, reset_residual, tau): the option grid of docs/spec.md §2.
OPTIONS = [opt(vr, di, dr, kap) for vr, di, dr, kap in itertools.product([0.0, None, -0.3], [True, False],
                                                                          [False, True], [0.0, 0.2])] \
    + [opt(0.0, False, False, 0.0, math.inf),  # IF: hard/soft × attached/detached reset
       opt(None, True, True, 0.2, math.inf),
       opt(0.0, True, False, 0.2, math.inf), opt(0.0, True, True, 0.2, math.inf),
       opt(None, True, False, 0.2, math.inf)] \
    + [opt(None, False, False, 0.0, fire_at_threshold=False),  # strict threshold (snnTorch, Norse)
       opt(0.0, True, False, 0.2, fire_at_threshold=False),
       # reset_timing="delayed" (snnTorch reset_delay=True: the pre-reset membrane is carried) and "none"
       opt(None, False, True, 0.0, fire_at_threshold=False, reset_timing="delayed"),
       opt(0.0, False, True, 0.0, fire_at_threshold=False, reset_timing="delayed"),
       opt(-0.3, True, True, 0.2, reset_timing="delayed"),
       opt(0.0, False, True, 0.0, math.inf, reset_timing="delayed"),
       opt(None, True, False, 0.0, fire_at_threshold=False, reset_timing="none"),
       # κ ≠ 0 where the CPU backward without parameter gradients takes the fast walk (soft delayed, none)
       opt(None, True, True, 0.2, reset_timing="delayed"),
       opt(None, False, True, 0.2, reset_timing="none")]


def opt_id(o):
    vr = "soft" if o["v_reset"] is None else f"hard{o['v_reset']:g}"
    out = f"{vr}-di{int(o['decay_input'])}-det{int(o['detach_reset'])}-k{o['reset_residual']:g}-tau{o['tau']:g}"
    if o.get("fire_at_threshold") is False:
        out += "-strict"
    return out + (f"-{o['reset_timing']}" if "reset_timing" in o else "")


SURROGATES = list(sgm.names())
assert len(SURROGATES) == sgm.NUM_KERNEL_SURROGATES == 11
DTYPES = [torch.float64, torch.float32]
LOWP = [torch.float16, torch.bfloat16]
# learn=True routes through the kernels' generic backward (parameter gradients), learn=False through
# their specialised one (no parameter gradients): both must match the reference on the whole grid.
LEARN = [("learn", True), ("fixed", False)]


def alpha_of(surrogate):
    """1.5 × the surrogate's default width (1 where it has none): a value the kernel must read, not assume."""
    return 1.5 * (sgm.get(surrogate).alpha or 1.0)


# --- the harness ---------------------------------------------------------------------------------
def make(T, N, dtype=torch.float64, seed=0, shape=None):
    """x ~ 1.5·N(0, 1) (θ = 0.8: some neurons fire, some not), v0 ~ 0.5·N(0, 1), and the weights of the
    random linear loss on (s, v_T, v_seq). Made in float64 on the CPU; ``run`` casts and moves them."""
    g = torch.Generator().manual_seed(seed)
    shape = shape or (T, N)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5
    v0 = torch.randn(*shape[1:], generator=g, dtype=torch.float64) * 0.5
    grads = tuple(torch.randn(*s, generator=g, dtype=torch.float64) for s in [shape, shape[1:], shape])
    return x.to(dtype), v0.to(dtype), grads


def run(backend, device, x, v0, opts, surrogate="sigmoid", learn=False, noise_mask=None, dtype=None, grads=None,
        theta=0.8, alpha="default", return_v_seq=True, save=None):
    """Forward + backward with every output and gradient; returns a dict of detached tensors.

    ``learn``: τ (when finite), θ and α are tensors that require grad (float32, or float64 for a
    float64 x), so the parameter gradients are compared too."""
    dtype = dtype or x.dtype
    x = x.detach().to(device=device, dtype=dtype).requires_grad_(True)
    if isinstance(v0, torch.Tensor):
        v0 = v0.detach().to(device=device, dtype=dtype).requires_grad_(True)
    if noise_mask is not None:
        noise_mask = noise_mask.to(device)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    alpha = alpha_of(surrogate) if alpha == "default" else alpha
    tau = opts["tau"]
    params = {}
    if learn:
        if math.isfinite(tau):
            tau = params["tau"] = torch.tensor(tau, dtype=pdt, device=device, requires_grad=True)
        theta = params["theta"] = torch.tensor(theta, dtype=pdt, device=device, requires_grad=True)
        if alpha is not None:
            alpha = params["alpha"] = torch.tensor(alpha, dtype=pdt, device=device, requires_grad=True)
    o = {k: v for k, v in opts.items() if k != "tau"}
    if save is not None:  # else the default (save="state")
        o["save"] = save
    out = snn_fast.lif_multistep(x, v0, tau=tau, v_threshold=theta, surrogate=surrogate, alpha=alpha,
                                 noise_mask=noise_mask, return_v_seq=return_v_seq, backend=backend, **o)
    if grads is None:
        grads = make(*x.shape[:1], 1, shape=tuple(x.shape), seed=12345)[2]
    loss = sum((t * g.to(device=device, dtype=dtype)).sum() for t, g in zip(out, grads))
    wrt = [x] + ([v0] if isinstance(v0, torch.Tensor) else []) + list(params.values())
    g = torch.autograd.grad(loss, wrt)
    names = ["s", "v_T", "v_seq"][: len(out)] + ["grad_x"] + (["grad_v0"] if isinstance(v0, torch.Tensor) else []) \
        + ["grad_" + k for k in params]
    return dict(zip(names, [t.detach() for t in out] + [t.detach() for t in g]))


def both(be, x, v0, opts, **kw):
    """(backend result, reference result on the same device) for the same arguments."""
    return run(be.name, be.device, x, v0, opts, **kw), run("reference", be.device, x, v0, opts, **kw)


def check(got, ref, mask=None, tag=""):
    """float64/float32: every output and gradient close to the reference in the same dtype (conftest
    ``assert_close``). The kernels charge in the reference's operation order, so no spike may flip
    (a flip is counted and reported here); where ``mask`` is False the output is analog."""
    assert got.keys() == ref.keys(), (got.keys(), ref.keys())
    spikes = torch.ones_like(ref["s"], dtype=torch.bool) if mask is None else mask.to(ref["s"].device)
    flips = int(((got["s"] != ref["s"]) & spikes).sum())
    assert flips == 0, f"{tag}{flips} spikes differ from the reference"
    for k in ref:
        assert got[k] is not None, k
        assert torch.isfinite(got[k]).all(), f"{tag}{k} is not finite"
        assert_close(got[k], ref[k], name=f"{tag}{k}")


def check_lowp(got, ref64, ref_lowp, dtype, mask=None, tag=""):
    """float16/bfloat16 storage, float32 arithmetic: every output and gradient at least as close to the
    float64 truth as plain PyTorch in that dtype (conftest ``assert_close_lowp``), spike flips no more
    frequent. Parameter gradients are float32 sums on both sides; judged at the storage dtype's ulp."""
    assert got.keys() == ref64.keys() == ref_lowp.keys()
    for k in got:
        want = dtype if k in ("s", "v_T", "v_seq", "grad_x", "grad_v0") else torch.float32
        assert got[k].dtype == want, (k, got[k].dtype)
    spikes = torch.ones_like(got["s"], dtype=torch.bool) if mask is None else mask.to(got["s"].device)
    flip_kernel = ((got["s"].double() != ref64["s"]) & spikes).double().mean().item()
    flip_torch = ((ref_lowp["s"].double() != ref64["s"]) & spikes).double().mean().item()
    print(f"{tag}{dtype}: spike flip rate kernel {flip_kernel:.2e}, torch {flip_torch:.2e}")
    assert flip_kernel <= 2 * flip_torch + 1e-3
    for k in ref64:
        assert_close_lowp(got[k], ref64[k], ref_lowp[k].to(dtype), name=f"{tag}{dtype} {k}")


def compare(be, x, v0, opts, dtype, mask=None, tag="", **kw):
    """The one comparison: the backend against the reference, in ``dtype``; returns the reference."""
    if dtype in LOWP:
        x, v0 = x.to(dtype).double(), (v0.to(dtype).double() if isinstance(v0, torch.Tensor) else v0)
        got = run(be.name, be.device, x, v0, opts, noise_mask=mask, dtype=dtype, **kw)
        ref_lowp = run("reference", be.device, x, v0, opts, noise_mask=mask, dtype=dtype, **kw)
        ref64 = run("reference", be.device, x, v0, opts, noise_mask=mask, dtype=torch.float64, **kw)
        check_lowp(got, ref64, ref_lowp, dtype, mask=mask, tag=tag)
        return ref64
    got, ref = both(be, x, v0, opts, noise_mask=mask, dtype=dtype, **kw)
    check(got, ref, mask=mask, tag=tag)
    return ref


# --- the grid ------------------------------------------------------------------------------------
def grid_cases():
    """The grid in both float dtypes for compiled backends. The interpreter (~0.06 s per case, the
    suite's largest cost) runs it whole in float32 and in float64 on every third option."""
    out = []
    for be in FUSED:
        if be.interpreted:
            out += cases([be], [torch.float32], OPTIONS, SURROGATES, LEARN)
            out += cases([be], [torch.float64], OPTIONS[::3], SURROGATES, LEARN)
        else:
            out += cases([be], DTYPES, options_for(be), SURROGATES, LEARN)
    return out


def options_for(be, options=None):
    """The option rows backend ``be`` runs: the CUDA kernel has no reset_timing but 'after_fire'
    (test_cuda_timing_is_refused_or_rerouted checks that)."""
    options = OPTIONS if options is None else options
    return [o for o in options if be.name != "cuda" or o.get("reset_timing", "after_fire") == "after_fire"]


@pytest.mark.parametrize("be,dtype,opts,surrogate,learn", grid_cases())
def test_matches_reference(be, dtype, opts, surrogate, learn, nan_alloc):
    """Every surrogate × reset × detach × decay_input × κ × (τ finite or IF) × learnable or fixed
    parameters, in float64 and float32; fresh allocations are NaN-filled (an unwritten output fails)."""
    T, N = be.grid_shape
    x, v0, grads = make(T, N)
    ref = compare(be, x, v0, opts, dtype, surrogate=surrogate, learn=learn, grads=grads)
    assert ref["s"].any() and not ref["s"].all(), "inputs must make some neurons fire and some not"
    if learn and sgm.get(surrogate).alpha is not None:
        assert ref["grad_alpha"].abs() > 0  # the α path is exercised, not trivially zero


# Membranes that land exactly on θ: dyadic inputs with decay 1/2 (decay_input=False) keep every H
# exact, so H = θ happens at many steps, not only the first.
ON_THETA = [opts for opts in OPTIONS if ("fire_at_threshold" in opts or "reset_timing" in opts)
            and opts["v_reset"] in (None, 0.0)]


@pytest.mark.parametrize("be,dtype,opts,learn", [c for be in FUSED for c in cases(
    [be], DTYPES, options_for(be, ON_THETA + [opt(None, False), opt(0.0, False)]), LEARN)])
def test_membrane_on_threshold(be, dtype, opts, learn, nan_alloc):
    """Θ(0) = 1 (fire_at_threshold=True) or 0 (False) where H − θ is exactly 0, as the reference."""
    T, N = be.grid_shape
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 6, (T, N), generator=g).double() / 4
    v0 = torch.randint(-2, 4, (N,), generator=g).double() / 4
    v0[:8] = 0.0
    x[0, :8] = 1.0  # θ: H = 0 − 0·k + θ at the first step
    o = dict(opts, tau=2.0 if math.isfinite(opts["tau"]) else opts["tau"], decay_input=False)
    grads = make(T, N, seed=5)[2]
    ref = compare(be, x, v0, o, dtype, learn=learn, grads=grads, theta=1.0, surrogate="atan")
    on = ref["s"][0, :8]
    assert (on == (1.0 if opts.get("fire_at_threshold", True) else 0.0)).all()


def test_pending_reset_timing_runs_on_the_reference_only():
    """reset_timing='after_fire_pending' (snnTorch reset_delay=False) has no kernel: 'auto' runs the
    reference, a named fused backend is refused with the reason; the op refuses its code too."""
    x = torch.randn(5, 6, dtype=torch.float64)
    kw = dict(decay=0.5, decay_input=False, v_reset=None, reset_timing="after_fire_pending", fire_at_threshold=False)
    got = snn_fast.lif_multistep(x, **kw)
    want = lif_multistep_reference(x, **kw)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    for be in FUSED:
        if be.device == "cpu" and not SKIP[be.id]:
            with pytest.raises(ValueError, match="after_fire_pending"):
                snn_fast.lif_multistep(x, backend=be.name, **kw)
    if not SKIP["cpu"]:
        p = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        with pytest.raises(RuntimeError, match="reset_timing must be"):
            torch.ops.snn_fast.lif_fwd(x, torch.zeros(6, dtype=torch.float64), p, None, 0, False, 0.0, False, True,
                                       0.0, True, 3, False, 0)


@pytest.mark.skipif(SKIP["cuda"] is not None, reason=str(SKIP["cuda"]))
def test_cuda_timing_is_refused_or_rerouted():
    """The CUDA kernel runs the reset after the spike only: backend='cuda' refuses the other timings
    by name, 'auto' runs them on Triton (or the reference) with the reference's result."""
    x = torch.randn(6, 33, device="cuda")
    kw = dict(decay=0.5, decay_input=False, v_reset=None, detach_reset=True, reset_timing="delayed")
    with pytest.raises(ValueError, match="reset_timing='delayed'"):
        snn_fast.lif_multistep(x, backend="cuda", **kw)
    got = snn_fast.lif_multistep(x, **kw)
    want = snn_fast.lif_multistep(x, backend="reference", **kw)
    assert torch.equal(got[0], want[0])
    p = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    with pytest.raises(RuntimeError, match="reset_timing 1"):
        torch.ops.snn_fast.lif_fwd(x, torch.zeros(33, device="cuda"), p, None, 0, False, 0.0, False, True, 0.0,
                                   False, 1, False, 0)


@pytest.mark.parametrize("bad,match", [
    (dict(reset_timing="later"), "reset_timing must be one of"),
    (dict(reset_timing="delayed", detach_reset=False), "needs detach_reset=True"),
    (dict(reset_timing="none", v_reset=0.0), "pass v_reset=None"),
    (dict(fire_at_threshold=1), "fire_at_threshold must be a bool"),
])
def test_new_option_errors(bad, match):
    kw = dict(v_reset=None, detach_reset=True)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        snn_fast.lif_multistep(torch.randn(3, 4), **kw)


@pytest.mark.parametrize("be,dtype,v_reset,surrogate", cases(FUSED, DTYPES, [("hard", 0.0), ("soft", None)],
                                                                SURROGATES))
def test_noisy_spike(be, dtype, v_reset, surrogate, nan_alloc):
    """ASGL noisy spike (docs/spec.md §4): the analog value g(H − θ) where the torch-drawn mask is False."""
    T, N = (5, 37) if be.interpreted else (10, 1000)
    x, v0, grads = make(T, N, seed=9)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(1))
    assert not mask.all() and mask.any()
    ref = compare(be, x, v0, opt(v_reset, tau=2.0), dtype, mask=mask, surrogate=surrogate, learn=True, grads=grads)
    analog = ~mask & (ref["s"].cpu() != 0) & (ref["s"].cpu() != 1)
    assert analog.any(), "the mask must produce analog outputs"


# (surrogate, options): the low-precision cases, each with and without learnable parameters and noise.
LOWP_CASES = [
    ("sigmoid", opt(0.0)),
    ("atan", opt(None)),
    ("triangle", opt(0.0, decay_input=False)),
    ("rectangle", opt(0.0, detach_reset=True, reset_residual=0.2)),
    ("q_pseudo_spike", opt(None, reset_residual=0.2)),
    ("spike_gate", opt(0.0, detach_reset=True, reset_residual=0.2)),
    ("sigmoid", opt(-0.3, decay_input=False, detach_reset=True, reset_residual=0.2)),
]


def lowp_cases():
    """Every case with learnable and fixed parameters; the interpreter learnable only (the fixed
    backward is its grid's float32 ``fixed`` half), for time."""
    out = []
    for be in FUSED:
        out += cases([be], LOWP, [(f"{s}-{opt_id(o)}", (s, o)) for s, o in LOWP_CASES],
                     LEARN[:1] if be.interpreted else LEARN, [("spike", False), ("noisy", True)])
    return out


@pytest.mark.parametrize("be,dtype,case,learn,noisy", lowp_cases())
def test_low_precision_within_torch_error(be, dtype, case, learn, noisy, nan_alloc):
    """fp16/bf16 storage, fp32 arithmetic: at least as close to the float64 truth as plain PyTorch in
    that dtype (conftest ``assert_close_lowp``). Also covers the H − θ a backend saves in that dtype."""
    surrogate, opts = case
    x, v0, grads = make(*be.lowp_shape, seed=3)
    grads = tuple(g.to(dtype).double() for g in grads)  # representable, so only the arithmetic differs
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) >= 0.3) if noisy else None
    compare(be, x, v0, opts, dtype, mask=mask, surrogate=surrogate, learn=learn, grads=grads)


def lowp_recompute_cases():
    """The same with save="recompute" (the default is "state") on the backends that have it (not 'cpu',
    which saves nothing in either mode): the float32 V checkpoints and the re-run H."""
    out = []
    for be in FUSED:
        if be.name != "cpu":
            out += cases([be], [("recompute", "recompute")], LOWP,
                         [(f"{s}-{opt_id(o)}", (s, o)) for s, o in LOWP_CASES],
                         LEARN[:1] if be.interpreted else LEARN, [("spike", False), ("noisy", True)])
    return out


@pytest.mark.parametrize("be,save,dtype,case,learn,noisy", lowp_recompute_cases())
def test_low_precision_within_torch_error_recompute(be, save, dtype, case, learn, noisy, nan_alloc):
    surrogate, opts = case
    x, v0, grads = make(*be.lowp_shape, seed=3)
    grads = tuple(g.to(dtype).double() for g in grads)
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(4)) >= 0.3) if noisy else None
    compare(be, x, v0, opts, dtype, mask=mask, surrogate=surrogate, learn=learn, grads=grads, save=save)


# Block edges: one element, one vector, odd N (the scalar fallback / SIMD tail), N divisible by 8 (the
# 16-byte path for every dtype), several programs, long T (the fp32 tolerance's horizon, T = 64).
SHAPES = [(1, 1), (3, 1), (7, 1), (1, 8), (1, 127), (7, 127), (1, 300), (7, 300),
          (1, 4097), (7, 4 * 8 * 33), (5, 123 * 123), (64, 127), (64, 1000), (64, 4097)]
SMALL_SHAPES = [s for s in SHAPES if s[0] * s[1] <= 7 * 300]  # the interpreter's (1, 7 × 1, 127, 300 today)
# (dtype, surrogate, v_reset) per shape: float64 (hard reset) and float32 (soft) with three surrogates,
# bf16 with one. The shapes over 10^5 elements skip the last two float32 ones: their reference loop
# costs seconds per case on a CI core, and the surrogate does not change which elements a kernel visits.
SHAPE_CASES = [(torch.float64, "sigmoid", 0.0), (torch.float64, "triangle", 0.0),
               (torch.float64, "q_pseudo_spike", 0.0), (torch.float32, "sigmoid", None),
               (torch.bfloat16, "sigmoid", None), (torch.float32, "triangle", None),
               (torch.float32, "q_pseudo_spike", None)]


def shape_cases():
    out = []
    for be in FUSED:
        for t, n in SMALL_SHAPES if be.interpreted else SHAPES:
            out += cases([be], [(f"T{t}-N{n}", (t, n))],
                         [(f"{_id(d)}-{s}-{'soft' if vr is None else 'hard'}", (d, s, vr))
                          for d, s, vr in (SHAPE_CASES[:5] if t * n > 100_000 else SHAPE_CASES)], LEARN)
    return out


@pytest.mark.parametrize("be,shape,case,learn", shape_cases())
def test_shapes(be, shape, case, learn, nan_alloc):
    T, N = shape
    dtype, surrogate, v_reset = case
    x, v0, grads = make(T, N, seed=T + N)
    compare(be, x, v0, opt(v_reset, tau=2.0), dtype, surrogate=surrogate, learn=learn, grads=grads)


@pytest.mark.parametrize("be,v_reset", cases(FUSED, [("hard", 0.0), ("soft", None)]))
def test_long_sequence(be, v_reset):
    """T = 64 (the conftest fp32 tolerance's horizon), several programs, a noise mask, every gradient."""
    x, v0, grads = make(64, 300, dtype=torch.float32, seed=5)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) >= 0.2
    compare(be, x, v0, opt(v_reset, reset_residual=0.2), torch.float32, mask=mask, surrogate="atan", alpha=2.0,
            learn=True, grads=grads)


@pytest.mark.parametrize("be", cases(FUSED))
def test_v0_none_float_and_no_v_seq(be):
    x, _, _ = make(6, 70, seed=7)
    for v0, vr, learn in ((None, 0.0, True), (0.3, None, True), (None, -0.3, True), (None, 0.0, False)):
        got, ref = both(be, x, v0, opt(vr), dtype=torch.float32, learn=learn, return_v_seq=False)
        assert "v_seq" not in got and "grad_v0" not in got
        check(got, ref, tag=f"v0={v0} v_reset={vr}: ")


# Options whose backward reads V_{−1} (a learnable parameter, a pending hard reset) or not; a noise mask.
UNIFORM_START_CASES = [("hard", opt(0.0), False, False),
                       ("soft-det-kappa-learn", opt(None, True, True, 0.2), True, False),
                       ("hard-nodi-learn-noisy", opt(-0.3, False), True, True),
                       ("hard-delayed", opt(0.0, False, True, 0.0, reset_timing="delayed"), False, False)]


@pytest.mark.parametrize("be,save,case", cases(FUSED, ["state", "recompute"], UNIFORM_START_CASES))
def test_uniform_start(be, save, case):
    """v0=None (the reset value) or a float: the kernels get v0 [1] (_initial_state_flat) and read no row
    of N for it, nor write ∂L/∂v0 (docs/spec.md §2.4). Every output and gradient is bit for bit what
    the same start given per neuron gives; T = 19 re-runs segments from checkpoints (save="recompute"),
    N = 300 spans several programs (Triton) and blocks."""
    _, opts, learn, noisy = case
    if be.name == "cuda" and opts.get("reset_timing", "after_fire") != "after_fire":
        pytest.skip("the CUDA kernel runs the reset after the spike only (auto sends the others to Triton)")
    x, _, grads = make(19, 300, seed=3)
    mask = snn_fast.noise_mask_like(x, 0.3, torch.Generator().manual_seed(2)) if noisy else None
    start = opts["v_reset"] if opts["v_reset"] is not None else 0.0
    for v0, value in ((None, start), (0.35, 0.35)):
        kw = dict(learn=learn, noise_mask=mask, grads=grads, save=save)
        got = run(be.name, be.device, x, v0, opts, **kw)
        want = run(be.name, be.device, x, torch.full((300,), value, dtype=torch.float64), opts, **kw)
        assert "grad_v0" not in got and want.pop("grad_v0").isfinite().all()
        assert got.keys() == want.keys()
        for key in got:
            assert torch.equal(got[key], want[key]), (v0, key)


@pytest.mark.parametrize("be", cases(FUSED))
def test_uniform_start_under_anomaly_detection(be):
    """The [1] start's ∂L/∂v0 (NaN) never reaches autograd: a backward from v0=None passes under
    torch.autograd.detect_anomaly, which checks every gradient a backward returns for NaN."""
    x = torch.randn(5, 40, device=be.device, requires_grad=True)
    theta = torch.tensor(0.8, device=be.device, requires_grad=True)
    with torch.autograd.detect_anomaly():
        s, v = snn_fast.lif_multistep(x, v_threshold=theta, backend=be.name)
        (s.sum() + v.sum()).backward()
    assert x.grad.isfinite().all() and theta.grad.isfinite()


@pytest.mark.parametrize("be,dtype", cases(FUSED, LOWP))
def test_uniform_start_low_precision(be, dtype):
    """v0=None in bf16/fp16 (the [1] ∂L/∂v0's NaN made in the compute dtype): bit for bit the start given
    per neuron, gradients included."""
    x, _, grads = make(6, 70, seed=4)
    got = run(be.name, be.device, x, None, opt(0.0), dtype=dtype, learn=True, grads=grads)
    want = run(be.name, be.device, x, torch.zeros(70), opt(0.0), dtype=dtype, learn=True, grads=grads)
    want.pop("grad_v0")
    for key in got:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("be", cases(FUSED))
def test_uniform_start_reaches_the_kernels(be):
    """v0=None and a float reach the op as v0 [1], a tensor as [N] (the op calls' v0, seen below
    autograd); a single neuron keeps its [1] as [N]."""
    for shape, n in (((3, 2, 5), 10), ((3, 1), 1)):
        x = torch.randn(*shape, device=be.device, requires_grad=True)
        for v0, want in ((None, (1,)), (0.2, (1,)), (torch.zeros(shape[1:], device=be.device), (n,))):
            shapes = op_v0_shapes("lif_fwd", lambda: snn_fast.lif_multistep(x, v0, backend=be.name)[0].sum().backward())
            assert shapes == [want], (shape, v0, shapes)


@pytest.mark.parametrize("be", cases(only("cpu", "cuda", "triton-interp", "triton-cuda")))
def test_uniform_start_ops(be):
    """The ops' v0 [1] (N > 1): accepted without a gradient (opcheck; v_last [N], ∂L/∂v0 [1] NaN, never a
    number), refused by name when it requires one (both autograds, not under no_grad), and any other
    size refused by name; every save mode."""
    dev = be.device
    if be.name == "triton":
        _lt()
        fwd_op, bwd_op = torch.ops.snn_fast.lif_fwd_triton, torch.ops.snn_fast.lif_bwd_triton
        utils = dict(test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    else:
        fwd_op, bwd_op, utils = torch.ops.snn_fast.lif_fwd, torch.ops.snn_fast.lif_bwd, {}
    T, N = 20, 64
    x = torch.randn(T, N, device=dev, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], device=dev)
    v0 = torch.full((1,), 0.2, device=dev)
    mask = torch.rand(T, N, device=dev) > 0.3
    for save, m, need_param_grad in itertools.product((0, 1), (None, mask), (False, True)):
        fwd = (x, v0, params, m, 0, True, 0.0, True, False, 0.1, False, 0, True, save)
        torch.library.opcheck(fwd_op.default, fwd, **utils)
        with torch.no_grad():
            s, v_last, v_seq, saved = fwd_op(*fwd)
        assert v_last.shape == (N,)
        gx, gv0, _ = bwd_op(torch.randn_like(s), torch.randn_like(v_last), None, x.detach(), v0, params, m, saved,
                            s, None, None, 0, True, 0.0, True, False, 0.1, False, 0, save, need_param_grad)
        assert gv0.shape == (1,) and gv0.isnan().all() and gx.isfinite().all()
    with pytest.raises(RuntimeError, match="v0 of one element starts all 64 neurons"):
        fwd_op(x, v0.clone().requires_grad_(True), *fwd[2:])
    with torch.no_grad():  # no gradient recorded: nothing to refuse
        fwd_op(x, v0.clone().requires_grad_(True), *fwd[2:])
    with pytest.raises(RuntimeError, match=r"v0 must be \[N\] = \[64\]"):
        fwd_op(x.detach(), torch.zeros(2, device=dev), *fwd[2:])


@pytest.mark.parametrize("be,use", cases(FUSED, ["s", "v_T"]))
def test_loss_on_one_output(be, use):
    """Only grad_s or only grad_v_T reaches the backward (the other is None or zeros)."""
    dev = be.device
    x, v0, _ = make(5, 130, dtype=torch.float32, seed=8)
    x, v0 = x.to(dev), v0.to(dev)
    res = {}
    for b in (be.name, "reference"):
        xx = x.clone().requires_grad_()
        theta = torch.tensor(0.8, device=dev, requires_grad=True)
        s, v = snn_fast.lif_multistep(xx, v0, tau=2.5, v_threshold=theta, reset_residual=0.2, backend=b)
        loss = (s * torch.linspace(-1, 1, 130, device=dev)).sum() if use == "s" else (v * v).sum()
        res[b] = torch.autograd.grad(loss, [xx, theta])
    for a, b, n in zip(res[be.name], res["reference"], ("grad_x", "grad_theta")):
        assert_close(a, b, name=n)
    assert res["reference"][0].abs().sum() > 0


@pytest.mark.parametrize("be", cases(FUSED))
def test_learnable_decay(be):
    """Learnable λ (k = 1 − λ): the gradient reaches it through the same ∂L/∂k."""
    dev = be.device
    x, v0, _ = make(6, 50, dtype=torch.float32, seed=10)
    x, v0 = x.to(dev), v0.to(dev)
    d = {}
    for b in (be.name, "reference"):
        lam = torch.tensor(0.6, device=dev, requires_grad=True)
        s, v = snn_fast.lif_multistep(x, v0, tau=None, decay=lam, decay_input=False, backend=b)
        (s.sum() + (v * v).sum()).backward()
        d[b] = (s, v, lam.grad)
    for a, b, n in zip(d[be.name], d["reference"], ("s", "v_T", "grad_decay")):
        assert_close(a, b, name=n)
    assert d["reference"][2].abs() > 0


@pytest.mark.parametrize("be,dtype", cases(FUSED, DTYPES))
def test_non_contiguous_and_nd_input(be, dtype):
    """A non-contiguous [T, B, 12, 10] input with a broadcast v0; a [N, T] storage read time-first."""
    base = torch.randn(6, 4, 10, 12, dtype=torch.float64)
    x = base.transpose(2, 3)  # [T, B, 12, 10], non-contiguous
    assert not x.is_contiguous()
    v0 = torch.randn(12, 1, dtype=torch.float64)  # broadcast to x[0]
    g = (torch.randn_like(x), torch.randn(x.shape[1:], dtype=torch.float64), torch.randn_like(x))
    vb = v0.expand(x.shape[1:])
    got, ref = both(be, x, vb, opt(tau=2.0), dtype=dtype, surrogate="atan", grads=g)
    for k in ref:
        assert got[k].shape == ref[k].shape
    check(got, ref)
    xt = (torch.randn(3, 40, 6, dtype=torch.float64) * 1.5 + 0.4).permute(2, 0, 1)  # [T=6, 3, 40]
    assert not xt.is_contiguous()
    got, ref = both(be, xt, torch.rand(40, dtype=torch.float64).expand(3, 40), opt(), dtype=dtype,
                    surrogate="atan", alpha=2.0, learn=True)
    check(got, ref, tag="permuted: ")


@pytest.mark.parametrize("be", cases(FUSED))
def test_broadcast_v0_gets_summed_gradient(be):
    """A broadcast v0 gets its gradient summed over the broadcast dimensions (every output compared)."""
    for shape, v0_shape in (((6, 4, 12, 10), (12, 1)), ((4, 2, 3, 5, 7), (3, 1, 7))):
        x = torch.randn(*shape, dtype=torch.float64) * 1.2 + 0.5
        v0 = torch.rand(*v0_shape, dtype=torch.float64)
        g = (torch.randn_like(x), torch.randn(x.shape[1:], dtype=torch.float64), torch.randn_like(x))
        got, ref = both(be, x, v0, opt(tau=2.0), dtype=torch.float32, learn=True, grads=g)
        assert got["grad_v0"].shape == v0.shape
        check(got, ref, tag=f"{shape} v0 {v0_shape}: ")


@pytest.mark.parametrize("be", cases(FUSED))
def test_misaligned_and_strided_storage(be, nan_alloc):
    """Offset storage (not 16-byte aligned) and a transposed view take the scalar/contiguous paths."""
    T, N = (6, 70) if be.interpreted else (6, 2048)
    base = torch.randn(T * N + 1, dtype=torch.float64)
    x_off = base.to(be.device, torch.float32)[1:].view(T, N)  # contiguous, 4 bytes past a 16-byte boundary
    assert x_off.data_ptr() % 16 != 0
    x_t = (torch.randn(N, T, dtype=torch.float32, device=be.device) * 1.2 + 0.5).t()  # [T, N] view
    for x in (x_off, x_t):
        got = run(be.name, be.device, x, None, opt(tau=2.0), learn=True)
        ref = run("reference", be.device, x, None, opt(tau=2.0), learn=True)
        check(got, ref)


@pytest.mark.parametrize("be", cases(FUSED))
def test_no_output_element_left_unwritten(be):
    """Fresh allocations are NaN-filled: a kernel that skipped an element would leave a NaN."""
    # 5 × 4099 stays with torch's allocator; 5 × 65537 floats (> 1 MiB) come from the CPU output cache.
    for N in ((300,) if be.interpreted else (4099, 65537)):
        x, v0, grads = make(5, N, dtype=torch.float32)
        mask = torch.rand(5, N) > 0.2
        with nan_filled_allocations():
            assert torch.empty(3).isnan().all(), "the NaN fill must be active for this test to mean anything"
            for m, learn, vseq in ((None, True, True), (None, False, True), (mask, True, True), (None, False, False)):
                out = run(be.name, be.device, x, v0, OPTIONS[0], learn=learn, noise_mask=m, grads=grads,
                          return_v_seq=vseq)
                for k, v in out.items():
                    assert torch.isfinite(v).all(), f"{k} has unwritten (NaN) elements (N={N}, learn={learn})"


@pytest.mark.parametrize("be,dtype", cases(FUSED, [torch.float32, torch.bfloat16]))
def test_fires_at_threshold(be, dtype):
    """Θ(0) = 1: H exactly equal to θ fires, in the forward and in the backward's recomputed spike."""
    x = torch.tensor([[1.0, 0.5, 1.0], [0.0, 0.5, 1.0]], dtype=torch.float64)  # v0 = 0: H_0 = x_0
    o, kw = opt(None, decay_input=False, tau=2.0), dict(theta=1.0, learn=True)
    got = run(be.name, be.device, x, 0.0, o, dtype=dtype, **kw)
    assert got["s"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    # the soft reset's −θ·S term in grad_θ sees the recomputed spike
    compare(be, x, 0.0, o, dtype, **kw)


@pytest.mark.parametrize("be", cases(FUSED))
def test_state_carries_across_calls_like_one_long_sequence(be):
    x = torch.randn(10, 33, dtype=torch.float64, device=be.device)
    s_full, v_full = snn_fast.lif_multistep(x, backend=be.name)
    s1, v1 = snn_fast.lif_multistep(x[:4], backend=be.name)
    s2, v2 = snn_fast.lif_multistep(x[4:], v1, backend=be.name)
    assert torch.equal(torch.cat([s1, s2]), s_full) and torch.equal(v2, v_full)


@pytest.mark.parametrize("be", cases(FUSED))
def test_cached_constant_inputs(be):
    """v0=None / float v0 and float (τ, θ, α) become tensors made once per key (function.py): a call
    under inference_mode must not poison a later training call, and every key gets its own value."""
    x = torch.randn(5, 3, 7, device=be.device) * 2
    with torch.inference_mode():
        s_inf, _ = snn_fast.lif_multistep(x, backend=be.name)
    xg = x.clone().requires_grad_(True)
    s, v = snn_fast.lif_multistep(xg, backend=be.name)
    (s.sum() + v.sum()).backward()  # an inference tensor saved for backward would raise here
    assert torch.equal(s.detach(), s_inf) and xg.grad is not None
    for v0, vr, th in ((0.5, 0.0, 1.0), (0.25, 0.0, 1.0), (None, -0.5, 1.0), (None, -0.5, 0.5), (None, 0.0, 0.5)):
        got = snn_fast.lif_multistep(x, v0, v_reset=vr, v_threshold=th, backend=be.name)
        want = lif_multistep_reference(x, v0, v_reset=vr, v_threshold=th)
        for g, w in zip(got, want):
            assert_close(g, w, name=f"v0={v0} v_reset={vr} theta={th}")


@pytest.mark.parametrize("be", cases(FUSED))
def test_param_grads_deterministic(be):
    """Two identical runs give bitwise identical parameter gradients (no order-dependent reduction)."""
    N = 300 if be.interpreted else 1 << 16
    x, v0, grads = make(16, N, dtype=torch.float32)
    a = run(be.name, be.device, x, v0, OPTIONS[0], learn=True, grads=grads)
    b = run(be.name, be.device, x, v0, OPTIONS[0], learn=True, grads=grads)
    for k in ("grad_tau", "grad_theta", "grad_alpha"):
        assert torch.equal(a[k], b[k]), f"{k} differs between two identical runs"


@pytest.mark.parametrize("be", cases(FUSED))
def test_gradcheck_analog(be):
    """Analog outputs everywhere (mask all False), so g is smooth and gradcheck applies; float64."""
    dev = be.device
    T, N = (3, 4) if be.interpreted else (4, 6)  # gradcheck: 2 forwards per input element, ~0.05 s each interpreted
    x = torch.randn(T, N, dtype=torch.float64, device=dev, requires_grad=True)
    v0 = torch.randn(N, dtype=torch.float64, device=dev, requires_grad=True)
    th = torch.tensor(0.7, dtype=torch.float64, device=dev, requires_grad=True)
    al = torch.tensor(3.0, dtype=torch.float64, device=dev, requires_grad=True)
    mask = torch.zeros(T, N, dtype=torch.bool, device=dev)

    def f(x, v0, th, al):
        return snn_fast.lif_multistep(x, v0, tau=2.0, v_threshold=th, alpha=al, noise_mask=mask,
                                      return_v_seq=True, backend=be.name, v_reset=None)

    assert torch.autograd.gradcheck(f, (x, v0, th, al))


@pytest.mark.parametrize("be", cases(FUSED))
def test_torch_compile_module_fullgraph(be):
    model = torch.nn.Sequential(snn_fast.nn.MultiStep(torch.nn.Linear(16, 16)),
                                snn_fast.nn.LIF(backend=be.name)).to(be.device)

    def step(x):
        snn_fast.nn.reset_net(model)
        return model(x).sum()

    x = torch.randn(4, 3, 16, device=be.device)
    eager = step(x)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    assert torch.equal(got, eager)
    got.backward()
    assert model[0].module.weight.grad is not None and model[0].module.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("be", cases(FUSED))
def test_torch_compile_fullgraph_learnable_tau(be):
    """A model using the op traces with no graph break, forward and backward."""
    import torch._dynamo

    torch._dynamo.reset()
    device = be.device
    lin = torch.nn.Linear(16, 16).to(device)
    tau = torch.tensor(2.0, device=device, requires_grad=True)

    def model(x):
        s, v = snn_fast.lif_multistep(lin(x), tau=tau, surrogate="erf", backend=be.name)
        return s.sum() + (v * v).sum()

    x = torch.randn(5, 8, 16, device=device)
    backend = "inductor" if device == "cuda" else "aot_eager"  # the interpreter cannot be code-generated
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss = compiled(x)
    loss.backward()
    g_compiled = (lin.weight.grad.clone(), tau.grad.clone())
    lin.zero_grad()
    tau.grad = None
    eager = model(x)
    eager.backward()
    assert_close(loss.detach(), eager.detach(), name="loss")
    assert_close(g_compiled[0], lin.weight.grad, name="grad_weight")
    assert_close(g_compiled[1], tau.grad, name="grad_tau")


@pytest.mark.parametrize("be", cases(FUSED))
def test_torch_compile_dynamic_shapes_and_float_args(be):
    """dynamic=True: sizes and float arguments are symbolic; the argument checks must still trace."""
    def f(x, tau):
        return snn_fast.lif_multistep(x, tau=tau, backend=be.name)[0].sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, tau in ((5, 2.0), (9, 3.0)):
        x = torch.randn(4, n, device=be.device)
        assert compiled(x, tau).item() == f(x, tau).item()


# --- fused backends agree with each other ---------------------------------------------------------
VARIANTS = {
    "hard0": opt(0.0, tau=2.0),
    "hard-neg_decayx": opt(-0.3, decay_input=False, tau=2.0),
    "soft": opt(None, tau=2.0),
    "soft_detach_kappa": opt(None, detach_reset=True, reset_residual=0.2, tau=2.0),
    "hard_detach_kappa_if": opt(0.0, detach_reset=True, reset_residual=0.2, tau=math.inf),
}


def pair_cases():
    """float32 for both pairs; bf16 (each within the low-precision bound) for the GPU pair only, since
    test_low_precision_within_torch_error already runs every backend in bf16."""
    out = []
    for a, b in PAIRS:
        skip = SKIP[a] or SKIP[b]
        dtypes = [torch.float32] + ([torch.bfloat16] if BY_ID[a].device == "cuda" else [])
        for sg, variant, (nid, noisy), dtype in itertools.product(
                ["sigmoid", "atan", "erf", "triangle", "q_pseudo_spike", "spike_gate"], list(VARIANTS),
                [("spike", False), ("noisy", True)], dtypes):
            cid = f"{a}-vs-{b}-{sg}-{variant}-{nid}-{_id(dtype)}"
            marks = [pytest.mark.skip(reason=skip)] if skip else []
            if not skip and cid in KNOWN_FAILURES:
                marks = [pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[cid])]
            out.append(pytest.param(BY_ID[a], BY_ID[b], sg, variant, noisy, dtype, id=cid, marks=marks))
    return out


@pytest.mark.parametrize("be,other,surrogate,variant,noisy,dtype", pair_cases())
def test_fused_backends_agree(be, other, surrogate, variant, noisy, dtype):
    """Two fused backends on one device port the same step: identical spikes (analog values of the
    noisy spike differ by libm vs Triton rounding only), close everything else (fp32); in bf16 each is
    as close to the float64 truth as the bound allows."""
    T, N = (6, 130) if other.interpreted or be.interpreted else (16, 8192)
    x, v0, grads = make(T, N, seed=11)
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) >= 0.3) if noisy else None
    kw = dict(surrogate=surrogate, noise_mask=mask, learn=True, grads=grads, dtype=dtype)
    o = VARIANTS[variant]
    if dtype == torch.float32:
        a = run(be.name, be.device, x, v0, o, **kw)
        b = run(other.name, other.device, x, v0, o, **kw)
        spikes = mask.to(be.device) if mask is not None else torch.ones_like(a["s"], dtype=torch.bool)
        assert torch.equal(a["s"][spikes], b["s"][spikes])
        for k in a:
            assert_close(b[k], a[k], name=k)
    else:
        x, v0 = x.to(dtype).double(), v0.to(dtype).double()
        kw["grads"] = tuple(g.to(dtype).double() for g in grads)
        ref64 = run("reference", be.device, x, v0, o, **dict(kw, dtype=torch.float64))
        lowp = run("reference", be.device, x, v0, o, **kw)
        for b_ in (be, other):
            got = run(b_.name, b_.device, x, v0, o, **kw)
            for k in ref64:
                assert_close_lowp(got[k], ref64[k], lowp[k].to(dtype), name=f"{b_.id} {k}")


# --- extreme inputs: ±inf, NaN, values near the dtype's max ---------------------------------------
def extreme_inputs(dtype, T=5):
    """Columns that each carry one special value in x at step 0 or step 2 (then ordinary inputs), or
    one special v0, plus ordinary columns. Made in ``dtype`` exactly (every value representable)."""
    fi = torch.finfo(dtype)
    specials = [math.inf, -math.inf, math.nan, fi.max, -fi.max, fi.max / 2, -fi.max / 2, 0.75 * fi.max]
    g = torch.Generator().manual_seed(21)
    cols = len(specials) * 3 + 6
    x = (torch.randn(T, cols, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    v0 = (torch.randn(cols, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    for i, s in enumerate(specials):
        x[0, 3 * i] = s
        x[2, 3 * i + 1] = s
        v0[3 * i + 2] = s
    grads = tuple(torch.randn(*s, generator=g, dtype=torch.float64) for s in [(T, cols), (cols,), (T, cols)])
    return x, v0, grads


def assert_identical(a, b, name):
    """Bitwise equality up to NaN payloads and the sign of zero: same dtype, same values, NaN where
    the other has NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name}: {m}")


EXTREME_OPTS = [opt(0.0), opt(-0.3, decay_input=False, reset_residual=0.2), opt(0.0, detach_reset=True),
                opt(None), opt(None, decay_input=False, detach_reset=True, reset_residual=0.2),
                opt(0.0, decay_input=False, tau=math.inf), opt(None, tau=math.inf)]
MASKED = [("nomask", False), ("allmask", True)]
# overflow and inf − inf are the point of these inputs: numpy's warnings about them (the interpreter) are noise
EXTREME = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# What the kernels still get wrong on these inputs (strict xfail: a fix fails the run until its rule
# goes). None today on the CPU and Triton; the CUDA backends are not covered by a rule, so a GPU run
# shows their state.
def _xfail_all_true_mask(be, *values):
    return None  # every backend: the C++ step selects its charge form now (the 0/1 blend is gone)


def _xfail_extreme(be, surrogate, v_reset, masked):
    return None


def _extreme_run(be, dtype, opts, surrogate, learn, masked, save=None):
    x, v0, grads = extreme_inputs(dtype)
    mask = torch.ones(x.shape, dtype=torch.bool) if masked else None
    kw = dict(surrogate=surrogate, learn=learn, grads=grads, dtype=dtype)
    return run(be.name, be.device, x, v0, opts, noise_mask=mask, save=save, **kw), kw, (x, v0)


@EXTREME
@pytest.mark.parametrize("be,dtype,opts,learn", cases(BACKENDS, DTYPES + LOWP, EXTREME_OPTS, LEARN,
                                                      xfail=_xfail_all_true_mask))
def test_all_true_mask_is_no_mask(be, dtype, opts, learn):
    """A noise mask of all True gives exactly the unmasked result (every output and gradient), also
    where the input is ±inf, NaN or near the dtype's max."""
    a, _, _ = _extreme_run(be, dtype, opts, "sigmoid", learn, masked=False)
    b, _, _ = _extreme_run(be, dtype, opts, "sigmoid", learn, masked=True)
    assert a.keys() == b.keys()
    for k in a:
        assert_identical(b[k], a[k], k)


@EXTREME
@pytest.mark.parametrize("be,surrogate,v_reset", cases(BACKENDS, SURROGATES, [("hard", 0.0), ("soft", None)],
                                                       xfail=_xfail_all_true_mask))
def test_all_true_mask_is_no_mask_every_surrogate(be, surrogate, v_reset):
    """As above for every surrogate (float32, learnable τ/θ/α): g′ and ∂g/∂α at ±inf, NaN and FLT_MAX."""
    a, _, _ = _extreme_run(be, torch.float32, opt(v_reset), surrogate, True, masked=False)
    b, _, _ = _extreme_run(be, torch.float32, opt(v_reset), surrogate, True, masked=True)
    for k in a:
        assert_identical(b[k], a[k], k)


def check_extreme(got, ref):
    """Forward exact (NaN at the same places); backward within the conftest tolerance of the dtype,
    NaN and ±inf at the same places, the tolerance scaled by the largest finite value."""
    assert got.keys() == ref.keys()
    for k in ("s", "v_T", "v_seq"):
        assert_identical(got[k], ref[k], k)
    for k in ref:
        if k.startswith("grad_"):
            assert torch.equal(got[k].isnan(), ref[k].isnan()), f"{k}: NaN at other places than the reference"
            assert_close(got[k], ref[k], name=k, equal_nan=True)


@EXTREME
@pytest.mark.parametrize("be,dtype,opts,learn,masked", cases(
    FUSED, DTYPES, EXTREME_OPTS, LEARN, MASKED,
    xfail=lambda be, dtype, opts, learn, masked: _xfail_extreme(be, "sigmoid", opts["v_reset"], masked)))
def test_extreme_inputs_match_reference(be, dtype, opts, learn, masked):
    """SPEC formulas in IEEE arithmetic in the reference's order define the answer: e.g. a hard reset
    after a +inf input gives V = 1·V_r + 0·inf = NaN."""
    got, kw, (x, v0) = _extreme_run(be, dtype, opts, "sigmoid", learn, masked)
    mask = torch.ones(x.shape, dtype=torch.bool) if masked else None
    ref = run("reference", be.device, x, v0, opts, noise_mask=mask, **kw)
    check_extreme(got, ref)


@EXTREME
@pytest.mark.parametrize("be,surrogate,v_reset,masked", cases(FUSED, SURROGATES, [("hard", 0.0), ("soft", None)],
                                                              MASKED, xfail=_xfail_extreme))
def test_extreme_inputs_match_reference_every_surrogate(be, surrogate, v_reset, masked):
    got, kw, (x, v0) = _extreme_run(be, torch.float32, opt(v_reset), surrogate, True, masked)
    mask = torch.ones(x.shape, dtype=torch.bool) if masked else None
    ref = run("reference", be.device, x, v0, opt(v_reset), noise_mask=mask, **kw)
    check_extreme(got, ref)


# The same with save="recompute" (the default is "state") on the backends that have it: the backward
# re-runs the forward from x and the V checkpoints, so ±inf, NaN and ±max go through that path too.
RECOMPUTE_BACKENDS = [b for b in FUSED if b.name != "cpu"]


@EXTREME
@pytest.mark.parametrize("be,dtype,opts,learn,masked", cases(
    RECOMPUTE_BACKENDS, DTYPES, EXTREME_OPTS, LEARN, MASKED,
    xfail=lambda be, dtype, opts, learn, masked: _xfail_extreme(be, "sigmoid", opts["v_reset"], masked)))
def test_extreme_inputs_match_reference_recompute(be, dtype, opts, learn, masked):
    got, kw, (x, v0) = _extreme_run(be, dtype, opts, "sigmoid", learn, masked, save="recompute")
    mask = torch.ones(x.shape, dtype=torch.bool) if masked else None
    ref = run("reference", be.device, x, v0, opts, noise_mask=mask, **kw)
    check_extreme(got, ref)


@EXTREME
@pytest.mark.parametrize("be,surrogate,v_reset,masked", cases(RECOMPUTE_BACKENDS, SURROGATES,
                                                              [("hard", 0.0), ("soft", None)], MASKED,
                                                              xfail=_xfail_extreme))
def test_extreme_inputs_match_reference_every_surrogate_recompute(be, surrogate, v_reset, masked):
    got, kw, (x, v0) = _extreme_run(be, torch.float32, opt(v_reset), surrogate, True, masked, save="recompute")
    mask = torch.ones(x.shape, dtype=torch.bool) if masked else None
    ref = run("reference", be.device, x, v0, opt(v_reset), noise_mask=mask, **kw)
    check_extreme(got, ref)


# --- the reference itself --------------------------------------------------------------------------
def test_noise_mask_follows_manual_seed():
    x = torch.zeros(4, 50)
    torch.manual_seed(3)
    a = snn_fast.noise_mask_like(x, 0.5)
    torch.manual_seed(3)
    b = snn_fast.noise_mask_like(x, 0.5)
    assert torch.equal(a, b)


def test_reference_gradcheck():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    th = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    al = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)

    def f(x, tau, th, al):  # analog outputs everywhere (mask all False) so g is smooth and gradcheck applies
        mask = torch.zeros(4, 6, dtype=torch.bool)
        s, v = lif_multistep_reference(x, tau=tau, v_threshold=th, alpha=al, noise_mask=mask)
        return s, v

    assert torch.autograd.gradcheck(f, (x, tau, th, al))


# --- save="recompute" | "state" -------------------------------------------------------------------
# Every other test runs the default, save="state" (the GPU backends save H; with "recompute" they save
# V every K steps and re-run the forward in the backward; the CPU kernel saves nothing either way;
# tests/test_properties.py draws both). Here both modes, at
# T = 2·K + 3: two whole segments and a partial one, so checkpoints are written and read and the
# steps past T are skipped; the grid's T (4) is a single segment.
from snn_fast.ops.lif.contract import RECOMPUTE_CHUNK  # noqa: E402

SAVE_T = 2 * RECOMPUTE_CHUNK + 3
# (options, surrogate): hard/soft, decay_input or not, detached with κ, IF; q_pseudo_spike has the
# most register-hungry surrogate code, spike_gate a g′ that reads the spike.
SAVE_CASES = [
    (opt(0.0, True, False, 0.0), "sigmoid"),
    (opt(None, False, True, 0.2), "q_pseudo_spike"),
    (opt(-0.3, False, False, 0.2), "atan"),
    (opt(None, True, True, 0.2, math.inf), "spike_gate"),
]


@pytest.mark.parametrize("be,dtype,case,learn,noisy", cases(
    FUSED, DTYPES + [torch.bfloat16], [(f"{opt_id(o)}-{sg}", (o, sg)) for o, sg in SAVE_CASES], LEARN,
    [("spike", False), ("noisy", True)]))
def test_save_recompute_matches_state(be, dtype, case, learn, noisy):
    """save="recompute" against save="state" and the reference: the same forward (s, v_T, v_seq
    bitwise: the same forward kernel), the reference's gradients, and in float32/float64 on the CPU
    backends the state path's gradients bit for bit (the re-run H is the saved H; on a GPU the two
    backward kernels may contract different products into FMAs, so there they are held to the
    reference's tolerance only). In bf16 the recompute backward reads the exact float32 H where the
    state path reads H − θ rounded to bf16: both within the low-precision bound."""
    opts, sg = case
    N = be.grid_shape[1]
    x, v0, grads = make(SAVE_T, N, seed=16)
    mask = (torch.rand(SAVE_T, N, generator=torch.Generator().manual_seed(17)) >= 0.3) if noisy else None
    if dtype in LOWP:
        x, v0 = x.to(dtype).double(), v0.to(dtype).double()
    kw = dict(surrogate=sg, learn=learn, noise_mask=mask, dtype=dtype, grads=grads)
    rc = run(be.name, be.device, x, v0, opts, save="recompute", **kw)
    st = run(be.name, be.device, x, v0, opts, save="state", **kw)
    for k in ("s", "v_T", "v_seq"):
        assert torch.equal(rc[k], st[k]), f"{k}: save='recompute' and save='state' forwards differ"
    if dtype in LOWP:
        ref_lowp = run("reference", be.device, x, v0, opts, **kw)
        ref64 = run("reference", be.device, x, v0, opts, **dict(kw, dtype=torch.float64))
        check_lowp(rc, ref64, ref_lowp, dtype, mask=mask, tag="recompute ")
        return
    check(rc, run("reference", be.device, x, v0, opts, **kw), mask=mask, tag="recompute ")
    if be.device == "cpu":
        for k in rc:
            assert torch.equal(rc[k], st[k]), f"{k}: save='recompute' differs from save='state'"


@pytest.mark.parametrize("be", cases(FUSED))
def test_save_option_is_checked_and_reaches_the_modules(be):
    x = torch.randn(SAVE_T, 3, device=be.device)
    with pytest.raises(ValueError, match="save must be one of"):
        snn_fast.lif_multistep(x, backend=be.name, save="everything")
    with pytest.raises(ValueError, match="save must be one of"):
        snn_fast.nn.LIF(save="none")
    m = snn_fast.nn.LIF(backend=be.name, save="recompute").to(be.device)  # not the default: shown
    assert m.save == "recompute" and "save=recompute" in repr(m)
    assert "save=" not in repr(snn_fast.nn.LIF(backend=be.name))
    xg = x.clone().requires_grad_(True)
    m(xg).sum().backward()
    want = snn_fast.lif_multistep(x, backend=be.name, save="recompute")[0]
    assert torch.equal(m(x), want)


def test_convert_passes_the_save_option():
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), neuron.LIFNode(step_mode="m"))
    assert snn_fast.convert(net)[1].save == "state"
    assert snn_fast.convert(net, save="recompute")[1].save == "recompute"
    with pytest.raises(ValueError, match="save must be one of"):
        snn_fast.convert(net, save="h")


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward of ``fn()``: every tensor packed by a saved-tensor hook,
    each storage counted once (x itself is the caller's and is counted separately)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


@pytest.mark.parametrize("be,dtype,T", cases(FUSED, [torch.float32, torch.bfloat16], [8, SAVE_T]))
def test_saved_state_is_what_memory_counts(be, dtype, T):
    """What autograd actually keeps per LIF layer, beyond x, v0 and the parameters, equals
    ``snn_fast.ops.lif.memory.saved_bytes`` in both modes: 0 bytes with recompute for T <= K."""
    from snn_fast.ops.lif import memory

    N = be.grid_shape[1]
    x = torch.randn(T, N, device=be.device).to(dtype).requires_grad_(True)
    v0 = torch.zeros(N, device=be.device, dtype=dtype)
    for save in ("recompute", "state"):
        out, seen = _saved_bytes(lambda: snn_fast.lif_multistep(x, v0, backend=be.name, save=save))
        known = {t.untyped_storage().data_ptr() for t in (x, v0, out[0])}
        # the rest but the [3] parameter tensor (12 or 24 B)
        extra = sum(n for (ptr, _), n in seen.items() if ptr not in known and n > 24)
        want = memory.saved_bytes(T, N, dtype, save, backend=be.name)
        assert extra == want, (save, extra, want, seen)
        out[0].sum().backward()
    if be.name != "cpu":
        assert memory.saved_bytes(8, N, dtype, "recompute", backend=be.name) == 0


def test_bytes_moved_counts_the_passes():
    """The counts of snn_fast.ops.lif.memory: 6 passes with save="state", the 5-pass floor plus the
    checkpoints with save="recompute", on W1's shape; and the [N] terms."""
    from snn_fast.ops.lif import memory

    N = 64 * 65536
    for dtype, b in ((torch.float32, 4), (torch.bfloat16, 2)):
        for T in (4, 8, 16, 32, 64):
            st = memory.bytes_moved(T, N, dtype, "state")
            rc = memory.bytes_moved(T, N, dtype, "recompute")
            rows = -(-T // RECOMPUTE_CHUNK) - 1
            assert st["total"] == 6 * T * N * b + 4 * N * b and st["saved"] == T * N * b
            assert rc["total"] == 5 * T * N * b + 5 * N * b + 2 * rows * N * 4 and rc["saved"] == rows * N * 4
            assert rc["fwd"] == 2 * T * N * b + 2 * N * b + rows * N * 4
            assert (rc["saved"] == 0) == (T <= RECOMPUTE_CHUNK)
    assert memory.passes(64, N, torch.float32, "recompute") < 5.3 < 6 <= memory.passes(64, N, torch.float32, "state")
    m = memory.bytes_moved(16, 10, torch.float32, "recompute", mask=True, v_seq=True, learn_tau_decay_input=True,
                           backend="cuda")
    assert m["bwd"] == 3 * 160 * 4 + 160 * 4 + 160 + 2 * 40 + 10 * 4 + 40 + 160 + 160 * 4


# --- backend-specific: the C++ ops (CPU and CUDA) --------------------------------------------------
@pytest.mark.parametrize("be,combo", cases(only("cpu", "cuda"), [
    ("fixed-nomask-novseq-state", (False, False, False, 0)), ("learn-mask-vseq-state", (True, True, True, 0)),
    ("fixed-mask-vseq-recompute", (False, True, True, 1)), ("learn-nomask-vseq-recompute", (True, False, True, 1)),
    ("fixed-mask-novseq-none", (False, True, False, 2))]))
def test_cxx_opcheck(be, combo):
    """torch.library.opcheck of the C++ pair, every save mode: schema, fake tensors, autograd
    registration, AOT dispatch (through the forward's autograd, the backward op too). T = 20: two V
    checkpoints under save="recompute". The strict threshold with the learnable rows, and on the CPU a
    reset timing per save mode (the CUDA kernel runs the reset after the spike only)."""
    learn, masked, vseq, save = combo
    dev = be.device
    strict, timing = learn, (save if dev == "cpu" else 0)
    x = torch.randn(20, 64, device=dev, requires_grad=True)
    v0 = torch.zeros(64, device=dev, requires_grad=True)
    params = torch.tensor([0.5, 1.0, 4.0], device=dev, requires_grad=learn)
    mask = torch.rand(20, 64, device=dev) > 0.3 if masked else None
    args = (x, v0, params, mask, 0, True, 0.0, True, False, 0.1, strict, timing, vseq, save)
    torch.library.opcheck(torch.ops.snn_fast.lif_fwd.default, args)
    with torch.no_grad():
        s, v_last, v_seq, saved = torch.ops.snn_fast.lif_fwd(*args)
    if save != 2:
        bwd_args = (torch.randn_like(s), torch.randn_like(v_last), torch.randn_like(v_seq) if vseq else None,
                    x.detach(), v0.detach(), params.detach(), mask, saved, s, None, None, 0, True, 0.0, True, False,
                    0.1, strict, timing, save, learn)
        torch.library.opcheck(torch.ops.snn_fast.lif_bwd.default, bwd_args)


def test_every_registered_op_is_opchecked():
    """Each op of the snn_fast namespace has an opcheck in the suite (this list names where); a new
    op fails here until one is written. The Python-defined pairs share the C++ schemas (contract.py)."""
    import snn_fast.ops.bn_lif.custom_cpu  # noqa: F401  (defines its pair)
    import snn_fast.ops.lif.custom_cpu  # noqa: F401  (defines its pair)
    from snn_fast import _triton
    from snn_fast.ops.bn_lif import contract as bn_contract
    from snn_fast.ops.lif import contract

    checked = {
        "lif_fwd": "test_cxx_opcheck", "lif_bwd": "test_cxx_opcheck",
        "lif_sg_arg": "test_custom_surrogate.py::test_cpu_given_sg_opcheck",
        "lif_fwd_custom_cpu": "test_custom_surrogate.py::test_cpu_given_sg_opcheck",
        "lif_bwd_custom_cpu": "test_custom_surrogate.py::test_cpu_given_sg_opcheck",
        "lif_bwd_native": "test_native_surrogate.py::test_lif_bwd_native_opcheck",
        "lif_fwd_triton": "test_triton_opcheck", "lif_bwd_triton": "test_triton_opcheck",
        "tempotron_fwd": "test_tempotron.py::test_opcheck", "tempotron_bwd": "test_tempotron.py::test_opcheck",
        "tempotron_fwd_triton": "test_tempotron.py::test_triton_opcheck",
        "tempotron_bwd_triton": "test_tempotron.py::test_triton_opcheck",
        "cpu_cache_stats": "test_cpu_output_cache.py::test_cache_ops_opcheck",
        "cpu_cache_clear": "test_cpu_output_cache.py::test_cache_ops_opcheck",
        "cpu_cache_empty_like": "test_cpu_output_cache.py::test_cache_ops_opcheck",
        "bn_lif_fwd": "test_bn_lif.py::test_cxx_opcheck (CUDA: test_cuda_opcheck)",
        "bn_lif_bwd": "test_bn_lif.py::test_cxx_opcheck (CUDA: test_cuda_opcheck)",
        "bn_lif_stats": "test_bn_lif.py::test_cxx_opcheck",
        "bn_lif_cpu_backward_by_channel": "test_bn_lif.py::test_by_channel_rule_is_the_kernels",
        "bn_lif_bwd_native": "test_bn_lif_user_surrogate.py::test_bn_lif_bwd_native_opcheck",
        "bn_lif_fwd_custom_cpu": "test_bn_lif_user_surrogate.py::test_custom_ops_opcheck",
        "bn_lif_bwd_custom_cpu": "test_bn_lif_user_surrogate.py::test_custom_ops_opcheck",
        "bn_lif_fwd_triton": "test_bn_lif.py::test_triton_opcheck",
        "bn_lif_bwd_triton": "test_bn_lif.py::test_triton_opcheck",
        "bn_lif_stats_triton": "test_bn_lif.py::test_triton_opcheck",
    }
    if _triton.import_error() is None:
        _lt()
        import snn_fast.ops.tempotron.function as tf

        tf.BACKENDS.load("triton")
        import snn_fast.ops.bn_lif.function as bf

        bf.BACKENDS.load("triton")
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("snn_fast::")}
    assert names <= set(checked), f"ops without an opcheck: {sorted(names - set(checked))}"
    for name, want in (("lif_fwd", contract.FWD_SCHEMA), ("lif_bwd", contract.BWD_SCHEMA),
                       ("lif_fwd_custom_cpu", contract.FWD_SCHEMA), ("lif_bwd_custom_cpu", contract.BWD_SCHEMA),
                       ("lif_fwd_triton", contract.FWD_SCHEMA), ("lif_bwd_triton", contract.BWD_SCHEMA),
                       ("bn_lif_fwd", bn_contract.FWD_SCHEMA), ("bn_lif_bwd", bn_contract.BWD_SCHEMA),
                       ("bn_lif_fwd_triton", bn_contract.FWD_SCHEMA), ("bn_lif_bwd_triton", bn_contract.BWD_SCHEMA),
                       ("bn_lif_fwd_custom_cpu", bn_contract.FWD_SCHEMA),
                       ("bn_lif_bwd_custom_cpu", bn_contract.BWD_SCHEMA)):
        if name in names:
            got = str(getattr(torch.ops.snn_fast, name).default._schema)
            assert got == f"snn_fast::{name}{want}", (name, got)


@pytest.mark.parametrize("be,dtype,opts", cases(only("cpu"), LOWP, [OPTIONS[0], OPTIONS[7]]))
def test_cpu_low_precision_is_one_rounding_of_fp32(be, dtype, opts):
    """The CPU kernel saves nothing and computes in fp32, so each output is the float32 computation on
    the same (exactly upcast) inputs, rounded once to the storage dtype."""
    x, v0, grads = make(8, 2000)
    x, v0 = x.to(dtype).double(), v0.to(dtype).double()  # representable inputs, so only the arithmetic differs
    grads = tuple(g.to(dtype).double() for g in grads)
    ref64 = run("reference", "cpu", x, v0, opts, learn=False, grads=grads, alpha=4.0)
    lowp = run("reference", "cpu", x, v0, opts, learn=False, grads=grads, dtype=dtype, alpha=4.0)
    got = run("cpu", "cpu", x, v0, opts, learn=False, grads=grads, dtype=dtype, alpha=4.0)
    check_lowp(got, ref64, lowp, dtype)
    ref32 = run("reference", "cpu", x, v0, opts, learn=False, grads=grads, dtype=torch.float32, alpha=4.0)
    ulp = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
    for k in ("v_T", "v_seq", "grad_x", "grad_v0"):
        err = (got[k].float() - ref32[k]).abs()
        bound = ulp * ref32[k].abs() + 1e-5 * max(ref32[k].abs().max().item(), 1.0)
        assert (err <= bound).all(), f"{k}: max err {err.max().item():.3e} beyond one {dtype} rounding"


@pytest.mark.parametrize("be", cases(only("cpu")))
def test_cpu_param_grad_independent_of_thread_count(be):
    x, v0, grads = make(8, 20000, dtype=torch.float32)
    opts = OPTIONS[0]
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run("cpu", "cpu", x, v0, opts, learn=True, grads=grads)
        torch.set_num_threads(max(2, n))
        b = run("cpu", "cpu", x, v0, opts, learn=True, grads=grads)
    finally:
        torch.set_num_threads(n)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("be", cases(only("cuda")))
def test_cuda_uses_current_stream_and_device(be):
    x, _, grads = make(8, 4096, dtype=torch.float32)
    want = run("reference", "cuda", x, None, opt(tau=2.0), learn=True, grads=grads)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = run("cuda", "cuda", x, None, opt(tau=2.0), learn=True, grads=grads)
    s.synchronize()
    check(got, want)
    if torch.cuda.device_count() > 1:
        got1 = run("cuda", "cuda:1", x, None, opt(tau=2.0), learn=True, grads=grads)
        check({k: v.to("cuda:0") for k, v in got1.items()}, want)


@pytest.mark.parametrize("be", cases(only("cuda")))
def test_cuda_int64_offsets(be):
    """T·N > 2^31 elements: offsets must not wrap. Forward only, checked on the last neurons."""
    T, N = 2, (1 << 30) + 16
    free, _ = torch.cuda.mem_get_info()
    need = 4 * T * N * 2 + (1 << 30)  # x, s, saved, v_seq (fp16) + slack
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} free")
    x = torch.empty(T, N, device="cuda", dtype=torch.float16)
    x.normal_(0.5, 1.0)
    with torch.no_grad():
        s, v, vs = snn_fast.lif_multistep(x, backend="cuda", return_v_seq=True)
        tail = slice(N - 4096, N)
        s_r, v_r, vs_r = lif_multistep_reference(x[:, tail].float(), return_v_seq=True)
    torch.testing.assert_close(s[:, tail].float(), s_r, atol=0, rtol=0)
    torch.testing.assert_close(v[tail].float(), v_r, atol=2e-3, rtol=1e-3)  # fp16 store
    del x, s, v, vs
    torch.cuda.empty_cache()


@pytest.mark.parametrize("be", cases(only("cuda")))
def test_cuda_bwd_rejects_foreign_saved_state(be):
    x = torch.randn(4, 64, device="cuda")
    v0 = torch.zeros(64, device="cuda")
    params = torch.tensor([0.5, 1.0, 4.0], device="cuda")
    flags = (0, True, 0.0, True, False, 0.0, False, 0)
    s, v, _, saved = torch.ops.snn_fast.lif_fwd(x, v0, params, None, *flags, False, 0)
    assert saved.shape == x.shape
    with pytest.raises(RuntimeError, match="saved"):
        torch.ops.snn_fast.lif_bwd(torch.ones_like(s), None, None, x, v0, params, None, x.new_empty(0), s,
                                   None, None, *flags, 0, False)
    with pytest.raises(RuntimeError, match="save=2"):
        torch.ops.snn_fast.lif_bwd(torch.ones_like(s), None, None, x, v0, params, None, x.new_empty(0), s,
                                   None, None, *flags, 2, False)
    assert torch.ops.snn_fast.lif_fwd(x, v0, params, None, *flags, False, 2)[3].numel() == 0


# --- backend-specific: Triton ----------------------------------------------------------------------
TRITON = only("triton-interp", "triton-cuda")


def _lt():
    """The Triton LIF module, loaded through its backend table (which also registers its ops' autograd
    for torch.compile: nothing registers itself on import)."""
    from snn_fast.ops.lif.function import BACKENDS

    BACKENDS.load("triton")
    from snn_fast.ops.lif import triton as lt

    return lt


def test_triton_unavailable_reason():
    pytest.importorskip("triton")
    from snn_fast import _triton

    lt = _lt()
    x = torch.zeros(2, 3)
    if lt.INTERPRETED:
        assert _triton.unavailable_reason(x) is None
    else:
        assert "TRITON_INTERPRET" in _triton.unavailable_reason(x)
    assert _triton.unavailable_reason(torch.zeros(1, device="meta")) is not None


@pytest.mark.parametrize("be,dtype", cases(TRITON, [torch.float32, torch.bfloat16]))
def test_triton_inference_skips_saving(be, dtype):
    """No input requires grad (or no_grad): the inference op runs, saves nothing, same outputs."""
    from snn_fast.ops.lif.function import BACKENDS, fused_forward

    _lt()
    device = be.device
    x, v0, _ = make(6, 130, dtype=dtype)
    x, v0 = x.to(device), v0.to(device)
    p = torch.tensor([0.4, 0.8, 4.0], device=device)
    args = (x, v0, p, None, 0, True, 0.0, True, False, 0.0, False, 0, True)

    def dispatch(*a):  # the forward lif_apply runs for backend 'triton', outside the autograd Function
        return fused_forward(BACKENDS.load("triton"), *a[:4], a[4:12], a[12])

    s_i, v_i, vs_i, saved_i = dispatch(*args)
    assert saved_i.numel() == 0
    with torch.no_grad():
        assert dispatch(*args[:2], p.clone().requires_grad_(), *args[3:])[3].numel() == 0
    s_t, v_t, vs_t, saved_t = dispatch(*args[:2], p.clone().requires_grad_(), *args[3:])
    assert saved_t.shape == x.shape
    for a, b, n in ((s_i, s_t, "s"), (v_i, v_t, "v_T"), (vs_i, vs_t, "v_seq")):
        assert torch.equal(a, b), n
    kw = dict(tau=2.5, v_threshold=0.8, return_v_seq=True)
    ref = snn_fast.lif_multistep(x, v0, backend="reference", **kw)
    got = snn_fast.lif_multistep(x, v0, backend="triton", **kw)
    if dtype == torch.float32:
        for a, b, n in zip(got, ref, ("s", "v_T", "v_seq")):
            assert_close(a, b, name=n)
    else:  # bf16: the kernel must be as close to the float64 truth as PyTorch in bf16 is
        ref64 = snn_fast.lif_multistep(x.double(), v0.double(), backend="reference", **kw)
        for a, r64, r, n in zip(got, ref64, ref, ("s", "v_T", "v_seq")):
            assert a.dtype == dtype
            assert_close_lowp(a, r64, r, name=f"bf16 {n}")


def _op_args(device, dtype=torch.float32, mask=True, T=4):
    x, v0, _ = make(T, 37, dtype=dtype)
    x, v0 = x.to(device), v0.to(device)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    params = torch.tensor([0.4, 0.8, 4.0], dtype=pdt, device=device)
    m = (torch.rand(x.shape, device=device) > 0.3) if mask else None
    return x, v0, params, m


@pytest.mark.parametrize("be", cases(TRITON))
def test_triton_opcheck(be):
    """Schema, fake (meta) functions and autograd registration of both ops, every save mode (each with
    another reset timing, the strict threshold with save="recompute")."""
    _lt()
    x, v0, params, m = _op_args(be.device, T=20)
    for save in (0, 1, 2):
        strict, timing = save == 1, save
        fwd_args = (x, v0, params, m, 0, True, 0.0, True, False, 0.2, strict, timing, True, save)
        torch.library.opcheck(torch.ops.snn_fast.lif_fwd_triton.default, fwd_args,
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
        s, v_last, v_seq, saved = torch.ops.snn_fast.lif_fwd_triton(*fwd_args)
        if save == 2:
            assert saved.numel() == 0
            continue
        gs = torch.randn_like(s)
        bwd_args = (gs, torch.randn_like(v_last), torch.randn_like(v_seq), x, v0, params, m, saved, s, None, None,
                    0, True, 0.0, True, False, 0.2, strict, timing, save, True)
        torch.library.opcheck(torch.ops.snn_fast.lif_bwd_triton.default, bwd_args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("be", cases(TRITON))
def test_triton_torch_compile_dynamic_sizes(be):
    """Symbolic T and N: a new batch size or length reuses the compiled graph."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    _lt()
    device = be.device
    torch._dynamo.reset()
    params = torch.tensor([0.4, 0.8, 4.0], device=device, requires_grad=True)

    def f(x, v0):
        s, v, _, _ = torch.ops.snn_fast.lif_fwd_triton(x, v0, params, None, 0, True, 0.0, True, False, 0.0, False,
                                                       0, False, 0)
        return s.sum() + (v * v).sum()

    cnt = CompileCounterWithBackend("inductor" if device == "cuda" else "aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=cnt)
    for T, N in ((4, 40), (5, 70), (2, 300)):  # T ≠ 3: duck sizing would tie T to params.size(0)
        x, v0, _ = make(T, N, dtype=torch.float32)
        x, v0 = x.to(device), v0.to(device)
        xr = x.clone().requires_grad_()
        out = compiled(xr, v0)
        out.backward()
        g_compiled = (xr.grad.clone(), params.grad.clone())
        params.grad = None
        xe = x.clone().requires_grad_()
        eager = f(xe, v0)
        eager.backward()
        assert_close(out.detach(), eager.detach(), name="loss")
        assert_close(g_compiled[0], xe.grad, name="grad_x")
        assert_close(g_compiled[1], params.grad, name="grad_params")
        params.grad = None
    assert cnt.frame_count == 1


def test_has_kernel_probe_agrees_with_the_backend_table():
    """The availability probe of this file and the extension's own kernel registry agree for CPU."""
    assert (SKIP["cpu"] is None) == _ext.has_kernel("lif_fwd", "CPU")
