"""The LIF family: reference.py (the definition), function.py (the table of backends, the one
autograd Function, the API), triton.py (Triton kernels and their ops, loaded by the table on first
use), config.py (argument checks and the op contract's shapes, shared by all)."""
from .config import LIFFlags, noise_mask_like
from .function import lif_apply, lif_multistep
from .reference import lif_multistep_reference

__all__ = ["lif_multistep", "lif_multistep_reference", "lif_apply", "LIFFlags", "noise_mask_like"]
