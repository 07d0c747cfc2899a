"""One rank of the distributed tests (tests/test_distributed.py, and the GPU check's ``ddp`` stage),
the model, data and training loop that the single-process run shares with it, and ``launch``, which
starts the ranks.

    python tests/distributed_worker.py --rank R --world 2 --init file:///tmp/x/store --out DIR --modes a,b \
        [--pg gloo|nccl] [--device cpu|cuda]

Each mode trains the same small SNN for ``STEPS`` steps and saves its parameters (full tensors, on
every rank) to ``DIR/<mode>-rank<R>.pt``. Modes: ``ddp-<backend>`` (DistributedDataParallel),
``ddp_chunks-<backend>`` (DDP, the sequence fed one step per forward call
before one backward, as single-step code does), ``fsdp-<backend>`` (FSDP2 ``fully_shard``),
``local-<backend>`` (each rank on its half alone, no synchronisation: the negative control),
``ddp_compile-<backend>`` (``torch.compile`` of the DDP model, backend ``aot_eager``: the custom ops
traced through their fakes and registered autograd),
``ddp_inductor-<backend>`` (the same with Inductor generating the code around the ops).

The model covers every learnable scalar the neurons have: Conv → LIF (learnable τ, θ and α) →
Linear → PLIF (learnable w, θ and α; soft reset). No BatchNorm: its batch statistics would differ
between one process on the global batch and two on halves (SyncBN would be needed). The loss is the
mean over the batch, so DDP's averaging of the two ranks' gradients (equal halves) is exactly the
gradient of the global mean.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

T, B, C, H, W, K = 4, 8, 1, 6, 6, 5  # time steps, GLOBAL batch, input channels/height/width, classes
STEPS = 3
# SGD with momentum: every parameter moves by 1e-2 to 0.4 over the run (checked in the test), far above the
# float64 tolerance, so a missing or doubled gradient synchronisation cannot pass unnoticed.
LR, MOMENTUM = 0.1, 0.9


def build_model(backend: str, device="cpu", seed: int = 0) -> nn.Module:
    from snn_fast.nn import LIF, PLIF, MultiStep

    torch.manual_seed(seed)
    fc = nn.Linear(4 * H * W, K)
    with torch.no_grad():  # ×6: the output layer fires from the start (~14 % of steps, ~0 otherwise)
        fc.weight.mul_(6.0)
    return nn.Sequential(
        MultiStep(nn.Conv2d(C, 4, 3, padding=1)),  # ~10 % firing at θ = 0.5
        LIF(tau=2.0, v_threshold=0.5, learn_tau=True, learnable_threshold=True, learnable_alpha=True,
            surrogate="sigmoid", backend=backend),
        MultiStep(nn.Flatten()),
        MultiStep(fc),
        PLIF(init_tau=2.5, v_threshold=0.3, v_reset=None, learnable_threshold=True, learnable_alpha=True,
             surrogate="atan", backend=backend),
    ).to(device=device, dtype=torch.float64)


def make_data(device="cpu", seed: int = 1):
    """The global batch: inputs ``[T, B, C, H, W]`` (batch is dim 1) and class labels per step; drawn
    on the CPU, so every device sees the same values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(STEPS, T, B, C, H, W, generator=g, dtype=torch.float64) * 3.0
    y = torch.randint(0, K, (STEPS, B), generator=g)
    return x.to(device), y.to(device)


def shard(x, y, rank: int, world: int):
    """The rank's contiguous slice of the batch (dim 2 of ``x``, dim 1 of ``y``)."""
    n = B // world
    return x[:, :, rank * n:(rank + 1) * n], y[:, rank * n:(rank + 1) * n]


def loss_fn(out_spikes, y):
    # firing rate over T as logits (×K so the softmax is not flat); mean over the batch, as DDP assumes
    return F.cross_entropy(out_spikes.mean(0) * K, y, reduction="mean")


def train(model: nn.Module, x, y, step_fn=None) -> nn.Module:
    """``STEPS`` SGD steps, one batch each. ``step_fn(model, x) -> output`` (default: a plain call)."""
    from snn_fast.nn import reset_net

    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    for i in range(STEPS):
        reset_net(model)  # a new sample: no membrane carried over from the previous batch
        out = model(x[i]) if step_fn is None else step_fn(model, x[i])
        loss_fn(out, y[i]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def full_params(model: nn.Module) -> dict:
    """name → full float64 tensor (a sharded DTensor gathered; FSDP's 1-element parameters → 0-dim)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        name = name.replace("module.", "", 1) if name.startswith("module.") else name  # DDP's prefix
        name = name.replace("_orig_mod.", "")  # torch.compile's wrapper
        out[name] = t.detach().cpu().clone().reshape(-1 if t.dim() else ())
    return out


def scalars_to_1d(model: nn.Module) -> None:
    """FSDP2 refuses 0-dim parameters ("fully_shard doesn't support scalar parameters"): give every
    learnable scalar (τ, θ, α, PLIF's w) shape [1]. The ops read them with ``reshape(())`` (fused
    backends) or broadcast them (reference), so the values computed are the same."""
    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if p.dim() == 0:
                setattr(m, name, nn.Parameter(p.detach().reshape(1)))


def run_mode(mode: str, rank: int, world: int, device="cpu"):
    """(parameters after training, what else the test checks: for the compile mode, the graphs)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    kind, backend = mode.split("-", 1)
    x, y = shard(*make_data(device), rank, world)
    model = build_model(backend, device)
    if kind == "ddp":
        return full_params(train(DDP(model), x, y)), {}
    if kind == "ddp_chunks":  # T forward calls of one step each (the membrane carried), one backward
        return full_params(train(DDP(model), x, y, step_fn=lambda m, xb: torch.cat([m(xb[t:t + 1])
                                                                                    for t in range(T)]))), {}
    if kind == "local":
        return full_params(train(model, x, y)), {}
    if kind in ("ddp_compile", "ddp_inductor"):
        from torch import _dynamo  # (not `import torch._dynamo`: that would make `torch` local here)
        from torch._dynamo.utils import counters

        def compiled_run(model, compiler):
            """Train DDP(model) compiled; (parameters, the graphs Dynamo captured, its graph breaks)."""
            _dynamo.reset()
            counters.clear()
            graphs = []

            def backend_fn(gm, example_inputs):  # the compiler, recording what Dynamo captured
                graphs.append(gm)
                return _dynamo.lookup_backend(compiler)(gm, example_inputs)

            ddp = DDP(model)
            compiled = torch.compile(ddp, backend=backend_fn)
            params = full_params(train(ddp, x, y, step_fn=lambda m, xb: compiled(xb)))
            return params, graphs, dict(counters["graph_break"])

        params, graphs, breaks = compiled_run(model, "aot_eager" if kind == "ddp_compile" else "inductor")
        # The same model with the neurons replaced by a plain activation: DDP's own graph breaks
        # (its forward is not traced, only the wrapped module's), the ones ours must not add to.
        # Graph breaks are Dynamo's, whatever the compiler: the cheapest one ('eager') for this run.
        plain = build_model(backend, device)
        for i in (1, 4):
            plain[i] = nn.Sigmoid()
        _, _, plain_breaks = compiled_run(plain, "eager")
        ops = [str(n.target) for gm in graphs for n in gm.graph.nodes
               if n.op == "call_function" and "snn_fast" in str(n.target)]
        return params, dict(graphs=len(graphs), snn_fast_ops=ops, graph_breaks=breaks, plain_graph_breaks=plain_breaks)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        scalars_to_1d(model)
        for m in model:  # each layer its own unit (its all-gather), then the root
            if any(True for _ in m.parameters()):
                fully_shard(m)
        fully_shard(model)
        return full_params(train(model, x, y)), {}
    raise ValueError(f"unknown mode {mode!r}")


def loopback():
    """The loopback interface's name, for GLOO_SOCKET_IFNAME: the ranks' own connections go over it,
    since a container's hostname may resolve to an address that cannot be reached (no network beyond
    localhost in CI)."""
    names = {n for _, n in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    return next((n for n in ("lo", "lo0") if n in names), None)


def _env(pg):
    env = dict(os.environ)
    # The ranks import snn_fast the way this process did (an editable install, or PYTHONPATH).
    import snn_fast

    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(snn_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    lo = loopback()
    if lo is not None:
        env.setdefault("GLOO_SOCKET_IFNAME", lo)
        if pg == "nccl":
            env.setdefault("NCCL_SOCKET_IFNAME", lo)
    return env


def launch(workdir, modes, world=2, pg="gloo", device="cpu", timeout=420.0, collective_timeout=180.0):
    """Run ``modes`` on ``world`` ranks (subprocesses meeting through a file store in ``workdir``: no
    port to choose). Returns ``({(mode, rank): (params, meta)}, seconds)``; raises RuntimeError with
    the ranks' logs when one fails, and ends the others at once (they would wait for it); after
    ``timeout`` s all are ended. Each rank runs in its own process group, ended whole (Inductor's
    compile workers too)."""
    workdir = str(workdir)
    out = os.path.join(workdir, "out")
    os.makedirs(out)
    init = "file://" + os.path.join(workdir, "store")
    t0 = time.monotonic()
    procs, logs = [], []
    for rank in range(world):
        cmd = [sys.executable, os.path.abspath(__file__), "--rank", str(rank), "--world", str(world), "--init",
               init, "--out", out, "--modes", ",".join(modes), "--timeout", str(collective_timeout), "--pg", pg,
               "--device", device]
        logs.append(os.path.join(workdir, f"rank{rank}.log"))
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen(cmd, env=_env(pg), stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    status = [None] * world

    def end(rank, why):
        try:
            os.killpg(procs[rank].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        procs[rank].wait()
        status[rank] = f"{why} after {time.monotonic() - t0:.0f} s"

    try:
        while any(st is None for st in status):
            time.sleep(0.2)
            for rank, p in enumerate(procs):
                if status[rank] is None:
                    status[rank] = p.poll()
            over = time.monotonic() - t0 > timeout
            if over or any(st not in (None, 0) for st in status):
                for rank in range(world):
                    if status[rank] is None:
                        end(rank, "timed out" if over else "killed (another rank failed)")
    finally:  # an interrupted caller leaves no rank behind
        for rank in range(world):
            if status[rank] is None:
                end(rank, "interrupted")
    secs = time.monotonic() - t0
    text = {}
    for rank in range(world):
        with open(logs[rank], errors="replace") as f:
            text[rank] = f.read()[-3000:]
    print(f"{world} ranks ({pg}, {device}), modes {modes}: {secs:.1f} s")
    for rank in range(world):
        print(f"--- rank {rank}: exit {status[rank]}\n{text[rank]}")
    failed = [r for r in range(world) if status[r] != 0]
    if failed:
        raise RuntimeError("\n".join(f"--- rank {r}: {status[r]}\n{text[r]}" for r in failed))
    runs = {}
    for m in modes:
        for r in range(world):
            with open(os.path.join(out, f"{m}-rank{r}.json")) as f:
                runs[(m, r)] = torch.load(os.path.join(out, f"{m}-rank{r}.pt")), json.load(f)
    return runs, secs


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--init", required=True, help="init_method, e.g. file:///tmp/dir/store")
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", required=True)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds any collective may wait")
    ap.add_argument("--pg", default="gloo", help="process group backend: gloo (CPU or CUDA tensors), nccl")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (every rank on cuda:0)")
    args = ap.parse_args(argv)

    import warnings

    import torch.distributed as dist

    # FSDP2 warns when a wrapped module returns a view (MultiStep's reshape, the neurons' view):
    # harmless here, nothing modifies those outputs in place.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    torch.set_num_threads(1)  # two ranks on a 2-core machine: one thread each
    if args.device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(args.pg, init_method=args.init, rank=args.rank, world_size=args.world,
                            timeout=datetime.timedelta(seconds=args.timeout))
    try:
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            params, meta = run_mode(mode, args.rank, args.world, args.device)
            torch.save(params, os.path.join(args.out, f"{mode}-rank{args.rank}.pt"))
            with open(os.path.join(args.out, f"{mode}-rank{args.rank}.json"), "w") as f:
                json.dump(meta, f)
            print(f"rank {args.rank} {mode}: {time.perf_counter() - t0:.2f} s", flush=True)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    rc = main()
    # os._exit, not sys.exit: every result is in its file by now, and the interpreter's own teardown
    # sometimes aborted a rank after it had finished every mode and destroyed its process group
    # ("terminate called without an active exception", exit -6: twice in ~10 loaded 2-rank dry runs on
    # 2026-11-30, torch 2.13, also with a barrier before the teardown) — a joinable C++ thread met at
    # static destruction. Skipping that teardown cannot lose a result.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
