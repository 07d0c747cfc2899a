"""Batch norm and LIF in one op (docs/spec.md §12)."""
from .function import bn_lif
from .reference import bn_lif_reference

__all__ = ["bn_lif", "bn_lif_reference"]
