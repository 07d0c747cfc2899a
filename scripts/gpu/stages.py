"""The stages of the GPU check (scripts/gpu_check.sh → scripts/gpu/check.py), one subcommand each.

Each stage runs in its own process under its own timeout, so a hang or a crash costs that stage only.
A stage writes what it found into the work folder (``--work``) as it goes: ``env.json``,
``correctness.csv`` (one row per case), ``bench-<stage>.json`` (benchmark rows in the format of
benchmarks/common.py); check.py turns them into the files that come back from the GPU machine.

``--dry-run`` runs the same code on this CPU machine: Triton under TRITON_INTERPRET=1 on tiny shapes,
the 'cpu' backend standing in for 'cuda', tiny benchmark sizes. It tests the plumbing, not a GPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRY = "--dry-run" in sys.argv
if DRY:  # must precede the first `import triton`
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Appended, not prepended: a snn_fast on PYTHONPATH (another build of it) wins over the checkout.
sys.path.append(ROOT)
sys.path.append(os.path.join(ROOT, "tests"))  # conftest: the suite's tolerances, defined once

import torch  # noqa: E402

import snn_fast  # noqa: E402,F401  (before benchmarks/*, which put the checkout first on sys.path)

DEVICE = "cpu" if DRY else "cuda"


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _append_csv(path, row, fields):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)


def _save_bench_rows(work, stage, rows):
    path = os.path.join(work, f"bench-{stage}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"{len(rows)} benchmark rows -> {path}")


# --------------------------------------------------------------------------------------------------
# Stage 1: environment and the copy roofline


def stage_env(args):
    info = dict(python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda,
                machine=platform.machine(), dry_run=DRY, device=DEVICE)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as e:
        info["triton"] = f"not importable: {e}"
    for cmd in (["nvidia-smi"], ["nvidia-smi", "-q", "-d", "CLOCK"], ["nvcc", "--version"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            print(f"$ {' '.join(cmd)}\n{out}")
            if cmd == ["nvcc", "--version"]:
                info["nvcc"] = out.strip().splitlines()[-1] if out.strip() else None
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"$ {' '.join(cmd)}: {e}")
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device visible to torch")
            return 2
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, sm=f"{p.major}{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    from benchmarks import common

    info["device_label"] = common.device_name(DEVICE)
    t0 = time.perf_counter()
    info["copy_gbps"] = common.copy_gbps(DEVICE)
    print(f"copy bandwidth (1 GiB copy_, read + write): {info['copy_gbps']:.1f} GB/s "
          f"({time.perf_counter() - t0:.1f} s)")
    with open(os.path.join(args.work, "env.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------
# Stages 2 and 4b: LIF correctness against the reference, a covering set of options

CORRECT_FIELDS = ["stage", "backend", "case", "dtype", "T", "N", "ok", "detail", "seconds"]


def lif_cases(dry: bool):
    """Every surrogate × (fp32, bf16), the other options rotated with co-prime periods so that each
    value of each option meets several surrogates and both dtypes: hard (v_r 0 and −0.3) / soft reset,
    detach, decay_input, learnable τ/θ/α, noise mask, κ, v_seq, IF, T ∈ {1, 4, 64}, odd N. Few
    distinct kernel variants (Triton compiles one per variant): see ``variant_keys``."""
    from snn_fast import surrogate as sgm

    names = sgm.names()[: sgm.NUM_KERNEL_SURROGATES]
    Ts = (1, 4, 9) if dry else (1, 4, 64)
    Ns = (1, 67, 131) if dry else (1, 4099, 65537)
    cases = []
    for i, sg in enumerate(names):
        for d, dtype in enumerate((torch.float32, torch.bfloat16)):
            j = i + d
            cases.append(dict(
                surrogate=sg, dtype=dtype, T=Ts[j % 3], N=Ns[(i + 2 * d) % 3],
                v_reset=(0.0, None, -0.3)[j % 3], detach_reset=bool((i // 2 + d) % 2),
                decay_input=j % 2 == 0, learn=(i + d) % 3 != 1, mask=j % 4 == 1,
                kappa=0.2 if j % 5 == 2 else 0.0, v_seq=j % 3 == 2, tau=math.inf if (i, d) == (3, 0) else 2.5,
                grad=True, save=("state", "recompute")[j % 2]))  # both save= modes, each at T = 64 too
    # Inference (no input needs a gradient): Triton runs its forward without the saved state.
    for dtype in (torch.float32, torch.bfloat16):
        cases.append(dict(surrogate="sigmoid", dtype=dtype, T=Ts[2], N=Ns[1], v_reset=0.0, detach_reset=False,
                          decay_input=True, learn=False, mask=False, kappa=0.0, v_seq=False, tau=2.0, grad=False,
                          save="state"))
    return cases


def variant_keys(case):
    """The constexpr variants a case instantiates in the Triton kernels (forward, backward)."""
    hard = case["v_reset"] is not None
    di = case["decay_input"] and not math.isinf(case["tau"])
    dt = str(case["dtype"])
    fwd = ("fwd", case["surrogate"], hard, di, case["mask"], case["v_seq"], case["grad"], case["save"], dt)
    if not case["grad"]:
        return [fwd]
    bwd = ("bwd", case["surrogate"], hard, di, case["detach_reset"], case["mask"], case["v_seq"], case["learn"],
           case["save"], dt)
    return [fwd, bwd]


def case_id(c):
    parts = [c["surrogate"], str(c["dtype"]).replace("torch.", ""), f"T{c['T']}", f"N{c['N']}",
             "soft" if c["v_reset"] is None else f"hard{c['v_reset']:g}"]
    parts += [p for p, on in (("detach", c["detach_reset"]), ("noDI", not c["decay_input"]), ("learn", c["learn"]),
                              ("mask", c["mask"]), ("vseq", c["v_seq"]), ("IF", math.isinf(c["tau"])),
                              (f"k{c['kappa']}", c["kappa"] != 0), ("infer", not c["grad"]),
                              ("recompute", c["save"] == "recompute"))
              if on]
    return "-".join(parts)


def _run_lif(backend, c, x, v0, mask, dtype, seed=1):
    """Forward (+ backward of a random linear loss of every output) → dict of outputs and grads."""
    from snn_fast import lif_multistep

    dev = x.device
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = x.detach().to(dtype).clone().requires_grad_(c["grad"])
    v0 = v0.detach().to(dtype).clone().requires_grad_(c["grad"])
    params = {}
    tau, theta, alpha = c["tau"], 0.8, None
    if c["learn"]:
        if not math.isinf(tau):
            tau = params["tau"] = torch.tensor(tau, dtype=pdt, device=dev, requires_grad=True)
        theta = params["theta"] = torch.tensor(theta, dtype=pdt, device=dev, requires_grad=True)
        from snn_fast import surrogate as sgm

        a0 = sgm.get(c["surrogate"]).alpha
        if a0 is not None:
            alpha = params["alpha"] = torch.tensor(a0, dtype=pdt, device=dev, requires_grad=True)
    out = lif_multistep(x, v0, tau=tau, v_threshold=theta, alpha=alpha, surrogate=c["surrogate"],
                        v_reset=c["v_reset"], detach_reset=c["detach_reset"], decay_input=c["decay_input"],
                        reset_residual=c["kappa"], noise_mask=mask, return_v_seq=c["v_seq"], backend=backend,
                        save=c["save"])
    names = ["s", "v_T", "v_seq"][: len(out)]
    res = dict(zip(names, [o.detach() for o in out]))
    if c["grad"]:
        g = torch.Generator().manual_seed(seed)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64).to(dev)).sum() for o in out)
        wrt = [x, v0] + list(params.values())
        grads = torch.autograd.grad(loss, wrt)
        res.update(zip(["grad_x", "grad_v0"] + ["grad_" + k for k in params], grads))
    return res


def check_lif_case(backend, c, device):
    """None when ``backend`` agrees with the reference on case ``c``, else what differs.

    float32: no spike may flip against the float32 reference (same operation order), everything else
    within conftest's float32 tolerance. bfloat16: at least as close to the float64 truth as plain
    PyTorch in bfloat16 (conftest's ``assert_close_lowp``)."""
    from conftest import assert_close, assert_close_lowp

    # crc32, not hash(): str hashes change with every process (PYTHONHASHSEED), inputs must not
    g = torch.Generator().manual_seed(zlib.crc32(case_id(c).encode()))
    x = (torch.randn(c["T"], c["N"], generator=g, dtype=torch.float64) * 1.5 + 0.4).to(device)
    v0 = (torch.rand(c["N"], generator=g, dtype=torch.float64) * 0.5).to(device)
    mask = (torch.rand(c["T"], c["N"], generator=g) >= 0.3).to(device) if c["mask"] else None
    dtype = c["dtype"]
    x, v0 = x.to(dtype).double(), v0.to(dtype).double()  # every run, the float64 truth too, sees the same inputs
    got = _run_lif(backend, c, x, v0, mask, dtype)
    try:
        if dtype == torch.float32:
            ref = _run_lif("reference", c, x, v0, mask, dtype)
            flips = (got["s"] != ref["s"]) if mask is None else ((got["s"] != ref["s"]) & mask)
            if int(flips.sum()):
                return f"{int(flips.sum())} spikes differ from the float32 reference"
            for k in ref:
                if not torch.isfinite(got[k]).all():
                    return f"{k} has non-finite values"
                assert_close(got[k], ref[k], name=k)
        else:
            ref64 = _run_lif("reference", c, x, v0, mask, torch.float64)
            ref_lp = _run_lif("reference", c, x, v0, mask, dtype)
            for k in ref64:
                # parameter gradients are float32 sums on both sides: judged at the storage dtype's ulp
                assert_close_lowp(got[k], ref64[k], ref_lp[k].to(dtype), name=f"{dtype} {k}")
    except AssertionError as e:
        return str(e).splitlines()[0][:300]
    return None


def stage_lif(args):
    backend = "cpu" if DRY and args.backend == "cuda" else args.backend  # dry run: 'cpu' stands in
    cases = lif_cases(DRY)
    keys = {k for c in cases for k in variant_keys(c)}
    print(f"{len(cases)} cases, {len(keys)} distinct kernel variants (Triton compiles each once per config; "
          f"SNN_FAST_TRITON_AUTOTUNE={os.environ.get('SNN_FAST_TRITON_AUTOTUNE', '1')})")
    path = os.path.join(args.work, "correctness.csv")
    failed, bad = 0, []
    t_all = time.perf_counter()
    for c in cases:
        t0 = time.perf_counter()
        try:
            why = check_lif_case(backend, c, DEVICE)
        except Exception as e:  # noqa: BLE001 - a crash is a failed case, the stage goes on
            why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        _sync()
        dt = time.perf_counter() - t0
        failed += why is not None
        if why is not None:
            bad.append(case_id(c))
        print(f"{'ok  ' if why is None else 'FAIL'} {backend:9s} {case_id(c):70s} {dt:6.2f} s  {why or ''}", flush=True)
        _append_csv(path, dict(stage=args.stage, backend=backend, case=case_id(c), dtype=str(c["dtype"])[6:],
                               T=c["T"], N=c["N"], ok=why is None, detail=why or "", seconds=f"{dt:.2f}"),
                    CORRECT_FIELDS)
    print(f"{backend}: {len(cases) - failed}/{len(cases)} cases pass, {time.perf_counter() - t_all:.1f} s "
          f"(first calls of each variant include its compilation)"
          + (f"; failed: {', '.join(bad)}" if bad else ""))
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# Stages 3 and 4c: W1 (docs/spec.md §10)


def stage_w1(args):
    from benchmarks import common
    from benchmarks import test_bench_lif as bl

    from snn_fast.ops.lif.contract import DEFAULT_SAVE, SAVE_MODES

    other = next(m for m in SAVE_MODES if m != DEFAULT_SAVE)
    want = []
    for p in args.providers.split(","):  # each of ours in both save modes: W1 rows for each,
        # the default (its row's `save` column says which) and "<provider>-<other mode>"
        want += [p, f"{p}-{other}"] if p in ("snn_fast-cuda", "snn_fast-triton") else [p]
    if DRY:  # the 'cpu' backend stands in for 'cuda'; tiny shapes
        want = [p.replace("snn_fast-cuda", "snn_fast-cpu") for p in want]
        shapes = [((T, 2, 256), dt) for dt in (torch.float32, torch.bfloat16) for T in (4, 8)]
    else:
        Ts = [int(t) for t in args.T.split(",")]
        shapes = [((T, 64, 65536), dt) for dt in (torch.float32, torch.bfloat16) for T in Ts]
    compiled_T = {int(t) for t in args.compiled_T.split(",") if t}
    other_T = {int(t) for t in args.other_save_T.split(",") if t}
    rows = []
    for shape, dtype in shapes:
        names = list(want)
        if not DRY and shape[0] not in other_T:  # the other mode at one T within a chunk, one beyond (budget)
            names = [n for n in names if not n.endswith(f"-{other}")]
        if "reference-compiled" in names and (shape[0] not in compiled_T or dtype != torch.float32):
            names.remove("reference-compiled")  # one Inductor compile per shape: T-unrolled, ~20–60 s each
        t0 = time.perf_counter()
        # Dry run: torch.compile traces with the 'eager' backend (the plumbing, not ~60 s of Inductor on 2 cores).
        rows += bl.bench_case(DEVICE, shape, dtype, names, rounds=2 if DRY else 3,
                              compile_backend="eager" if DRY else "inductor")
        print(f"{shape} {dtype}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(common.markdown_table(rows))
    _save_bench_rows(args.work, args.stage, rows)
    return 0


# --------------------------------------------------------------------------------------------------
# Stage 5: Tempotron W3


def stage_tempotron(args):
    from benchmarks import test_bench_tempotron as bt

    if DRY:
        rows = bt.run("cpu", B=2, I=64, providers_=["cpu", "triton", "reference"])
    else:
        rows = bt.run("cuda")
    bt.print_table(rows)
    for r in rows:
        r["device_name"] = bt.common.device_name(r["device"])
    _save_bench_rows(args.work, args.stage, rows)
    return 0


# --------------------------------------------------------------------------------------------------
# Stage 5a: W5 widened, a training step of SpikingJelly zoo models, original vs converted


def stage_models(args):
    """benchmarks/test_bench_models.py on the GPU: spiking ResNet-18 and SEW-ResNet-18 at T 4, batch
    32, 224², and SpikingJelly's CIFAR-10 Spikformer; 2 interleaved rounds. Dry run: the CPU's 1-block
    Spikformer only."""
    try:
        from benchmarks import test_bench_models as bm
    except BaseException as e:  # noqa: BLE001 - pytest.importorskip raises Skipped when SpikingJelly is absent
        print(f"models: skipped: {type(e).__name__}: {e}"[:300])
        return 0
    rows = []
    for name in (["spikformer"] if DRY else list(bm.MODELS)):
        t0 = time.perf_counter()
        try:
            r = bm.bench_model(name, DEVICE, rounds=2)
        except torch.cuda.OutOfMemoryError as e:  # a row missing beats a stage lost
            print(f"{name}: out of memory: {e}"[:300])
            r = None
        if r is None:  # outside the except: its traceback no longer holds the model's frames
            torch.cuda.empty_cache()
            continue
        bm.print_rows(r)
        rows += r
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    _save_bench_rows(args.work, args.stage, rows)
    return 0


# --------------------------------------------------------------------------------------------------
# Opt-in: fused batch norm + LIF (docs/spec.md §12)


def stage_bn_lif(args):
    """tests/test_bn_lif.py's GPU rows against the reference (every row of the C++ binding and of
    Triton: the first GPU run had the binding's, this version's Triton statistics and channel kernels
    have not run on a GPU), then
    benchmarks/test_bench_bn_lif.py: each fused backend vs batch norm + snn_fast LIF vs batch norm +
    SpikingJelly LIF at [4, 32, 64, 56, 56] and [4, 32, 512, 7, 7], the Triton backward's variants, and
    the LIF op's uniform start against a start per neuron (benchmarks/uniform_start.py). Dry run: the
    CPU kernel's edge rows and a tiny shape."""
    from snn_fast import _ext

    if not DRY and not _ext.has_kernel("bn_lif_fwd", "CUDA"):
        print("bn-lif: this build of snn_fast._C has no CUDA bn_lif kernel (the build stage must run first: "
              "--only env,build,bn-lif)")
        return 1
    sel = "cpu and edge" if DRY else "cuda"  # every row whose id names a CUDA backend
    t0 = time.perf_counter()
    # -rs: the skip reasons in the log; a skipped CUDA row (a probe that says no) fails the stage below
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           os.path.join(ROOT, "tests", "test_bn_lif.py"), "-k", sel], cwd=ROOT, capture_output=True,
                          text=True)
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n")
    rc = proc.returncode
    skipped_cuda = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED") and "cuda" in ln]
    if not DRY and (rc == 5 or skipped_cuda):
        print(f"bn-lif: no CUDA row ran ({len(skipped_cuda)} skip lines): failed", flush=True)
        rc = 1
    print(f"bn_lif tests ({sel}): rc {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
    from benchmarks import test_bench_bn_lif as bb

    rows = bb.run([(2, 2, 4, 6, 6)] if DRY else bb.SHAPES, DEVICE, rounds=1 if DRY else 2)
    bb.print_table(rows)
    for r in rows:
        r["device_name"] = bb.common.device_name(DEVICE)
    lab = _bn_lif_triton_variants()
    _save_bench_rows(args.work, args.stage, rows + lab)
    # The LIF op's v0=None ([1] to the kernels) against the same start per neuron, CUDA and Triton, in
    # the log (benchmarks/uniform_start.py; measured on the CPU only so far)
    from benchmarks import uniform_start

    try:  # after the rows are saved: a failure here is reported, not the stage's end
        uniform_start.main(DEVICE, [((2, 2, 4, 6, 6), 2)] if DRY else uniform_start.SHAPES)
    except Exception as e:  # noqa: BLE001
        print(f"uniform_start: {type(e).__name__}: {e}".splitlines()[0][:300], flush=True)
        rc = rc if rc not in (0, 5) else 1
    return 1 if rc not in (0, 5) or any(r["note"] for r in lab) else 0


# The Triton bn_lif backward's segment length and warps (one neuron per thread), chosen from register
# counts without a GPU (snn_fast/ops/bn_lif/triton.py): the default first, then the alternatives.
BN_LIF_VARIANTS = (("seg4-w4", dict(seg=4, warps=4)), ("seg8-w4", dict(seg=8, warps=4)),
                   ("seg4-w8", dict(seg=4, warps=8)), ("seg2-w4", dict(seg=2, warps=4)),
                   ("seg8-w8", dict(seg=8, warps=8)))


def _bn_lif_triton_variants(budget_s: float = 90.0):
    """Each BN_LIF_VARIANTS entry on the fused Triton op, fp32 training fwd+bwd, at T = 4 and 16 of
    [T, 32, 64, 56, 56] (dry run: [9, 2, 4, 3, 3] under the interpreter): spikes and grad_x compared
    with the default first (a variant that disagrees is reported, not timed), then timed side by side.
    Rows: op 'bn_lif-lab', provider 'triton:<variant>', speedup = the default's time / this one's. A
    shape is not started once ``budget_s`` is spent (each variant compiles its kernels: the stage
    shares a device call with the build)."""
    from benchmarks import common

    import snn_fast
    from snn_fast.ops.bn_lif import function as bf

    bf.BACKENDS.load("triton")
    from snn_fast.ops.bn_lif import triton as bt

    rows = []
    t_start = time.perf_counter()
    for shape in [(9, 2, 4, 3, 3)] if DRY else [(4, 32, 64, 56, 56), (16, 32, 64, 56, 56)]:
        if time.perf_counter() - t_start > budget_s:
            print(f"bn_lif variants {list(shape)}: skipped, the {budget_s:.0f} s budget is spent", flush=True)
            continue
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(shape, device=DEVICE, generator=g).requires_grad_(True)
        gs = torch.randn(shape, device=DEVICE, generator=g)
        C = shape[2]
        w, b = torch.ones(C, device=DEVICE, requires_grad=True), torch.zeros(C, device=DEVICE, requires_grad=True)
        fns, notes, base = {}, {}, None
        for name, kw in BN_LIF_VARIANTS:
            def step(kw=kw):
                with bt.lab_variant(**kw):
                    x.grad = None
                    s, _ = snn_fast.bn_lif(x, w, b, None, None, True, backend="triton")
                    s.backward(gs)
                return s

            try:
                got = (step().detach(), x.grad.detach().clone())
                _sync()
            except Exception as e:  # noqa: BLE001 - a variant that fails is a row of its own
                notes[name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                continue
            if base is None:
                base = got
            elif not torch.equal(got[0], base[0]):
                notes[name] = "spikes differ from the default"
            elif not torch.allclose(got[1], base[1], rtol=1e-5, atol=1e-5):
                notes[name] = "grad_x differs from the default"
            if name not in notes:
                fns[name] = step
        tm = common.time_fns(fns, DEVICE, rounds=1 if DRY else 2, min_run_time=0.01 if DRY else 0.5)
        ref = tm.get(BN_LIF_VARIANTS[0][0], (None,))[0]
        for name, kw in BN_LIF_VARIANTS:
            med = tm.get(name, (None, None, None))
            rows.append(common.record(
                op="bn_lif-lab", provider=f"triton:{name}", mode="fwd+bwd", shape="x".join(map(str, shape)),
                dtype="float32", device=DEVICE, device_name=common.device_name(DEVICE),
                threads=torch.get_num_threads(), median_ms=med[0], q20_ms=med[1], q80_ms=med[2],
                bytes=9 * x.numel() * x.element_size(), variant=name, knobs=json.dumps(kw, sort_keys=True),
                note=notes.get(name, ""), speedup=(ref / med[0]) if (ref and med[0]) else None))
    print(common.markdown_table(rows))
    for r in rows:
        if r["note"]:
            print(f"{r['provider']} {r['shape']}: {r['note']}")
    return rows


def stage_swap_in(args):
    """benchmarks/swap_in.py on the GPU: W2 written the snnTorch way (snnTorch's Leaky called per step)
    against snn_fast.convert of it, per-step and multistep, fwd and fwd+bwd, n 512 and 4096, T 500.
    Skips without snnTorch (carry its wheel: scripts/gpu_prepare.sh). Dry run: n 32, T 20 on the CPU."""
    try:
        import snntorch  # noqa: F401
    except ImportError as e:
        print(f"swap-in: skipped: snnTorch is not installed ({e})")
        return 0
    rc = 0
    for n, T, rounds in ([(32, 20, 1)] if DRY else [(512, 500, 3), (4096, 500, 3)]):
        rc |= subprocess.call([sys.executable, os.path.join(ROOT, "benchmarks", "swap_in.py"), "--n", str(n), "--T",
                               str(T), "--rounds", str(rounds), "--device", DEVICE], cwd=ROOT)
    return rc


# --------------------------------------------------------------------------------------------------
# --full: W2, the Open Neuromorphic benchmark (Linear(n, n) + LIF, batch 16, T = 500)


def stage_w2(args):
    """benchmarks/test_bench_on.py at the GPU sizes (n 4096, 8192, 16384), 2 rounds; peers that are not
    installed (snnTorch, Norse: not among the carried wheels) are left out by the benchmark itself.
    Dry run: n = 64, one round."""
    from benchmarks import test_bench_on as bo

    rows = bo.run(DEVICE, [64] if DRY else None, rounds=1 if DRY else 2)
    _save_bench_rows(args.work, args.stage, rows)
    return 0


# --------------------------------------------------------------------------------------------------
# Stage 5b: host overhead of one LIF forward+backward


def stage_overhead(args):
    """Where a small LIF fwd+bwd spends its time on the host. The first GPU check (H200, 2026-11-30)
    found Triton's fwd+bwd at 0.62–0.78 ms for any T at N = 65536 (CUDA: 0.10–0.18 ms) and its
    forward alone at ≤ 0.09 ms: ~0.5 ms of host work in the backward. Per backend: the GPU-timed
    fwd+bwd, the host's enqueue time per fwd+bwd (no sync inside the loop), the same for the raw
    backward op alone, then cProfile's top functions and torch.profiler's CPU table over a few calls,
    into this stage's log (logs.tar.gz)."""
    import cProfile
    import io
    import pstats

    import snn_fast
    from benchmarks import common
    from snn_fast import surrogate as _sg
    from snn_fast.ops.lif import contract as lif_contract
    from snn_fast.ops.lif.function import BACKENDS

    T, N = (4, 256) if DRY else (4, 65536)
    backends_ = ["cpu", "triton"] if DRY else ["cuda", "triton"]
    reps = 5 if DRY else 200

    def host_ms(fn):
        """Milliseconds of host time per call of fn (no sync inside the loop; one after it)."""
        fn()
        _sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        ms = (time.perf_counter() - t0) / reps * 1e3
        _sync()
        return ms

    def infer(x, b, save):
        with torch.no_grad():  # the forward alone (inference op: no saved state)
            snn_fast.lif_multistep(x, backend=b, save=save)
    for b in backends_:
        for save in ("state", "recompute"):
            x = torch.randn(T, N, device=DEVICE).requires_grad_()
            g = torch.randn(T, N, device=DEVICE)

            def step():
                s, _ = snn_fast.lif_multistep(x, backend=b, save=save)
                s.backward(g)

            try:
                for _ in range(3):  # compile, autotune
                    step()
            except Exception as e:  # noqa: BLE001 - a missing backend is reported by its own stage
                print(f"{b} save={save}: skipped: {type(e).__name__}: {e}"[:300])
                continue
            _sync()
            gpu_ms = common.time_fns({"f": step}, DEVICE, rounds=1)["f"][0]
            print(f"{b} save={save} [{T}, {N}] fp32: fwd+bwd {gpu_ms:.3f} ms timed, host {host_ms(step):.3f} ms per "
                  f"fwd+bwd, {host_ms(lambda: infer(x, b, save)):.3f} ms per inference forward", flush=True)
            if b == "triton":  # the launch path: the kernels called directly (default) vs through wrap_triton
                from snn_fast.ops.lif import triton as lt

                with lt.lab_variant(eager_wrap=True):
                    step()
                    print(f"{b} save={save}: with wrap_triton in eager mode, host {host_ms(step):.3f} ms per "
                          f"fwd+bwd, fwd+bwd {common.time_fns({'f': step}, DEVICE, rounds=1)['f'][0]:.3f} ms timed",
                          flush=True)
            # The raw backward op, called here: on a GPU autograd runs a backward in its own device
            # thread, which cProfile (this thread only) would not see.
            entry = BACKENDS.load(b)
            code = lif_contract.SAVE[save]
            sid = _sg.get("sigmoid").id
            flags = (sid, True, 0.0, True, False, 0.0, False, 0)  # contract.FLAG_ARGS
            xd, v0 = x.detach(), torch.zeros(N, device=DEVICE)
            params = torch.tensor([0.5, 1.0, 4.0], device=DEVICE)
            s_, _, _, saved = entry.fwd(xd, v0, params, None, *flags, False, code)

            # below the autograd key, as lif_apply's autograd calls them (function.py)
            def bwd_op():
                with torch._C._AutoDispatchBelowAutograd():
                    return entry.bwd(g, None, None, xd, v0, params, None, saved, s_, None, None, *flags, code, False)

            def fwd_op():
                with torch._C._AutoDispatchBelowAutograd():
                    return entry.fwd(xd, v0, params, None, *flags, False, code)

            print(f"{b} save={save}: host per raw op call, forward {host_ms(fwd_op):.3f} ms ({entry.entry.fwd}), "
                  f"backward {host_ms(bwd_op):.3f} ms ({entry.entry.bwd})", flush=True)
            if save != "state":
                continue
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(20):
                bwd_op()
            _sync()
            prof.disable()
            out = io.StringIO()
            st = pstats.Stats(prof, stream=out).sort_stats("tottime")
            st.print_stats(25)
            st.sort_stats("cumulative").print_stats(25)
            print(f"--- cProfile, 20 raw backward ops, {b} ---\n{out.getvalue()}")
            acts = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
            with torch.profiler.profile(activities=acts) as p:
                for _ in range(10):
                    step()
                _sync()
            print(f"--- torch.profiler, 10 fwd+bwd, {b} ---")
            print(p.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    _overhead_bn_lif(host_ms, reps)
    return 0


def stage_cuda_graphs(args):
    """A small host-bound training step (Linear → LIF → Linear → LIF, x [4, 32, 256]) eager against
    the same step captured in a CUDA graph and replayed, GPU-timed, per backend; then the GPU rows of
    tests/test_cuda_graphs.py (capture and replay against eager steps, reduce-overhead compile). Dry
    run: the file's simulated-capture rows only. A failure there fails the stage, after the timings."""
    from benchmarks import common
    from snn_fast import nn as snn

    for b in ([] if DRY else ["cuda", "triton"]):
        try:
            torch.manual_seed(0)
            model = torch.nn.Sequential(snn.MultiStep(torch.nn.Linear(256, 256)), snn.LIF(backend=b),
                                        snn.MultiStep(torch.nn.Linear(256, 256)), snn.LIF(backend=b)).to(DEVICE)
            x = torch.randn(4, 32, 256, device=DEVICE)
            g = torch.randn(4, 32, 256, device=DEVICE)

            def step():
                snn.reset_net(model)
                model(x).backward(g)

            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            t = common.time_fns({"eager": step, "graph": graph.replay}, DEVICE, rounds=3)
            print(f"cuda graph, {b}: training step eager {t['eager'][0]:.3f} ms ({t['eager'][1]:.3f}-"
                  f"{t['eager'][2]:.3f}), replayed {t['graph'][0]:.3f} ms ({t['graph'][1]:.3f}-{t['graph'][2]:.3f}): "
                  f"{t['eager'][0] / t['graph'][0]:.2f}x (do_bench: its L2 flush before a call hides host time)",
                  flush=True)
            # steps back to back, one sync at the end: what a training loop sees (host-bound or not)
            wall = {k: [] for k in ("eager", "graph")}
            for _ in range(3):
                for k, fn in (("eager", step), ("graph", graph.replay)):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(200):
                        fn()
                    torch.cuda.synchronize()
                    wall[k].append((time.perf_counter() - t0) / 200 * 1e3)
            per = {k: ", ".join(f"{v:.3f}" for v in vs) for k, vs in wall.items()}
            print(f"cuda graph, {b}: 200 steps back to back, ms per step in 3 rounds: eager {per['eager']}; "
                  f"replayed {per['graph']}", flush=True)
        except Exception as e:  # noqa: BLE001 - the tests below say what broke
            print(f"cuda graph, {b}: {type(e).__name__}: {e}".splitlines()[0][:300], flush=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           os.path.join(ROOT, "tests", "test_cuda_graphs.py")],
                          cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n")
    print(f"tests/test_cuda_graphs.py: rc {proc.returncode}", flush=True)
    return 0 if proc.returncode == 0 else 1


def _overhead_bn_lif(host_ms, reps):
    """The fused batch norm + LIF (docs/spec.md §12) at a host-bound size: GPU-timed and host time per
    training fwd+bwd for each fused backend, batch norm + snn_fast LIF and the fused op's pieces (the
    statistics, the raw ops), then torch.profiler's table for the C++ op. The first GPU run (H100,
    2026-12-06) found every fused row at ~1 ms whatever the size: host work, not bandwidth."""
    import torch.nn.functional as F

    import snn_fast
    from benchmarks import common

    shape = (2, 2, 4, 3, 3) if DRY else (4, 8, 64, 8, 8)
    C = shape[2]
    x = torch.randn(shape, device=DEVICE).requires_grad_()
    w = (torch.rand(C, device=DEVICE) + 0.5).requires_grad_()
    b = torch.randn(C, device=DEVICE).requires_grad_()
    rm, rv = torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE)
    g = torch.randn(shape, device=DEVICE)

    def fused(be):
        def step():
            x.grad = w.grad = b.grad = None
            snn_fast.bn_lif(x, w, b, rm, rv, True, 0.1, 1e-5, backend=be)[0].backward(g)
        return step

    def pair():
        x.grad = w.grad = b.grad = None
        y = F.batch_norm(x.flatten(0, 1), rm, rv, w, b, True, 0.1, 1e-5).view(shape)
        snn_fast.lif_multistep(y, backend="cpu" if DRY else "auto")[0].backward(g)

    steps = {f"bn_lif-{be}": fused(be) for be in (["cpu"] if DRY else ["cuda", "triton"])}
    steps["bn+snn_fast-lif"] = pair
    for name, step in steps.items():
        try:
            for _ in range(3):
                step()
        except Exception as e:  # noqa: BLE001 - a missing backend is reported by the bn-lif stage
            print(f"bn_lif overhead {name}: skipped: {type(e).__name__}: {e}"[:300])
            continue
        _sync()
        gpu_ms = common.time_fns({"f": step}, DEVICE, rounds=1)["f"][0]
        print(f"bn_lif overhead {name} {list(shape)} fp32 training: fwd+bwd {gpu_ms:.3f} ms timed, host "
              f"{host_ms(step):.3f} ms per fwd+bwd", flush=True)
    import cProfile
    import io
    import pstats

    for name in [n for n in steps if n.startswith("bn_lif-")]:  # the Python side of each fused backend
        prof = cProfile.Profile()
        # the backward in this thread (on a GPU autograd runs it in a device thread cProfile does not see)
        with torch.autograd.set_multithreading_enabled(False):
            prof.enable()
            for _ in range(20):
                steps[name]()
            _sync()
            prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        print(f"--- cProfile, 20 fwd+bwd, {name} ---\n{out.getvalue()}")
    x2, inner = x.detach().reshape(shape[0], -1), shape[3] * shape[4]
    print(f"bn_lif overhead: host {host_ms(lambda: torch.ops.snn_fast.bn_lif_stats(x2, C, inner, 1e-5)):.3f} ms "
          f"per bn_lif_stats (the C++ op)", flush=True)
    if not DRY:  # the Triton backend's statistics (two launches): loaded by its fused row above
        stats_t = getattr(torch.ops.snn_fast, "bn_lif_stats_triton", None)
        if stats_t is not None:
            print(f"bn_lif overhead: host {host_ms(lambda: stats_t(x2, C, inner, 1e-5)):.3f} ms per "
                  f"bn_lif_stats_triton", flush=True)
    first = next(iter(steps))
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch.profiler.profile(activities=acts) as p:
        for _ in range(10):
            steps[first]()
        _sync()
    print(f"--- torch.profiler, 10 fwd+bwd, {first} ---")
    print(p.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))
    # the benchmark's larger shape: where the device time goes per kernel (the first run's ~1 ms)
    big = (2, 2, 4, 5, 5) if DRY else (4, 32, 64, 56, 56)
    x = torch.randn(big, device=DEVICE).requires_grad_()
    g = torch.randn(big, device=DEVICE)
    shape = big
    steps[first]()
    _sync()
    with torch.profiler.profile(activities=acts) as p:
        for _ in range(5):
            steps[first]()
        _sync()
    print(f"--- torch.profiler, 5 fwd+bwd at {list(big)}, {first}, by device time ---")
    print(p.key_averages().table(sort_by="cuda_time_total" if DEVICE == "cuda" else "cpu_time_total", row_limit=20,
                                 max_name_column_width=60))


# --------------------------------------------------------------------------------------------------
# Stage 6: a few launches of every kernel, for compute-sanitizer


def stage_tiny(args):
    """Small LIF (cuda and triton, fp32 and bf16, with parameter gradients and a mask) and Tempotron
    calls: each kernel launched a few times, every output read back."""
    import snn_fast
    from snn_fast.ops.tempotron import tempotron

    backends_ = [b for b in args.backends.split(",") if b]
    if DRY:
        backends_ = ["cpu" if b == "cuda" else b for b in backends_]
    for b in backends_:
        # both save= modes; T = 19: two whole 8-step recompute segments and a partial one
        for dtype, save in ((d, m) for d in (torch.float32, torch.bfloat16) for m in ("state", "recompute")):
            x = torch.randn(19, 3, 37, device=DEVICE, dtype=dtype).requires_grad_()
            tau = torch.tensor(2.0, device=DEVICE, requires_grad=True)
            mask = torch.rand(x.shape, device=DEVICE) > 0.2
            s, v = snn_fast.lif_multistep(x, tau=tau, noise_mask=mask, backend=b, save=save)
            (s.float().sum() + v.float().sum()).backward()
            with torch.no_grad():
                snn_fast.lif_multistep(x, backend=b)
            _sync()
            print(f"lif {b} {dtype} {save}: s {s.float().mean().item():.3f} "
                  f"grad_x {x.grad.float().abs().sum().item():.3f} grad_tau {tau.grad.item():.4f}")
        for dtype, save in ((torch.float32, "state"), (torch.bfloat16, "recompute")):  # bn_lif: BN + LIF fused
            x = torch.randn(5, 3, 4, 7, 7, device=DEVICE, dtype=dtype).requires_grad_()
            wb = torch.rand(4, device=DEVICE, requires_grad=True)
            th = torch.tensor(0.8, device=DEVICE, requires_grad=True)
            rm, rv = torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
            s, v = snn_fast.bn_lif(x, wb, None, rm, rv, True, v_threshold=th, tdbn_alpha=0.7, backend=b, save=save,
                                   fire_at_threshold=False)
            (s.float().sum() + v.float().sum()).backward()
            _sync()
            print(f"bn_lif {b} {dtype} {save}: s {s.float().mean().item():.3f} "
                  f"grad_x {x.grad.float().abs().sum().item():.3f} grad_th {th.grad.item():.4f}")
        t = torch.randint(-1, 20, (3, 50), device=DEVICE).float()
        w = torch.randn(4, 50, device=DEVICE, requires_grad=True)
        v_max = tempotron(t, w, 20, ret_type="v_max", backend=b)
        v_max.sum().backward()
        _sync()
        print(f"tempotron {b}: v_max {v_max.sum().item():.4f} grad {w.grad.abs().sum().item():.4f}")
    return 0


# --------------------------------------------------------------------------------------------------
# Stage 7 (--full only): DDP, FSDP2 and torch.compile on the GPU


def stage_ddp(args):
    """The distributed tests (tests/test_distributed.py) on the GPU, with the model, data and training
    loop of tests/distributed_worker.py (Conv → LIF with learnable τ/θ/α → Linear → PLIF, float64,
    3 SGD steps):

    1. two ranks on the one GPU over gloo (NCCL does not allow two ranks on one device): DDP with each fused
       GPU backend and the reference ends with the parameters of one process on the global batch;
    2. one rank over NCCL: DDP, FSDP2 and torch.compile (Inductor) of the DDP model with backend
       'auto', each against one process; the compiled run adds no graph break to DDP's own.

    Dry run: gloo on the CPU throughout, 'cpu' standing in for 'cuda', Triton interpreted, aot_eager
    for Inductor."""
    import tempfile

    import distributed_worker as dw
    from conftest import assert_close

    from snn_fast.ops.lif.function import BACKENDS

    probe = torch.zeros(1, device=DEVICE)
    fused = ["cpu" if DRY else "cuda", "triton"]
    path = os.path.join(args.work, "correctness.csv")
    single_cache = {}
    failed = 0

    def single(backend):
        """One process on the global batch: what every distributed run must reproduce."""
        if backend not in single_cache:
            x, y = dw.make_data(DEVICE)
            single_cache[backend] = dw.full_params(dw.train(dw.build_model(backend, DEVICE), x, y))
        return single_cache[backend]

    def record(backend, case, why, secs, skipped=False):
        nonlocal failed
        failed += why is not None and not skipped
        tag = "skip" if skipped else "ok  " if why is None else "FAIL"
        print(f"{tag} {backend:9s} {case:36s} {secs:6.1f} s  {why or ''}", flush=True)
        _append_csv(path, dict(stage=args.stage, backend=backend, case=case, dtype="float64", T=dw.T, N=dw.B,
                               ok=why is None, detail=why or "", seconds=f"{secs:.1f}"), CORRECT_FIELDS)

    def compare(got, backend, what):
        """None when ``got`` equals one process on the global batch (with this backend and the reference)."""
        base = BACKENDS.select(backend, probe)  # 'auto' → the backend it picks
        try:
            for b in dict.fromkeys((base, "reference")):
                want = single(b)
                assert got.keys() == want.keys(), (sorted(got), sorted(want))
                for name in want:
                    assert_close(got[name].reshape(want[name].shape), want[name], name=f"{what} {name} vs {b}")
        except AssertionError as e:
            return str(e).strip().splitlines()[0][:300]
        return None

    def ranks_agree(mode, per_rank):
        """DDP: the same all-reduced gradients and optimizer on every rank, so the same parameters."""
        p0 = per_rank[0][0]
        bad = [n for params, _ in per_rank[1:] for n in p0 if not torch.equal(params[n], p0[n])]
        return f"ranks differ in {bad}" if bad else None

    def compiled_ok(mode, per_rank):
        """The compiled run: no graph break beyond DDP's own, each neuron layer's op captured once."""
        if not mode.startswith("ddp_"):
            return None
        for _, meta in per_rank:
            extra = sorted(set(meta["graph_breaks"]) - set(meta["plain_graph_breaks"]))
            if meta["graph_breaks"] != meta["plain_graph_breaks"]:
                return f"graph breaks beyond DDP's own: {extra}"[:300]
            ops = meta["snn_fast_ops"]
            if len(ops) != 2 or not all(o.startswith("snn_fast.lif_fwd") for o in ops):
                return f"expected each neuron layer's op once in the graphs, got {ops}"
        return None

    def run(case, modes, world, pg, check):
        # On the GPU one launch per mode (~5 s of start-up each), so that a mode that fails does not
        # hide the ones after it; the dry run shares one launch (its cost is CI's).
        for group in [modes] if DRY else [[m] for m in modes]:
            launch_group(case, group, world, pg, check)

    def launch_group(case, modes, world, pg, check):
        t0 = time.perf_counter()
        try:
            runs, secs = dw.launch(tempfile.mkdtemp(dir=args.work), modes, world, pg=pg, device=DEVICE,
                                   timeout=200, collective_timeout=120)
        except Exception as e:  # noqa: BLE001 - a failed launch fails its cases, the stage goes on
            lines = f"{type(e).__name__}: {e}".strip().splitlines()
            print("\n".join(lines[-60:]))
            for m in modes:
                record(m.split("-", 1)[1], f"{case} {m}", lines[-1][:300], time.perf_counter() - t0)
            return
        for m in modes:
            per_rank = [runs[(m, r)] for r in range(world)]
            why = check(m, per_rank)
            for r in range(world):
                why = why or compare(per_rank[r][0], m.split("-", 1)[1], f"{m} rank {r}")
            record(m.split("-", 1)[1], f"{case} {m}", why, secs)

    avail = []
    for b in fused:
        why = BACKENDS.unavailable(b, probe)
        if why is None:
            avail.append(b)
        else:  # the build stage already reports a missing extension
            record(b, f"gloo 2 ranks ddp-{b}", f"skipped: {why}"[:300], 0.0, skipped=True)
    run("gloo 2 ranks", [f"ddp-{b}" for b in avail + ["reference"]], 2, "gloo", ranks_agree)
    # Inductor on the CPU (dry run) takes ~80 s on 2 cores: aot_eager traces the same ops.
    compile_mode = "ddp_compile-auto" if DRY else "ddp_inductor-auto"
    run("gloo 1 rank" if DRY else "nccl 1 rank", ["ddp-auto", "fsdp-auto", compile_mode], 1,
        "gloo" if DRY else "nccl", compiled_ok)
    print(f"ddp: {failed} failed")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# Stage 8: the lab, named variants of the Triton LIF kernels side by side on W1


# (name, save mode, snn_fast.ops.lif.triton.lab_variant arguments). The first of each save mode is the
# default of that mode: every row's `speedup` is its time over this one's, same shape, same call.
# (BLOCK, num_warps) → BLOCK / (32·num_warps) neurons per thread; chunk: the recompute segment length.
LAB_VARIANTS = [
    ("default", "state", {}),
    ("wrap_triton", "state", dict(eager_wrap=True)),  # the launch path: wrap_triton in eager mode
    ("npt1-w8", "state", dict(fwd=(256, 8), bwd=(256, 8))),
    ("npt2-w4", "state", dict(fwd=(256, 4), bwd=(256, 4))),
    ("npt4-w4", "state", dict(fwd=(512, 4), bwd=(512, 4))),
    ("npt4-w8", "state", dict(fwd=(1024, 8), bwd=(1024, 8))),
    ("npt8-w4", "state", dict(fwd=(1024, 4), bwd=(1024, 4))),
    ("npt4-w2", "state", dict(fwd=(256, 2), bwd=(256, 2))),
    ("npt8-w8", "state", dict(fwd=(2048, 8), bwd=(2048, 8))),  # 8 per thread: 16-byte bf16 vectors
    # kernel knobs (triton_kernels.py): evict-first loads and streaming stores; the backward's time loop
    # software-pipelined (cp.async through shared memory, AOT sm_90 at N % 16 == 0)
    ("stream", "state", dict(knobs=dict(fwd=dict(STREAM=True), bwd=dict(STREAM=True)))),
    ("bwd-stages2", "state", dict(knobs=dict(bwd=dict(STAGES=2)))),
    ("bwd-stages3", "state", dict(knobs=dict(bwd=dict(STAGES=3)))),
    ("bwd-npt8", "state", dict(bwd=(1024, 4))),  # the backward at 8 per thread (16-byte bf16 vectors)
    ("prefetch2", "state", dict(knobs=dict(fwd=dict(PREFETCH2=True), bwd=dict(PREFETCH2=True)))),  # 2 steps ahead
    ("rc-default", "recompute", {}),
    ("rc-chunk4", "recompute", dict(chunk=4)),
    ("rc-chunk16", "recompute", dict(chunk=16)),
    ("rc-npt1-w2", "recompute", dict(fwd=(512, 4), bwd_rc=(64, 2))),
    ("rc-npt2-w4", "recompute", dict(fwd=(512, 4), bwd_rc=(256, 4))),
]


def stage_lab(args):
    """Each variant of LAB_VARIANTS on W1 ([T, 64, 65536]; T from --T, fp32 and bf16), fwd+bwd, CUDA-event
    timed (benchmarks/common.py time_fns: do_bench medians, variants interleaved round by round). A
    variant's spikes and grad_x are first compared with its mode's default (a variant that disagrees is
    reported, not timed). Rows: op 'lif-lab', provider 'triton:<variant>', bytes = the 5-pass floor (so
    % copy BW is the share of the floor), speedup = the mode default's time / this one's. Stops adding
    shapes when --budget seconds are spent. Dry run: [9, 2, 128], the interpreter."""
    from benchmarks import common

    import snn_fast
    from snn_fast.ops.lif.function import BACKENDS

    BACKENDS.load("triton")
    from snn_fast.ops.lif import triton as lt

    want = [v for v in LAB_VARIANTS if not args.variants or v[0] in args.variants.split(",")]
    Ts = [9] if DRY else [int(t) for t in args.T.split(",")]  # dry: T = 9 crosses the 4- and 8-step segments
    # T outer, in --T's order (the budget cuts the last): both dtypes of the first T come first
    shapes = [((T, 2, 128) if DRY else (T, 64, 65536), dt) for T in Ts for dt in (torch.float32, torch.bfloat16)]
    env_path = os.path.join(args.work, "env.json")
    copy = json.load(open(env_path)).get("copy_gbps") if os.path.exists(env_path) else None
    t_start = time.perf_counter()
    rows = []
    for shape, dtype in shapes:
        if time.perf_counter() - t_start > args.budget:
            print(f"{shape} {dtype}: skipped, the {args.budget:.0f} s budget is spent", flush=True)
            continue
        t0 = time.perf_counter()
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(shape, device=DEVICE, dtype=dtype, generator=g) * 2
        gs = torch.randn(shape, device=DEVICE, dtype=dtype, generator=g)
        xg = x.clone().requires_grad_(True)
        fns, notes, base = {}, {}, {}
        for name, save, kw in want:
            def step(save=save, kw=kw):
                with lt.lab_variant(**kw):
                    xg.grad = None
                    s, _ = snn_fast.lif_multistep(xg, backend="triton", save=save)
                    s.backward(gs)
                return s

            try:
                s = step()
                _sync()
                got = (s.detach(), xg.grad.detach().clone())
            except Exception as e:  # noqa: BLE001 - a variant that fails is a row of its own
                notes[name] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                continue
            if save not in base:
                base[save] = (name, got)
            else:
                ref = base[save][1]
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                if not torch.equal(got[0], ref[0]):
                    notes[name] = f"spikes differ from {base[save][0]}"
                elif not torch.allclose(got[1].float(), ref[1].float(), rtol=tol, atol=tol):
                    notes[name] = f"grad_x differs from {base[save][0]}"
            if name not in notes:
                fns[name] = step
        tm = common.time_fns(fns, DEVICE, rounds=1 if DRY else 2, min_run_time=0.01 if DRY else 0.5)
        n_elem = x.numel()
        for name, save, kw in want:
            if name not in tm and name not in notes:
                continue
            ref = tm.get(base.get(save, (None,))[0], (None,))[0]
            med = tm[name] if name in tm else (None, None, None)
            rows.append(common.record(
                op="lif-lab", provider=f"triton:{name}", mode="fwd+bwd", shape="x".join(map(str, shape)),
                dtype=str(dtype).replace("torch.", ""), device=DEVICE, device_name=common.device_name(DEVICE),
                threads=torch.get_num_threads(), median_ms=med[0], q20_ms=med[1], q80_ms=med[2],
                bytes=5 * n_elem * x.element_size(), copy_gbps=copy, save=save, variant=name,
                knobs=json.dumps(kw, sort_keys=True), note=notes.get(name, ""),
                speedup=(ref / med[0]) if (ref and med[0]) else None))
        print(f"{shape} {dtype}: {len(fns)} variants timed, {len(notes)} not, {time.perf_counter() - t0:.1f} s",
              flush=True)
    print(common.markdown_table(rows))
    for r in rows:
        if r["note"]:
            print(f"{r['provider']} {r['shape']} {r['dtype']}: {r['note']}")
    _save_bench_rows(args.work, args.stage, rows)
    bad = [r for r in rows if r["note"]]
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["env", "lif", "w1", "tempotron", "models", "w2", "overhead", "tiny", "ddp",
                                      "lab", "bn_lif", "swap_in", "cuda_graphs"])
    ap.add_argument("--work", default=".")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--stage-name", dest="stage_name", default=None, help="label in the output files")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--backends", default="cuda,triton")
    ap.add_argument("--providers", default="snn_fast-triton,spikingjelly,reference-compiled")
    ap.add_argument("--T", default="4,8,16,32,64")
    ap.add_argument("--compiled-T", dest="compiled_T", default="4,16")
    ap.add_argument("--other-save-T", dest="other_save_T", default="8,64",
                    help="T of our rows in the save mode that is not the default")
    ap.add_argument("--variants", default="", help="lab: comma-separated variant names (default: all)")
    ap.add_argument("--budget", type=float, default=90.0, help="lab: seconds after which no new shape starts")
    args = ap.parse_args(argv)
    args.stage = args.stage_name or args.stage
    os.makedirs(args.work, exist_ok=True)
    fn = dict(env=stage_env, lif=stage_lif, w1=stage_w1, tempotron=stage_tempotron, models=stage_models,
              w2=stage_w2, overhead=stage_overhead, tiny=stage_tiny, ddp=stage_ddp, lab=stage_lab,
              bn_lif=stage_bn_lif, swap_in=stage_swap_in, cuda_graphs=stage_cuda_graphs)[
        ap.parse_args(argv).stage]
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
