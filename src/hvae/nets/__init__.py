"""Cells: the deterministic networks of a hierarchy, one file per family.

``model.block`` names a :class:`CellFamily` subclass in :data:`FAMILIES` (the registry
:data:`hvae.registry.CELL_FAMILIES`). A family builds two kinds of module, both acting on features whose
channel dimension is dim 1: ``block(in_ch, hidden, depth, resample)`` (a deterministic mapping, possibly
changing resolution) and ``pointwise(in_ch, out_ch)`` (a per-position linear map: the heads). Vectors are
``(B, F)``; images ``(B, C, H, W)``; sequences ``(B, C, T)``.

To add a family: write its cells in a new file here (or in your own package), then register a subclass of
:class:`CellFamily` that names them::

    from hvae.nets import FAMILIES, CellFamily

    @FAMILIES.register("mine")
    class Mine(CellFamily):
        block = staticmethod(my_block)          # (in_ch, hidden, depth, resample=1, **kw) -> Sequential
        pointwise = staticmethod(my_pointwise)  # (in_ch, out_ch) -> nn.Module

``model.block: mine`` is then accepted. A family whose bottom-up and top-down cells differ (``nvae``,
``vdvae``) also sets ``encoder_block`` and ``decoder_block`` (``block``'s signature; both default to
``block``); ``residual_state = True`` starts the skip state's map from the prior features as the identity.
The config's shape checks know the built-in families by name; any other family is checked as an image
family (``data_shape`` [C, H, W], power-of-two strides).
"""

# the families register in this order, the order config messages list them in
from . import mlp, conv, nvae, vdvae, temporal  # noqa: I001
from ..registry import CELL_FAMILIES as FAMILIES
from . import attention, autoregressive
from .common import CellFamily, activation

# attention (wraps cells) and autoregressive (nets of observation models) are not families

__all__ = [
    "FAMILIES",
    "CellFamily",
    "activation",
    "attention",
    "autoregressive",
    "conv",
    "mlp",
    "nvae",
    "temporal",
    "vdvae",
]
