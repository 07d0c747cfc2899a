"""The LIF family: reference.py (the definition), function.py (the table of backends, the one
autograd Function, the API), triton.py (Triton kernels and their ops, loaded by the table on first
use), custom_cpu.py (the CPU ops of a user-registered surrogate), args.py (the user-facing
arguments' checks and the kernels' parametrisation), contract.py (the fused ops' schemas, save
modes and fakes), memory.py (the bytes each path moves and keeps)."""
from .args import LIFFlags, noise_mask_like
from .function import lif_apply, lif_multistep
from .reference import lif_multistep_reference

__all__ = ["lif_multistep", "lif_multistep_reference", "lif_apply", "LIFFlags", "noise_mask_like"]
