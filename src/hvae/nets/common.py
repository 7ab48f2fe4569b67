"""Pieces shared by the cell families, and :class:`CellFamily`, the base every family registers."""

from __future__ import annotations

from typing import Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PosteriorNet(nn.Module):
    """What :meth:`CellFamily.posterior_block` returns: q's raw parameters from the bottom-up features d and
    the prior's features h, split into :meth:`context` (once per input, reused across importance samples) and
    ``forward(ctx, h) -> raw``."""

    def context(self, d: Tensor) -> Tensor:
        raise NotImplementedError("a posterior net defines context(d) and forward(ctx, h)")


class CellFamily:
    """A family of cells, registered under its ``model.block`` name in :data:`hvae.nets.FAMILIES`.

    The model uses the class itself (no instance); its defaults answer what the model asks of every family:

    * :meth:`block` ``(in_ch, hidden, depth, resample=1, *, batch_norm, act, leaky_slope) -> Sequential``:
      a deterministic mapping of features whose channel dimension is dim 1; ``resample`` > 1 downsamples
      by that factor, < -1 upsamples by ``-resample``; the result's ``out_ch`` is its output width.
    * :meth:`pointwise` ``(in_ch, out_ch)``: a per-position linear map (the heads).
    * :meth:`encoder_block` / :meth:`decoder_block`: the bottom-up cells and the top-down ones (prior
      networks, decoder); both are :meth:`block` unless a family's two paths differ (``nvae``, ``vdvae``).
    * ``residual_state``: True when the skip state's map from the prior features starts as the identity
      (:class:`hvae.layers.TopDownLayer`).
    * :meth:`official_init` ``(layer, cfg)``: re-initialise one built level as the family's official code
      does (``model.official_init``); by default it changes nothing.

    How a level is built from the config (:class:`hvae.layers.LatentLayer`, :class:`hvae.HierarchicalVAE`), each
    a no-op by default: :meth:`encoder_depth` (blocks in a level's bottom-up cell), :meth:`cell_options`
    (keyword arguments of the family's own for a cell), :meth:`posterior_block` / :meth:`prior_block` (networks
    that replace the pointwise heads), :meth:`feature_map` (a learned map added to a level's top-down
    features; on top, the features themselves) and :meth:`identity_state` (s = h + W_z z, no W_h).
    """

    residual_state = False

    @staticmethod
    def block(
        in_ch: int,
        hidden: int,
        depth: int,
        resample: int = 1,
        *,
        batch_norm: bool = True,
        act: str = "relu",
        leaky_slope: float = 0.1,
    ) -> Sequential:
        raise NotImplementedError("a cell family defines block(in_ch, hidden, depth, resample, **kw)")

    @staticmethod
    def pointwise(in_ch: int, out_ch: int) -> nn.Module:
        raise NotImplementedError("a cell family defines pointwise(in_ch, out_ch)")

    @staticmethod
    def official_init(layer: nn.Module, cfg) -> None:
        """No initialisation of its own: the layers keep torch's defaults."""

    @staticmethod
    def encoder_depth(cfg: Any, level: int) -> int:
        """The number of blocks in the bottom-up cell into ``level``: ``model.depth``."""
        return cfg.depth

    @staticmethod
    def cell_options(cfg: Any, role: str, level: int, shape: tuple[int, ...]) -> dict[str, Any]:
        """Extra keyword arguments of a cell: ``role`` "encoder" (the bottom-up cell into ``level``), "prior" (the
        top-down cell from level + 1 into ``level``) or "decoder" (from level 0 to the data); ``shape`` is
        ``level``'s latent shape. None by default."""
        return {}

    @staticmethod
    def posterior_block(
        cfg: Any, level: int, h_ch: int, d_ch: int, n_raw: int, shape: tuple[int, ...]
    ) -> PosteriorNet | None:
        """A :class:`PosteriorNet` giving q's raw parameters (n_raw channels) from the bottom-up features d
        (d_ch channels) and the prior's h (h_ch); None: the pointwise maps of the top-down rule."""
        return None

    @staticmethod
    def prior_block(cfg: Any, level: int, ch: int, n_raw: int, shape: tuple[int, ...]) -> nn.Module | None:
        """A module ``h -> (raw, stream)``: p's raw parameters (n_raw channels) and the features the state is
        built on (ch channels); None: a pointwise head and the stream h itself."""
        return None

    @staticmethod
    def feature_map(cfg: Any, level: int, ch: int, shape: tuple[int, ...]) -> nn.Parameter | None:
        """A learned map ``(1, ch, *shape[1:])`` added to ``level``'s top-down features (on top: the features,
        read by its prior and posterior); None: no map."""
        return None

    @staticmethod
    def posterior_flow(cfg: Any, level: int, latent_ch: int, shape: tuple[int, ...]) -> nn.Module | None:
        """A module ``(z, ctx) -> (z', log_det)`` (both ``(B, latent_ch, *shape[1:])``) applied to each sample of
        ``level``'s posterior, log q(z') = log q(z) - log_det; None: no flow."""
        return None

    @staticmethod
    def combiner(cfg: Any, latent_ch: int, h_ch: int | None, out_ch: int) -> nn.Module | None:
        """A module ``(z, h) -> state``, ``(B, latent_ch, ...), (B, h_ch, ...) -> (B, out_ch, ...)``, in place of
        the two maps W_z z + W_h h (``h_ch`` None: a level without prior features); None: the two maps."""
        return None

    @staticmethod
    def identity_state(cfg: Any) -> bool:
        """True when the state is h + W_z z (W_h the identity, no parameters) instead of W_h h + W_z z."""
        return False

    @classmethod
    def head(cls, role: str, in_ch: int, out_ch: int, cfg: Any) -> nn.Module:
        """A map ``(B, in_ch, *S) -> (B, out_ch, *S)`` in a level (hvae.layers) or at the output, by ``role``:
        "prior" (p's parameters from h_p), "top_posterior" (q's on top, from d_L), "posterior_features"
        (q's from d alone: ladder, bottom_up), "from_d" / "from_h" (the top-down posterior's two inputs),
        "posterior_act" (between them and "posterior" / "posterior_residual", whose q starts at p),
        "state_z" / "state_h" (the skip state's maps), "output" (p(x | z_1)'s parameters). By default
        :meth:`pointwise`; the residual posterior's head starts at zero, and with ``residual_state`` the
        state's map from h_p at the identity."""
        if role == "posterior_act":
            return activation(cfg.activation, cfg.leaky_slope)
        m = cls.pointwise(in_ch, out_ch)
        if role == "posterior_residual":  # start at q = p: zero shift, unit scale ratio
            nn.init.zeros_(cast(Tensor, m.weight))
            nn.init.zeros_(cast(Tensor, m.bias))
        elif role == "state_h" and cls.residual_state and in_ch == out_ch:
            # deep stacks (NVAE, VDVAE) start with the skip state handed down unchanged: W_h = I
            nn.init.dirac_(cast(Tensor, m.weight))
            nn.init.zeros_(cast(Tensor, m.bias))
        return m

    @classmethod
    def encoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw) -> Sequential:
        return cls.block(in_ch, hidden, depth, resample, **kw)

    @classmethod
    def decoder_block(cls, in_ch: int, hidden: int, depth: int, resample: int = 1, **kw) -> Sequential:
        return cls.block(in_ch, hidden, depth, resample, **kw)


def activation(name: str, leaky_slope: float = 0.1) -> nn.Module:
    """The nonlinearity named in the config (the Ladder VAE paper uses leaky ReLU with slope 0.1)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(leaky_slope)
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    if name == "swish":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class Sequential(nn.Sequential):
    """``nn.Sequential`` that records its output channel count (``out_ch``) for the layer that follows.

    In inference (eval mode, no gradients: the IW bound, sampling) a ``Linear`` followed by a ``BatchNorm1d``
    with running statistics runs as one product: BN(W x + b) = (s W) x + s (b - m) + beta, with
    s = gamma / sqrt(v + eps) per output unit, which saves a pass over the activations per layer, and
    activations then work in place. The same function up to float rounding.
    """

    def __init__(self, out_ch: int, *modules: nn.Module):
        super().__init__(*modules)
        self.out_ch = out_ch

    def forward(self, x: Tensor) -> Tensor:
        if self.training or torch.is_grad_enabled():
            return super().forward(x)
        mods = list(self)
        i, fresh = 0, False  # fresh: x was made by this block (never the caller's tensor), so it may be overwritten
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(m, nn.Linear) and _foldable(nxt) and x.dim() == 2:
                # tracked running statistics (_foldable checked): never None here
                var, mean = cast(Tensor, nxt.running_var), cast(Tensor, nxt.running_mean)
                scale = nxt.weight * torch.rsqrt(var + nxt.eps)  # (out,)
                shift = nxt.bias - mean * scale
                if m.bias is not None:
                    shift = shift + m.bias * scale
                x = torch.addmm(shift.to(x.dtype), x, (m.weight * scale[:, None]).t().to(x.dtype))
                i, fresh = i + 2, True
                continue
            if isinstance(m, nn.LeakyReLU) and fresh:
                x = F.leaky_relu_(x, m.negative_slope)
            else:
                x = m(x)
                fresh = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm))
            i += 1
        return x


def _foldable(m: nn.Module | None) -> TypeGuard[nn.BatchNorm1d]:
    return (
        isinstance(m, nn.BatchNorm1d)
        and m.affine
        and m.track_running_stats
        and m.running_mean is not None
        and not m.training
    )
