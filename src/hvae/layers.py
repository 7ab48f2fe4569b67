"""One level of the hierarchy: its prior, its posterior rule and the state it hands down.

A :class:`LatentLayer` for ``z_l`` owns
  * the prior network  p(z_l | s_{l+1})  (p(z_L) = N(0, I) on top), which also returns its hidden
    features ``h_p`` at the resolution of ``z_l``;
  * the posterior rule, chosen by ``inference``:
      - ``ladder``   q = merge(N(mu_hat, sigma_hat), p)       (Sønderby et al. 2016)
      - ``top_down`` q from a network of (d_l, h_p); optionally residual: N(mu_p + dmu, (sigma_p dsigma)^2)
      - ``bottom_up`` q(z_l | z_{l-1}) from the stochastic upward pass (the stacked VAE)
    On top, every rule reads q(z_L | x) from the bottom-up features alone.
  * the transition to the state for the layer below: ``z_l`` itself (a Markov chain), or with
    ``generative_skip`` a deterministic state act(W_z z_l + W_h h_p) carrying all layers above.

The posterior's dependence on x is split into ``context(d_l)`` (computed once per input, reused across
importance samples) and ``posterior(ctx, p, h_p)`` (run per sample).

The distribution of each level comes from a latent family registered in :data:`LATENT_FAMILIES` under the
name ``model.latent_types`` gives it; :mod:`hvae.distributions` says how to add one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import quantize  # noqa: F401  (registers the "vq" latent family)
from .distributions import Gaussian, LatentFamily
from .nets import FAMILIES, activation
from .nets.attention import with_attention
from .nets.common import PosteriorNet
from .registry import LATENT_FAMILIES

if TYPE_CHECKING:
    from .config import ModelConfig


class Features(NamedTuple):
    """What a prior block hands on (``model.vdvae.prior_block``): ``h`` (B, C, H, W), the features q reads, and
    ``stream`` (B, C, H, W), h plus the block's extra output, which the state is built on."""

    h: Tensor
    stream: Tensor


def _split(h_p: Tensor | Features | None) -> tuple[Tensor | None, Tensor | None]:
    """(the features q reads, the stream the state is built on) of the prior's features."""
    if isinstance(h_p, Features):
        return h_p.h, h_p.stream
    return h_p, h_p


class LatentLayer(nn.Module):
    """Level ``index`` (0 = z_1) of a hierarchy of ``config.num_layers`` levels.

    Shapes: ``latent_shape`` is ``(D,)`` for ``mlp`` and ``(C, h, w)`` for ``conv``.
    ``state_ch`` is the channel count of the state this layer hands down. The cell family may replace the
    heads with blocks of its own and add a learned feature map (:class:`hvae.nets.CellFamily`'s hooks): then the
    top level too has features ``h_p`` (the map), which its prior and posterior read.
    """

    def __init__(
        self,
        config: ModelConfig,
        index: int,
        latent_shape: tuple[int, ...],
        feature_ch: int,
        above_state_ch: int | None,
    ):
        super().__init__()
        cfg = config
        fam = FAMILIES[cfg.block]
        self.index = index
        self.is_top = above_state_ch is None
        self.inference = cfg.inference
        self.residual = cfg.residual_posterior
        self.skip = cfg.generative_skip
        self.latent_shape = tuple(latent_shape)
        self.family = make_family(cfg, index)
        self.min_scale = cfg.min_scale
        latent_ch = self.family.channels(cfg.latent_dims[index])
        n_raw = self.family.raw_channels(cfg.latent_dims[index])
        n_raw_p = self.family.raw_channels(cfg.latent_dims[index], "prior")
        kw = dict(batch_norm=cfg.batch_norm, act=cfg.activation, leaky_slope=cfg.leaky_slope)

        # prior p(z_l | s_{l+1}): mirrors the bottom-up mapping between levels l and l+1
        self.prior_net: nn.Module | None = None
        self.prior_head: nn.Module | None = None
        prior_ch: int | None = None
        if self.is_top:
            width = cfg.hidden_dims[index]
        else:
            up = -cfg.strides[index + 1] if cfg.strides and cfg.strides[index + 1] > 1 else 1
            opts = fam.cell_options(cfg, "prior", index, self.latent_shape)
            prior_net = fam.decoder_block(above_state_ch, cfg.hidden_dims[index + 1], cfg.depth, up, **kw, **opts)
            width = prior_net.out_ch
            self.prior_net = (
                with_attention(prior_net, cfg.attention.heads) if index in cfg.attention.levels else prior_net
            )
            prior_ch = width
        # a learned map added to the prior's features (on top: the features themselves)
        self.feature_map = fam.feature_map(cfg, index, width, self.latent_shape)
        if self.feature_map is not None:
            prior_ch = width
        self.prior_block: nn.Module | None = None
        if prior_ch is not None:
            self.prior_block = fam.prior_block(cfg, index, prior_ch, n_raw_p, self.latent_shape)
            if self.prior_block is None and not self.is_top:
                self.prior_head = fam.head("prior", prior_ch, n_raw_p, cfg)

        # posterior: a family's own block of (d_l, h_p) (its context precomputes the d_l part), or the rule's maps
        self.posterior_block: PosteriorNet | None = None
        if prior_ch is not None and self.inference == "top_down":
            self.posterior_block = fam.posterior_block(cfg, index, prior_ch, feature_ch, n_raw, self.latent_shape)
        if self.posterior_block is not None:
            pass
        elif self.is_top or self.inference in ("ladder", "bottom_up"):
            role = "top_posterior" if self.is_top else "posterior_features"
            self.posterior_head = fam.head(role, feature_ch, n_raw, cfg)
        else:  # top_down: q from (d_l, h_p); the d_l half of the first map is precomputed per input
            assert prior_ch is not None
            hidden = cfg.hidden_dims[index]
            self.post_from_d = fam.head("from_d", feature_ch, hidden, cfg)
            self.post_from_h = fam.head("from_h", prior_ch, hidden, cfg)
            self.post_act = fam.head("posterior_act", hidden, hidden, cfg)
            self.posterior_head = fam.head("posterior_residual" if self.residual else "posterior", hidden, n_raw, cfg)

        # a flow on q's samples (NVAE's nf_cells): log q of the flowed sample then replaces the analytic KL
        self.flow = fam.posterior_flow(cfg, index, latent_ch, self.latent_shape)
        # state handed to the layer below
        self.trans_from_h: nn.Module | None = None
        # or the family's one map of (z, h) (NVAE's DecCombinerCell: a 1x1 of cat(h, z))
        self.combiner = fam.combiner(cfg, latent_ch, prior_ch, cfg.hidden_dims[index]) if self.skip else None
        if self.skip:
            hidden = cfg.hidden_dims[index]
            if self.combiner is None:
                self.trans_from_z = fam.head("state_z", latent_ch, hidden, cfg)
            if self.combiner is None and prior_ch is not None and not (fam.identity_state(cfg) and prior_ch == hidden):
                self.trans_from_h = fam.head("state_h", prior_ch, hidden, cfg)  # W_h = I at first with residual_state
            linear = cfg.state_activation == "linear"
            self.trans_act = nn.Identity() if linear else activation(cfg.activation, cfg.leaky_slope)
            self.state_ch = hidden
        else:
            self.state_ch = latent_ch
        # BN-VAE: levels whose posterior has a mean to normalise (Gaussian ones)
        gamma = cfg.bn_posterior_means
        self.mean_norm = PosteriorMeanNorm(latent_ch, gamma) if gamma > 0 and self.family.has_mean else None
        if cfg.official_init:  # the family's initialisation from its paper's code (a no-op for most)
            fam.official_init(self, cfg)

    # -- generative side ----------------------------------------------------------------------------

    def prior(self, state: Tensor | None, batch: int, device=None, dtype=None):
        """p(z_l | s_{l+1}) and the prior network's features ``h_p`` (B, C, h, w): a tensor, a
        :class:`Features` pair when the family's prior block updates the stream, None on a top level without a
        feature map."""
        if self.is_top and self.feature_map is None:
            return self.family.prior_top((batch, *self.latent_shape), device, dtype), None
        if self.is_top:
            assert self.feature_map is not None
            h = self.feature_map.expand(batch, -1, -1, -1)  # (1, C, h, w) -> (B, C, h, w)
        else:
            assert self.prior_net is not None
            h = self.prior_net(state)
            if self.feature_map is not None:
                h = h + self.feature_map
        if self.prior_block is not None:
            raw, stream = self.prior_block(h)
            return self.family.prior_from_raw(raw.float()), Features(h, stream)
        if self.is_top:
            return self.family.prior_top((batch, *self.latent_shape), device, dtype), h
        assert self.prior_head is not None
        return self.family.prior_from_raw(self.prior_head(h).float()), h

    def transition(self, z: Tensor, h_p: Tensor | Features | None) -> Tensor:
        """The state s_l handed to level l-1 (or to the decoder): act(W_z z + W_h h), W_h h = h with the
        family's identity state."""
        if not self.skip:
            return z
        _, stream = _split(h_p)
        if self.combiner is not None:
            return self.trans_act(self.combiner(z, stream))
        a = self.trans_from_z(z.to(self.trans_from_z.weight.dtype))
        if stream is not None:
            a = a + (stream if self.trans_from_h is None else self.trans_from_h(stream))
        return self.trans_act(a)

    # -- inference side -----------------------------------------------------------------------------

    def context(self, d: Tensor) -> Tensor:
        """What q needs from the bottom-up features ``d_l``, computed once per input."""
        if self.posterior_block is not None:
            return self.posterior_block.context(d)
        if self.is_top or self.inference in ("ladder", "bottom_up"):
            return self.posterior_head(d)
        return self.post_from_d(d)

    def posterior(self, ctx: Tensor, p: Gaussian | None, h_p: Tensor | Features | None) -> Gaussian:
        """q(z_l | ., x) from the precomputed context, the prior and the prior's features (both None for the
        stacked VAE and the top level, whose q reads the context alone); with ``bn_posterior_means`` its mean
        batch-normalised (BN-VAE)."""
        q = self._posterior(ctx, p, h_p)
        if self.mean_norm is not None:
            q = Gaussian(self.mean_norm(q.mu), q.sigma)
        return q

    def _posterior(self, ctx: Tensor, p: Gaussian | None, h_p: Tensor | Features | None) -> Gaussian:
        h, _ = _split(h_p)
        if self.posterior_block is not None:
            raw = self.posterior_block(ctx, h).float()
        elif self.is_top or self.inference == "bottom_up":
            return self.family.from_raw(ctx.float())
        elif self.inference == "ladder":
            return self.family.merge(self.family.from_raw(ctx.float()), self._given(p))
        else:
            raw = self.posterior_head(self.post_act(ctx + self.post_from_h(h))).float()
        return self.family.residual_posterior(raw, self._given(p)) if self.residual else self.family.from_raw(raw)

    def _given(self, p: Gaussian | None) -> Gaussian:
        """The prior a ladder merge or a residual posterior refines (None only where q reads its context alone)."""
        if p is None:
            raise ValueError(f"level {self.index + 1}'s posterior ({self.inference}) refines its prior p: pass it")
        return p

    def set_relaxation(self, tau: float | Tensor, relaxed: bool) -> None:
        """Discrete latents: relaxation temperature and whether samples are relaxed in the coming pass."""
        self.family.set_relaxation(tau, relaxed)


class PosteriorMeanNorm(nn.Module):
    """BN-VAE (Zhu et al. 2020): mu -> gamma (mu - E[mu]) / sqrt(Var[mu] + eps) + beta per channel, over the batch
    (and positions) in training and from running statistics in eval; gamma is fixed, the shift beta learned
    (zero at first). mu: (B, C, *spatial) or (B, D), any float dtype; the same shape back."""

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, channels: int, gamma: float, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.gamma, self.momentum, self.eps = float(gamma), momentum, eps
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, mu: Tensor) -> Tensor:
        weight = torch.full_like(self.shift, self.gamma)
        # float32 statistics: the posterior heads' output is float32 already (see posterior)
        return F.batch_norm(
            mu, self.running_mean, self.running_var, weight, self.shift, self.training, self.momentum, self.eps
        )


def make_family(cfg, index: int) -> LatentFamily:
    """The latent family of level ``index``: the class :data:`LATENT_FAMILIES` holds for
    ``cfg.latent_type(index)`` (Gaussian by default), built from the config."""
    return LATENT_FAMILIES[cfg.latent_type(index)].from_config(cfg, index)


def latent_channels(cfg, index: int) -> int:
    """Channels of the latent tensor z_l (what the networks reading z_l see), from the config alone."""
    return LATENT_FAMILIES[cfg.latent_type(index)].latent_channels(cfg, index)
