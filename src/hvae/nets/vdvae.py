"""VDVAE cells (Child 2021) for spatial latents ``(B, C, H, W)``: bottleneck residual blocks, no batch norm.

    block(x) = x + c_4(act(c_3(act(c_2(act(c_1(act(x))))))))
    c_1: Conv1x1 C -> C/4,  c_2, c_3: Conv3x3 C/4 -> C/4,  c_4: Conv1x1 C/4 -> C     (openai/vdvae ``Block``)

``act`` is the config's activation (the paper: GELU). The last convolution of every block starts scaled
down (VDVAE scales it by sqrt(1 / number of blocks); a family cell does not know that number, so it uses
:data:`LAST_SCALE`), which keeps a deep stack near the identity at initialisation. ``batch_norm`` is
ignored: VDVAE has none.

Resolution changes as in VDVAE: bottom-up, the blocks run at the input resolution and average pooling
follows (``"32d2"``); top-down, nearest upsampling comes first (``"16m8"``). The width stays ``hidden``.
The posterior reads the concatenation of the encoder and decoder states; the top-down rule of
:class:`hvae.layers.LatentLayer` does that as a sum of two pointwise maps (one linear map of the concatenation).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..registry import CELL_FAMILIES
from .common import CellFamily, Sequential, activation

BOTTLENECK = 0.25  # VDVAE's bottleneck width ratio
LAST_SCALE = 0.1


class Bottleneck(nn.Module):
    """VDVAE's residual bottleneck block ``(B, ch, H, W) -> (B, ch, H, W)``."""

    def __init__(self, ch: int, act: str = "gelu", leaky_slope: float = 0.1):
        super().__init__()
        mid = max(1, int(ch * BOTTLENECK))
        self.out_ch = ch
        self.branch = nn.Sequential(
            activation(act, leaky_slope),
            nn.Conv2d(ch, mid, 1),
            activation(act, leaky_slope),
            nn.Conv2d(mid, mid, 3, padding=1),
            activation(act, leaky_slope),
            nn.Conv2d(mid, mid, 3, padding=1),
            activation(act, leaky_slope),
            nn.Conv2d(mid, ch, 1),
        )
        last = self.branch[-1]
        last.weight.data.mul_(LAST_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def _factor(resample: int) -> int:
    r = abs(resample)
    if r < 1 or 2 ** int(round(math.log2(r))) != r:
        raise ValueError(f"resample must be a power of two (or its negative for upsampling), got {resample}")
    return r


def encoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = False,
    act: str = "gelu",
    leaky_slope: float = 0.1,
) -> Sequential:
    """Bottom-up ``(B, in_ch, H, W) -> (B, hidden, H / resample, W / resample)``: a 3x3 convolution when the
    width changes (VDVAE's input stem), ``depth`` blocks, then average pooling by ``resample``."""
    if resample < 1:
        raise ValueError(f"encoder_block downsamples: resample must be >= 1, got {resample}")
    r = _factor(resample)
    layers: list[nn.Module] = []
    if in_ch != hidden:
        layers.append(nn.Conv2d(in_ch, hidden, 3, padding=1))
    layers.extend(Bottleneck(hidden, act, leaky_slope) for _ in range(depth))
    if r > 1:
        layers.append(nn.AvgPool2d(r))
    return Sequential(hidden, *layers)


def decoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = False,
    act: str = "gelu",
    leaky_slope: float = 0.1,
) -> Sequential:
    """Top-down ``(B, in_ch, H, W) -> (B, hidden, H * |resample|, W * |resample|)``: nearest upsampling, a 1x1
    convolution when the width changes, then ``depth`` blocks."""
    if resample > 1:
        raise ValueError(f"decoder_block upsamples: resample must be 1 or negative, got {resample}")
    r = _factor(resample)
    layers: list[nn.Module] = []
    if r > 1:
        layers.append(nn.Upsample(scale_factor=r, mode="nearest"))
    if in_ch != hidden:
        layers.append(nn.Conv2d(in_ch, hidden, 1))
    layers.extend(Bottleneck(hidden, act, leaky_slope) for _ in range(depth))
    return Sequential(hidden, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1x1 convolution head ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    return nn.Conv2d(in_ch, out_ch, 1)


def official_init(layer: nn.Module, cfg) -> None:
    """VDVAE's initialisation of one level (``model.official_init``), from openai/vdvae ``vae.py``
    ``DecBlock.__init__``: the prior block's last conv zero (``zero_last=True``: p = N(0, I) under the log-sigma
    parametrisation, and no extra features added to the stream), ``z_proj`` and the residual blocks' last conv
    scaled by sqrt(1 / n_blocks), n_blocks the number of decoder blocks (here the levels)."""
    scale = math.sqrt(1.0 / cfg.num_layers)
    if getattr(layer, "prior_head", None) is not None:
        nn.init.zeros_(layer.prior_head.weight)
        nn.init.zeros_(layer.prior_head.bias)
    if getattr(layer, "trans_from_z", None) is not None:
        layer.trans_from_z.weight.data.mul_(scale)
    for m in layer.prior_net.modules() if layer.prior_net is not None else ():
        if isinstance(m, Bottleneck):
            m.branch[-1].weight.data.mul_(scale / LAST_SCALE)


def norm(ch: int) -> nn.Module:
    return nn.Identity()


@CELL_FAMILIES.register("vdvae")
class VDVAE(CellFamily):
    """VDVAE's bottleneck blocks: ``(B, C, H, W)``."""

    block = staticmethod(encoder_block)  # a family's single cell: the bottom-up one
    encoder_block = staticmethod(encoder_block)
    decoder_block = staticmethod(decoder_block)
    pointwise = staticmethod(pointwise)
    residual_state = True  # the skip state's map from the prior features starts as the identity (layers.py)
    official_init = staticmethod(official_init)
