"""Backend choice for every op: the ``backend=`` argument, then ``SNN_FAST_BACKEND``, then automatic.

Each op's ``function.py`` lists its fused backends in one table, an :class:`OpBackends` of
:class:`Backend` entries (a pair of ops and a probe per backend name) with the op's one
:class:`FusedAutograd`; this module chooses among the backends, loads them and gives their ops that
autograd, the same way for every op. Automatic: a CUDA tensor gets the fastest GPU backend that is
available (the op's measured :class:`~snn_fast.autotable.AutoTable` when it has one, else
``GPU_ORDER``); a CPU tensor gets the C++ kernel; anything else gets the reference. A surrogate a
user registered runs only on the backends whose entry accepts it (``Backend.surrogates``): ``auto``
skips the others, and naming one raises an error naming backend and surrogate. A backend asked for
by name that cannot run raises an error saying how to get it; only ``auto`` falls back.

Loading is lazy: an entry names its ops ("snn_fast::lif_fwd_triton") and the module that defines
them, imported on the backend's first use (so triton is imported only when a Triton backend runs).
Loading also makes the ops' torch.library registrations for torch.compile (the op's fakes through
its ``register_fakes`` hook for ops defined in C++, and the autograd), once per op. Nothing
registers itself on import.
"""
from __future__ import annotations

import collections
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _ext, _triton
from .autotable import AutoTable

NAMES = ("auto", "reference", "cpu", "cuda", "triton")
ENV_VAR = "SNN_FAST_BACKEND"
GPU_ORDER: Tuple[str, ...] = ("cuda", "triton")

# probe(x, arg): None when the backend can run on x (the op's tensor argument named arg), else why not.
Probe = Callable[[torch.Tensor, str], Optional[str]]


def cpp_probe(op: str, dispatch_key: str) -> Probe:
    """Probe of a C++ backend: the tensor is on that device and this build has ``op`` for it."""
    device = dispatch_key.lower()
    how = "" if dispatch_key == "CPU" else " (built with a CUDA torch and nvcc)"

    def probe(x: torch.Tensor, arg: str) -> Optional[str]:
        if x.device.type != device:
            return f"the '{device}' backend runs on {dispatch_key} tensors, {arg} is on {x.device}"
        if not _ext.has_kernel(op, dispatch_key):
            return _ext.missing_message(f"the '{device}' backend{how}")
        return None

    return probe


def triton_probe(x: torch.Tensor, arg: str) -> Optional[str]:
    return _triton.unavailable_reason(x, arg)


@dataclass(frozen=True)
class Backend:
    """One fused backend of an op: its forward and backward ops by name (looked up in ``torch.ops``
    after importing ``module``; None: defined in C++), and its probe. The ops follow the op's one
    schema pair (its ``contract.py``); what the forward saves is an argument of that schema.
    """

    fwd: str
    bwd: str
    probe: Probe
    module: Optional[str] = None
    # User-registered surrogates (``snn_fast.surrogate.register_surrogate``): None = this backend runs
    # the built-in ones only; else surrogate -> None when it can run it, or why not. ``custom``: the
    # ops that run them when they are not ``fwd``/``bwd`` themselves (the same schemas).
    surrogates: Optional[Callable[[object], Optional[str]]] = None
    custom: Optional["Backend"] = None


@dataclass(frozen=True)
class Loaded:
    """A loaded backend: its ops' ``.default`` overloads, which eager mode calls below the autograd
    key through the op's :class:`FusedAutograd` (torch.compile goes through ``OpBackends.compiled_fwd``)."""

    entry: Backend
    fwd: Callable
    bwd: Callable
    # The forward op's arguments by name (a namedtuple class made from its schema), and the positions
    # of those that get gradients (the op's ``FusedAutograd.differentiable``), made once at load.
    args: type
    grad_index: Tuple[int, ...]
    # The forward op has an autograd kernel of its own (registered in C++): eager mode calls ``fwd``
    # through the autograd key instead of wrapping the raw ops in a Python autograd Function.
    cpp_autograd: bool = False


def op(qualname: str):
    """The dispatcher's packet of ``"ns::name"``: what torch.compile traces, with the registered fake
    and autograd."""
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name)


def schema_args(qualname: str) -> type:
    """A namedtuple class of the op's arguments, named as its schema names them."""
    args = op(qualname).default._schema.arguments
    return collections.namedtuple(qualname.split("::")[1] + "_args", [a.name for a in args])


def _has_autograd_kernel(qualname: str) -> bool:
    """The op (its default overload) has an Autograd kernel of its own, e.g. registered in C++."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd")
    except RuntimeError:  # a name the dispatcher does not know without its overload (aten::add)
        return False


class FusedAutograd:
    """The one autograd of every fused backend of an op, from two functions of the op:

    - ``save(ctx, args, outputs, needs)``: keep what the backward needs; ``args`` is the forward's
      arguments by name (``Loaded.args``), ``needs[i]`` whether ``differentiable[i]`` needs a gradient;
    - ``backward(ctx, *grads)``: ``ctx.bwd`` is the backend's backward op and ``grads`` hold one
      gradient (or None) per forward output; returns one gradient (or None) per ``differentiable``.

    Eager mode runs them in one ``torch.autograd.Function`` around the raw ops, called below the
    autograd key (no torch.library per-call wrapper: argument normalisation on every call, ~0.3 ms of a
    LIF forward+backward at any size, measured); torch.compile gets the same two functions registered
    on each forward op with ``torch.library.register_autograd``. ``nondiff_outputs``: forward outputs
    that carry no gradient (what it saves for the backward); ``materialize_grads=False``: ``backward``
    gets None for an output no gradient reached (else zeros).
    """

    def __init__(self, title: str, differentiable: Tuple[str, ...], save: Callable, backward: Callable,
                 nondiff_outputs: Tuple[int, ...] = (), materialize_grads: bool = True):
        self.title = title
        self.differentiable = differentiable
        self.save = save
        self.backward = backward
        self.nondiff_outputs = nondiff_outputs
        self.materialize_grads = materialize_grads

    def apply(self, b: Loaded, *args):
        """Eager forward of backend ``b`` recording this autograd; returns what the forward op returns."""
        return _FusedFunction.apply(self, b, *args)

    def register(self, b: Loaded) -> None:
        """torch.compile's autograd of ``b``'s forward op."""
        bwd = op(b.entry.bwd)
        index = b.grad_index
        n_args = len(b.args._fields)

        def setup_context(ctx, inputs, output):
            ctx.bwd = bwd
            self.save(ctx, b.args(*inputs), output, tuple(ctx.needs_input_grad[i] for i in index))

        def backward(ctx, *grads):
            full = [None] * n_args
            for i, g in zip(index, self.backward(ctx, *grads)):
                full[i] = g
            return tuple(full)

        torch.library.register_autograd(b.entry.fwd, backward, setup_context=setup_context)


class _FusedFunction(torch.autograd.Function):
    """``FusedAutograd.apply``: (spec, loaded backend, *the forward op's arguments)."""

    @staticmethod
    def forward(ctx, spec: FusedAutograd, b: Loaded, *args):
        with torch._C._AutoDispatchBelowAutograd():
            out = b.fwd(*args)
        named = b.args(*args)
        ctx.spec, ctx.bwd = spec, b.bwd
        ctx.index = b.grad_index
        spec.save(ctx, named, out, tuple(ctx.needs_input_grad[2 + i] for i in ctx.index))
        ctx.n_args = len(args)
        if spec.nondiff_outputs:
            ctx.mark_non_differentiable(*(out[i] for i in spec.nondiff_outputs))
        ctx.set_materialize_grads(spec.materialize_grads)
        return out

    @staticmethod
    def backward(ctx, *grads):
        with torch._C._AutoDispatchBelowAutograd():
            got = ctx.spec.backward(ctx, *grads)
        full = [None] * (2 + ctx.n_args)
        for i, g in zip(ctx.index, got):
            full[2 + i] = g
        return tuple(full)


class OpBackends:
    """The backends of one op and how to choose and load them.

    ``arg`` names the op's tensor argument the probes look at (and their messages); ``autograd`` is
    the op's one :class:`FusedAutograd`; ``register_fakes`` (called once per forward op defined in
    C++ when a backend first loads it) registers that pair's fake functions (ops defined in Python
    carry theirs); ``autotable`` orders the GPU backends when given.
    """

    def __init__(self, arg: str, backends: Dict[str, Backend], autograd: FusedAutograd,
                 register_fakes: Callable[[Backend], None], autotable: Optional[AutoTable] = None,
                 gpu_order: Tuple[str, ...] = GPU_ORDER):
        self.arg = arg
        self.gpu_order = gpu_order
        self.backends = backends
        self.autograd = autograd
        self.register_fakes = register_fakes
        self.autotable = autotable
        self._loaded: Dict[tuple, Loaded] = {}
        self._registered: set = set()
        # First loads (import + torch.library registrations, which torch refuses twice) run under a
        # lock; a loaded backend is then one lock-free dict lookup (tests/test_threads.py).
        self._lock = threading.RLock()

    def unavailable(self, name: str, x: torch.Tensor) -> Optional[str]:
        """None when backend ``name`` can run on ``x``, else why not (and how to get it)."""
        if name == "reference":
            return None
        return self.backends[name].probe(x, self.arg)

    def gpu_preference(self, x: torch.Tensor) -> Tuple[str, ...]:
        """Order to try GPU backends in: the measured table's when the op has one."""
        return self.autotable.preference(x) if self.autotable is not None else self.gpu_order

    def cannot_run(self, name: str, surrogate) -> Optional[str]:
        """None when backend ``name`` runs ``surrogate`` (every backend runs the built-ins), else why not."""
        if name == "reference" or surrogate is None or not getattr(surrogate, "custom", False):
            return None
        e = self.backends[name]
        if e.surrogates is None:
            return "its kernels are compiled with the built-in surrogates only"
        return e.surrogates(surrogate)

    def select(self, backend: Optional[str], x: torch.Tensor, has_kernel: bool = True, surrogate=None) -> str:
        """Resolve ``backend`` for input ``x``. ``has_kernel=False`` (a surrogate no kernel can run)
        forces the reference; ``surrogate`` (a user-registered one) limits the choice to the backends
        that run it."""
        name = requested(backend)
        custom = surrogate is not None and surrogate.custom  # the built-ins run everywhere: no check per call
        if name != "auto":
            if name != "reference" and not has_kernel:
                raise ValueError(
                    f"backend {name!r} cannot run a user-registered surrogate (it has no kernel); "
                    "use backend='reference' or 'auto'"
                )
            why = self.cannot_run(name, surrogate) if custom else None
            if why is not None:
                ok = [n for n in self.backends if self.cannot_run(n, surrogate) is None]
                raise ValueError(f"backend {name!r} cannot run the user-registered surrogate {surrogate.name!r}: "
                                 f"{why}; use backend='auto', 'reference'" + "".join(f" or {n!r}" for n in ok))
            why = self.unavailable(name, x)
            if why is not None:
                raise RuntimeError(why)
            return name
        if not has_kernel:
            return "reference"
        order = self.gpu_preference(x) if x.device.type == "cuda" else ("cpu",)
        for cand in order:
            if (not custom or self.cannot_run(cand, surrogate) is None) and self.unavailable(cand, x) is None:
                return cand
        return "reference"

    def entry(self, name: str, custom: bool = False) -> Backend:
        """Backend ``name``'s ops; with ``custom``, those that run a user-registered surrogate."""
        e = self.backends[name]
        return e.custom if custom and e.custom is not None else e

    def load(self, name: str, custom: bool = False) -> Loaded:
        """Backend ``name``'s ops (``custom``: for a user-registered surrogate), importing their module
        and registering them on first use."""
        key = (name, custom)
        hit = self._loaded.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._loaded.get(key)
            if hit is not None:  # another thread loaded it meanwhile
                return hit
            e = self.entry(name, custom)
            if e.module is not None:
                importlib.import_module(e.module)
            args = schema_args(e.fwd)
            loaded = Loaded(e, op(e.fwd).default, op(e.bwd).default, args,
                            tuple(args._fields.index(n) for n in self.autograd.differentiable),
                            e.module is None and _has_autograd_kernel(e.fwd))
            if e.fwd not in self._registered:
                if e.module is None:  # defined in C++ (ops.cpp): its fakes come from Python
                    self.register_fakes(e)
                if not loaded.cpp_autograd:
                    self.autograd.register(loaded)
                self._registered.add(e.fwd)
            self._loaded[key] = loaded
            return loaded

    # The first use may come inside a torch.compile trace, which cannot follow an import or a
    # torch.library registration: Dynamo runs this eagerly (once per trace) and keeps the result.
    @torch.compiler.assume_constant_result
    def _loaded_for_compile(self, name: str, custom: bool) -> bool:
        self.load(name, custom)
        return True

    def compiled_fwd(self, name: str, custom: bool = False) -> Callable:
        """The forward op for torch.compile: the dispatcher's packet, traced with its registered fake
        and autograd."""
        self._loaded_for_compile(name, custom)
        return op(self.entry(name, custom).fwd)


def check_name(backend) -> None:
    """A ``backend=`` argument is None or one of ``NAMES`` (any case): anything else (0, '', 123) is
    an error naming it, not a silent 'auto' or an AttributeError."""
    if backend is None:
        return
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {NAMES}, or None; got {backend!r} "
                        f"({type(backend).__name__})")
    if backend.lower() not in NAMES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {NAMES}")


def requested(backend: Optional[str]) -> str:
    check_name(backend)
    if backend is None or backend.lower() == "auto":
        # An empty SNN_FAST_BACKEND counts as unset (as for most environment variables).
        name = os.environ.get(ENV_VAR, "") or "auto"
    else:
        name = backend
    name = name.lower()
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r} (from ${ENV_VAR}); choose one of {NAMES}")
    return name


def select(backend: Optional[str], x: torch.Tensor, has_kernel: bool = True, *, op: OpBackends,
           surrogate=None) -> str:
    """``op.select(backend, x, has_kernel, surrogate)``: ``op`` is an op's table, e.g.
    ``snn_fast.ops.lif.function.BACKENDS`` (named, not defaulted: this module imports no op)."""
    return op.select(backend, x, has_kernel, surrogate)


def refuse_double_backward(title: str, *tensors) -> None:
    """The backward kernels have no backward of their own: under create_graph=True their result would
    silently carry no graph (a second grad of 0). Say so instead."""
    if torch.is_grad_enabled() and needs_grad(*tensors):  # grad mode is off in a plain backward
        raise NotImplementedError(
            f"double backward (create_graph=True) through the fused {title} kernels is not supported; "
            "use backend='reference' for higher-order gradients")


def needs_grad(*tensors) -> bool:
    """A gradient can flow from the op's outputs to one of ``tensors`` (else the inference path runs).
    A plain loop: ``any()`` over a generator cost ~1 µs per call here (measured), ~1 % of a tiny
    fwd+bwd on the CPU."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False
