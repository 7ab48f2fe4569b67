"""Cells: the deterministic networks of a hierarchy, one file per family.

A family builds two kinds of module, both acting on features whose channel dimension is dim 1:
``block(in_ch, hidden, depth, resample)`` (a deterministic mapping, possibly changing resolution) and
``pointwise(in_ch, out_ch)`` (a per-position linear map: the heads). Vectors are ``(B, F)``; images
``(B, C, H, W)``. A new family is a new file here and one entry in :data:`FAMILIES`.

A family whose bottom-up and top-down cells differ (``nvae``) may also define ``encoder_block`` and
``decoder_block`` with ``block``'s signature; the model uses them when present and ``block`` otherwise
(:func:`encoder_block`, :func:`decoder_block`).
"""

from . import attention, autoregressive, conv, mlp, nvae, temporal, vdvae
from .common import activation

# attention (wraps cells) and autoregressive (nets of observation models) are not families
FAMILIES = {"mlp": mlp, "conv": conv, "nvae": nvae, "vdvae": vdvae, "temporal": temporal}


def encoder_block(family):
    """The family's bottom-up cell builder: ``encoder_block`` if it has one, else ``block``."""
    return getattr(family, "encoder_block", family.block)


def decoder_block(family):
    """The family's top-down cell builder (prior networks, decoder): ``decoder_block`` if it has one, else ``block``."""
    return getattr(family, "decoder_block", family.block)


__all__ = [
    "FAMILIES",
    "activation",
    "attention",
    "autoregressive",
    "conv",
    "decoder_block",
    "encoder_block",
    "mlp",
    "nvae",
    "temporal",
    "vdvae",
]
