"""Host work of the Triton LIF backend, counted without a GPU: what one fwd+bwd does besides its kernels.

On a GPU a small layer's step time is set by host work (launches, allocations, syncs), not by the
kernels, so the launch layer is instrumented here, under the interpreter on tiny shapes:

- launches: every kernel launch of ``snn_fast/ops/lif/triton.py`` goes through its ``launch``;
  replaced by a counter, one fwd+bwd must launch exactly one forward and one backward kernel;
- allocations: a TorchDispatchMode runs each Triton op's Python implementation with itself active and
  counts the aten calls inside it that make a new tensor (a tensor return without an alias, and
  ``lift_fresh``: a tensor made from Python data, ``torch.tensor``); an op may allocate its outputs
  and nothing more (the interpreter's own copies inside ``launch`` are not counted);
- syncs: no ``_local_scalar_dense`` (``.item()``, ``bool(t)``: a device sync on a GPU) anywhere in
  the fwd+bwd, the layers above the ops included.

The last tests inject each kind of regression and check that the counters see it.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import snn_fast  # noqa: E402

aten = torch.ops.aten


def _lt():
    from snn_fast.ops.lif.function import BACKENDS

    BACKENDS.load("triton")
    from snn_fast.ops.lif import triton as lt

    return lt


def _device(lt):
    if lt.INTERPRETED:
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("Triton compiled (TRITON_INTERPRET unset) and no CUDA device")
    return "cuda"


def _kernel_name(kernel) -> str:
    k = kernel
    while hasattr(k, "fn"):  # Autotuner → JITFunction → the Python function
        k = k.fn
    return getattr(k, "__name__", repr(kernel))


def _allocates(func) -> bool:
    """A new tensor: a Tensor return without alias annotation (not a view, not in-place, not out=)."""
    if func is aten.lift_fresh.default:
        return True
    return any(r.alias_info is None and str(r.type) in ("Tensor", "Tensor[]", "Optional[Tensor]")
               for r in func._schema.returns)


# A Python value read from a tensor: a device sync on a GPU (``item`` arrives undecomposed inside a
# re-entered mode, ``_local_scalar_dense`` otherwise).
_SYNCS = (aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default)


class HostWork(TorchDispatchMode):
    """Per Triton op: (op name, allocations inside it, outputs, their names); over everything: syncs
    as (aten op, the Triton op it ran in or None)."""

    def __init__(self, lt):
        super().__init__()
        ops = torch.ops.snn_fast
        self.impls = {ops.lif_fwd_triton.default: lt.lif_fwd_triton, ops.lif_bwd_triton.default: lt.lif_bwd_triton}
        self.records = []
        self.current = None  # [op name, allocations, what] while one of the ops runs
        self.paused = 0  # inside launch: the interpreter's copies are not the op's
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = self.impls.get(func)
        if impl is not None and self.current is None:
            self.current = [func.name(), 0, []]
            try:
                with self:  # re-entered: the implementation's own aten calls come here too
                    out = impl(*args, **kwargs)
            finally:
                name, n, what = self.current
                self.current = None
            self.records.append((name, n, len(out), what))
            return out
        out = func(*args, **kwargs)
        if func in _SYNCS:
            self.syncs.append((func.name(), self.current[0] if self.current is not None else None))
        elif self.current is not None and not self.paused and _allocates(func):
            self.current[1] += 1
            self.current[2].append(func.name())
        return out


@pytest.fixture
def counted(monkeypatch):
    """(lt, launches, mode): ``launch`` replaced by a counter that pauses the allocation count."""
    lt = _lt()
    launches = []
    mode = HostWork(lt)
    real = lt.launch

    def counting(kernel, grid, args, consts):
        launches.append(_kernel_name(kernel))
        mode.paused += 1
        try:
            real(kernel, grid, args, consts)
        finally:
            mode.paused -= 1

    monkeypatch.setattr(lt, "launch", counting)
    return lt, launches, mode


def _step(device, dtype, save, learn=False):
    x = torch.randn(4, 2, 64, device=device, dtype=dtype).requires_grad_()
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    tau = torch.tensor(2.0, dtype=pdt, device=device, requires_grad=True) if learn else 2.0

    def step():
        s, v = snn_fast.lif_multistep(x, tau=tau, backend="triton", save=save, v_reset=-0.1)
        (s.sum() + v.sum()).backward()

    return step


def _run(counted, step):
    lt, launches, mode = counted
    step()  # first call: compilation, caches
    launches.clear()
    mode.records.clear()
    with mode:
        step()
    return launches, mode


BWD_KERNEL = {"state": "lif_bwd_kernel", "recompute": "lif_bwd_rc_kernel"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("save", ["state", "recompute"])
def test_one_fwd_bwd_launches_two_kernels_and_allocates_only_outputs(counted, save, dtype):
    lt = counted[0]
    launches, mode = _run(counted, _step(_device(lt), dtype, save))
    assert launches == ["lif_fwd_kernel", BWD_KERNEL[save]]
    assert [r[0] for r in mode.records] == ["snn_fast::lif_fwd_triton", "snn_fast::lif_bwd_triton"]
    for name, allocs, outputs, what in mode.records:
        assert allocs <= outputs, f"{name}: {allocs} allocations for {outputs} outputs: {what}"
    assert mode.syncs == [], f"device syncs in one fwd+bwd: {mode.syncs}"


@pytest.mark.parametrize("save", ["state", "recompute"])
def test_parameter_gradients_add_only_the_partial_sums(counted, save):
    lt = counted[0]
    launches, mode = _run(counted, _step(_device(lt), torch.float32, save, learn=True))
    assert launches == ["lif_fwd_kernel", BWD_KERNEL[save]]
    fwd, bwd = mode.records
    assert fwd[1] <= fwd[2], fwd
    assert bwd[1] <= bwd[2] + 1, bwd  # + the [programs, 3] partial sums, reduced into grad_params
    # None inside the ops. (The layer above reads a tensor τ's value to check its range: a sync there.)
    assert [s for s in mode.syncs if s[1] is not None] == []


def test_inference_forward_one_launch_no_saved_state(counted):
    lt, launches, mode = counted
    x = torch.randn(5, 130, device=_device(lt))

    def step():
        with torch.no_grad():
            snn_fast.lif_multistep(x, backend="triton")

    launches, mode = _run(counted, step)
    assert launches == ["lif_fwd_kernel"]
    ((name, allocs, outputs, what),) = mode.records
    assert name == "snn_fast::lif_fwd_triton" and allocs <= outputs, (name, allocs, what)


# --- the counters can fail -------------------------------------------------------------------------------


def test_counter_sees_an_extra_allocation(counted, monkeypatch):
    lt = counted[0]
    real = lt._saves_h_minus_theta

    def allocating(dtype):
        torch.zeros(3)  # a per-call scratch buffer
        torch.tensor([1.0, 2.0])  # a per-call constant from Python data (lift_fresh)
        return real(dtype)

    monkeypatch.setattr(lt, "_saves_h_minus_theta", allocating)
    launches, mode = _run(counted, _step(_device(lt), torch.float32, "state"))
    fwd = mode.records[0]
    assert fwd[1] == fwd[2] + 2, fwd


def test_counter_sees_an_extra_launch_and_a_sync(counted, monkeypatch):
    lt = counted[0]
    real_fwd = lt._fwd

    def twice(*args, **kw):
        out = real_fwd(*args, **kw)
        if out[0].sum().item() >= 0:  # a sync
            out = real_fwd(*args, **kw)  # a second launch
        return out

    monkeypatch.setattr(lt, "_fwd", twice)
    launches, mode = _run(counted, _step(_device(lt), torch.float32, "state"))
    assert launches == ["lif_fwd_kernel", "lif_fwd_kernel", "lif_bwd_kernel"]
    assert [s[1] for s in mode.syncs] == ["snn_fast::lif_fwd_triton"]
