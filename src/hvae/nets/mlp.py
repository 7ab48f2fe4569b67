"""Fully connected cells for vector data (the Ladder VAE paper's MNIST model)."""

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
    """``depth`` layers of Linear -> BatchNorm -> activation, ``(B, in_ch) -> (B, hidden)``.

    ``depth = 0`` is the identity (the head then reads the input directly: a linear-Gaussian model).
    ``resample`` is ignored: vectors have no resolution.
    """
    if depth == 0:
        return Sequential(in_ch)
    layers: list[nn.Module] = []
    width = in_ch
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(act, leaky_slope))
        width = hidden
    return Sequential(hidden, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Linear:
    """A linear head ``(B, in_ch) -> (B, out_ch)``."""
    return nn.Linear(in_ch, out_ch)


@CELL_FAMILIES.register("mlp")
class MLP(CellFamily):
    """Fully connected cells: ``(B, F)``."""

    block = staticmethod(block)
    pointwise = staticmethod(pointwise)
