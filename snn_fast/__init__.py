"""snn_fast: fused kernels for training spiking neural networks in PyTorch."""
from . import losses, presets, surrogate
from ._ext import HAS_C
from .ops.lif import lif_multistep, lif_multistep_reference, noise_mask_like

__version__ = "0.1.0"
__all__ = ["lif_multistep", "lif_multistep_reference", "noise_mask_like", "surrogate", "presets", "losses", "HAS_C", "nn"]


def __getattr__(name):  # lazy: `snn_fast.nn` imports torch.nn machinery only when used
    if name == "nn":
        import importlib

        return importlib.import_module(".nn", __name__)
    raise AttributeError(name)
