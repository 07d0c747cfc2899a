"""The Tempotron (docs/spec.md §6): reference.py (the seed's dense computation, the definition),
function.py (the table of backends, the one autograd Function, the functional API), triton.py
(Triton kernels and their ops, loaded by the table on first use), args.py (argument checks and the
PSP constants), contract.py (the fused ops' contract: checks and fakes)."""
from .args import v0_of
from .function import select_backend, tempotron, tempotron_membrane
from .reference import mse_loss, tempotron_reference

__all__ = ["tempotron", "tempotron_membrane", "tempotron_reference", "mse_loss", "v0_of", "select_backend"]
