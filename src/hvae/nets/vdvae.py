"""VDVAE cells (Child 2021) for spatial latents ``(B, C, H, W)``: bottleneck blocks, no batch norm.

    block(x) = x + c_4(act(c_3(act(c_2(act(c_1(act(x))))))))
    c_1: Conv1x1 C -> C/4,  c_2, c_3: Conv3x3 C/4 -> C/4,  c_4: Conv1x1 C/4 -> C     (openai/vdvae ``Block``)

``act`` is the config's activation (the paper: GELU). The last convolution of every block starts scaled
down (VDVAE scales it by sqrt(1 / number of blocks); without ``model.official_init`` a cell does not know that
number and uses :data:`LAST_SCALE`), which keeps a deep stack near the identity at initialisation.
``batch_norm`` is ignored: VDVAE has none.

Resolution changes as in VDVAE: bottom-up, the blocks run at the input resolution and average pooling
follows (``"32d2"``); top-down, nearest upsampling comes first (``"16m8"``), or last with
``vdvae.upsample_last``. The width stays ``hidden``.

``model.vdvae`` (:class:`hvae.config.VDVAEConfig`) builds a level as openai/vdvae ``vae.py`` does, through the
family hooks of :class:`hvae.nets.CellFamily`: the posterior as ``DecBlock.enc``, a non-residual block on
cat(h, d) (:class:`PosteriorBlock`); the prior as ``DecBlock.prior``, a block whose extra ``width`` outputs are
added to the stream and whose last conv starts at zero (:class:`PriorBlock`); the state h + W_z z; the encoder's
blocks per level (``Encoder.build``); 1x1 middle convs at small resolutions; learned bias maps per resolution
(``Decoder.bias_xs``). Without it, the posterior reads the concatenation as the top-down rule of
:class:`hvae.layers.LatentLayer` does: a sum of two pointwise maps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import CELL_FAMILIES
from .common import CellFamily, PosteriorNet, Sequential, activation

if TYPE_CHECKING:
    from ..config import ModelConfig

BOTTLENECK = 0.25  # VDVAE's bottleneck width ratio (hps.py bottleneck_multiple)
LAST_SCALE = 0.1


class Bottleneck(nn.Module):
    """VDVAE's ``Block`` ``(B, ch, H, W) -> (B, out_ch, H, W)``: residual (``x + branch(x)``, the default) or
    not (the posterior's and prior's blocks). ``mid`` is the bottleneck width (``ch / 4`` by default);
    ``pointwise`` makes the two middle convs 1x1 (vae.py: ``use_3x3 = res > 2``); the last conv's weight is
    scaled by ``last_scale`` (0: zero, ``zero_last``)."""

    def __init__(
        self,
        ch: int,
        act: str = "gelu",
        leaky_slope: float = 0.1,
        *,
        out_ch: int | None = None,
        mid: int | None = None,
        residual: bool = True,
        pointwise: bool = False,
        last_scale: float = LAST_SCALE,
    ):
        super().__init__()
        mid = mid if mid is not None else max(1, int(ch * BOTTLENECK))
        self.out_ch = out_ch if out_ch is not None else ch
        if residual and self.out_ch != ch:
            raise ValueError(f"a residual block keeps its width: out_ch {self.out_ch} != ch {ch}")
        self.residual = residual
        k = 1 if pointwise else 3
        self.branch = nn.Sequential(
            activation(act, leaky_slope),
            nn.Conv2d(ch, mid, 1),
            activation(act, leaky_slope),
            nn.Conv2d(mid, mid, k, padding=k // 2),
            activation(act, leaky_slope),
            nn.Conv2d(mid, mid, k, padding=k // 2),
            activation(act, leaky_slope),
            nn.Conv2d(mid, self.out_ch, 1),
        )
        self.last.weight.data.mul_(last_scale)

    @property
    def first(self) -> nn.Conv2d:
        """c_1, the block's first convolution."""
        conv = self.branch[1]
        assert isinstance(conv, nn.Conv2d)
        return conv

    @property
    def last(self) -> nn.Conv2d:
        """c_4, the block's last convolution."""
        conv = self.branch[-1]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x) if self.residual else self.branch(x)


def _zero_biases(module: nn.Module) -> None:
    """vae_helpers.py ``get_conv``: every convolution's bias starts at zero (``zero_bias=True``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)


class PosteriorBlock(PosteriorNet):
    """q's raw parameters as vae.py ``DecBlock.enc`` computes them: a non-residual block on cat(h, d),
    ``(B, h_ch, H, W)``, ``(B, d_ch, H, W) -> (B, n_raw, H, W)``, bottleneck width ``mid``.

    Its first conv is linear in each half of the concatenation (c_1(act(cat(h, d))) = W_h act(h) + W_d act(d) + b),
    so the half of d is computed once per input (:meth:`context`) and reused across importance samples."""

    def __init__(
        self, h_ch: int, d_ch: int, mid: int, n_raw: int, act: str, leaky_slope: float, pointwise: bool
    ) -> None:
        super().__init__()
        self.h_ch = h_ch
        self.block = Bottleneck(
            h_ch + d_ch, act, leaky_slope, out_ch=n_raw, mid=mid, residual=False, pointwise=pointwise, last_scale=1.0
        )
        _zero_biases(self)

    def context(self, d: Tensor) -> Tensor:
        """W_d act(d) + b: ``(B, d_ch, H, W) -> (B, mid, H, W)``."""
        c1 = self.block.first
        return F.conv2d(self.block.branch[0](d), c1.weight[:, self.h_ch :], c1.bias)

    def forward(self, ctx: Tensor, h: Tensor) -> Tensor:
        """The raw parameters of q ``(B, n_raw, H, W)`` from the context and the prior's features h."""
        c1 = self.block.first
        a = ctx + F.conv2d(self.block.branch[0](h), c1.weight[:, : self.h_ch])
        return self.block.branch[2:](a)


class PriorBlock(nn.Module):
    """p's raw parameters and the stream as vae.py ``DecBlock.prior`` gives them: a non-residual block
    ``(B, ch, H, W) -> (B, n_raw + ch, H, W)`` whose first ``n_raw`` channels are p's parameters and the rest is
    added to the stream, ``h -> (raw (B, n_raw, H, W), h + extra (B, ch, H, W))``. Its last conv starts at zero
    (``zero_last=True``): p = N(0, I) under the log-sigma parametrisation and the stream unchanged at first."""

    def __init__(self, ch: int, mid: int, n_raw: int, act: str, leaky_slope: float, pointwise: bool) -> None:
        super().__init__()
        self.n_raw = n_raw
        self.block = Bottleneck(
            ch, act, leaky_slope, out_ch=n_raw + ch, mid=mid, residual=False, pointwise=pointwise, last_scale=0.0
        )
        _zero_biases(self)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.block(h)
        return out[:, : self.n_raw], h + out[:, self.n_raw :]


def _factor(resample: int) -> int:
    r = abs(resample)
    if r < 1 or 2 ** int(round(math.log2(r))) != r:
        raise ValueError(f"resample must be a power of two (or its negative for upsampling), got {resample}")
    return r


def _pointwise_at(size: int | None, pointwise_at: int) -> bool:
    """Whether a block at resolution ``size`` has 1x1 middle convs (vae.py: ``use_3x3 = res > 2``)."""
    if pointwise_at and size is None:
        raise ValueError("pointwise_at needs the blocks' resolution: pass size=")
    return size is not None and size <= pointwise_at


def encoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = False,
    act: str = "gelu",
    leaky_slope: float = 0.1,
    size: int | None = None,
    pointwise_at: int = 0,
    split_pool: bool = False,
    last_scale: float = LAST_SCALE,
    zero_bias: bool = False,
) -> Sequential:
    """Bottom-up ``(B, in_ch, H, W) -> (B, hidden, H / resample, W / resample)``: a 3x3 convolution when the
    width changes (VDVAE's input stem), ``depth`` blocks, then average pooling by ``resample``. With
    ``split_pool`` (vae.py ``Encoder.build``'s ``"32d2,16x6"``) one block runs before the pooling and the rest
    after it. ``size``: the input's height (needed with ``pointwise_at``, the largest resolution whose
    blocks have 1x1 middle convs); ``last_scale``: the blocks' last convs' scale; ``zero_bias``: every conv's
    bias starts at zero."""
    if resample < 1:
        raise ValueError(f"encoder_block downsamples: resample must be >= 1, got {resample}")
    r = _factor(resample)
    before = min(depth, 1) if (split_pool and r > 1) else depth
    after_size = size // r if size is not None else None
    layers: list[nn.Module] = []
    if in_ch != hidden:
        layers.append(nn.Conv2d(in_ch, hidden, 3, padding=1))
    layers.extend(
        Bottleneck(hidden, act, leaky_slope, pointwise=_pointwise_at(size, pointwise_at), last_scale=last_scale)
        for _ in range(before)
    )
    if r > 1:
        layers.append(nn.AvgPool2d(r))
    layers.extend(
        Bottleneck(hidden, act, leaky_slope, pointwise=_pointwise_at(after_size, pointwise_at), last_scale=last_scale)
        for _ in range(depth - before)
    )
    out = Sequential(hidden, *layers)
    if zero_bias:
        _zero_biases(out)  # the stem's too
    return out


def decoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = False,
    act: str = "gelu",
    leaky_slope: float = 0.1,
    size: int | None = None,
    pointwise_at: int = 0,
    upsample_last: bool = False,
    last_scale: float = LAST_SCALE,
    zero_bias: bool = False,
) -> Sequential:
    """Top-down ``(B, in_ch, H, W) -> (B, hidden, H * |resample|, W * |resample|)``: nearest upsampling, a 1x1
    convolution when the width changes, then ``depth`` blocks; with ``upsample_last`` the 1x1 convolution and
    the blocks run at the input's resolution and the upsampling comes last (vae.py: a ``DecBlock``'s resnet
    runs at its own resolution; the next resolution's first block upsamples, ``"4m1"``). ``size``: the input's
    height; ``pointwise_at``, ``last_scale`` and ``zero_bias`` as in :func:`encoder_block`."""
    if resample > 1:
        raise ValueError(f"decoder_block upsamples: resample must be 1 or negative, got {resample}")
    r = _factor(resample)
    block_size = size if (size is None or upsample_last) else size * r
    up: list[nn.Module] = [nn.Upsample(scale_factor=r, mode="nearest")] if r > 1 else []
    layers: list[nn.Module] = [] if upsample_last else list(up)
    if in_ch != hidden:
        layers.append(nn.Conv2d(in_ch, hidden, 1))
    pw = _pointwise_at(block_size, pointwise_at)
    layers.extend(Bottleneck(hidden, act, leaky_slope, pointwise=pw, last_scale=last_scale) for _ in range(depth))
    if upsample_last:
        layers.extend(up)
    out = Sequential(hidden, *layers)
    if zero_bias:
        _zero_biases(out)
    return out


def pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1x1 convolution head ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    return nn.Conv2d(in_ch, out_ch, 1)


class GainBiasConv2d(nn.Conv2d):
    """The output head with vae.py ``Decoder``'s ``final_fn`` in front: x * gain + bias per channel (``gain``
    ones, ``out_bias`` zeros, ``(1, in_ch, 1, 1)`` each, learned), then DmolNet's 1x1 convolution,
    ``(B, in_ch, H, W) -> (B, out_ch, H, W)``. A ``Conv2d`` so that ``.weight`` reads as the convolution's."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 1)
        self.gain = nn.Parameter(torch.ones(1, in_ch, 1, 1))
        self.out_bias = nn.Parameter(torch.zeros(1, in_ch, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x * self.gain + self.out_bias)


def official_init(layer: nn.Module, cfg: ModelConfig) -> None:
    """VDVAE's initialisation of one level (``model.official_init``), from openai/vdvae ``vae.py``
    ``DecBlock.__init__``: the prior head zero (``zero_last=True``: p = N(0, I) under the log-sigma
    parametrisation; a :class:`PriorBlock` is built so) and ``z_proj`` scaled by sqrt(1 / n_blocks), n_blocks the
    number of decoder blocks (here the levels). The residual blocks' last convs get the same scale when built
    (:meth:`VDVAE.cell_options`)."""
    scale = math.sqrt(1.0 / cfg.num_layers)
    head = getattr(layer, "prior_head", None)
    if isinstance(head, nn.Conv2d):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    z_proj = getattr(layer, "trans_from_z", None)
    if isinstance(z_proj, nn.Conv2d):
        z_proj.weight.data.mul_(scale)
        if cfg.vdvae.active() and z_proj.bias is not None:  # get_1x1: zero bias
            nn.init.zeros_(z_proj.bias)


def norm(ch: int) -> nn.Module:
    return nn.Identity()


def _size(shape: tuple[int, ...]) -> int | None:
    return shape[1] if len(shape) == 3 else None


@CELL_FAMILIES.register("vdvae")
class VDVAE(CellFamily):
    """VDVAE's bottleneck blocks: ``(B, C, H, W)``."""

    block = staticmethod(encoder_block)  # a family's single cell: the bottom-up one
    pointwise = staticmethod(pointwise)
    residual_state = True  # the skip state's map from the prior features starts as the identity (layers.py)
    official_init = staticmethod(official_init)

    @classmethod
    def encoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw: Any) -> Sequential:
        return encoder_block(in_ch, hidden, depth, resample, **kw)

    @classmethod
    def decoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw: Any) -> Sequential:
        return decoder_block(in_ch, hidden, depth, resample, **kw)

    @classmethod
    def head(cls, role: str, in_ch: int, out_ch: int, cfg: Any) -> nn.Module:
        """With ``model.vdvae.output_gain``, the output head is :class:`GainBiasConv2d` (vae.py ``Decoder.build``:
        ``gain``, ``bias``, ``final_fn``); every other head the default."""
        if role == "output" and cfg.vdvae.output_gain:
            return GainBiasConv2d(in_ch, out_ch)
        return super().head(role, in_ch, out_ch, cfg)

    @staticmethod
    def encoder_depth(cfg: ModelConfig, level: int) -> int:
        depths = cfg.vdvae.encoder_depths
        return cfg.depth if depths is None else depths[level]

    @staticmethod
    def cell_options(cfg: ModelConfig, role: str, level: int, shape: tuple[int, ...]) -> dict[str, Any]:
        v, strides = cfg.vdvae, cfg.strides or [1] * cfg.num_layers
        size = _size(shape)
        if role == "encoder":  # into ``level`` from the resolution below
            size_in = None if size is None else size * strides[level]
            opts: dict[str, Any] = dict(
                size=size_in, pointwise_at=v.pointwise_at, split_pool=v.encoder_depths is not None
            )
            if cfg.official_init and v.encoder_depths is not None:  # vae.py Encoder.build: x sqrt(1 / n_blocks)
                opts["last_scale"] = math.sqrt(1.0 / max(1, sum(v.encoder_depths)))
            opts["zero_bias"] = cfg.official_init and v.active()
            return opts
        # "prior" (into ``level`` from the level above) or "decoder" (from level 0 to the data)
        size_in = size if (role == "decoder" or size is None) else size // strides[level + 1]
        opts = dict(size=size_in, pointwise_at=v.pointwise_at, upsample_last=v.upsample_last)
        if cfg.official_init:  # vae.py DecBlock.__init__: resnet.c4 x sqrt(1 / n_blocks)
            opts["last_scale"] = math.sqrt(1.0 / cfg.num_layers)
        opts["zero_bias"] = cfg.official_init and v.active()
        return opts

    @staticmethod
    def posterior_block(
        cfg: ModelConfig, level: int, h_ch: int, d_ch: int, n_raw: int, shape: tuple[int, ...]
    ) -> PosteriorNet | None:
        if not cfg.vdvae.posterior_block:
            return None
        mid = max(1, int(h_ch * BOTTLENECK))  # vae.py DecBlock: cond_width = width * bottleneck_multiple
        pw = _pointwise_at(_size(shape), cfg.vdvae.pointwise_at)
        return PosteriorBlock(h_ch, d_ch, mid, n_raw, cfg.activation, cfg.leaky_slope, pw)

    @staticmethod
    def prior_block(cfg: ModelConfig, level: int, ch: int, n_raw: int, shape: tuple[int, ...]) -> nn.Module | None:
        if not cfg.vdvae.prior_block:
            return None
        pw = _pointwise_at(_size(shape), cfg.vdvae.pointwise_at)
        return PriorBlock(ch, max(1, int(ch * BOTTLENECK)), n_raw, cfg.activation, cfg.leaky_slope, pw)

    @staticmethod
    def feature_map(cfg: ModelConfig, level: int, ch: int, shape: tuple[int, ...]) -> nn.Parameter | None:
        """vae.py ``Decoder.build``: ``bias_xs``, one zero map per resolution, the stream the first block at that
        resolution starts from (added to the upsampled stream from above); on top, the whole stream."""
        if not cfg.vdvae.bias_maps or len(shape) != 3:
            return None
        strides = cfg.strides or [1] * cfg.num_layers
        first_at_resolution = level == cfg.num_layers - 1 or strides[level + 1] > 1
        return nn.Parameter(torch.zeros(1, ch, *shape[1:])) if first_at_resolution else None

    @staticmethod
    def identity_state(cfg: ModelConfig) -> bool:
        return cfg.vdvae.identity_state
