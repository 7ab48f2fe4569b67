"""HierarchicalVAE: the bottom-up pass, the top-down pass, the ELBO, the importance weights, encode, decode.

Notation (ARCHITECTURE.md): latents z_1 … z_L, z_1 nearest the data; lists are indexed bottom (0 = z_1) to top.

    p(x, z) = p(x | s_1) p(z_L) ∏_{l<L} p(z_l | s_{l+1}),   s_l = z_l  (or a deterministic skip state)
    q(z | x) = q(z_L | x) ∏_{l<L} q(z_l | z_{l+1}, x)         (ladder, top_down)
             = q(z_1 | x) ∏_{l>1} q(z_l | z_{l-1})           (bottom_up: the stacked VAE)

All numbers are nats per example unless a name says otherwise. Beside the model, each module named for its role
(ARCHITECTURE.md): :mod:`~hvae.compiled` (when to compile), :mod:`~hvae.iw` (the IW bound's chunks),
:mod:`~hvae.schedules`, :mod:`~hvae.pretrained` (saving, loading), :mod:`~hvae.checkpointing`, :mod:`~hvae.objectives`
(free bits, KL balancing), :mod:`~hvae.geometry` (shapes, padding), :mod:`~hvae.stacked` (the stacked VAE's
upward pass) and :mod:`~hvae.generation` (``decode``, ``sample``, ``generate``, ``sample_conditional``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from . import inputs, iw, objectives, schedules, stacked
from .checkpointing import cells
from .compiled import LazyCompile, compiled_training_call, set_compile
from .config import ModelConfig
from .data.text import trim_batch
from .distributions import Gaussian, _tile, kl_divergence
from .generation import GenerationMixin
from .geometry import crop, geometry
from .layers import LatentLayer, latent_channels
from .likelihoods import build_likelihood
from .nets import FAMILIES, attention
from .nets.common import Sequential
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
    """One top-down pass, bottom to top: per level the sample, the prior, the posterior (None where not
    inferred); ``state``: s_1, what p(x | z) is decoded from."""

    zs: list[Tensor]
    ps: Sequence[Gaussian]
    qs: Sequence[Gaussian | None]
    state: Tensor
    # per level, the elementwise log q(z_l | .) of a sample a flow moved (``LatentLayer.flow``): q is then the
    # flow's image of ``qs[l]``, whose own log_prob no longer applies; None where there is no flow
    log_qs: list[Tensor | None] = field(default_factory=list)

    def log_q(self, l: int) -> Tensor:
        """Elementwise log q(z_l | .) of level ``l``'s sample (B, *latent_shape), nats."""
        log_q = self.log_qs[l] if self.log_qs else None
        return log_q if log_q is not None else self.posteriors()[l].log_prob(self.zs[l])

    def posteriors(self) -> list[Gaussian]:
        """Every level's q, of a pass that inferred them all (the ELBO's, the IW bound's)."""
        qs = [q for q in self.qs if q is not None]
        if len(qs) < len(self.qs):
            raise ValueError("this pass drew levels from the prior: it has no q(z | x) to score them with")
        return qs


class HierarchicalVAE(PretrainedMixin, GenerationMixin, nn.Module):
    """A hierarchical VAE built from a :class:`~hvae.config.ModelConfig` (use :func:`hvae.build_model`).

    Data: ``x`` of shape ``(B, *config.data_shape)``, float, in the likelihood's support; categorical models
    also take integer class ids (token ids (B, T), positions equal to ``config.pad_id`` ignored).
    Saved and loaded with ``save_pretrained`` / ``from_pretrained`` (:mod:`hvae.pretrained`).
    """

    config_class = ModelConfig
    # as the type checker sees them (nn.Module's attribute lookup is untyped); ModuleLists at run time
    encoder: Sequence[Sequential]
    layers: Sequence[LatentLayer]
    step: Tensor
    compiler: LazyCompile  # set_compile's: training calls, and the IW bound's chunks
    iw_compiler: LazyCompile

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
        self.reads_tokens = bool(cfg.embed_dim)
        self.token_encoder: TokenEncoder | None = None
        if cfg.embed_dim:
            self.token_encoder = TokenEncoder(cfg.num_classes, cfg.embed_dim, self.data_shape[0], cfg.pad_id)
            in_ch = self.token_encoder.out_features

        # bottom-up pass: d_l = block_l(d_{l-1}); the stacked VAE feeds z_{l-1} instead of d_{l-1}
        blocks: list[Sequential] = []
        ch = in_ch
        for l in range(L):
            stride = cfg.strides[l] if cfg.strides else 1
            src = ch if (l == 0 or cfg.inference != "bottom_up") else latent_channels(cfg, l - 1)
            opts = fam.cell_options(cfg, "encoder", l, latent_shapes[l])
            blk = fam.encoder_block(src, cfg.hidden_dims[l], fam.encoder_depth(cfg, l), stride, **kw, **opts)
            if l in cfg.attention.levels:
                blk = attention.with_attention(blk, cfg.attention.heads)
            blocks.append(blk)
            ch = blk.out_ch
        self.encoder = cast("Sequence[Sequential]", nn.ModuleList(blocks))

        # latent layers, built top-down so each knows the state channels of the layer above
        layers: list[LatentLayer] = []
        above = None
        for l in reversed(range(L)):
            layers.insert(0, LatentLayer(cfg, l, latent_shapes[l], blocks[l].out_ch, above))
            above = layers[0].state_ch
        self.layers = cast("Sequence[LatentLayer]", nn.ModuleList(layers))

        # depth-wise attention across the levels (Apostolopoulou et al. 2022), used by the two passes
        self.depth_attn: attention.DepthAttentionStack | None = None
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
        self.decoder = fam.decoder_block(self.layers[0].state_ch, cfg.hidden_dims[0], cfg.depth, up, **kw, **opts)
        n_out = self.likelihood.num_params * (math.prod(self.likelihood.spatial) if cfg.block == "mlp" else 1)
        self.decoder_head = fam.head("output", self.decoder.out_ch, n_out, cfg)

        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # the yardstick (model.decoder_only) keeps the decoder alone: its input s_1 is a constant zero, so the
        # encoder and the latent levels would be parameters without gradients (DDP waits for them, checkpoints
        # store them). They are built above only to learn the shape of s_1, then dropped.
        self._state_shape: tuple[int, ...] | None = None
        if cfg.decoder_only:
            self._state_shape = _state_shape(self)
            self.token_encoder, self.depth_attn = None, None
            self.encoder = cast("Sequence[Sequential]", nn.ModuleList())
            self.layers = cast("Sequence[LatentLayer]", nn.ModuleList())
        # data parallelism (set by the trainer): sums a tensor over the processes that share each training batch,
        # so that free bits and KL balancing act on the global batch (hvae.objectives); None: the batch is all here
        self.batch_sum: Callable[[Tensor], Tensor] | None = None
        # keep last: it tracks every conv / linear weight built above
        self.spectral = SpectralNorms(self) if cfg.spectral.reg > 0 else None
        set_compile(self)  # the defaults: compiled where it pays

    def set_compile(
        self, mode: str = "auto", after_s: float = 300.0, steps_left: Callable[[], int] | None = None
    ) -> None:
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
        if not self.reads_tokens or pad is None or x.dim() != 2:
            return x
        return trim_batch(x, pad)

    # ------------------------------------------------------------------------------------------------
    # the two passes

    def _features(self, x: Tensor) -> Tensor:
        if self.token_encoder is not None:
            return self.token_encoder(x.long())
        if not x.dtype.is_floating_point:  # class ids k -> levels k / (K - 1), as the likelihood reads them
            x = x.float() / (self.config.num_classes - 1)
        x = x.to(self._dtype)  # float32 data into a float64 or bf16 model
        if self.config.block == "mlp":
            return x.flatten(1)
        return x if self._pad is None else nn.functional.pad(x, self._pad)

    @property
    def _dtype(self) -> torch.dtype:  # the weights' float type (float32, or float64 / bf16 after .to(dtype))
        return cast(Tensor, self.decoder_head.weight).dtype

    def _cells(self, fn, *args):
        """``fn(*args)``, recomputed in the backward pass when ``config.checkpointing`` (:mod:`hvae.checkpointing`)."""
        return cells(self.config.checkpointing, fn, *args)

    def _bottom_up(self, x: Tensor) -> list[Tensor]:
        """Deterministic bottom-up pass: the posterior context of each level, computed once per input.
        For the stacked VAE only the first level is deterministic; the rest is :func:`hvae.stacked.upward`.
        A decoder-only model has none: []."""
        if self.config.decoder_only:
            return []
        d = self._features(x)
        ctxs: list[Tensor] = []
        feats: list[Tensor] = []
        n = 1 if self.config.inference == "bottom_up" else len(self.layers)
        for blk, layer in zip(self.encoder[:n], self.layers[:n]):
            d = self._cells(blk, d)
            feats.append(d)  # d_1 .. d_l: level l's depth attention reads these only
            a = d if self.depth_attn is None else self.depth_attn.posterior[len(feats) - 1](d, feats)
            ctxs.append(layer.context(a))
        return ctxs

    def _top_down(
        self,
        batch: int,
        ctxs: list[Tensor] | None = None,
        infer_from: int = 0,
        zs_given: Sequence[Tensor | None] | None = None,
        temperatures: list[float] | None = None,
        posterior_mean: bool = False,
    ) -> _Pass:
        """Top-down pass. Level l draws z_l from q when ``ctxs`` is given and ``l >= infer_from``, takes
        ``zs_given[l]`` when that is set, and otherwise samples the prior at ``temperatures[l]``. A decoder-only
        model has no levels: its pass is s_1 = 0 (``batch`` rows)."""
        if self._state_shape is not None:
            return _Pass([], [], [], torch.zeros(batch, *self._state_shape, device=self.step.device, dtype=self._dtype))
        zs: list[Tensor] = []  # top to bottom here (z_L first), returned bottom to top
        ps: list[Gaussian] = []
        qs: list[Gaussian | None] = []
        log_qs: list[Tensor | None] = []
        device, dtype = self.step.device, self._dtype
        state: Tensor | None = None
        self._set_relaxation()
        states: list[Tensor] = []  # s_L, ..., s_{l+1}: what level l's depth attention may read
        for l in reversed(range(self.config.num_layers)):
            layer = self.layers[l]
            if self.depth_attn is not None and state is not None:
                state = self.depth_attn.prior[l](state, states)
            if state is None:
                p, h_p = layer.prior(state, batch, device, torch.float32)
            else:
                p, h_p = self._cells(layer.prior, state, batch, device, torch.float32)
            q = layer.posterior(ctxs[l], p, h_p) if (ctxs is not None and l >= infer_from) else None
            z_given = zs_given[l] if zs_given is not None else None
            log_q = None
            if z_given is not None:
                if q is not None and layer.flow is not None:
                    raise ValueError(
                        f"level {l + 1}'s posterior has a flow (model.nvae.flows): log q of a given z needs the "
                        "flow's inverse, which hvae does not compute; score samples the model drew itself"
                    )
                z = z_given
            elif q is not None:
                z = q.mean if posterior_mean else q.rsample()
                if layer.flow is not None:  # q is the flow's image of q_0: log q(z') = log q_0(z) - log|det|
                    log_q = q.log_prob(z)
                    z, log_det = layer.flow(z, ctxs[l] if ctxs is not None else None)
                    log_q = log_q - log_det
            else:
                z = p.rsample(temperatures[l] if temperatures is not None else 1.0)
            zs.append(z)
            log_qs.append(log_q)
            ps.append(p)
            qs.append(q)
            state = layer.transition(z.to(dtype), h_p)
            states.append(state)
        s_1 = states[-1] if self.depth_attn is None else self.depth_attn.decoder(states[-1], states)
        return _Pass(zs[::-1], ps[::-1], qs[::-1], s_1, log_qs[::-1])

    def _decode_state(self, state: Tensor, length: int | None = None):
        """p(x | z_1) from the top-down state; ``length``: token models, the positions of a batch whose rows
        stop early (the rest is padding, which never counts)."""
        if self._state_shape is not None and not self.training:
            feats = self._constant_features(state)
        else:
            feats = self._cells(self.decoder, state)
        params = self.decoder_head(feats).float()
        params = crop(params, self._pad, self.data_shape)  # the data's padding undone
        lik = self.likelihood
        params = params.view(params.shape[0], lik.num_params, *lik.spatial)
        if length is not None and length != lik.spatial[-1]:
            params = params[..., :length]
        return lik(params)

    def _constant_features(self, state: Tensor) -> Tensor:
        """The decoder's features of the yardstick's state (a constant zero, ``state`` (B, *s)) as training computes
        them. In training each batch norm sees a batch of identical rows: the batch's variance is 0, and it outputs
        its bias. Running statistics would instead divide their lag behind that constant by sqrt(eps) (1/300): a
        decoder-only model scored -324 nats per text in eval mode against -98 in training mode on the same texts.
        Here the batch norms read the batch statistics of two identical rows and their running statistics are
        left as they were; the features of one row serve the whole batch."""
        norms = [m for m in self.decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        kept = [(m.training, m.momentum, m.num_batches_tracked) for m in norms]
        for m in norms:
            m.train()
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: untouched
            m.num_batches_tracked = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
        try:
            two = self._cells(self.decoder, state[:1].expand(2, *state.shape[1:]))
        finally:
            for m, (training, momentum, tracked) in zip(norms, kept):
                m.train(training)
                m.momentum, m.num_batches_tracked = momentum, tracked
        return two[:1].expand(state.shape[0], *two.shape[1:])

    def _length(self, x: Tensor) -> int | None:
        return x.shape[1] if self.reads_tokens else None

    def _infer(
        self, x: Tensor | None, k: int = 1, ctxs: list[Tensor] | None = None, posterior_mean: bool = False
    ) -> _Pass:
        """z ~ q(z | x) (k samples per input, sample-major) and the pass that scores it; ``ctxs``, if given,
        are x's bottom-up contexts (``x`` is then not read)."""
        if self._state_shape is not None:  # the yardstick: no latents, so no KL, and the ELBO is log p(x) exactly
            if x is None:
                raise ValueError("_infer of a decoder-only model needs the batch x (it has no bottom-up contexts)")
            return self._top_down(x.shape[0] * k)
        if ctxs is None:
            if x is None:
                raise ValueError("_infer needs the batch x or its bottom-up contexts ctxs")
            ctxs = self._bottom_up(x)
        B = ctxs[0].shape[0]
        if self.config.inference == "bottom_up":
            zs, qs = stacked.upward(self, _tile(ctxs[0], k), use_mean=posterior_mean)
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
        index q chose (a training pass may move the codebook after q chose, before p reads codes back). A level
        whose sample a flow moved has no closed form: log q(z_l | .) - log p(z_l | .) of that sample."""
        L = len(self.layers)  # none in a decoder-only model
        kls, qs = [], run.posteriors()
        for l in range(L):
            q, p, z = qs[l], run.ps[l], run.zs[l]
            exact_ok = self.layers[l].family.point_mass_posterior or (
                self.config.kl == "analytic" and (self.config.inference != "bottom_up" or l == L - 1)
            )
            flowed = bool(run.log_qs) and run.log_qs[l] is not None
            kls.append(kl_divergence(q, p) if exact_ok and not flowed else run.log_q(l) - p.log_prob(z))
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
        elbo = log_px - torch.stack(kl).sum(0) if kl else log_px
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
        for l, (z, p) in enumerate(zip(run.zs, run.ps)):
            lw = lw + (p.log_prob(z) - run.log_q(l)).flatten(1).sum(1)  # + log p(z_l | .) - log q(z_l | .)
        return lw

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 1000, chunk_size: int | None = None) -> Tensor:
        """Importance-weighted bound log p̂_K(x) = log mean_k exp(log p(x, z^k) - log q(z^k | x)), (B,) nats.

        The bottom-up pass runs once per input; the top-down pass runs on chunks of copies, sized to a memory
        budget unless ``chunk_size`` (samples per input) is given (:mod:`hvae.iw`); full chunks may run compiled
        (:meth:`set_compile`). Call ``model.eval()`` first for networks with batch norm.
        """
        if self._state_shape is not None:
            inputs.check_batch(self, x, values=True)
            inputs.count(num_samples, "num_samples")
            self.compiler.other_call()
            return self._elbo(x).log_px
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
    # encoding (decoding and generation: hvae.generation)

    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = True) -> list[Tensor]:
        """Latents from q(z | x), bottom to top: a sample, or (``sample=False``) the means along the path."""
        inputs.check_batch(self, x)
        if self.config.decoder_only:
            raise ValueError(
                "encode: this model is decoder-only (model.decoder_only: true): it has no latents, so nothing "
                "encodes x; use a model with latent levels"
            )
        return self._infer(x, posterior_mean=not sample).zs


@torch.no_grad()
def _state_shape(model: HierarchicalVAE) -> tuple[int, ...]:
    """The shape of s_1 per example, (C, *S), from a prior pass of two rows through the levels (eval mode: batch
    norm needs no batch statistics; built on the CPU, so only its random stream is set aside); what a
    decoder-only model feeds its decoder as zeros."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):  # the prior's draws leave the caller's random stream alone
            return tuple(model._top_down(2).state.shape[1:])
    finally:
        model.train(was_training)


def build_model(config: ModelConfig | dict) -> HierarchicalVAE:
    """A fresh :class:`HierarchicalVAE` from a config (or a plain mapping of one)."""
    return HierarchicalVAE(ModelConfig.from_dict(config) if isinstance(config, dict) else config)


#: ``hvae.load(directory, map_location="cpu")``: a saved model back (:meth:`HierarchicalVAE.from_pretrained`)
load = HierarchicalVAE.from_pretrained
