"""NVAE cells (Vahdat & Kautz 2020, fig. 3) for spatial latents ``(B, C, H, W)``.

Two cell types, as in the paper:
  * encoder (bottom-up) cell:  x + 0.1 f(x),  f = BN - act - Conv3x3 - BN - act - Conv3x3 - SE;
  * decoder (top-down) cell:   x + 0.1 f(x),  f = [BN] - Conv1x1 (expand x6) - BN - act - depthwise Conv5x5 - BN
    - act - Conv1x1 - BN - SE (the leading BN with ``model.nvae.leading_bn``, as NVAE's ``InvertedResidual``).
``act`` is the config's activation (the paper: Swish). The 0.1 on the residual branch is NVAE's
(``Cell.forward``): deep stacks start near the identity.

Between scales, resampling cells change the resolution and the width (doubling with each halving, as in
NVAE): by default a stride-2 3x3 convolution going down and nearest upsampling with a 3x3 convolution going
up; with ``residual_resampling`` NVAE's residual cells (``Cell`` of type ``down_*`` / ``up_*``): a
:class:`FactorizedReduce` or a bilinear :class:`UpSample` + 1x1 skip beside a strided encoder branch or an
upsampling decoder branch. ``resample`` may be any power of two (a stride-4 level is two resampling cells,
e.g. NVAE's pre-processing in front of the first latent scale).

``model.nvae`` (:class:`hvae.config.NVAEConfig`) holds the rest of NVlabs/NVAE's construction, each an option
whose default keeps the family as it was: weight normalisation (:class:`LogWeightNorm`), the pre-processing
stem and cells and the input in [-1, 1], the post-processing cells, and the heads (:meth:`NVAE.head`):
posterior 3x3 of enc + 1x1(dec), prior ELU + 1x1, ELU + 3x3 output, the learned top map ``prior_ftr0``, the
combiner as one 1x1 of cat(s, z) (:class:`Combiner`), and the inverse autoregressive flow on each posterior sample
(:class:`PosteriorFlow`, ``--num_nf``).

The family interface: :func:`encoder_block` builds the bottom-up path, :func:`decoder_block` the prior
networks and the decoder; :func:`block` is :func:`encoder_block` (the fallback of families with one cell).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..registry import CELL_FAMILIES
from .common import CellFamily, Sequential, activation

EXPAND = 6  # NVAE's decoder cell expansion ratio
RESIDUAL_SCALE = 0.1  # NVAE: skip + 0.1 * cell(x)
POST_EXPAND = 3  # NVAE's post-processing cells (res_mbconv's up_post / normal_post: mconv_e3k5g0)
BN_MOMENTUM = 0.05  # NVAE's batch norms average their statistics more slowly than torch's default 0.1
WN_EPS = 1e-5  # neural_operations.py normalize_weight_jit: w = g v / (|v| + 1e-5)
WN_INIT_EPS = 1e-2  # Conv2D.__init__: log g = log(|v| + 1e-2)


def _norm(ch: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(ch, momentum=BN_MOMENTUM) if batch_norm else nn.Identity()


def _steps(resample: int) -> int:
    """log2 |resample|: the number of resampling cells (resample = 1 -> 0)."""
    r = abs(resample)
    k = int(round(math.log2(r))) if r >= 1 else -1
    if r < 1 or 2**k != r:
        raise ValueError(f"resample must be a power of two (or its negative for upsampling), got {resample}")
    return k


def _row_norm(v: Tensor) -> Tensor:
    """|v| per output channel: ``(out, in, kh, kw) -> (out, 1, 1, 1)``."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


class LogWeightNorm(nn.Module):
    """NVAE's weight normalisation (neural_operations.py ``Conv2D``, ``normalize_weight_jit``) as a
    parametrisation of a convolution's weight: ``w = exp(log g) v / (|v| + 1e-5)``, |v| the norm of each output
    channel's row ``(in, kh, kw)``; ``log g`` (``log_weight_norm``, shape ``(out, 1, 1, 1)``) starts at
    ``log(|v| + 1e-2)``, so w starts at about v. ``conv.weight`` is then the effective weight (what the spectral
    penalty reads, as NVAE's ``weight_normalized``); ``v`` is ``conv.parametrizations.weight.original``."""

    def __init__(self, v: Tensor):
        super().__init__()
        self.log_weight_norm = nn.Parameter(torch.log(_row_norm(v.detach()) + WN_INIT_EPS))

    def forward(self, v: Tensor) -> Tensor:
        return self.log_weight_norm.exp() * v / (_row_norm(v) + WN_EPS)


def conv(
    in_ch: int, out_ch: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = True, weight_norm: bool = False
) -> nn.Conv2d:
    """A ``k x k`` convolution ``(B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)`` with 'same' padding,
    weight-normalised (:class:`LogWeightNorm`) when ``weight_norm``."""
    c = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=k // 2, groups=groups, bias=bias)
    if weight_norm:
        parametrize.register_parametrization(c, "weight", LogWeightNorm(c.weight))
    return c


class ELUConv2d(nn.Conv2d):
    """ELU then a convolution (NVAE's ``dec_sampler`` and ``init_image_conditional``): a ``Conv2d`` whose input
    passes through an ELU first, so that ``.weight`` and ``.bias`` read as a convolution's."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.elu(x))


def elu_conv(in_ch: int, out_ch: int, k: int, *, weight_norm: bool = False) -> ELUConv2d:
    """ELU + ``k x k`` convolution with a bias, ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    c = ELUConv2d(in_ch, out_ch, k, padding=k // 2)
    if weight_norm:
        parametrize.register_parametrization(c, "weight", LogWeightNorm(c.weight))
    return c


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
    """``skip(x) + 0.1 branch(x)`` (NVAE's ``Cell.forward``); the skip is the identity unless the cell resamples."""

    def __init__(self, branch: nn.Module, ch: int, skip: nn.Module | None = None):
        super().__init__()
        self.branch = branch
        self.skip = skip
        self.out_ch = ch

    def forward(self, x: Tensor) -> Tensor:
        s = x if self.skip is None else self.skip(x)
        return s + RESIDUAL_SCALE * self.branch(x)


def encoder_cell(
    ch: int, *, batch_norm: bool = True, act: str = "swish", leaky_slope: float = 0.1, weight_norm: bool = False
) -> nn.Module:
    """NVAE's residual encoder cell ``(B, ch, H, W) -> (B, ch, H, W)`` (two ``BNSwishConv``, then SE)."""
    branch = nn.Sequential(
        _norm(ch, batch_norm),
        activation(act, leaky_slope),
        conv(ch, ch, 3, weight_norm=weight_norm),
        _norm(ch, batch_norm),
        activation(act, leaky_slope),
        conv(ch, ch, 3, weight_norm=weight_norm),
        SqueezeExcite(ch),
    )
    return _Residual(branch, ch)


def _inverted_residual(
    in_ch: int, out_ch: int, expand: int, *, batch_norm: bool, act: str, leaky_slope: float, leading_bn: bool
) -> list[nn.Module]:
    """NVAE's ``InvertedResidual`` (its own convolutions never weight-normalised: ``ConvBNSwish`` and the last
    conv set ``weight_norm=False``), then SE: ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    wide = expand * in_ch
    lead = [_norm(in_ch, batch_norm)] if leading_bn and batch_norm else []
    return [
        *lead,
        nn.Conv2d(in_ch, wide, 1, bias=not batch_norm),
        _norm(wide, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(wide, wide, 5, padding=2, groups=wide, bias=not batch_norm),  # depthwise
        _norm(wide, batch_norm),
        activation(act, leaky_slope),
        nn.Conv2d(wide, out_ch, 1, bias=not batch_norm),
        _norm(out_ch, batch_norm),
        SqueezeExcite(out_ch),
    ]


def decoder_cell(
    ch: int,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
    leading_bn: bool = False,
    expand: int = EXPAND,
) -> nn.Module:
    """NVAE's residual decoder cell with a depthwise separable 5x5 convolution ``(B, ch, H, W) -> (B, ch, H, W)``;
    ``leading_bn``: a batch norm first, as NVAE's ``InvertedResidual``."""
    kw: dict[str, Any] = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope, leading_bn=leading_bn)
    return _Residual(nn.Sequential(*_inverted_residual(ch, ch, expand, **kw)), ch)


class FactorizedReduce(nn.Module):
    """NVAE's skip of a down cell (neural_operations.py ``FactorizedReduce``): ``(B, in_ch, H, W) ->
    (B, out_ch, H / 2, W / 2)``, the activation, then four stride-2 1x1 convolutions reading the grid at offsets
    (0, 0), (1, 1), (0, 1), (1, 0), concatenated (out_ch // 4 channels each, the last the rest)."""

    def __init__(self, in_ch: int, out_ch: int, *, act: str = "swish", leaky_slope: float = 0.1, weight_norm=False):
        super().__init__()
        if out_ch < 4:
            raise ValueError(f"a residual down cell needs >= 4 output channels (four 1x1 parts), got {out_ch}")
        q = out_ch // 4
        self.act = activation(act, leaky_slope)
        self.convs = nn.ModuleList(
            conv(in_ch, c, 1, stride=2, weight_norm=weight_norm) for c in (q, q, q, out_ch - 3 * q)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        parts = (x, x[:, :, 1:, 1:], x[:, :, :, 1:], x[:, :, 1:, :])
        return torch.cat([c(p) for c, p in zip(self.convs, parts)], dim=1)


class UpSample(nn.Module):
    """Bilinear upsampling by 2 with aligned corners (neural_operations.py ``UpSample``), ``(B, C, H, W) ->
    (B, C, 2H, 2W)``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def _down(
    in_ch: int,
    out_ch: int,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
    weight_norm: bool = False,
    residual: bool = False,
) -> nn.Module:
    if not residual:
        return nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
    # NVAE's Cell 'down_enc' / 'down_pre' (res_bnswish x 2): FactorizedReduce(x) + 0.1 SE(BNSwishConv x 2 (x))
    branch = nn.Sequential(
        _norm(in_ch, batch_norm),
        activation(act, leaky_slope),
        conv(in_ch, out_ch, 3, stride=2, weight_norm=weight_norm),
        _norm(out_ch, batch_norm),
        activation(act, leaky_slope),
        conv(out_ch, out_ch, 3, weight_norm=weight_norm),
        SqueezeExcite(out_ch),
    )
    skip = FactorizedReduce(in_ch, out_ch, act=act, leaky_slope=leaky_slope, weight_norm=weight_norm)
    return _Residual(branch, out_ch, skip)


def _up(
    in_ch: int,
    out_ch: int,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
    weight_norm: bool = False,
    residual: bool = False,
    leading_bn: bool = False,
    expand: int = EXPAND,
) -> nn.Module:
    if not residual:
        # nearest upsampling then a convolution: free of transposed-convolution checkerboards
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))
    # NVAE's Cell 'up_dec' / 'up_post': UpSample + 1x1 (no bias) skip, beside nearest upsampling into an
    # InvertedResidual whose expansion counts the input channels
    kw: dict[str, Any] = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope, leading_bn=leading_bn)
    branch = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), *_inverted_residual(in_ch, out_ch, expand, **kw)
    )
    skip = nn.Sequential(UpSample(), conv(in_ch, out_ch, 1, bias=False, weight_norm=weight_norm))
    return _Residual(branch, out_ch, skip)


# -- the posterior's inverse autoregressive flow (NVAE's ``--num_nf``) ------------------------------------------


def _channel_mask(c_in: int, groups: int, c_out: int, zero_diag: bool) -> Tensor:
    """neural_ar_operations.py ``channel_mask``: which inputs each output channel reads at the kernel's centre,
    ``(c_out, c_in // groups)``. Channels are in blocks of ``c_out // c_in`` outputs per input (or the reverse):
    output block i reads inputs below i, and i itself unless ``zero_diag``; a depthwise kernel reads its own
    channel unless ``zero_diag``."""
    if groups == c_in:
        return torch.zeros(c_out, 1) if zero_diag else torch.ones(c_out, 1)
    if groups != 1 or (c_in % c_out and c_out % c_in):
        raise ValueError(f"an autoregressive conv needs groups 1 or {c_in} and c_in, c_out multiples: {c_in}, {c_out}")
    m = torch.ones(c_out, c_in)
    if c_out >= c_in:
        r = c_out // c_in
        for i in range(c_in):
            m[i * r : (i + 1) * r, i + 1 :] = 0
            if zero_diag:
                m[i * r : (i + 1) * r, i] = 0
    else:
        r = c_in // c_out
        for i in range(c_out):
            m[i, (i + 1) * r :] = 0
            if zero_diag:
                m[i, i * r : (i + 1) * r] = 0
    return m


def ar_mask(k: int, c_in: int, groups: int, c_out: int, *, zero_diag: bool, mirror: bool) -> Tensor:
    """neural_ar_operations.py ``create_conv_mask``, ``(c_out, c_in // groups, k, k)``: a position reads the rows
    above it and the positions left of it in its row (raster order), and at itself the channels
    :func:`_channel_mask` allows; ``mirror`` flips the kernel (the reverse raster order, same channel order)."""
    m = (k - 1) // 2
    mask = torch.ones(c_out, c_in // groups, k, k)
    mask[:, :, m:, :] = 0
    mask[:, :, m, :m] = 1
    mask[:, :, m, m] = _channel_mask(c_in, groups, c_out, zero_diag)
    return mask.flip(2, 3) if mirror else mask


class ARMask(nn.Module):
    """A convolution weight times a fixed autoregressive mask (a parametrisation: ``conv.weight`` is the masked
    weight). The mask is rebuilt from the shapes, so it is not saved."""

    mask: Tensor

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, v: Tensor) -> Tensor:
        return v * self.mask


def ar_conv(
    in_ch: int,
    out_ch: int,
    k: int,
    *,
    groups: int = 1,
    bias: bool = False,
    zero_diag: bool,
    mirror: bool,
    init_coeff: float = 1.0,
) -> nn.Conv2d:
    """NVAE's ``ARConv2d`` ``(B, in_ch, H, W) -> (B, out_ch, H, W)``: a masked (:func:`ar_mask`) and always
    weight-normalised k x k convolution, log g starting at ``log(|v * mask| + 1e-2) + log(init_coeff)``
    (``ELUConv``'s ``weight_init_coeff``)."""
    c = nn.Conv2d(in_ch, out_ch, k, padding=k // 2, groups=groups, bias=bias)
    mask = ar_mask(k, in_ch, groups, out_ch, zero_diag=zero_diag, mirror=mirror).to(c.weight.device)
    parametrize.register_parametrization(c, "weight", ARMask(mask))
    wn = LogWeightNorm(c.weight)  # reads the masked weight, as ARConv2d's init
    with torch.no_grad():
        wn.log_weight_norm.add_(math.log(init_coeff))
    parametrize.register_parametrization(c, "weight", wn)
    return c


class ARCell(nn.Module):
    """NVAE's ``CellAR`` (model.py) with its mean-only shift: ``z -> z - mu(z)``, ``(B, C, h, w)`` both, where
    mu = ELU-1x1(ELU(depthwise 5x5(ELU(3x3(z))))) (``ARInvertedResidual``, expansion 6, then ``ELUConv`` with
    ``weight_init_coeff`` 0.1) reads, at each position and channel, only the positions before it and the channels
    before it at that position: the Jacobian is unit triangular and the log-determinant 0."""

    def __init__(self, num_z: int, *, mirror: bool, expand: int = EXPAND):
        super().__init__()
        wide = num_z * expand
        self.conv = nn.Sequential(
            ar_conv(num_z, wide, 3, zero_diag=True, mirror=mirror),
            nn.ELU(),
            ar_conv(wide, wide, 5, groups=wide, zero_diag=False, mirror=mirror),
            nn.ELU(),
        )
        self.mu = nn.Sequential(
            nn.ELU(), ar_conv(wide, num_z, 1, bias=True, zero_diag=False, mirror=mirror, init_coeff=0.1)
        )

    def forward(self, z: Tensor) -> Tensor:
        w = cast(Tensor, self.conv[0].weight)
        return z - self.mu(self.conv(z.to(w.dtype))).to(z.dtype)  # latents stay float32 (layers.py)


class PosteriorFlow(nn.Module):
    """NVAE's ``nf_cells`` of one group (model.py ``init_normal_sampler``): ``n`` ``PairedCellAR``, each an
    :class:`ARCell` in raster order then one in the mirrored order. ``forward(z, ctx) -> (z', log_det)``, both
    ``(B, C, h, w)``: log q(z') = log q_0(z) - log_det elementwise summed. NVAE passes the encoder feature ``ftr``
    but ``ARInvertedResidual.forward`` never reads it: the flow reads z alone, and ``ctx`` is accepted for the
    interface. The shift is volume-preserving, so log_det is 0 (NVAE's ``torch.zeros_like(new_z)``)."""

    def __init__(self, num_z: int, n: int):
        super().__init__()
        self.cells = nn.ModuleList(ARCell(num_z, mirror=m) for _ in range(n) for m in (False, True))

    def forward(self, z: Tensor, ctx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        for cell in self.cells:
            z = cell(z)
        return z, torch.zeros_like(z)


class Combiner(nn.Module):
    """NVAE's ``DecCombinerCell`` (neural_operations.py): one 1x1 convolution of cat(h, z) with a bias,
    weight-normalised as NVAE's ``Conv2D`` when ``weight_norm`` (one log g per output channel over the whole
    row), ``(B, h_ch, H, W), (B, z_ch, H, W) -> (B, out_ch, H, W)``."""

    def __init__(self, h_ch: int, z_ch: int, out_ch: int, *, weight_norm: bool = False):
        super().__init__()
        self.conv = conv(h_ch + z_ch, out_ch, 1, weight_norm=weight_norm)

    def forward(self, z: Tensor, h: Tensor) -> Tensor:
        w = self.conv.weight
        return self.conv(torch.cat([h.to(w.dtype), z.to(w.dtype)], dim=1))


class SymmetricInput(nn.Module):
    """``x -> 2x - 1``: data in [0, 1] read by the networks in [-1, 1] (NVAE's ``AutoEncoder.forward``:
    ``self.stem(2 * x - 1.0)``)."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x - 1


def encoder_block(
    in_ch: int,
    hidden: int,
    depth: int,
    resample: int = 1,
    *,
    batch_norm: bool = True,
    act: str = "swish",
    leaky_slope: float = 0.1,
    weight_norm: bool = False,
    residual_resampling: bool = False,
    leading_bn: bool = False,
    pre_cells: int = 0,
    symmetric_input: bool = False,
) -> Sequential:
    """Bottom-up block ``(B, in_ch, H, W) -> (B, hidden, H / resample, W / resample)``.

    ``resample = 2^k``: k stride-2 resampling cells with widths ``hidden / 2^(k-1), …, hidden`` (one encoder
    cell between consecutive ones), then ``depth`` encoder cells at ``hidden``. ``pre_cells = n >= 1`` (the
    first block, NVAE's ``init_stem`` and ``init_pre_process``): a 3x3 stem to ``hidden / 2^k`` first, then per
    halving n - 1 encoder cells and a down cell. ``symmetric_input``: the block reads 2x - 1.
    ``leading_bn`` belongs to the decoder cells; accepted here so that one set of options serves both paths.
    """
    kw: dict[str, Any] = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope, weight_norm=weight_norm)
    k = _steps(resample)
    if resample < 1:
        raise ValueError(f"encoder_block downsamples: resample must be >= 1, got {resample}")
    layers: list[nn.Module] = [SymmetricInput()] if symmetric_input else []
    width = in_ch
    if pre_cells:
        width = max(hidden >> k, 1)
        layers.append(conv(in_ch, width, 3, weight_norm=weight_norm))  # init_stem
    for i in range(k):
        w = max(hidden >> (k - 1 - i), 1)
        if pre_cells:
            layers.extend(encoder_cell(width, **kw) for _ in range(pre_cells - 1))
        layers.append(_down(width, w, residual=residual_resampling, **kw))
        width = w
        if not pre_cells and i < k - 1:
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
    weight_norm: bool = False,
    residual_resampling: bool = False,
    leading_bn: bool = False,
    post_cells: int = 0,
) -> Sequential:
    """Top-down block ``(B, in_ch, H, W) -> (B, out_ch, H * |resample|, W * |resample|)``.

    ``resample = -2^k``: k upsampling cells halving the width each time (``out_ch = hidden / 2^k``, the mirror
    of :func:`encoder_block`), then ``depth`` decoder cells; ``resample = 1``: ``out_ch = hidden``.
    ``post_cells = n >= 1`` with k >= 1 (the decoder, NVAE's ``init_post_process``): per doubling an up cell and
    n - 1 decoder cells, all of expansion 3, and no further cells.
    """
    cell_kw: dict[str, Any] = dict(batch_norm=batch_norm, act=act, leaky_slope=leaky_slope, leading_bn=leading_bn)
    if resample > 1:
        raise ValueError(f"decoder_block upsamples: resample must be 1 or negative, got {resample}")
    k = _steps(resample)
    post = post_cells > 0 and k > 0
    expand = POST_EXPAND if post else EXPAND
    layers: list[nn.Module] = []
    width = in_ch
    for i in range(k):
        w = max(hidden >> (i + 1), 1)
        layers.append(_up(width, w, residual=residual_resampling, weight_norm=weight_norm, expand=expand, **cell_kw))
        width = w
        if post:
            layers.extend(decoder_cell(w, expand=expand, **cell_kw) for _ in range(post_cells - 1))
    out = width if k else hidden
    if width != out:
        layers.append(nn.Conv2d(width, out, 1))
    if not post:
        layers.extend(decoder_cell(out, **cell_kw) for _ in range(depth))
    return Sequential(out, *layers)


def pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    """A 1x1 convolution head ``(B, in_ch, H, W) -> (B, out_ch, H, W)``."""
    return nn.Conv2d(in_ch, out_ch, 1)


@CELL_FAMILIES.register("nvae")
class NVAE(CellFamily):
    """NVAE's encoder and decoder cells: ``(B, C, H, W)``; ``model.nvae`` chooses the official construction's
    details (:class:`hvae.config.NVAEConfig`)."""

    block = staticmethod(encoder_block)  # a family's single cell: the bottom-up one
    pointwise = staticmethod(pointwise)
    residual_state = True  # the skip state's map from the prior features starts as the identity (layers.py)

    @classmethod
    def encoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw: Any) -> Sequential:
        return encoder_block(in_ch, hidden, depth, resample, **kw)

    @classmethod
    def decoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw: Any) -> Sequential:
        return decoder_block(in_ch, hidden, depth, resample, **kw)

    @staticmethod
    def cell_options(cfg: Any, role: str, level: int, shape: tuple[int, ...]) -> dict[str, Any]:
        """``model.nvae``'s options of every cell; the first bottom-up cell (role "encoder", level 0) also takes
        the pre-processing and the input range, the decoder the post-processing."""
        o = cfg.nvae
        kw: dict[str, Any] = dict(
            weight_norm=o.weight_norm, residual_resampling=o.residual_resampling, leading_bn=o.leading_bn
        )
        if role == "encoder" and level == 0:
            kw.update(pre_cells=o.pre_cells, symmetric_input=o.symmetric_input)
        elif role == "decoder":
            kw.update(post_cells=o.post_cells)
        return kw

    @classmethod
    def head(cls, role: str, in_ch: int, out_ch: int, cfg) -> nn.Module:
        """With ``model.nvae.official_heads``, NVAE's heads (model.py): the posterior ``enc_sampler``, a 3x3
        conv of ``EncCombinerCell`` = d + 1x1(h_p) (``from_d`` the identity, no activation between); on top
        ``enc0`` (ELU, 1x1, ELU) then the 3x3; the prior ``dec_sampler``, ELU + 1x1; the state
        ``DecCombinerCell``, 1x1 of cat(h_p, z) with one bias (here W_z z + b + W_h h_p, each half
        weight-normalised on its own); the output ``init_image_conditional``, ELU + 3x3. Otherwise the
        default 1x1 heads."""
        if not cfg.nvae.official_heads:
            return super().head(role, in_ch, out_ch, cfg)
        wn = cfg.nvae.weight_norm
        if role == "prior":
            return elu_conv(in_ch, out_ch, 1, weight_norm=wn)
        if role in ("posterior", "posterior_residual"):  # NVAE does not start q at p: no zero head
            return conv(in_ch, out_ch, 3, weight_norm=wn)
        if role == "top_posterior":
            enc0 = [nn.ELU(), conv(in_ch, in_ch, 1, weight_norm=wn), nn.ELU()]
            return nn.Sequential(*enc0, conv(in_ch, out_ch, 3, weight_norm=wn))
        if role == "from_d":
            return nn.Identity() if in_ch == out_ch else conv(in_ch, out_ch, 1, weight_norm=wn)
        if role == "posterior_act":
            return nn.Identity()
        if role in ("from_h", "state_z"):
            return conv(in_ch, out_ch, 1, weight_norm=wn)
        if role == "state_h":
            return conv(in_ch, out_ch, 1, bias=False, weight_norm=wn)
        if role == "output":
            return elu_conv(in_ch, out_ch, 3, weight_norm=wn)
        return super().head(role, in_ch, out_ch, cfg)

    @staticmethod
    def posterior_flow(cfg: Any, level: int, latent_ch: int, shape: tuple[int, ...]) -> nn.Module | None:
        """``model.nvae.flows = n``: NVAE's ``n`` paired autoregressive cells on every group's posterior sample
        (:class:`PosteriorFlow`)."""
        return PosteriorFlow(latent_ch, cfg.nvae.flows) if cfg.nvae.flows else None

    @staticmethod
    def combiner(cfg: Any, latent_ch: int, h_ch: int | None, out_ch: int) -> nn.Module | None:
        """``model.nvae.one_combiner``: the state as NVAE's ``DecCombinerCell`` (:class:`Combiner`), where the level
        has prior features to combine."""
        if not cfg.nvae.one_combiner or h_ch is None:
            return None
        return Combiner(h_ch, latent_ch, out_ch, weight_norm=cfg.nvae.weight_norm)

    @staticmethod
    def feature_map(cfg: Any, level: int, ch: int, shape: tuple[int, ...]) -> nn.Parameter | None:
        """``model.nvae.learned_top``: NVAE's ``prior_ftr0`` on top, ``(1, ch, h, w)`` drawn from U[0, 1) and
        learned (the top level's features, read by its combiner)."""
        if not cfg.nvae.learned_top or level != cfg.num_layers - 1:
            return None
        return nn.Parameter(torch.rand(1, ch, *shape[1:]))


__all__ = [
    "ARCell",
    "ARMask",
    "Combiner",
    "ELUConv2d",
    "FactorizedReduce",
    "LogWeightNorm",
    "PosteriorFlow",
    "SqueezeExcite",
    "SymmetricInput",
    "UpSample",
    "ar_conv",
    "ar_mask",
    "conv",
    "decoder_block",
    "decoder_cell",
    "elu_conv",
    "encoder_block",
    "encoder_cell",
    "pointwise",
]
