"""Small convolutional cells for spatial latents ``(B, C, H, W)``.

Enough to prove the hierarchy is agnostic to its cells; the NVAE / VDVAE cell library is a family of
its own.
"""

from __future__ import annotations

from torch import nn

from ..registry import CELL_FAMILIES
from .common import CellFamily, Sequential, activation


def block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = True,
    act: str = "leaky_relu",
    leaky_slope: float = 0.1,
) -> Sequential:
    """``depth`` 3x3 convolutions with batch norm and activation, ``(B, in_ch, H, W) -> (B, hidden, H', W')``.

    ``resample``: 1 keeps the resolution, 2 halves it (stride-2 convolution, bottom-up), -2 doubles it
    (nearest upsampling then convolution, top-down; free of transposed-convolution checkerboards).
    """
    layers: list[nn.Module] = []
    if resample == -2:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    width = in_ch
    for i in range(max(depth, 1)):
        stride = 2 if (resample == 2 and i == 0) else 1
        layers.append(nn.Conv2d(width, hidden, 3, stride=stride, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(hidden))
        layers.append(activation(act, leaky_slope))
        width = hidden
    return Sequential(hidden, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1x1 convolution head ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    return nn.Conv2d(in_ch, out_ch, 1)


@CELL_FAMILIES.register("conv")
class Conv(CellFamily):
    """Small convolutional cells: ``(B, C, H, W)``."""

    block = staticmethod(block)
    pointwise = staticmethod(pointwise)
