"""Backend choice for every op: the ``backend=`` argument, then ``SNN_FAST_BACKEND``, then automatic.

Each op's ``function.py`` lists its fused backends in one table, an :class:`OpBackends` of
:class:`Backend` entries (ops, what they save, a probe); this module chooses among them and loads
them, the same way for every op. Automatic: a CUDA tensor gets the fastest GPU backend that is
available (the op's measured :class:`~snn_fast.autotable.AutoTable` when it has one, else
``GPU_ORDER``); a CPU tensor gets the C++ kernel; anything else gets the reference. A surrogate a
user registered runs only on the backends whose entry accepts it (``Backend.surrogates``): ``auto``
skips the others, and naming one raises an error naming backend and surrogate. A backend asked for
by name that cannot run raises an error saying how to get it; only ``auto`` falls back.

Loading is lazy: an entry names its ops ("snn_fast::lif_fwd_triton") and the module that defines
them, imported on the backend's first use (so triton is imported only when a Triton backend runs).
Loading also makes the op's torch.library registrations for torch.compile (through the op's
``register`` hook), once per op. Nothing registers itself on import.
"""
from __future__ import annotations

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
    """One fused backend of an op: its ops by name (looked up in ``torch.ops`` after importing
    ``module``), what its forward saves, and its probe.

    ``fwd``/``bwd`` follow the op's contract (its ``function.py``); ``infer`` is a forward that saves
    nothing, used when no gradient can flow. ``saves(x)`` gives the tensor the forward saves for its
    backward, for the fake (shape) function of ops defined in C++ (one schema serves 'cpu' and
    'cuda', which save different things); ops defined in Python carry their fake beside the kernels.
    """

    fwd: str
    bwd: str
    probe: Probe
    infer: Optional[str] = None
    module: Optional[str] = None
    saves: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # User-registered surrogates (``snn_fast.surrogate.register_surrogate``): None = this backend runs
    # the built-in ones only; else surrogate -> None when it can run it, or why not. ``custom_entry``
    # names the table entry whose ops run them (default: this entry's own ops).
    surrogates: Optional[Callable[[object], Optional[str]]] = None
    custom_entry: Optional[str] = None


@dataclass(frozen=True)
class Loaded:
    """A loaded backend: its ops' ``.default`` overloads, which eager mode calls below the autograd
    key from the op's one autograd Function (torch.compile goes through ``OpBackends.compiled_fwd``)."""

    entry: Backend
    fwd: Callable
    bwd: Callable
    infer: Optional[Callable]
    # The forward op has an autograd kernel of its own (registered in C++): eager mode calls ``fwd``
    # through the autograd key instead of wrapping the raw ops in a Python autograd Function.
    cpp_autograd: bool = False


def op(qualname: str):
    """The dispatcher's packet of ``"ns::name"``: what torch.compile traces, with the registered fake
    and autograd."""
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name)


def _has_autograd_kernel(qualname: str) -> bool:
    """The op (its default overload) has an Autograd kernel of its own, e.g. registered in C++."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd")
    except RuntimeError:  # a name the dispatcher does not know without its overload (aten::add)
        return False


class OpBackends:
    """The backends of one op and how to choose and load them.

    ``arg`` names the op's tensor argument the probes look at (and their messages); ``register``
    (called once per distinct forward op when a backend first loads) makes the torch.library
    registrations the compiled path needs; ``autotable`` orders the GPU backends when given.
    """

    def __init__(self, arg: str, backends: Dict[str, Backend], register: Callable[[Loaded], None],
                 autotable: Optional[AutoTable] = None):
        self.arg = arg
        self.backends = backends
        self.register = register
        self.autotable = autotable
        self._loaded: Dict[str, Loaded] = {}
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
        return self.autotable.preference(x) if self.autotable is not None else GPU_ORDER

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
                ok = [n for n in self.backends if n in NAMES and self.cannot_run(n, surrogate) is None]
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

    def ops_for(self, name: str, surrogate) -> str:
        """The table entry whose ops run ``surrogate`` on backend ``name`` (``Backend.custom_entry``)."""
        e = self.backends[name]
        return e.custom_entry if e.custom_entry is not None and getattr(surrogate, "custom", False) else name

    def load(self, name: str) -> Loaded:
        """The backend's ops, importing their module and registering them on first use."""
        hit = self._loaded.get(name)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._loaded.get(name)
            if hit is not None:  # another thread loaded it meanwhile
                return hit
            e = self.backends[name]
            if e.module is not None:
                importlib.import_module(e.module)
            loaded = Loaded(e, op(e.fwd).default, op(e.bwd).default, op(e.infer).default if e.infer else None,
                            e.module is None and _has_autograd_kernel(e.fwd))
            if e.fwd not in self._registered:
                self.register(loaded)
                self._registered.add(e.fwd)
            self._loaded[name] = loaded
            return loaded

    # The first use may come inside a torch.compile trace, which cannot follow an import or a
    # torch.library registration: Dynamo runs this eagerly (once per trace) and keeps the result.
    @torch.compiler.assume_constant_result
    def _loaded_for_compile(self, name: str) -> bool:
        self.load(name)
        return True

    def compiled_fwd(self, name: str, train: bool) -> Callable:
        """The forward op for torch.compile: the dispatcher's packet, traced with its registered fake
        and autograd; the inference op when no gradient can flow and the backend has one."""
        self._loaded_for_compile(name)
        e = self.backends[name]
        return op(e.infer if e.infer is not None and not train else e.fwd)


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
