"""Cells: the deterministic networks of a hierarchy, one file per family.

A family builds two kinds of module, both acting on features whose channel dimension is dim 1:
``block(in_ch, hidden, depth, resample)`` (a deterministic mapping, possibly changing resolution) and
``pointwise(in_ch, out_ch)`` (a per-position linear map: the heads). Vectors are ``(B, F)``; images
``(B, C, H, W)``. A new family is a new file here and one entry in :data:`FAMILIES`.
"""

from . import conv, mlp
from .common import activation

FAMILIES = {"mlp": mlp, "conv": conv}

__all__ = ["FAMILIES", "activation", "conv", "mlp"]
