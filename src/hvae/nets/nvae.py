"""NVAE cells (Vahdat & Kautz 2020, fig. 3) for spatial latents ``(B, C, H, W)``.

Two cell types, as in the paper:
  * encoder (bottom-up) cell:  x + 0.1 f(x),  f = BN - act - Conv3x3 - BN - act - Conv3x3 - SE;
  * decoder (top-down) cell:   x + 0.1 f(x),  f = Conv1x1 (expand x6) - BN - act - depthwise Conv5x5 - BN - act
    - Conv1x1 - BN - SE.
``act`` is the config's activation (the paper: Swish). The 0.1 on the residual branch is NVAE's
(``Cell.forward``): deep stacks start near the identity.

Between scales, resampling cells change the resolution: a stride-2 3x3 convolution going down, nearest
upsampling followed by a 3x3 convolution going up. Channels double with each downsampling and halve
with each upsampling, as in NVAE. ``resample`` may be any power of two (a stride-4 level is two
resampling cells, e.g. NVAE's pre-processing in front of the first latent scale).

The family interface: :func:`encoder_block` builds the bottom-up path, :func:`decoder_block` the prior
networks and the decoder; :func:`block` is :func:`encoder_block` (the fallback of families with one cell).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..registry import CELL_FAMILIES
from .common import CellFamily, Sequential, activation

EXPAND = 6  # NVAE's decoder cell expansion ratio
RESIDUAL_SCALE = 0.1  # NVAE: skip + 0.1 * cell(x)
BN_MOMENTUM = 0.05  # NVAE's batch norms average their statistics more slowly than torch's default 0.1


def _norm(ch: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(ch, momentum=BN_MOMENTUM) if batch_norm else nn.Identity()


def _steps(resample: int) -> int:
    """log2 |resample|: the number of resampling cells (resample = 1 -> 0)."""
    r = abs(resample)
    k = int(round(math.log2(r))) if r >= 1 else -1
    if r < 1 or 2**k != r:
        raise ValueError(f"resample must be a power of two (or its negative for upsampling), got {resample}")
    return k


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as in NVAE: channel gates from the global average,
    ``x * sigmoid(W_2 relu(W_1 mean_hw(x)))`` with a bottleneck of ``max(C // 16, 4)``."""

    def __init__(self, ch: int, reduction: int = 16):
        super().__init__()
        mid = max(ch // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(ch, mid), nn.ReLU(), nn.Linear(mid, ch), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C)
        return x * gate[:, :, None, None]


class _Residual(nn.Module):
    def __init__(self, branch: nn.Module, ch: int):
        super().__init__()
        self.branch = branch
        self.out_ch = ch

    def forward(self, x: Tensor) -> Tensor:
        return x + RESIDUAL_SCALE * self.branch(x)


def encoder_cell(ch: int, *, batch_norm: bool = True, act: str = "swish", leaky_slope: float = 0.1) -> nn.Module:
    """NVAE's residual encoder cell ``(B, ch, H, W) -> (B, ch, H, W)``."""
    branch = nn.Sequential(
        _norm(ch, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(ch, ch, 3, padding=1),
        _norm(ch, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(ch, ch, 3, padding=1),
        SqueezeExcite(ch),
    )
    return _Residual(branch, ch)


def decoder_cell(ch: int, *, batch_norm: bool = True, act: str = "swish", leaky_slope: float = 0.1) -> nn.Module:
    """NVAE's residual decoder cell with a depthwise separable 5x5 convolution ``(B, ch, H, W) -> (B, ch, H, W)``."""
    wide = EXPAND * ch
    branch = nn.Sequential(
        nn.Conv2d(ch, wide, 1, bias=not batch_norm),
        _norm(wide, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(wide, wide, 5, padding=2, groups=wide, bias=not batch_norm),  # depthwise
        _norm(wide, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(wide, ch, 1, bias=not batch_norm),
        _norm(ch, batch_norm),
        SqueezeExcite(ch),
    )
    return _Residual(branch, ch)


def _down(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)


def _up(in_ch: int, out_ch: int) -> nn.Module:
    # nearest upsampling then a convolution: free of transposed-convolution checkerboards
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))


def encoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
) -> Sequential:
    """Bottom-up block ``(B, in_ch, H, W) -> (B, hidden, H / resample, W / resample)``.

    ``resample = 2^k``: k stride-2 resampling cells with widths ``hidden / 2^(k-1), …, hidden`` (one encoder
    cell between consecutive ones), then ``depth`` encoder cells at ``hidden``.
    """
    kw = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope)
    k = _steps(resample)
    if resample < 1:
        raise ValueError(f"encoder_block downsamples: resample must be >= 1, got {resample}")
    layers: list[nn.Module] = []
    width = in_ch
    for i in range(k):
        w = max(hidden >> (k - 1 - i), 1)
        layers.append(_down(width, w))
        width = w
        if i < k - 1:
            layers.append(encoder_cell(width, **kw))
    if width != hidden:
        layers.append(nn.Conv2d(width, hidden, 1))
    layers.extend(encoder_cell(hidden, **kw) for _ in range(depth))
    return Sequential(hidden, *layers)


def decoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
) -> Sequential:
    """Top-down block ``(B, in_ch, H, W) -> (B, out_ch, H * |resample|, W * |resample|)``.

    ``resample = -2^k``: k upsampling cells halving the width each time (``out_ch = hidden / 2^k``, the mirror
    of :func:`encoder_block`), then ``depth`` decoder cells; ``resample = 1``: ``out_ch = hidden``.
    """
    kw = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope)
    if resample > 1:
        raise ValueError(f"decoder_block upsamples: resample must be 1 or negative, got {resample}")
    k = _steps(resample)
    layers: list[nn.Module] = []
    width = in_ch
    for i in range(k):
        w = max(hidden >> (i + 1), 1)
        layers.append(_up(width, w))
        width = w
    out = width if k else hidden
    if width != out:
        layers.append(nn.Conv2d(width, out, 1))
    layers.extend(decoder_cell(out, **kw) for _ in range(depth))
    return Sequential(out, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1x1 convolution head ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    return nn.Conv2d(in_ch, out_ch, 1)


@CELL_FAMILIES.register("nvae")
class NVAE(CellFamily):
    """NVAE's encoder and decoder cells: ``(B, C, H, W)``."""

    block = staticmethod(encoder_block)  # a family's single cell: the bottom-up one
    encoder_block = staticmethod(encoder_block)
    decoder_block = staticmethod(decoder_block)
    pointwise = staticmethod(pointwise)
    residual_state = True  # the skip state's map from the prior features starts as the identity (layers.py)


__all__ = [
    "SqueezeExcite",
    "decoder_block",
    "decoder_cell",
    "encoder_block",
    "encoder_cell",
    "pointwise",
]
