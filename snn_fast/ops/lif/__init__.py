"""The LIF family: reference.py (the definition), function.py (custom ops + autograd + API),
triton.py (Triton kernels), config.py (argument checks shared by all)."""
from .config import LIFFlags, noise_mask_like
from .function import lif_apply, lif_multistep
from .reference import lif_multistep_reference

__all__ = ["lif_multistep", "lif_multistep_reference", "lif_apply", "LIFFlags", "noise_mask_like"]
