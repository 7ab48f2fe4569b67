"""The shapes a :class:`~hvae.HierarchicalVAE` is built with: the first bottom-up block's input channels,
each level's latent shape and the padding that makes the data divisible by the total stride (and the crop
that undoes it on the decoder's output)."""

from __future__ import annotations

import math

from torch import Tensor

from .config import ModelConfig
from .layers import latent_channels


def geometry(cfg: ModelConfig) -> tuple[int, list[tuple[int, ...]], tuple[int, ...] | None]:
    """The input channels of the first bottom-up block, each level's latent shape (bottom to top) and the
    padding of the data: (left, right, top, bottom) of images, (left, right) of sequences, None for none."""
    L, shape = cfg.num_layers, tuple(cfg.data_shape)
    strides = list(cfg.strides or [])  # conv-type blocks: one per level (the config checks it)
    pad: tuple[int, ...] | None = None
    latent_shapes: list[tuple[int, ...]]
    if cfg.block == "mlp":
        in_ch = math.prod(shape)
        latent_shapes = [(latent_channels(cfg, l),) for l in range(L)]
    elif len(shape) == 2:  # sequences (C, T), block temporal: padded at the end to the total stride
        in_ch, t = shape
        total = math.prod(strides)
        if t % total:
            pad = (0, -(-t // total) * total - t)
            t += pad[1]
        latent_shapes = []
        for l, s in enumerate(strides):
            t //= s
            latent_shapes.append((latent_channels(cfg, l), t))
    else:
        in_ch = shape[0]
        h, w = shape[1:]
        # images are padded (centred, zeros) to a multiple of the total stride; p(x | z) is cropped back
        total = math.prod(strides)
        ph, pw = -(-h // total) * total - h, -(-w // total) * total - w
        if ph or pw:
            pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        h, w = h + ph, w + pw
        latent_shapes = []
        for l, s in enumerate(strides):
            h, w = h // s, w // s
            latent_shapes.append((latent_channels(cfg, l), h, w))
    return in_ch, latent_shapes, pad


def crop(params: Tensor, pad: tuple[int, ...] | None, data_shape: tuple[int, ...]) -> Tensor:
    """The decoder's output on the padded data (B, P, *padded) cropped back to the data's extent, undoing
    the padding :func:`geometry` chose (``pad`` None: returned as it is)."""
    if pad is None:
        return params
    if len(pad) == 2:  # a sequence padded at its end: (B, P, T') -> (B, P, T)
        return params[:, :, : data_shape[1]]
    left, _, top, _ = pad  # an image padded around its centre: (B, P, H + ph, W + pw) -> (B, P, H, W)
    H, W = data_shape[1:]
    return params[:, :, top : top + H, left : left + W]
