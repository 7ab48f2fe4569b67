"""One-dimensional cells for sequences ``(B, C, T)``: the temporal analogue of :mod:`hvae.nets.conv`.

With ``block: temporal`` each level of the hierarchy sits at its own time resolution (strides 2, 4, …:
each level coarser in time), as the convolutional hierarchy does for images. Also here: the token encoder
that embeds integer ids ``(B, T)`` for a sentence-level model with global latent vectors (``block: mlp``).
"""

from __future__ import annotations

from torch import Tensor, nn

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
    """``depth`` 1-D convolutions with batch norm and activation, ``(B, in_ch, T) -> (B, hidden, T')``.

    ``resample``: 1 keeps the length (kernel 3), s > 1 divides it by s (first convolution with stride s and
    kernel 2s, bottom-up), -s multiplies it by s (nearest upsampling, then convolutions: top-down).
    """
    layers: list[nn.Module] = []
    if resample < -1:
        layers.append(nn.Upsample(scale_factor=-resample, mode="nearest"))
    width = in_ch
    for i in range(max(depth, 1)):
        s = resample if (resample > 1 and i == 0) else 1
        kernel, pad = (3, 1) if s == 1 else (2 * s, s // 2)  # T -> T / s for T divisible by s
        layers.append(nn.Conv1d(width, hidden, kernel, stride=s, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation(act, leaky_slope))
        width = hidden
    return Sequential(hidden, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Conv1d:
    """A per-step linear head ``(B, in_ch, T) -> (B, out_ch, T)``."""
    return nn.Conv1d(in_ch, out_ch, 1)


class TokenEncoder(nn.Module):
    """Token ids ``(B, T)`` -> features ``(B, out_features)`` for the bottom-up pass of a sentence-level model.

    Embedding (padding embeds to zero), then two stride-2 convolutions over time (kernel 4, GELU), flattened:
    the features keep the order of the tokens at a quarter of the resolution.
    """

    def __init__(self, vocab: int, embed_dim: int, length: int, pad_id: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=pad_id)
        self.convs = nn.Sequential(
            nn.Conv1d(embed_dim, embed_dim, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(embed_dim, embed_dim, 4, stride=2, padding=1),
            nn.GELU(),
        )
        self.length = -(-length // 4) * 4  # padded to a multiple of 4 inside
        self.pad_value = 0 if pad_id is None else pad_id
        self.out_features = embed_dim * (self.length // 4)

    def forward(self, ids: Tensor) -> Tensor:
        extra = self.length - ids.shape[1]
        if extra:
            ids = nn.functional.pad(ids, (0, extra), value=self.pad_value)
        h = self.embed(ids).transpose(1, 2)  # (B, T) -> (B, E, T)
        return self.convs(h).flatten(1)  # (B, E, T/4) -> (B, E*T/4)


@CELL_FAMILIES.register("temporal")
class Temporal(CellFamily):
    """1-D convolutional cells for sequences: ``(B, C, T)``."""

    block = staticmethod(block)
    pointwise = staticmethod(pointwise)
