"""Observation models p(x | z_1).

An observation model is an ``nn.Module`` built for one data shape. The decoder emits ``num_params``
channels in *channel layout* ``(B, P, *spatial)`` — images ``(B, C, H, W)`` keep their spatial axes,
vectors ``(B, D)`` are seen as ``(B, 1, D)`` — and ``model(params)`` returns an observation
distribution whose ``log_prob(x)`` takes data in the user's shape ``(B, *data_shape)`` and returns
nats per example ``(B,)``; ``mean`` and ``sample()`` come back in the user's shape too.

Data convention: values in [0, 1]. Discrete likelihoods map them to their levels (binary {0, 1};
``k / (K - 1)`` for K categories; ``2^bits`` equal bins for the discretised logistic).

The observation models live in the registry :data:`LIKELIHOODS` under the name ``model.likelihood`` gives.
To add one: subclass :class:`ObservationModel` (``params_per_channel`` or ``num_params``, ``forward(params)``
returning a subclass of :class:`ObservationDistribution` that defines ``_log_prob_layout``, ``_mean_layout``
and ``_sample_layout``; ``from_config`` when its constructor takes more than the data shape) and decorate it
with ``@LIKELIHOODS.register("name")``; ``model.likelihood: name`` then accepts it. For an autoregressive
decoder (``decoder: pixelcnn | transformer | gru``) it also defines ``like(shape)``, ``levels`` and its
distribution's ``mode_layout``; the defaults refuse or fall back to the mean.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .decoding import Decoding
from .distributions import raw_from_scale, scale_from_raw
from .registry import LIKELIHOODS

if TYPE_CHECKING:
    from .nets.autoregressive import AutoregressiveNet

_LOG_2PI = math.log(2 * math.pi)


def _channel_layout(data_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial shape) of the channel layout for one example."""
    if len(data_shape) == 1:
        return 1, tuple(data_shape)
    return data_shape[0], tuple(data_shape[1:])


def _sum_per_example(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


#: the most factors 1 + e^-|y| (each in (1, 2]) in one product of :func:`sum_softplus`: under 2^64
_MOST_FACTORS = 64


def _softplus_groups(d: int) -> int:
    """Factors per product for ``d`` terms: the most, up to ``_MOST_FACTORS``, that split ``d`` evenly,
    preferring a number of products that fills whole vectors of 16 floats (AVX-512; two of AVX2's), which a
    compiled kernel then reduces without a masked tail (1 for a prime ``d`` above the limit)."""
    splits = [g for g in range(1, min(d, _MOST_FACTORS) + 1) if d % g == 0]
    return max(splits, key=lambda g: ((d // g) % 16 == 0, g))


def sum_softplus(y: Tensor, grouped: bool | None = None) -> Tensor:
    """Sum of softplus(y) = log(1 + e^y) per example, (B,).

    ``grouped`` (by default: when torch.compile traces it) sums it as sum relu(y) + sum log prod(1 + e^-|y|)
    over products of up to 64 factors (:func:`_softplus_groups`): each factor lies in (1, 2], so a product
    stays under 2^64, and the sum takes one exp per term and one log per product where softplus takes an
    exp and a log per term. The relu terms are summed per product too, so that a compiled kernel reads the
    logits once. That makes the compiled IW bound's last kernel (the Bernoulli term, the levels' densities,
    the log-sum-exp) 2x faster on a CPU; eagerly it would be more passes over memory, so eager code takes
    softplus. The two agree to float32 rounding (a factor 1 + e^-|y| loses e^-|y| < 6e-8 against 1: at most
    6e-8 nats a term)."""
    if grouped is None:
        grouped = torch.compiler.is_compiling()
    flat = y.flatten(1)
    b, d = flat.shape
    g = _softplus_groups(d) if grouped else 1
    if g == 1:
        return _sum_per_example(F.softplus(flat))
    factors = (1 + torch.exp(-flat.abs())).reshape(b, g, d // g)  # a product: terms d // g apart
    return (torch.relu(flat).reshape(b, g, d // g).sum(1) + factors.prod(1).log()).sum(1)


class ObservationModel(nn.Module):
    """Base class: holds the data shape and converts between the user's shape and channel layout."""

    #: parameter channels the decoder must emit per data channel (subclasses may override num_params)
    params_per_channel: int = 1
    #: discrete values per dimension (for an autoregressive decoder's input); None for continuous data
    levels: int | None = None
    #: data are token ids: ``sample()`` and ``mean`` give int64 ids
    tokens: bool = False
    #: the token id of padding, which adds nothing to ``log_prob`` (token data only); None: no padding
    pad_id: int | None = None
    #: one position's distribution couples its channels itself (the discretised logistic mixture's
    #: coefficients), so an autoregressive net need not order them
    joint_channels: bool = False

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.channels, self.spatial = _channel_layout(self.data_shape)

    @classmethod
    def from_config(cls, config) -> ObservationModel:
        """The model for ``config.data_shape`` with the options of a :class:`~hvae.config.ModelConfig`."""
        return cls(tuple(config.data_shape))

    def like(self, data_shape: tuple[int, ...]) -> ObservationModel:
        """A model of the same kind and options for another data shape (one position of an autoregressive
        decoder); only the kinds an autoregressive decoder can use define it."""
        raise ValueError(f"an autoregressive decoder cannot use the observation model {type(self).__name__}")

    @property
    def num_params(self) -> int:
        return self.params_per_channel * self.channels

    def _to_layout(self, x: Tensor) -> Tensor:  # (B, *data_shape) -> (B, C, *spatial)
        if len(self.data_shape) == 1:  # sequences (B, T') -> (B, 1, T'): token rows may stop early
            return x.reshape(x.shape[0], 1, -1)
        return x.reshape(x.shape[0], self.channels, *self.spatial)

    def _to_user(self, x: Tensor) -> Tensor:  # (B, C, *spatial) -> (B, *data_shape)
        if len(self.data_shape) == 1:
            return x.reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], *self.data_shape)

    def prepare(self, x: Tensor) -> Tensor:
        """What ``log_prob_prepared`` needs of ``x`` (B, *data_shape), computed once where the same data are
        scored many times (the importance samples of the IW bound): ``x`` itself unless a subclass says."""
        return x

    def check_support(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the problem if ``x`` lies outside this model's support."""
        if not torch.isfinite(x).all():
            raise ValueError("the data hold NaN or infinite values; clean or drop those examples")


def _wide(t: Tensor) -> Tensor:
    """A network's output in float32 at least (bf16 / fp16 under autocast), before any log-probability."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class ObservationDistribution:
    """Base of what an observation model returns: ``log_prob``, ``mean`` and ``sample`` in the user's shape,
    from the subclass's ``_log_prob_layout``, ``_mean_layout`` and ``_sample_layout`` in channel layout."""

    def __init__(self, model: ObservationModel):
        self._model = model

    def _log_prob_layout(self, x: Tensor) -> Tensor:
        """log p(x) per dimension, channel layout: ``x`` (B, C, *spatial) -> nats (B, C, *spatial)."""
        raise NotImplementedError(f"{type(self).__name__} defines no _log_prob_layout")

    def _mean_layout(self) -> Tensor:
        """The mean, channel layout (B, C, *spatial)."""
        raise NotImplementedError(f"{type(self).__name__} defines no _mean_layout")

    def _sample_layout(self) -> Tensor:
        """One sample, channel layout (B, C, *spatial)."""
        raise NotImplementedError(f"{type(self).__name__} defines no _sample_layout")

    def mode_layout(self) -> Tensor:
        """The most probable value, channel layout (an autoregressive decoder's greedy step); the mean unless
        a subclass says."""
        return self._mean_layout()

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x | z_1) in nats per example, shape (B,)."""
        return _sum_per_example(self._log_prob_layout(self._model._to_layout(x)))

    def log_prob_prepared(self, prepared: Tensor) -> Tensor:
        """``log_prob(x)`` from ``model.prepare(x)``, (B,) nats."""
        return self.log_prob(prepared)

    @property
    def mean(self) -> Tensor:
        return self._model._to_user(self._mean_layout())

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self._model._to_user(self._sample_layout())


# --- Bernoulli ---------------------------------------------------------------------------------------


class BernoulliDistribution(ObservationDistribution):
    def __init__(self, model, logits: Tensor):
        super().__init__(model)
        self.logits = logits

    def _log_prob_layout(self, x):
        # log p = x l - log(1 + e^l): two elementwise passes where binary_cross_entropy_with_logits makes five
        return x * self.logits - F.softplus(self.logits)

    def log_prob_prepared(self, signs: Tensor) -> Tensor:
        # with s = 1 - 2x (Bernoulli.prepare): x l - log(1 + e^l) = -log(1 + e^(s l)), one pass fewer
        return sum_softplus(self.logits * signs).neg()

    def _mean_layout(self):
        return torch.sigmoid(self.logits)

    def _sample_layout(self):
        return torch.bernoulli(torch.sigmoid(self.logits))

    def mode_layout(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)


@LIKELIHOODS.register("bernoulli")
class Bernoulli(ObservationModel):
    """Independent Bernoulli per dimension, for binary data {0, 1}."""

    levels = 2

    def like(self, data_shape: tuple[int, ...]) -> Bernoulli:
        return Bernoulli(data_shape)

    def forward(self, params: Tensor) -> BernoulliDistribution:
        return BernoulliDistribution(self, params)

    def prepare(self, x: Tensor) -> Tensor:
        """The signs s = 1 - 2x in channel layout (B, C, *spatial): log p(x | l) = -softplus(s l)."""
        return 1 - 2 * self._to_layout(x)

    def check_support(self, x: Tensor) -> None:
        super().check_support(x)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(
                "likelihood 'bernoulli' needs binary data (0 or 1), but the data hold other values; "
                "set data.binarize to 'dynamic' or 'static', or choose likelihood 'gaussian'"
            )


# --- Gaussian ----------------------------------------------------------------------------------------


class GaussianDistribution(ObservationDistribution):
    def __init__(self, model, mu: Tensor, sigma: Tensor):
        super().__init__(model)
        self.mu, self.sigma = mu, sigma

    def _log_prob_layout(self, x):
        return -0.5 * (((x - self.mu) / self.sigma) ** 2 + _LOG_2PI) - torch.log(self.sigma)

    def _mean_layout(self):
        return self.mu

    def _sample_layout(self):
        return self.mu + self.sigma * torch.randn_like(self.mu)


@LIKELIHOODS.register("gaussian")
class Gaussian(ObservationModel):
    """Diagonal Gaussian with a fixed scale, or one learned scale per data dimension (``scale=None``)."""

    @classmethod
    def from_config(cls, config) -> Gaussian:
        return cls(tuple(config.data_shape), scale=config.likelihood_scale, min_scale=config.min_scale)

    def __init__(self, data_shape, scale: float | None = None, min_scale: float = 1e-3):
        super().__init__(data_shape)
        self.min_scale = min_scale
        self.fixed_scale = scale
        if scale is None:
            # one sigma per dimension, initialised at 1
            self.raw_scale = nn.Parameter(raw_from_scale(torch.ones(self.channels, *self.spatial), min_scale))

    @property
    def scale(self) -> Tensor:
        if self.fixed_scale is not None:
            return torch.tensor(self.fixed_scale)
        return scale_from_raw(self.raw_scale, self.min_scale)

    def forward(self, params: Tensor) -> GaussianDistribution:
        if self.fixed_scale is not None:  # no host-to-device copy per call
            return GaussianDistribution(self, params, torch.full_like(params, self.fixed_scale))
        sigma = self.scale.to(params).expand_as(params)
        return GaussianDistribution(self, params, sigma)


# --- Categorical -------------------------------------------------------------------------------------


class CategoricalDistribution(ObservationDistribution):
    _model: Categorical

    def __init__(self, model: Categorical, logits: Tensor):  # logits (B, K, C, *spatial)
        super().__init__(model)
        self.logits = logits
        self.K = logits.shape[1]

    def _index(self, x: Tensor) -> Tensor:
        if x.dtype.is_floating_point:
            return torch.round(x * (self.K - 1)).long()
        return x.long()

    def _log_prob_layout(self, x):
        log_p = F.log_softmax(self.logits, dim=1)
        k = self._index(x)
        out = log_p.gather(1, k.unsqueeze(1)).squeeze(1)
        pad = self._model.pad_id
        return out if pad is None else out.masked_fill(k == pad, 0.0)  # padding never counts

    def _mean_layout(self):
        if self._model.tokens:  # token ids: the most probable id (a mean of ids means nothing)
            return self.logits.argmax(1)
        levels = torch.arange(self.K, device=self.logits.device, dtype=self.logits.dtype) / (self.K - 1)
        p = F.softmax(self.logits, dim=1)
        return (p * levels.view(1, -1, *([1] * (p.dim() - 2)))).sum(1)

    def _sample_layout(self):
        k = torch.distributions.Categorical(logits=self.logits.movedim(1, -1)).sample()
        return k if self._model.tokens else k.to(self.logits.dtype) / (self.K - 1)

    def mode_layout(self) -> Tensor:
        """The most probable level k / (K - 1)."""
        return self.logits.argmax(1).to(self.logits.dtype) / (self.K - 1)


@LIKELIHOODS.register("categorical")
class Categorical(ObservationModel):
    """Categorical over ``num_classes`` values per dimension (256-level pixels, tokens).

    Floating data in [0, 1] are read as levels ``k / (K - 1)``; integer data as class indices. Positions
    holding ``pad_id`` are padding: they add nothing to ``log_prob``. With ``tokens`` the data are token ids:
    ``sample()`` and ``mean`` (the most probable id per position) return int64 ids rather than levels.
    """

    def __init__(self, data_shape, num_classes: int = 256, pad_id: int | None = None, tokens: bool = False):
        super().__init__(data_shape)
        self.num_classes = num_classes
        self.params_per_channel = num_classes
        self.levels = num_classes
        self.pad_id = pad_id
        self.tokens = tokens

    @classmethod
    def from_config(cls, config) -> Categorical:
        return cls(
            tuple(config.data_shape), num_classes=config.num_classes, pad_id=config.pad_id, tokens=config.embed_dim > 0
        )

    def like(self, data_shape: tuple[int, ...]) -> Categorical:
        return Categorical(data_shape, num_classes=self.num_classes)

    def forward(self, params: Tensor) -> CategoricalDistribution:
        B = params.shape[0]
        logits = params.view(B, self.num_classes, self.channels, *params.shape[2:])  # a shorter T' for token rows
        return CategoricalDistribution(self, logits)

    def check_support(self, x: Tensor) -> None:
        super().check_support(x)
        K = self.num_classes
        if x.dtype.is_floating_point:
            k = x * (K - 1)
            ok = (x >= 0).all() and (x <= 1).all() and (k - k.round()).abs().max() < 1e-3
            if not ok:
                raise ValueError(
                    f"likelihood 'categorical' with {K} classes needs data on the levels k/{K - 1} in [0, 1]; "
                    "quantize the data or set num_classes to the data's number of levels"
                )
        elif ((x < 0) | (x >= K)).any():
            raise ValueError(f"likelihood 'categorical' needs class indices in [0, {K - 1}]")


# --- Discretised logistic mixture ---------------------------------------------------------------------


class DiscretizedLogisticMixtureDistribution(ObservationDistribution):
    """PixelCNN++ likelihood (Salimans et al. 2017) for C channels: a mixture of M logistics per pixel,
    channel c's mean shifted linearly by the channels before it (the paper's RGB coefficients)."""

    def __init__(self, model, logit_pi: Tensor, mu: Tensor, log_s: Tensor, coeffs: Tensor, bits: int):
        super().__init__(model)
        self.logit_pi = logit_pi  # (B, M, *spatial)
        self.mu = mu  # (B, M, C, *spatial) in [-1, 1] units
        self.log_s = log_s  # (B, M, C, *spatial)
        self.coeffs = coeffs  # (B, M, C(C-1)/2, *spatial)
        self.bits = bits
        self.bins = 2**bits - 1

    def _quantize(self, x: Tensor) -> Tensor:
        """[0, 1] -> bin centres in [-1, 1]: 2^bits equal bins."""
        k = torch.floor(x * (self.bins + 1) * (1 - 1e-6)).clamp(0, self.bins)
        return 2 * k / self.bins - 1

    def _means(self, x: Tensor) -> Tensor:
        """Channel means with the autoregressive shift: mu_c + sum_{j<c} a_{cj} x_j.  x: (B, C, *spatial)."""
        C = self.mu.shape[2]
        means = [self.mu[:, :, 0]]
        idx = 0
        for c in range(1, C):
            m = self.mu[:, :, c]
            for j in range(c):
                m = m + self.coeffs[:, :, idx] * x[:, j].unsqueeze(1)
                idx += 1
            means.append(m)
        return torch.stack(means, dim=2)

    def log_prob_pixels(self, x: Tensor) -> Tensor:
        """log p per pixel (B, *spatial) in nats, x in [0, 1] channel layout."""
        x = self._quantize(x)
        xe = x.unsqueeze(1)  # (B, 1, C, *spatial)
        centered = xe - self._means(x)
        inv_s = torch.exp(-self.log_s)
        half = 1.0 / self.bins
        plus_in = inv_s * (centered + half)
        min_in = inv_s * (centered - half)
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid(plus_in): the x = -1 edge
        log_one_minus_cdf_min = -F.softplus(min_in)  # the x = +1 edge
        mid_in = inv_s * centered
        log_pdf_mid = mid_in - self.log_s - 2.0 * F.softplus(mid_in)
        # inside a bin: log of the CDF difference, or the density times the bin width when it underflows
        inner = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp_min(1e-12)),
            log_pdf_mid - math.log(self.bins / 2),
        )
        log_probs = torch.where(xe < -0.999, log_cdf_plus, torch.where(xe > 0.999, log_one_minus_cdf_min, inner))
        log_pi = F.log_softmax(self.logit_pi, dim=1)
        return torch.logsumexp(log_pi + log_probs.sum(2), dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        return _sum_per_example(self.log_prob_pixels(self._model._to_layout(x)))

    def _pick_component(self, t: Tensor, onehot: Tensor) -> Tensor:
        return (t * onehot.unsqueeze(2)).sum(1)

    def _mean_layout(self):
        pi = F.softmax(self.logit_pi, dim=1)
        C = self.mu.shape[2]
        xs: list[Tensor] = []  # channel means (B, *spatial) in [-1, 1]
        for c in range(C):
            m = self.mu[:, :, c]
            base = c * (c - 1) // 2
            for j in range(c):
                m = m + self.coeffs[:, :, base + j] * xs[j].unsqueeze(1)
            xs.append((pi * m).sum(1).clamp(-1, 1))
        return (torch.stack(xs, 1) + 1) / 2

    def mode_layout(self) -> Tensor:
        """The mean on the nearest of the 2^bits levels."""
        return torch.round(self._mean_layout() * self.bins) / self.bins

    def _sample_layout(self):
        gumbel = -torch.log(-torch.log(torch.rand_like(self.logit_pi).clamp(1e-5, 1 - 1e-5)))
        onehot = F.one_hot((self.logit_pi + gumbel).argmax(1), self.logit_pi.shape[1]).movedim(-1, 1).to(self.mu)
        mu = self._pick_component(self.mu, onehot)
        log_s = self._pick_component(self.log_s, onehot)
        coeffs = self._pick_component(self.coeffs, onehot)  # (B, C (C - 1) / 2, *spatial): none for one channel
        u = torch.rand_like(mu).clamp(1e-5, 1 - 1e-5)
        noise = torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
        C = mu.shape[1]
        xs: list[Tensor] = []  # channel samples (B, *spatial) in [-1, 1]
        for c in range(C):
            v = mu[:, c] + noise[:, c]
            base = c * (c - 1) // 2
            for j in range(c):
                v = v + coeffs[:, base + j] * xs[j]
            xs.append(v.clamp(-1, 1))
        x = torch.stack(xs, 1)
        k = torch.round((x + 1) / 2 * self.bins)
        return k / self.bins


@LIKELIHOODS.register("discretized_logistic_mixture")
class DiscretizedLogisticMixture(ObservationModel):
    """Discretised logistic mixture for ``num_bits``-bit images (B, C, H, W) with values in [0, 1]."""

    joint_channels = True

    def __init__(self, data_shape, num_mixtures: int = 10, num_bits: int = 8):
        super().__init__(data_shape)
        self.M = num_mixtures
        self.bits = num_bits
        self.levels = 2**num_bits
        C = self.channels
        self.num_coeffs = C * (C - 1) // 2

    @classmethod
    def from_config(cls, config) -> DiscretizedLogisticMixture:
        return cls(tuple(config.data_shape), num_mixtures=config.num_mixtures, num_bits=config.num_bits)

    def like(self, data_shape: tuple[int, ...]) -> DiscretizedLogisticMixture:
        return DiscretizedLogisticMixture(data_shape, num_mixtures=self.M, num_bits=self.bits)

    @property
    def num_params(self) -> int:
        C = self.channels
        return self.M * (1 + 2 * C + self.num_coeffs)

    def forward(self, params: Tensor) -> DiscretizedLogisticMixtureDistribution:
        B, M, C = params.shape[0], self.M, self.channels
        sp = params.shape[2:]
        logit_pi, rest = params.split([M, params.shape[1] - M], dim=1)
        rest = rest.reshape(B, M, 2 * C + self.num_coeffs, *sp)
        mu, log_s, coeffs = rest.split([C, C, self.num_coeffs], dim=2)
        # floor on the log-scale as in PixelCNN++: keeps the logistic from collapsing onto a bin edge
        log_s = log_s.clamp_min(-7.0)
        return DiscretizedLogisticMixtureDistribution(self, logit_pi, mu, log_s, torch.tanh(coeffs), self.bits)

    def check_support(self, x: Tensor) -> None:
        super().check_support(x)
        if (x < 0).any() or (x > 1).any():
            raise ValueError(
                "likelihood 'discretized_logistic_mixture' needs pixel values scaled to [0, 1]; "
                "scale the data (data sources do this) and do not standardize it"
            )


# --- Autoregressive ------------------------------------------------------------------------------------


class AutoregressiveDistribution(ObservationDistribution):
    """p(x | c) = ∏_i p(x_i | x_<i, c), positions in raster order, each p(x_i | ·) from the base model.

    * ``log_prob(x)``: one teacher-forced parallel pass of the network, (B,) nats.
    * ``sample()``: sequential, one network step per position; the log-probability of the drawn sample
      under the sampler's own conditionals is kept in ``sample_log_prob`` (B,) nats.
    * ``mean``: a greedy sequential pass: the mean of p(x_i | x̂_<i, c) at each position, where x̂_<i are
      the most probable values of the earlier positions. Not E[x] (that has no closed form); it is what a
      reconstruction or a "mean image" of an autoregressive decoder usually shows. Where the net orders
      the channels of a position, channel c's mean is taken given the most probable channels < c.
    Sequential passes cost one network step per position (no gradients), plus a rerun of the head for
    each further channel where the net orders them.
    """

    _model: Autoregressive

    def __init__(self, model: Autoregressive, cond: Tensor):
        super().__init__(model)
        self.cond = cond  # (B, P_c, *spatial)
        self.sample_log_prob: Tensor | None = None

    def _net_input(self, x: Tensor) -> Tensor:
        m = self._model
        x = m._to_layout(x)
        return x.to(self.cond.dtype) / (m.levels - 1) if not x.dtype.is_floating_point else x.to(self.cond.dtype)

    def conditionals(self, x: Tensor) -> ObservationDistribution:
        """Every position's p(x_i | x_<i, c) given the true x_<i (teacher forcing), as one base distribution
        over x's shape: its ``log_prob(x)`` is ``self.log_prob(x)``; a categorical's logits (B, K, C, *spatial)
        give each position's most probable value. One parallel pass of the network."""
        m = self._model
        return m.base(_wide(m.net(self._net_input(x), self.cond)))  # float32 under autocast

    def log_prob(self, x: Tensor) -> Tensor:
        return self.conditionals(x).log_prob(x)

    @torch.no_grad()
    def _sequential(self, pick) -> tuple[Tensor, Tensor, Tensor]:
        """Fill the positions in order with ``pick(p(x_t | x_<t, c))`` (channel by channel where the net
        orders them); returns x, its log-probability under the conditionals p(x_t | x_<t, c) (B,) nats, and
        the mean of each conditional, both in channel layout.

        Token models with a padding id stop at end-of-sequence (id ``pad_id - 1``, the tokenisers' layout):
        once a row has emitted it, its later positions hold padding and add nothing to the log-probability,
        and the loop ends when every row has emitted it."""
        m = self._model
        B, C = self.cond.shape[0], m.channels
        x = self.cond.new_zeros(B, C, *m.spatial)
        means = torch.zeros_like(x)
        x_flat, means_flat = x.view(B, C, -1), means.view(B, C, -1)  # (B, C, T) views: writing fills x, means
        log_p = self.cond.new_zeros(B)
        one = (1,) * len(m.spatial)
        stepper = m.net.stepper(self.cond)
        pad = m.base.pad_id if m.tokens else None
        done = torch.zeros(B, dtype=torch.bool, device=x.device)  # (B,) rows past end-of-sequence (with a pad)
        T = math.prod(m.spatial)
        for t in range(T):
            if pad is not None and bool(done.all()):
                # every row has ended: the rest is padding (levels k / (K - 1), as the buffer holds them)
                x_flat[:, :, t:] = pad / (m.levels - 1)
                break
            params = stepper.step(x, t)
            for c in range(1, C if m.orders_channels else 1):
                # channel c's conditional reads channels < c of this position: draw channel c - 1, rerun the head
                x_flat[:, c - 1, t] = pick(m.step_base(_wide(params.view(B, -1, *one)))).reshape(B, C)[:, c - 1]
                params = stepper.head(x, t)
            # the last parameters hold every channel's conditional: channel c's read channels < c only
            d = m.step_base(_wide(params.view(B, -1, *one)))
            v = pick(d).reshape(B, C)
            if m.orders_channels:
                v[:, :-1] = x_flat[:, :-1, t]  # the channels drawn above
            lp = d.log_prob(m.step_base._to_user(v.view(B, C, *one)))
            if pad is not None:
                v = v.masked_fill(done.unsqueeze(1), pad / (m.levels - 1))
                lp = lp.masked_fill(done, 0.0)
                done = done | (torch.round(v[:, 0] * (m.levels - 1)) == pad - 1)
            log_p += lp
            x_flat[:, :, t] = v
            means_flat[:, :, t] = d._mean_layout().reshape(B, C)
        return x, log_p, means

    def _ids(self, x: Tensor) -> Tensor:
        """Levels k / (K - 1) of the sequential buffer -> int64 token ids."""
        return torch.round(x * (self._model.levels - 1)).long()

    def sample(self) -> Tensor:
        x, self.sample_log_prob, _ = self._sequential(lambda d: d._sample_layout())
        return self._model._to_user(self._ids(x) if self._model.tokens else x)

    def decode(self, decoding: Decoding) -> Tensor:
        """Generate with ``decoding`` (see :mod:`hvae.decoding`): each position's value picked from its
        conditional's logits; user's shape, token ids for token models (padded after end-of-sequence).
        ``sample_log_prob`` keeps the log-probability (B,) nats of the result under p(x | c) itself (not
        the tempered or truncated conditionals). The discretised logistic takes ``sample`` and ``greedy``
        only (its values are not classes with logits)."""
        if isinstance(self._model.base, DiscretizedLogisticMixture) and (
            decoding.method not in ("sample", "greedy") or decoding.temperature != 1
        ):
            raise ValueError(
                f"decode={decoding.method!r} at decoder temperature {decoding.temperature:g}: the discretised "
                "logistic mixture decodes with 'sample' or 'greedy' at temperature 1 only; use one of those"
            )

        def pick(d: ObservationDistribution) -> Tensor:
            if isinstance(d, BernoulliDistribution):
                return decoding.pick_binary(d.logits)
            if isinstance(d, CategoricalDistribution):
                return decoding.pick(d.logits, dim=1).to(d.logits.dtype) / (d.K - 1)
            return d._sample_layout() if decoding.is_sampling else d.mode_layout()

        x, self.sample_log_prob, _ = self._sequential(pick)
        return self._model._to_user(self._ids(x) if self._model.tokens else x)

    @property
    def mean(self) -> Tensor:
        """Token models: the greedy sequence (each position's most probable id given the ones before)."""
        x, _, means = self._sequential(lambda d: d.mode_layout())
        return self._model._to_user(self._ids(x) if self._model.tokens else means)


class Autoregressive(ObservationModel):
    """An autoregressive observation model: the decoder's ``num_params`` channels are conditioning
    features c, and a masked network (``net``, see :mod:`hvae.nets.autoregressive`) turns (x_<i, c) into
    the parameters of the ``base`` observation model at each position i.

    ``step_base`` is the base model for one position, used when sampling. Where the net
    ``orders_channels`` (a PixelCNN with Bernoulli or categorical outputs for C > 1 channels) the sampler
    fills the channels of a position one by one; otherwise the base model orders them (the discretised
    logistic mixture) or there is one.
    """

    levels: int  # never None: the base model's discrete values

    def __init__(self, data_shape, base: ObservationModel, net: AutoregressiveNet, cond_channels: int, levels: int):
        super().__init__(data_shape)
        self.base = base
        step_shape = (self.channels, *(1 for _ in self.spatial)) if len(self.data_shape) > 1 else (1,)
        self.step_base = base.like(step_shape)
        self.net = net
        self.cond_channels = cond_channels
        self.levels = levels  # values per position, for integer class data
        self.tokens = base.tokens
        self.orders_channels = net.orders_channels

    @property
    def num_params(self) -> int:
        return self.cond_channels

    def forward(self, params: Tensor) -> AutoregressiveDistribution:
        return AutoregressiveDistribution(self, params)

    def check_support(self, x: Tensor) -> None:
        self.base.check_support(x)


def _build_autoregressive(config) -> Autoregressive:
    from .nets import autoregressive

    base = build_likelihood(config.replace(decoder="plain", decoder_only=False))  # the per-position model
    levels = base.levels
    if levels is None:  # continuous data: no values to predict position by position
        raise ValueError(f"an autoregressive decoder cannot use the observation model {type(base).__name__}")
    net = autoregressive.build(
        config,
        in_ch=base.channels,
        cond_ch=config.ar_cond_channels,
        out_ch=base.num_params,
        levels=levels,
        length=math.prod(base.spatial),
        # Bernoulli and categorical outputs treat channels as independent: the net must order them
        order_channels=not base.joint_channels,
    )
    return Autoregressive(base.data_shape, base, net, config.ar_cond_channels, levels)


def build_likelihood(config) -> ObservationModel:
    """The observation model :data:`LIKELIHOODS` holds for ``config.likelihood``, for ``config.data_shape``
    (wrapped in an autoregressive decoder when ``config.decoder`` names one)."""
    if getattr(config, "decoder", "plain") != "plain":
        return _build_autoregressive(config)
    return LIKELIHOODS[config.likelihood].from_config(config)
