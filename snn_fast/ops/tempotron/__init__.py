"""The Tempotron (SPEC §5): reference.py (the seed's dense computation, the definition),
function.py (custom ops + autograd + the functional API), triton.py (Triton kernels),
config.py (argument checks and constants shared by all)."""
from .config import v0_of
from .function import select_backend, tempotron, tempotron_membrane
from .reference import mse_loss, tempotron_reference

__all__ = ["tempotron", "tempotron_membrane", "tempotron_reference", "mse_loss", "v0_of", "select_backend"]
