"""Pictures of data: batches as displayable images, image grids, PNG files and PNG data URIs.

Used by ``hvae sample`` (grids written to PNG) and ``hvae report`` (grids embedded in HTML).
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

__all__ = ["images_to_uri", "make_grid", "png_bytes", "png_data_uri", "save_grid", "to_images"]

# Grids of images smaller than this many pixels a side are upscaled (nearest neighbour) to be visible.
MIN_DISPLAY_SIZE = 28


def to_images(x: Tensor, data_shape: Sequence[int]) -> Tensor | None:
    """A batch ``x`` (N, *data_shape) as images (N, C, H, W) in [0, 1], C in {1, 3}, or None if not images.

    Images (C, H, W) with 1 or 3 channels and grey images (H, W) are kept; vectors whose length D is a
    perfect square (64 -> 1x8x8, 784 -> 1x28x28) are reshaped; anything else (tabular data) gives None.
    Values are clamped to [0, 1] (model means and binarised data already lie there).
    """
    shape = tuple(int(s) for s in data_shape)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, shape))})")
    n = x.shape[0]
    if len(shape) == 3 and shape[0] in (1, 3):
        img = x
    elif len(shape) == 2:
        img = x.reshape(n, 1, *shape)  # (N, H, W) -> (N, 1, H, W)
    elif len(shape) == 1 and shape[0] > 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        img = x.reshape(n, 1, side, side)  # (N, D) -> (N, 1, sqrt D, sqrt D)
    else:
        return None
    return img.detach().float().cpu().clamp(0.0, 1.0)


def _auto_upscale(height: int, width: int) -> int:
    """The smallest integer factor that brings the shorter side to at least MIN_DISPLAY_SIZE pixels."""
    return max(1, math.ceil(MIN_DISPLAY_SIZE / max(1, min(height, width))))


def make_grid(images: Tensor, nrow: int, pad: int = 1, upscale: int | None = None) -> np.ndarray:
    """Tile ``images`` (N, C, H, W) in [0, 1], C in {1, 3}, into one RGB picture, ``nrow`` images per row.

    Each image is first upscaled by ``upscale`` (nearest neighbour; default: enough for small images such as
    8x8 digits to reach MIN_DISPLAY_SIZE pixels), then placed with ``pad`` pixels of grey between and around.
    Returns uint8 (H', W', 3) with H' = rows * (s*H + pad) + pad, W' = ncol * (s*W + pad) + pad.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, _, h, w = images.shape
    s = _auto_upscale(h, w) if upscale is None else int(upscale)
    if s < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    imgs = images.detach().float().cpu().clamp(0.0, 1.0).expand(-1, 3, -1, -1)  # grey -> RGB
    imgs = imgs.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)  # (N, 3, sH, sW)
    arr = (imgs.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)  # (N, sH, sW, 3)
    ncol, nrows = min(nrow, max(n, 1)), max(1, math.ceil(n / nrow))
    ch, cw = s * h + pad, s * w + pad
    grid = np.full((nrows * ch + pad, ncol * cw + pad, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * ch : pad + r * ch + s * h, pad + c * cw : pad + c * cw + s * w] = arr[i]
    return grid


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int = 8, pad: int = 1, upscale: int | None = None) -> Path:
    """Write ``images`` (N, C, H, W) in [0, 1] as one PNG grid (see :func:`make_grid`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images, nrow, pad=pad, upscale=upscale)).save(path, format="PNG")
    return path


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """PNG encoding of a uint8 array (H, W) or (H, W, 3|4), or of a PIL image."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8 (H, W[, C]), got {image.dtype}")
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(image: np.ndarray | Image.Image | bytes) -> str:
    """``data:image/png;base64,...`` for a uint8 array, a PIL image, or bytes already PNG-encoded."""
    data = image if isinstance(image, bytes) else png_bytes(image)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def images_to_uri(images: Tensor, nrow: int) -> str:
    """A grid of ``images`` (N, C, H, W) in [0, 1] as a PNG data URI."""
    return png_data_uri(make_grid(images, nrow))
