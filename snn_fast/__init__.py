"""snn_fast: fused kernels for training spiking neural networks in PyTorch."""
from . import losses, presets, surrogate
from ._ext import HAS_C
# the function shadows its module as an attribute of the package (``snn_fast.convert(model)``);
# ``from snn_fast.convert import …`` still reaches the module
from .convert import convert
from .ops.bn_lif import bn_lif, bn_lif_reference
from .ops.lif import lif_multistep, lif_multistep_reference, noise_mask_like

__version__ = "0.1.0"
__all__ = ["convert", "lif_multistep", "lif_multistep_reference", "noise_mask_like", "surrogate", "presets", "losses",
           "bn_lif", "bn_lif_reference",
           "HAS_C", "nn",
           "cpu_cache_info", "empty_cpu_cache"]


def cpu_cache_info() -> dict:
    """The CPU output cache (large kernel outputs are reused instead of page-faulted in again every
    step; cap: env SNN_FAST_CPU_CACHE_MB, default 1024, 0 = off): bytes cached and live, hits, misses."""
    from ._ext import missing_message

    if not HAS_C:
        raise RuntimeError(missing_message("cpu_cache_info"))
    import torch

    cached, live, hits, misses = torch.ops.snn_fast.cpu_cache_stats()
    return dict(cached_bytes=cached, live_bytes=live, hits=hits, misses=misses)


def empty_cpu_cache() -> None:
    """Return every cached (currently unused) CPU output block to the system allocator."""
    if HAS_C:
        import torch

        torch.ops.snn_fast.cpu_cache_clear()


def __getattr__(name):  # lazy: `snn_fast.nn` imports torch.nn machinery only when used
    if name in ("nn", "nir"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(name)
