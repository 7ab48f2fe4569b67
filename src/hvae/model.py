"""HierarchicalVAE: bottom-up pass, top-down pass, ELBO, importance-weighted bound, encode, decode, sample.

Notation (ARCHITECTURE.md): latents z_1 … z_L, z_1 nearest the data; lists are indexed bottom (0 = z_1) to top.

    p(x, z) = p(x | s_1) p(z_L) ∏_{l<L} p(z_l | s_{l+1}),   s_l = z_l  (or a deterministic skip state)
    q(z | x) = q(z_L | x) ∏_{l<L} q(z_l | z_{l+1}, x)         (ladder, top_down)
             = q(z_1 | x) ∏_{l>1} q(z_l | z_{l-1})           (bottom_up: the stacked VAE)

All numbers are nats per example unless a name says otherwise. What decides *when* or *how fast* lives
beside the model: compilation in :mod:`hvae.compiled`, the IW bound's chunks in :mod:`hvae.iw`, the step
schedules in :mod:`hvae.schedules`, saving and loading in :mod:`hvae.pretrained`, activation checkpointing in
:mod:`hvae.checkpointing`; the loss's options beside the ELBO (free bits, KL balancing) in :mod:`hvae.objectives`
and the levels' shapes and the data's padding in :mod:`hvae.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import inputs, iw, objectives, schedules
from .checkpointing import cells
from .compiled import compiled_training_call, set_compile
from .config import ModelConfig
from .data.text import trim_batch
from .decoding import METHODS, Decoding
from .distributions import Gaussian, _tile, kl_divergence
from .geometry import geometry
from .layers import LatentLayer, latent_channels
from .likelihoods import AutoregressiveDistribution, build_likelihood
from .nets import FAMILIES, attention
from .nets.temporal import TokenEncoder
from .pretrained import PretrainedMixin
from .spectral import SpectralNorms


@dataclass
class ModelOutput:
    """What ``model(x)`` returns.

    ``elbo``, ``log_px``: (B,) nats; ``kl``: list of L tensors (B,), bottom to top, nats;
    ``loss``: scalar to minimise (mean over the batch of -ELBO with the KL weighted by ``beta``, free
    bits and KL balancing applied (:mod:`hvae.objectives`): training options that never change ``elbo``);
    ``px``: the observation distribution p(x | z_1) (``.mean`` gives reconstructions).
    """

    elbo: Tensor
    log_px: Tensor
    kl: list[Tensor]
    loss: Tensor
    beta: float
    px: object = field(repr=False, default=None)
    zs: list[Tensor] = field(repr=False, default_factory=list)
    # per-level extras of discrete layers: "perplexity" {level: codebook perplexity of this batch} and
    # "commitment" {level: mean commitment loss} for vector-quantised levels
    aux: dict = field(repr=False, default_factory=dict)


@dataclass
class _Pass:
    """One top-down pass: per layer the sample, the prior, the posterior (None where not inferred)."""

    zs: list[Tensor]
    ps: list[Gaussian]
    qs: list[Gaussian | None]
    state: Tensor


def _draw(px, mean: bool, decode: Decoding | str | None) -> Tensor:
    """What sample / generate / sample_conditional return from p(x | z_1)."""
    if decode is None:
        return px.mean if mean else px.sample()
    if isinstance(decode, str):
        decode = Decoding(decode)
    if not isinstance(decode, Decoding):
        raise TypeError(f"decode must be a hvae.decoding.Decoding or one of {', '.join(METHODS)}, got {decode!r}")
    if not isinstance(px, AutoregressiveDistribution):
        raise ValueError(
            "decode= applies to autoregressive decoders (model.decoder: pixelcnn, transformer, gru); this model's "
            "p(x | z_1) factorises: use mean=True for its mean or mean=False to sample it"
        )
    return px.decode(decode)


class HierarchicalVAE(PretrainedMixin, nn.Module):
    """A hierarchical VAE built from a :class:`~hvae.config.ModelConfig` (use :func:`hvae.build_model`).

    Data: ``x`` of shape ``(B, *config.data_shape)``, float, in the likelihood's support; categorical models
    also take integer class ids (token ids (B, T), positions equal to ``config.pad_id`` ignored).
    Saved and loaded with ``save_pretrained`` / ``from_pretrained`` (:mod:`hvae.pretrained`).
    """

    config_class = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cfg = config
        fam = FAMILIES[cfg.block]
        L = cfg.num_layers
        kw = dict(batch_norm=cfg.batch_norm, act=cfg.activation, leaky_slope=cfg.leaky_slope)
        self.data_shape = tuple(cfg.data_shape)
        self.likelihood = build_likelihood(cfg)

        in_ch, latent_shapes, self._pad = geometry(cfg)

        # token ids (B, T) are embedded first (sentence-level models over a token sequence)
        self.token_encoder = None
        if cfg.embed_dim:
            self.token_encoder = TokenEncoder(cfg.num_classes, cfg.embed_dim, self.data_shape[0], cfg.pad_id)
            in_ch = self.token_encoder.out_features

        # bottom-up pass: d_l = block_l(d_{l-1}); the stacked VAE feeds z_{l-1} instead of d_{l-1}
        self.encoder = nn.ModuleList()
        ch = in_ch
        for l in range(L):
            stride = cfg.strides[l] if cfg.strides else 1
            src = ch if (l == 0 or cfg.inference != "bottom_up") else latent_channels(cfg, l - 1)
            opts = fam.cell_options(cfg, "encoder", l, latent_shapes[l])
            blk = fam.encoder_block(src, cfg.hidden_dims[l], fam.encoder_depth(cfg, l), stride, **kw, **opts)
            if l in cfg.attention.levels:
                blk = attention.with_attention(blk, cfg.attention.heads)
            self.encoder.append(blk)
            ch = blk.out_ch

        # latent layers, built top-down so each knows the state channels of the layer above
        layers: list[LatentLayer | None] = [None] * L
        above = None
        for l in reversed(range(L)):
            layers[l] = LatentLayer(cfg, l, latent_shapes[l], self.encoder[l].out_ch, above)
            above = layers[l].state_ch
        self.layers = nn.ModuleList(layers)

        # depth-wise attention across the levels (Apostolopoulou et al. 2022), used by the two passes
        self.depth_attn = None
        if cfg.attention.depth:
            self.depth_attn = attention.DepthAttentionStack(
                [layer.state_ch for layer in self.layers],
                [blk.out_ch for blk in self.encoder],
                cfg.attention.depth_dim,
                cfg.attention.heads,
                stacked=cfg.inference == "bottom_up",
            )

        # decoder p(x | s_1): mirrors the first bottom-up block
        up = -cfg.strides[0] if cfg.strides and cfg.strides[0] > 1 else 1
        opts = fam.cell_options(cfg, "decoder", 0, latent_shapes[0])
        self.decoder = fam.decoder_block(above, cfg.hidden_dims[0], cfg.depth, up, **kw, **opts)
        n_out = self.likelihood.num_params * (math.prod(self.likelihood.spatial) if cfg.block == "mlp" else 1)
        self.decoder_head = fam.head("output", self.decoder.out_ch, n_out, cfg)

        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # data parallelism (set by the trainer): sums a tensor over the processes that share each training batch,
        # so that free bits and KL balancing act on the global batch (hvae.objectives); None: the batch is all here
        self.batch_sum: Callable[[Tensor], Tensor] | None = None
        # keep last: it tracks every conv / linear weight built above
        self.spectral = SpectralNorms(self) if cfg.spectral.reg > 0 else None
        set_compile(self)  # the defaults: compiled where it pays

    def set_compile(self, mode: str = "auto", after_s: float = 300.0, steps_left=None) -> None:
        """How training calls and the IW bound's chunks are compiled: ``auto`` (the default), ``always`` or
        ``never``; see :func:`hvae.compiled.set_compile`. ``self.compiler.status`` and
        ``self.iw_compiler.status`` say what happened."""
        set_compile(self, mode, after_s, steps_left)

    def trim_padding(self, x: Tensor) -> Tensor:
        """Token ids ``(B, T)`` -> ``(B, T')``: the trailing positions that are padding in every row dropped
        (T' >= 1). Every number of the trimmed batch (ELBO, log p(x | z), IW bound) equals that of ``x``:
        padding never counts, the token encoder pads back to its length, and each position's decoder output
        reads only the positions before it. Only the decoder's cost falls, to T' positions. Other models
        (and models without a ``pad_id``) return ``x`` unchanged."""
        pad = self.config.pad_id
        if self.token_encoder is None or pad is None or x.dim() != 2:
            return x
        return trim_batch(x, pad)

    # ------------------------------------------------------------------------------------------------
    # the two passes

    def _features(self, x: Tensor) -> Tensor:
        if self.token_encoder is not None:
            return self.token_encoder(x.long())
        if not x.dtype.is_floating_point:  # class ids k -> levels k / (K - 1), as the likelihood reads them
            x = x.float() / (self.config.num_classes - 1)
        x = x.to(self.decoder_head.weight.dtype)  # float32 data into a float64 or bf16 model
        if self.config.block == "mlp":
            return x.flatten(1)
        return x if self._pad is None else nn.functional.pad(x, self._pad)

    def _cells(self, fn, *args):
        """``fn(*args)``, recomputed in the backward pass when ``config.checkpointing`` (:mod:`hvae.checkpointing`)."""
        return cells(self.config.checkpointing, fn, *args)

    def _bottom_up(self, x: Tensor) -> list[Tensor]:
        """Deterministic bottom-up pass: the posterior context of each level, computed once per input.
        For the stacked VAE only the first level is deterministic; the rest is ``_upward_stochastic``."""
        d = self._features(x)
        ctxs, feats = [], []
        n = 1 if self.config.inference == "bottom_up" else len(self.layers)
        for blk, layer in zip(self.encoder[:n], self.layers[:n]):
            d = self._cells(blk, d)
            feats.append(d)  # d_1 .. d_l: level l's depth attention reads these only
            a = d if self.depth_attn is None else self.depth_attn.posterior[len(feats) - 1](d, feats)
            ctxs.append(layer.context(a))
        return ctxs

    def _upward_stochastic(
        self, ctx0: Tensor, use_mean: bool = False, pick=None
    ) -> tuple[list[Tensor], list[Gaussian]]:
        """The stacked VAE's inference: z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1}). ``pick(l, None, q_l)``, if given,
        chooses z_l instead (the codec decodes it from its stack)."""
        self._set_relaxation()
        zs, qs, feats = [], [], []
        ctx = ctx0
        for l, layer in enumerate(self.layers):
            if l > 0:
                f = self.encoder[l](zs[-1].to(ctx0.dtype))
                feats.append(f)
                if self.depth_attn is not None:
                    f = self.depth_attn.posterior[l](f, feats)
                ctx = layer.context(f)
            q = layer.posterior(ctx, None, None)
            zs.append(pick(l, None, q) if pick is not None else q.mean if use_mean else q.rsample())
            qs.append(q)
        return zs, qs

    def _top_down(
        self,
        batch: int,
        ctxs: list[Tensor] | None = None,
        infer_from: int = 0,
        zs_given: list[Tensor | None] | None = None,
        temperatures: list[float] | None = None,
        posterior_mean: bool = False,
    ) -> _Pass:
        """Top-down pass. Level l draws z_l from q when ``ctxs`` is given and ``l >= infer_from``, takes
        ``zs_given[l]`` when that is set, and otherwise samples the prior at ``temperatures[l]``."""
        L = self.config.num_layers
        zs: list[Tensor] = [None] * L
        ps: list[Gaussian] = [None] * L
        qs: list[Gaussian | None] = [None] * L
        device, dtype = self.step.device, self.decoder_head.weight.dtype
        state = None
        self._set_relaxation()
        states: list[Tensor] = []  # s_L, ..., s_{l+1}: what level l's depth attention may read
        for l in reversed(range(L)):
            layer = self.layers[l]
            if self.depth_attn is not None and state is not None:
                state = self.depth_attn.prior[l](state, states)
            if state is None:
                p, h_p = layer.prior(state, batch, device, torch.float32)
            else:
                p, h_p = self._cells(layer.prior, state, batch, device, torch.float32)
            q = layer.posterior(ctxs[l], p, h_p) if (ctxs is not None and l >= infer_from) else None
            if zs_given is not None and zs_given[l] is not None:
                z = zs_given[l]
            elif q is not None:
                z = q.mean if posterior_mean else q.rsample()
            else:
                z = p.rsample(temperatures[l] if temperatures is not None else 1.0)
            zs[l], ps[l], qs[l] = z, p, q
            state = layer.transition(z.to(dtype), h_p)
            states.append(state)
        if self.depth_attn is not None:
            state = self.depth_attn.decoder(state, states)
        return _Pass(zs, ps, qs, state)

    def _decode_state(self, state: Tensor, length: int | None = None):
        """p(x | z_1) from the top-down state; ``length``: token models, the positions of a batch whose rows
        stop early (the rest is padding, which never counts)."""
        if self.config.decoder_only:  # the yardstick's decoder reads no latents: its features are constant
            state = torch.zeros_like(state)
        params = self.decoder_head(self._cells(self.decoder, state)).float()
        if self._pad is not None and len(self._pad) == 2:  # crop the padded sequence back: (B, P, T')->(B, P, T)
            params = params[:, :, : self.data_shape[1]]
        elif self._pad is not None:  # crop the padded image back: (B, P, H + ph, W + pw) -> (B, P, H, W)
            left, _, top, _ = self._pad
            H, W = self.data_shape[1:]
            params = params[:, :, top : top + H, left : left + W]
        lik = self.likelihood
        params = params.view(params.shape[0], lik.num_params, *lik.spatial)
        if length is not None and length != lik.spatial[-1]:
            params = params[..., :length]
        return lik(params)

    def _length(self, x: Tensor) -> int | None:
        return x.shape[1] if self.token_encoder is not None else None

    def _infer(self, x: Tensor | None, k: int = 1, ctxs: list[Tensor] | None = None, posterior_mean: bool = False):
        """z ~ q(z | x) (k samples per input, sample-major) and the pass that scores it."""
        if self.config.decoder_only:  # the yardstick: q(z | x) = p(z), so every KL is 0 and the bound is exact
            means = [0.0] * self.config.num_layers if posterior_mean else None  # temperature 0: the prior's means
            run = self._top_down((x.shape[0] if ctxs is None else ctxs[0].shape[0]) * k, temperatures=means)
            run.qs = list(run.ps)
            return run
        if ctxs is None:
            ctxs = self._bottom_up(x)
        B = ctxs[0].shape[0]
        if self.config.inference == "bottom_up":
            zs, qs = self._upward_stochastic(_tile(ctxs[0], k), use_mean=posterior_mean)
            run = self._top_down(B * k, zs_given=zs)
            run.qs = qs
            return run
        ctxs = [_tile(c, k) for c in ctxs]
        return self._top_down(B * k, ctxs=ctxs, posterior_mean=posterior_mean)

    # ------------------------------------------------------------------------------------------------
    # objectives

    def _kl_terms(self, run: _Pass) -> list[Tensor]:
        """Elementwise KL_l (B, *latent_shape). Analytic for Gaussian pairs given the layers above; for the
        stacked VAE z_{l+1} is drawn after z_l, so only the top level's KL may be integrated exactly and
        the others use the single-sample estimate log q(z_l) - log p(z_l | z_{l+1}). A vector-quantised
        level's q is a point mass on its code k*, so its KL is always -log p(k* | .): exact, and read by the
        index q chose (a training pass may move the codebook after q chose, before p reads codes back)."""
        L = self.config.num_layers
        kls = []
        for l in range(L):
            q, p, z = run.qs[l], run.ps[l], run.zs[l]
            exact_ok = self.layers[l].family.point_mass_posterior or (
                self.config.kl == "analytic" and (self.config.inference != "bottom_up" or l == L - 1)
            )
            kls.append(kl_divergence(q, p) if exact_ok else q.log_prob(z) - p.log_prob(z))
        return kls

    def beta_at(self, step: int | Tensor) -> float:
        """KL weight at a training step (:func:`hvae.schedules.beta`: linear warm-up to ``config.beta``, or
        cyclical annealing with ``kl_cycles``)."""
        return schedules.beta(self.config, step)

    def forward(self, x: Tensor, beta: float | None = None) -> ModelOutput:
        """ELBO of a batch ``x`` (B, *data_shape), with one posterior sample per example.

        In training mode (with gradients on) each call advances ``step``, which drives KL warm-up, the
        relaxation temperature of discrete latents and the spectral penalty's warm-up, and may run compiled
        (see :meth:`set_compile`). ``beta`` overrides the warm-up weight for this call (a schedule of the
        user's own); the call still counts as a step.
        """
        if self.training and torch.is_grad_enabled():
            inputs.check_batch(self, x)  # here too: a bad input must not count as a failed compile
            return compiled_training_call(self, x, beta)  # the graph _elbo, compiled where it pays
        self.compiler.other_call()
        return self._elbo(x, beta)

    def _elbo(self, x: Tensor, beta: float | None = None) -> ModelOutput:
        inputs.check_batch(self, x, values=not (self.training and torch.is_grad_enabled()))
        run = self._infer(x)
        px = self._decode_state(run.state, self._length(x))
        log_px = px.log_prob(x)
        kl_elem = self._kl_terms(run)
        kl = [k.flatten(1).sum(1) for k in kl_elem]
        elbo = log_px - torch.stack(kl).sum(0)
        training = self.training and torch.is_grad_enabled()
        if beta is None:
            beta = schedules.beta(self.config, self.step)
        loss = -log_px.mean()
        if not self.config.decoder_only:  # the yardstick's KL is 0: a free-bits floor would only add a constant
            loss = loss + objectives.kl_loss(self.config, kl_elem, beta, self.batch_sum if training else None)
        if self.spectral is not None and training:
            loss = loss + schedules.spectral_weight(self.config, self.step) * self.spectral(self).sum()
        if training:  # with or without an explicit beta: step also drives the relaxation's and spectral annealing
            self.step += 1
        aux_loss, aux = objectives.discrete_aux(self.layers, run.qs)  # VQ levels' commitment, perplexity
        if aux:
            loss = loss + aux_loss
        return ModelOutput(elbo=elbo, log_px=log_px, kl=kl, loss=loss, beta=beta, px=px, zs=run.zs, aux=aux)

    def gumbel_temperature(self) -> float | Tensor:
        """Relaxation temperature of discrete latents at ``step`` (:func:`hvae.schedules.gumbel_temperature`)."""
        return schedules.gumbel_temperature(self.config, self.step)

    def _set_relaxation(self) -> None:
        """Discrete levels draw relaxed samples only in training passes with gradients; every other pass
        (eval mode, ``no_grad``: evaluation, the IW bound, sampling) draws hard samples, so the numbers it
        reports use exact log-probabilities."""
        if self.config.latent_types is None:
            return
        relaxed = self.training and torch.is_grad_enabled()
        tau = self.gumbel_temperature() if relaxed else 1.0
        for layer in self.layers:
            layer.set_relaxation(tau, relaxed)

    def _log_weights(self, x_k: Tensor, run: _Pass, prepared: bool = False) -> Tensor:
        """log p(x, z) - log q(z | x) per row, (k*B,). ``prepared``: ``x_k`` is ``likelihood.prepare(x)``."""
        px = self._decode_state(run.state, self._length(x_k))
        lw = px.log_prob_prepared(x_k) if prepared else px.log_prob(x_k)
        for z, p, q in zip(run.zs, run.ps, run.qs):
            lw = lw + (p.log_prob(z) - q.log_prob(z)).flatten(1).sum(1)
        return lw

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 1000, chunk_size: int | None = None) -> Tensor:
        """Importance-weighted bound log p̂_K(x) = log mean_k exp(log p(x, z^k) - log q(z^k | x)), (B,) nats.

        The bottom-up pass runs once per input; the top-down pass runs on chunks of copies, sized to a memory
        budget unless ``chunk_size`` (samples per input) is given (:mod:`hvae.iw`); full chunks may run compiled
        (:meth:`set_compile`). Call ``model.eval()`` first for networks with batch norm.
        """
        inputs.check_batch(self, x, values=True)
        num_samples = inputs.count(num_samples, "num_samples")
        if chunk_size is not None:
            chunk_size = inputs.count(chunk_size, "chunk_size", " or None (automatic)")
        return iw.log_likelihood(self, x, num_samples, chunk_size)

    def _iw_log_weights(self, ctxs_k: list[Tensor], x_k: Tensor, k: int) -> Tensor:
        """log p(x, z) - log q(z | x) of ``k`` importance samples per input, (k, B)."""
        run = self._infer(None, ctxs=ctxs_k)
        return self._log_weights(x_k, run, prepared=True).view(k, -1)

    def bits_per_dim(self, log_px: Tensor) -> Tensor:
        """Convert a bound in nats per example to bits per dimension: -bound / (D ln 2), D = all of
        ``data_shape``. For token data, whose rows stop early, use :func:`hvae.evaluate.evaluate`: it counts
        the real tokens only."""
        return -log_px / (math.prod(self.data_shape) * math.log(2))

    # ------------------------------------------------------------------------------------------------
    # inspection and generation

    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = True) -> list[Tensor]:
        """Latents from q(z | x), bottom to top: a sample, or (``sample=False``) the means along the path."""
        inputs.check_batch(self, x)
        return self._infer(x, posterior_mean=not sample).zs

    @torch.no_grad()
    def decode(self, zs: Sequence[Tensor]):
        """p(x | z): the observation distribution given latents for every level (bottom to top).
        Without ``generative_skip`` only ``zs[0]`` matters. Use ``.mean`` or ``.sample()``."""
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"decode needs one latent per level ({L}, bottom to top), got {len(zs)}")
        inputs.check_latents(self, zs)
        run = self._top_down(zs[0].shape[0], zs_given=list(zs))
        return self._decode_state(run.state)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ) -> Tensor:
        """``n`` unconditional samples (n, *data_shape). ``temperature``: one float or one per level
        (bottom to top) scaling each prior's standard deviation (0 = the means). ``mean=True`` returns
        the mean of p(x | z_1) (probabilities for Bernoulli data); ``False`` samples it. Autoregressive
        decoders: ``decode`` (a :class:`hvae.decoding.Decoding` or its method's name) generates as text
        libraries do (sample / greedy / top_k / top_p with a decoder temperature of its own, stopping at
        end-of-sequence) and overrides ``mean``."""
        n = inputs.count(n, "n (the number of samples)")
        run = self._top_down(n, temperatures=inputs.temperatures(temperature, self.config.num_layers))
        px = self._decode_state(run.state)
        return _draw(px, mean, decode)

    @torch.no_grad()
    def generate(
        self,
        zs: Sequence[Tensor | None],
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ):
        """Decode with some levels fixed: ``zs[l]`` is used where given (bottom to top, batch-major) and
        the other levels are drawn from the prior conditionals at ``temperature``; ``mean`` and ``decode``
        as in :meth:`sample`. Returns (B, *data_shape)."""
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"generate needs one entry per level ({L}, bottom to top; None to sample), got {len(zs)}")
        given = [z for z in zs if z is not None]
        if not given:
            raise ValueError("generate needs at least one given level; use sample() to draw all of them")
        inputs.check_latents(self, zs)
        run = self._top_down(given[0].shape[0], zs_given=list(zs), temperatures=inputs.temperatures(temperature, L))
        px = self._decode_state(run.state)
        return _draw(px, mean, decode)

    @torch.no_grad()
    def sample_conditional(
        self,
        x: Tensor,
        keep_top: int,
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ) -> Tensor:
        """Keep the top ``keep_top`` levels from q(z | x) and re-sample the levels below from the prior
        conditionals: what the kept levels encode stays, the rest varies; ``mean`` and ``decode`` as in
        :meth:`sample`. Returns (B, *data_shape)."""
        inputs.check_batch(self, x)
        L = self.config.num_layers
        if not inputs.whole(keep_top) or not 0 <= keep_top <= L:
            raise ValueError(f"keep_top must be in 0..{L}, got {keep_top}")
        temps = inputs.temperatures(temperature, L)
        B = x.shape[0]
        if keep_top == 0:
            run = self._top_down(B, temperatures=temps)
        elif self.config.inference == "bottom_up":
            zs = self._infer(x).zs
            kept = [None] * (L - keep_top) + zs[L - keep_top :]
            run = self._top_down(B, zs_given=kept, temperatures=temps)
        else:
            run = self._top_down(B, ctxs=self._bottom_up(x), infer_from=L - keep_top, temperatures=temps)
        px = self._decode_state(run.state)
        return _draw(px, mean, decode)


def build_model(config: ModelConfig | dict) -> HierarchicalVAE:
    """A fresh :class:`HierarchicalVAE` from a config (or a plain mapping of one)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return HierarchicalVAE(config)


#: ``hvae.load(directory, map_location="cpu")``: a saved model back (:meth:`HierarchicalVAE.from_pretrained`)
load = HierarchicalVAE.from_pretrained
