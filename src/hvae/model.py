"""HierarchicalVAE: bottom-up pass, top-down pass, ELBO, importance-weighted bound, encode, decode, sample.

Notation (DESIGN.md): latents z_1 … z_L, z_1 nearest the data; lists are indexed bottom (0 = z_1) to top.

    p(x, z) = p(x | s_1) p(z_L) ∏_{l<L} p(z_l | s_{l+1}),   s_l = z_l  (or a deterministic skip state)
    q(z | x) = q(z_L | x) ∏_{l<L} q(z_l | z_{l+1}, x)         (ladder, top_down)
             = q(z_1 | x) ∏_{l>1} q(z_l | z_{l-1})           (bottom_up: the stacked VAE)

All numbers are nats per example unless a name says otherwise.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from . import allocator
from .compiled import LazyCompile
from .config import ModelConfig
from .data.text import trim_batch
from .distributions import Gaussian, _tile, kl_divergence
from .files import atomic_path, atomic_write_text
from .layers import LatentLayer, latent_channels
from .likelihoods import build_likelihood
from .nets import FAMILIES, attention, decoder_block, encoder_block
from .nets.temporal import TokenEncoder
from .spectral import SpectralNorms, coefficient

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ModelOutput:
    """What ``model(x)`` returns.

    ``elbo``, ``log_px``: (B,) nats; ``kl``: list of L tensors (B,), bottom to top, nats;
    ``loss``: scalar to minimise (mean over the batch of -ELBO with the KL weighted by ``beta``, free
    bits and KL balancing applied: training options that never change ``elbo``);
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


def _temperatures(temperature: float | Sequence[float], L: int) -> list[float]:
    if isinstance(temperature, Tensor):
        temperature = temperature.tolist()
    scalar = isinstance(temperature, numbers.Real)  # numpy's scalars too
    temps = [float(temperature)] * L if scalar else [float(t) for t in temperature]
    if len(temps) != L:
        raise ValueError(f"temperature: give one float or one per layer ({L}, bottom to top), got {len(temps)}")
    if any(t < 0 for t in temps):
        raise ValueError(f"temperature: must be >= 0 (0 gives the prior means), got {temps}")
    return temps


#: the most elements of one tensor in a pass of the IW bound's automatic chunks: on a CPU, glibc serves
#: allocations above 32 MiB with fresh pages (a page fault each 4 KiB at first touch); 8 MiB stays clear of it
IW_CHUNK_ELEMENTS = {"cpu": 2**21, "accelerator": 2**26}


def _add_log_weights(total: Tensor, lw: Tensor) -> Tensor:
    """The running log-sum-exp ``total`` (B,) with the log weights ``lw`` (k, B) added."""
    return torch.logaddexp(total, torch.logsumexp(lw, dim=0))


class _WidestRow(torch.overrides.TorchFunctionMode):
    """The most elements per row of the tensors of ``rows`` rows that the torch functions called inside it
    return (tensors of other leading sizes, such as weights folded with batch norm, are not per row)."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.width = rows, 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == self.rows:
                self.width = max(self.width, t.numel() // self.rows)
        return out


class HierarchicalVAE(nn.Module):
    """A hierarchical VAE built from a :class:`~hvae.config.ModelConfig` (use :func:`hvae.build_model`).

    Data: ``x`` of shape ``(B, *config.data_shape)``, float, in the likelihood's support; categorical models
    also take integer class ids (token ids (B, T), positions equal to ``config.pad_id`` ignored).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cfg = config
        fam = FAMILIES[cfg.block]
        L = cfg.num_layers
        kw = dict(batch_norm=cfg.batch_norm, act=cfg.activation, leaky_slope=cfg.leaky_slope)
        self.data_shape = tuple(cfg.data_shape)
        self.likelihood = build_likelihood(cfg)

        # latent shapes and the resolution of each level
        # (left, right, top, bottom) of padded images; (left, right) of padded sequences
        self._pad: tuple[int, ...] | None = None
        if cfg.block == "mlp":
            in_ch = math.prod(self.data_shape)
            latent_shapes = [(latent_channels(cfg, l),) for l in range(L)]
        elif len(self.data_shape) == 2:  # sequences (C, T), block temporal: padded at the end to the total stride
            in_ch, t = self.data_shape
            total = math.prod(cfg.strides)
            if t % total:
                self._pad = (0, -(-t // total) * total - t)
                t += self._pad[1]
            latent_shapes = []
            for l, s in enumerate(cfg.strides):
                t //= s
                latent_shapes.append((latent_channels(cfg, l), t))
        else:
            in_ch = self.data_shape[0]
            h, w = self.data_shape[1:]
            # images are padded (centred, zeros) to a multiple of the total stride; p(x | z) is cropped back
            total = math.prod(cfg.strides)
            ph, pw = -(-h // total) * total - h, -(-w // total) * total - w
            if ph or pw:
                self._pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
            h, w = h + ph, w + pw
            latent_shapes = []
            for l, s in enumerate(cfg.strides):
                h, w = h // s, w // s
                latent_shapes.append((latent_channels(cfg, l), h, w))

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
            blk = encoder_block(fam)(src, cfg.hidden_dims[l], cfg.depth, stride, **kw)
            if l in cfg.attention_levels:
                blk = attention.with_attention(blk, cfg.attention_heads)
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
        if cfg.depth_attention:
            self.depth_attn = attention.DepthAttentionStack(
                [layer.state_ch for layer in self.layers],
                [blk.out_ch for blk in self.encoder],
                cfg.depth_attention_dim,
                cfg.attention_heads,
                stacked=cfg.inference == "bottom_up",
            )

        # decoder p(x | s_1): mirrors the first bottom-up block
        up = -cfg.strides[0] if cfg.strides and cfg.strides[0] > 1 else 1
        self.decoder = decoder_block(fam)(above, cfg.hidden_dims[0], cfg.depth, up, **kw)
        n_out = self.likelihood.num_params * (math.prod(self.likelihood.spatial) if cfg.block == "mlp" else 1)
        self.decoder_head = fam.pointwise(self.decoder.out_ch, n_out)

        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # keep last: it tracks every conv / linear weight built above
        self.spectral = SpectralNorms(self) if cfg.spectral_reg > 0 else None
        self._iw_widths: dict[tuple[int, ...], int] = {}  # per input shape: see log_likelihood
        self.set_compile()

    def set_compile(self, mode: str = "auto", after_s: float = 300.0, steps_left=None) -> None:
        """How the model's two hot loops are compiled (:mod:`hvae.compiled`): training calls, and the chunks
        of importance samples of :meth:`log_likelihood`. ``auto`` (the default) compiles a loop once it has
        run ``after_s`` seconds eagerly and keeps the compiled version only if it is faster; ``always``
        compiles at the first call; ``never`` stays eager. ``steps_left()``, if given, says how many training
        steps remain: ``auto`` then compiles as soon as they would take ``after_s`` seconds eagerly (timed over
        the first 20 steps), and never otherwise.
        On a CPU the IW chunks compile with frozen weights (:mod:`hvae.compiled`): a change of the weights
        after the compile is noticed at the next bound, which compiles again (``always``) or runs eagerly
        (``auto``), unfrozen from then on. ``self.compiler.status`` and ``self.iw_compiler.status`` say what
        happened. Sampling is eager."""
        self.compiler = LazyCompile(HierarchicalVAE._elbo, mode=mode, after_s=after_s, steps_left=steps_left)
        self.iw_compiler = LazyCompile(
            HierarchicalVAE._iw_log_weights,
            mode=mode,
            after_s=after_s,
            steps="chunks of importance samples",
            freeze=self._weights,
        )

    def _weights(self) -> list[Tensor]:
        """What a frozen compiled chunk of the IW bound takes as constants: every parameter and buffer."""
        return [*self.parameters(), *self.buffers()]

    # ------------------------------------------------------------------------------------------------
    # input checks

    def _check_input(self, x: Tensor, values: bool = False) -> None:
        """The shape and dtype of a batch; with ``values``, also its values against the likelihood's support
        (a pass over the data: the evaluation calls do it, a training step leaves it to the data pipeline)."""
        if not isinstance(x, Tensor):
            raise TypeError(
                f"expected a torch.Tensor of shape (B, {', '.join(map(str, self.data_shape))}), got {type(x).__name__}"
            )
        if self.token_encoder is not None and x.dim() == 2 and 1 <= x.shape[1] <= self.data_shape[0]:
            pass  # token rows may stop early: the positions after T' are padding (see trim_padding)
        elif tuple(x.shape[1:]) != self.data_shape or x.dim() != len(self.data_shape) + 1:
            want = "(B, " + ", ".join(map(str, self.data_shape)) + ")"
            if self.token_encoder is not None:
                want = f"(B, T) token ids with T <= {self.data_shape[0]}"
            hint = ""
            if math.prod(x.shape[1:]) == math.prod(self.data_shape):
                hint = f"; reshape it with x.reshape(-1, {', '.join(map(str, self.data_shape))})"
            raise ValueError(f"input has shape {tuple(x.shape)}, but this model takes {want}{hint}")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        if not x.dtype.is_floating_point and not self._takes_ids:
            raise TypeError(
                f"input must be a floating tensor (values in [0, 1]), got {x.dtype}; integer token ids need "
                f"likelihood categorical (this model's is {self.config.likelihood})"
            )
        if values:
            self.likelihood.check_support(x)

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

    @property
    def _takes_ids(self) -> bool:
        """Integer class ids are accepted as input by categorical models (plain or autoregressive)."""
        return self.config.likelihood == "categorical"

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
        """``fn(*args)`` (a module or a module's method), its activations recomputed in the backward pass
        when ``config.checkpointing``: one level's cells at a time."""
        if not (self.config.checkpointing and torch.is_grad_enabled()):
            return fn(*args)
        from torch.utils.checkpoint import checkpoint

        owner = fn if isinstance(fn, nn.Module) else fn.__self__
        return checkpoint(
            fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _frozen_bn(owner))
        )

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

    def _upward_stochastic(self, ctx0: Tensor, use_mean: bool = False) -> tuple[list[Tensor], list[Gaussian]]:
        """The stacked VAE's inference: z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1})."""
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
            zs.append(q.mean if use_mean else q.rsample())
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
        """KL weight at a training step: linear warm-up from 0 to ``config.beta`` (Sønderby et al. 2016)."""
        cfg = self.config
        n = cfg.kl_warmup_steps
        if n == 0:
            return cfg.beta
        # NVAE's utils.kl_coeff: held at the floor for kl_const_steps, then linear, never below the floor
        return cfg.beta * max(min(1.0, (float(step) - cfg.kl_const_steps) / n), cfg.kl_warmup_floor)

    def spectral_reg_at(self, step: int | Tensor) -> float:
        """NVAE's spectral-regularisation weight lambda at a training step (see :func:`hvae.spectral.coefficient`)."""
        cfg = self.config
        return coefficient(step, cfg.spectral_reg, cfg.spectral_reg_init, cfg.spectral_reg_warmup_steps)

    def _kl_loss(self, kl_elem: list[Tensor], beta: float) -> Tensor:
        """The KL part of the training loss (batch mean): free bits, KL balancing, beta."""
        cfg = self.config
        per_layer = []
        for k in kl_elem:
            if cfg.free_bits > 0 and cfg.free_bits_mode == "channel":
                # Kingma et al. 2016: each group (a channel) gets lambda nats for free, batch-averaged
                per_ch = k.flatten(2).sum(2).mean(0) if k.dim() > 2 else k.mean(0)
                per_layer.append(per_ch.clamp_min(cfg.free_bits).sum())
            else:
                v = k.flatten(1).sum(1).mean()
                per_layer.append(v.clamp_min(cfg.free_bits) if cfg.free_bits > 0 else v)
        kl = torch.stack(per_layer)
        if cfg.kl_balancing and beta < cfg.beta:
            # NVAE: weight each level by its share of the KL per latent element, times the number of levels at
            # its resolution (NVAE's groups per scale), normalised to mean 1, so no level is starved during
            # warm-up; the weights are constants (no gradient). The sizes divide as Python numbers (a tensor of
            # them would be a host-to-device copy, which waits for the device, at every step of the warm-up)
            spatial = [tuple(k.shape[2:]) for k in kl_elem]
            gamma = torch.stack(
                [
                    (kl[i].detach().abs() + 0.01) * spatial.count(spatial[i]) / k[0].numel()
                    for i, k in enumerate(kl_elem)
                ]
            )
            gamma = gamma / gamma.mean()
            kl = kl * gamma
        return beta * kl.sum()

    def forward(self, x: Tensor, beta: float | None = None) -> ModelOutput:
        """ELBO of a batch ``x`` (B, *data_shape), with one posterior sample per example.

        In training mode (with gradients on) each call advances ``step``, which drives KL warm-up, the
        relaxation temperature of discrete latents and the spectral penalty's warm-up, and may run compiled
        (see :meth:`set_compile`). ``beta`` overrides the warm-up weight for this call (a schedule of the
        user's own); the call still counts as a step.
        """
        if self.training and torch.is_grad_enabled():
            self._check_input(x)  # here too: a bad input must not count as a failed compile
            return self.compiler(self, x, beta, snapshot=self._step_snapshot)
        self.compiler.other_call()
        return self._elbo(x, beta)

    def _step_snapshot(self):
        saved = self.step.clone()
        return lambda: self.step.copy_(saved)

    def _elbo(self, x: Tensor, beta: float | None = None) -> ModelOutput:
        self._check_input(x, values=not (self.training and torch.is_grad_enabled()))
        run = self._infer(x)
        px = self._decode_state(run.state, self._length(x))
        log_px = px.log_prob(x)
        kl_elem = self._kl_terms(run)
        kl = [k.flatten(1).sum(1) for k in kl_elem]
        elbo = log_px - torch.stack(kl).sum(0)
        training = self.training and torch.is_grad_enabled()
        if beta is None:
            beta = self.beta_at(self.step)
        loss = -log_px.mean() + self._kl_loss(kl_elem, beta)
        if self.spectral is not None and training:
            loss = loss + self.spectral_reg_at(self.step) * self.spectral(self).sum()
        if training:  # with or without an explicit beta: step also drives the relaxation's and spectral annealing
            self.step += 1
        aux_loss, aux = self._discrete_aux(run)
        if aux:
            loss = loss + aux_loss
        return ModelOutput(elbo=elbo, log_px=log_px, kl=kl, loss=loss, beta=beta, px=px, zs=run.zs, aux=aux)

    def _discrete_aux(self, run: _Pass) -> tuple[Tensor | float, dict]:
        """The commitment losses of vector-quantised levels (added to the loss, never to the ELBO) and
        their codebook perplexities for this batch."""
        total, aux = 0.0, {}
        for l, q in enumerate(run.qs):
            if not self.layers[l].family.point_mass_posterior:
                continue
            commitment = q.aux_loss.mean()
            total = total + commitment
            aux.setdefault("commitment", {})[l] = commitment.detach()
            aux.setdefault("perplexity", {})[l] = q.perplexity()
        return total, aux

    def gumbel_temperature(self) -> float | Tensor:
        """Relaxation temperature of discrete latents at the current ``step``: geometric from
        ``gumbel_temperature_start`` to ``gumbel_temperature`` over ``gumbel_anneal_steps`` (Jang et al. 2017
        anneal exponentially), then constant."""
        cfg = self.config
        if cfg.gumbel_anneal_steps == 0:
            return cfg.gumbel_temperature
        frac = (self.step.float() / cfg.gumbel_anneal_steps).clamp(max=1.0)
        return cfg.gumbel_temperature_start * (cfg.gumbel_temperature / cfg.gumbel_temperature_start) ** frac

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

        The bottom-up pass runs once per input; the top-down pass runs on ``chunk_size`` copies at a time
        (memory stays bounded for any K), accumulated by a running log-sum-exp in float32. By default the
        chunks hold as many samples as keep every tensor of a pass under ``IW_CHUNK_ELEMENTS`` (on a CPU,
        larger tensors are fresh pages at every allocation; an ``lvae_mnist`` bound takes a tenth of the
        memory of fixed 32,768-row chunks, at the same speed), spread evenly over the K samples: the first
        bound for an input shape runs its first importance sample alone to measure the widest tensor per
        input. A last chunk short of the others by at most a quarter runs at their size, and only its first
        samples count (so all chunks may run compiled); an explicit ``chunk_size`` is kept as given, with the
        same rule for its last chunk (one shorter by more than a quarter runs eagerly at its own size). On a
        CPU the first call keeps freed memory in the process (:func:`hvae.allocator.retain_freed_memory`).
        Full chunks may run compiled (:meth:`set_compile`; on a CPU with frozen weights, checked at every call
        against the weights the chunks were compiled with). Call ``model.eval()`` first for networks with
        batch norm.
        """
        self._check_input(x, values=True)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None (automatic), got {chunk_size}")
        if x.device.type == "cpu":
            allocator.tune_once()  # each chunk's memory stays for the next instead of faulting in again
        B = x.shape[0]
        ctxs, prepared = self._bottom_up(x), self.likelihood.prepare(x)  # once per input
        total = torch.full((B,), -math.inf, device=x.device)
        done = 0
        if chunk_size is None:
            shape = tuple(x.shape[1:])
            if shape not in self._iw_widths:  # the widest tensor of a pass per input: the shapes alone decide it
                with _WidestRow(B) as widest:
                    total = _add_log_weights(total, self._iw_log_weights(ctxs, prepared, 1))
                self._iw_widths[shape], done = widest.width, 1
            budget = IW_CHUNK_ELEMENTS["cpu" if x.device.type == "cpu" else "accelerator"]
            most = max(1, budget // self._iw_widths[shape] // B)
            left = max(1, num_samples - done)
            chunks = -(-left // most)  # as few chunks as the budget allows, of even sizes
            chunk_size = -(-left // chunks)
        k_max = min(chunk_size, num_samples - done)
        if k_max > 0:  # tiled once to a full chunk; a shorter last chunk takes a prefix
            ctxs_k, x_k = [_tile(c, k_max) for c in ctxs], _tile(prepared, k_max)
        self.iw_compiler.other_call()  # the step clock times chunks, not what ran between two calls
        self.iw_compiler.check_weights()  # a chunk compiled with frozen weights needs the same weights
        while done < num_samples:
            k = min(k_max, num_samples - done)
            if (k_max - k) * 4 <= k_max:  # full, or short by at most a quarter: one shape, may run compiled
                lw = self.iw_compiler(self, ctxs_k, x_k, k_max)[:k]  # the samples past K are dropped
            else:
                lw = self._iw_log_weights([c[: k * B] for c in ctxs_k], x_k[: k * B], k)
            total = _add_log_weights(total, lw)
            done += k
        return total - math.log(num_samples)

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
        self._check_input(x)
        return self._infer(x, posterior_mean=not sample).zs

    def _check_latents(self, zs: Sequence[Tensor | None]) -> None:
        """Latents given per level (None: not given) have the level's shape and one batch size."""
        batch = None
        for l, (z, layer) in enumerate(zip(zs, self.layers)):
            if z is None:
                continue
            want = f"(B, {', '.join(map(str, layer.latent_shape))})"
            if not isinstance(z, Tensor) or tuple(z.shape[1:]) != layer.latent_shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise ValueError(f"zs[{l}] has shape {got}, expected {want} (level {l + 1}, bottom to top)")
            if batch is not None and z.shape[0] != batch:
                raise ValueError(f"zs[{l}] holds {z.shape[0]} rows but the levels below hold {batch}; give one batch")
            batch = z.shape[0]

    @torch.no_grad()
    def decode(self, zs: Sequence[Tensor]):
        """p(x | z): the observation distribution given latents for every level (bottom to top).
        Without ``generative_skip`` only ``zs[0]`` matters. Use ``.mean`` or ``.sample()``."""
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"decode needs one latent per level ({L}, bottom to top), got {len(zs)}")
        self._check_latents(zs)
        run = self._top_down(zs[0].shape[0], zs_given=list(zs))
        return self._decode_state(run.state)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | Sequence[float] = 1.0, mean: bool = True) -> Tensor:
        """``n`` unconditional samples (n, *data_shape). ``temperature``: one float or one per level
        (bottom to top) scaling each prior's standard deviation (0 = the means). ``mean=True`` returns
        the mean of p(x | z_1) (probabilities for Bernoulli data); ``False`` samples it."""
        temps = _temperatures(temperature, self.config.num_layers)
        run = self._top_down(n, temperatures=temps)
        px = self._decode_state(run.state)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def generate(self, zs: Sequence[Tensor | None], temperature: float | Sequence[float] = 1.0, mean: bool = True):
        """Decode with some levels fixed: ``zs[l]`` is used where given (bottom to top, batch-major) and
        the other levels are drawn from the prior conditionals at ``temperature``. Returns (B, *data_shape)."""
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"generate needs one entry per level ({L}, bottom to top; None to sample), got {len(zs)}")
        given = [z for z in zs if z is not None]
        if not given:
            raise ValueError("generate needs at least one given level; use sample() to draw all of them")
        self._check_latents(zs)
        run = self._top_down(given[0].shape[0], zs_given=list(zs), temperatures=_temperatures(temperature, L))
        px = self._decode_state(run.state)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def sample_conditional(
        self, x: Tensor, keep_top: int, temperature: float | Sequence[float] = 1.0, mean: bool = True
    ) -> Tensor:
        """Keep the top ``keep_top`` levels from q(z | x) and re-sample the levels below from the prior
        conditionals: what the kept levels encode stays, the rest varies. Returns (B, *data_shape)."""
        self._check_input(x)
        L = self.config.num_layers
        if not 0 <= keep_top <= L:
            raise ValueError(f"keep_top must be in 0..{L}, got {keep_top}")
        temps = _temperatures(temperature, L)
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
        return px.mean if mean else px.sample()

    # ------------------------------------------------------------------------------------------------
    # files

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and buffers) into ``directory``,
        each atomically (write to a temporary file, then rename)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.config.to_json()
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        # the weights carry their config too: two files are replaced one after the other, and a save cut
        # short between them must not pass for a model (load compares the two)
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "library": "hvae", "config": config})
        atomic_write_text(out / CONFIG_NAME, config)
        return out


@contextlib.contextmanager
def _frozen_bn(module: nn.Module):
    """While a checkpointed module is recomputed, its batch norms leave their running statistics alone
    (the forward pass already counted this batch)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def build_model(config: ModelConfig | dict) -> HierarchicalVAE:
    """A fresh :class:`HierarchicalVAE` from a config (or a plain mapping of one)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return HierarchicalVAE(config)


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> HierarchicalVAE:
    """Load a model written by :meth:`HierarchicalVAE.save_pretrained` (JSON + safetensors; nothing is unpickled).
    The model comes back in eval mode; call ``.train()`` to fine-tune it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: {d} is not a saved hvae model (save_pretrained writes it)")
    try:
        config = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}); the file is damaged") from None
    model = HierarchicalVAE(config)
    try:
        state = load_file(str(w_path), device=str(map_location))
        with safe_open(str(w_path), framework="pt") as f:
            saved_config = (f.metadata() or {}).get("config")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{w_path} cannot be read ({e}); the file is truncated or damaged") from None
    if saved_config is not None and ModelConfig.from_dict(json.loads(saved_config)) != config:
        raise ValueError(
            f"{cfg_path} and {w_path} come from different saves (a save was cut short between the two files); "
            "save the model again"
        )
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) == 1 and floats != {torch.float32}:  # a float64 or bf16 model comes back as it was saved
        model = model.to(floats.pop())
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{w_path} does not match {cfg_path}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{w_path} does not match {cfg_path}: {e}") from None
    return model.to(map_location).eval()
