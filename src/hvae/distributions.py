"""Latent distributions and the registry of their KL divergences.

The vocabulary follows ``torch.distributions``: ``rsample``, ``sample``, ``log_prob``, ``mean``; KL pairs
live in one registry (:func:`register_kl`, :func:`kl_divergence`). Every quantity is elementwise over the
latent's shape ``(B, *latent_shape)``; the model sums over the latent dimensions.

A latent family is described to the layers by :class:`LatentFamily`: how many raw channels a network
must emit per latent channel, how to turn those into a distribution, and how the Ladder VAE merges a
bottom-up term with the prior. The families live in the registry :data:`hvae.registry.LATENT_FAMILIES`
(``model.latent_types`` names them).

To add a latent type: subclass :class:`LatentFamily`, define ``from_config`` (the family of one level from
the model config), ``params_per_channel``, ``from_raw``, ``prior_top`` and ``merge`` (and ``channels`` /
``latent_channels`` if z has more channels than ``latent_dim``); decorate the class with
``@LATENT_FAMILIES.register("name")``; register the KL of its distributions with :func:`register_kl` (or
train with ``kl: mc``). Everything else has a no-op default (``set_relaxation``, ``code_indices``) or a
general rule (``residual_posterior``: the merge). ``model.latent_types: [name, ...]`` then accepts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LATENT_FAMILIES

_LOG_2PI = math.log(2 * math.pi)

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}
_KL_MEMO: dict[tuple[type, type], Callable | None] = {}  # lookups by (type(q), type(p)), cleared on registration


def register_kl(type_q: type, type_p: type):
    """Decorator: register ``fn(q, p) -> Tensor`` as the analytic KL(q || p), elementwise.

    As in ``torch.distributions.kl``, a pair also serves subclasses: :func:`kl_divergence` takes the
    registered pair nearest to ``(type(q), type(p))`` along their method resolution orders."""

    def wrap(fn: Callable) -> Callable:
        _KL_REGISTRY[(type_q, type_p)] = fn
        _KL_MEMO.clear()
        return fn

    return wrap


def _dispatch_kl(type_q: type, type_p: type) -> Callable | None:
    # the registered pair whose classes come first in the two MROs (q's first: its distance breaks ties)
    matches = [
        (type_q.__mro__.index(sq), type_p.__mro__.index(sp), fn)
        for (sq, sp), fn in _KL_REGISTRY.items()
        if issubclass(type_q, sq) and issubclass(type_p, sp)
    ]
    return min(matches, key=lambda m: (m[0] + m[1], m[0]))[2] if matches else None


def kl_divergence(q, p) -> Tensor:
    """Analytic KL(q || p), elementwise over the latent shape (nats).

    Dispatches on the classes of ``q`` and ``p``: the registered pair nearest to them in their class
    hierarchies (an exact pair first)."""
    key = (type(q), type(p))
    fn = _KL_REGISTRY.get(key)  # an exact pair: no search (and nothing for torch.compile to trace)
    if fn is None:
        if key not in _KL_MEMO:
            _KL_MEMO[key] = _dispatch_kl(*key)
        fn = _KL_MEMO[key]
    if fn is None:
        raise NotImplementedError(f"no analytic KL registered for ({type(q).__name__}, {type(p).__name__}); use kl: mc")
    return fn(q, p)


SCALE_PARAMS = ("std", "variance", "log", "softclamp")
SOFT_CLAMP = 5.0  # NVAE distributions.py soft_clamp5: x -> 5 tanh(x / 5)
SOFTCLAMP_FLOOR = 1e-2  # NVAE distributions.py Normal: sigma = exp(log_sigma) + 1e-2


def _check_scale_param(param: str) -> None:
    if param not in SCALE_PARAMS:
        raise ValueError(f"scale_param: expected one of {', '.join(SCALE_PARAMS)}, got {param!r}")


def scale_from_raw(raw: Tensor, min_scale: float, param: str = "std") -> Tensor:
    """A standard deviation from an unconstrained value: softplus keeps it positive and smooth,
    ``min_scale`` keeps the log-density and the KL finite when a network pushes sigma towards 0.

    ``param`` (``ModelConfig.scale_param``) says what the softplus gives: ``"std"``, sigma = softplus(raw) +
    min_scale; ``"variance"``, as in the Ladder VAE paper (Sønderby et al. 2016: sigma^2 = softplus(Linear(d))),
    sigma^2 = softplus(raw) + min_scale^2.
    Both floor sigma at ``min_scale``; for small sigma, a step in ``raw`` moves log sigma about twice as far
    under ``std`` as under ``variance``.
    ``"log"`` (VDVAE's vae_helpers.py: the head gives log sigma) is sigma = exp(raw), without a floor;
    ``"softclamp"`` (NVAE's distributions.py Normal) is sigma = exp(5 tanh(raw / 5)) + 0.01, and the mean is
    soft-clamped alike (:meth:`GaussianFamily.from_raw`); neither reads ``min_scale``."""
    _check_scale_param(param)
    if param == "variance":
        return (F.softplus(raw) + min_scale**2).sqrt()
    if param == "log":
        return raw.exp()
    if param == "softclamp":
        return soft_clamp(raw).exp() + SOFTCLAMP_FLOOR
    return F.softplus(raw) + min_scale


def soft_clamp(x: Tensor) -> Tensor:
    """NVAE's soft_clamp5: 5 tanh(x / 5), the identity near 0 and bounded by +-5."""
    return SOFT_CLAMP * torch.tanh(x / SOFT_CLAMP)


def raw_from_scale(scale: Tensor | float, min_scale: float, param: str = "std") -> Tensor:
    """Inverse of :func:`scale_from_raw` (for initialising and for tests)."""
    _check_scale_param(param)
    s = torch.as_tensor(scale, dtype=torch.get_default_dtype())
    if param == "log":
        return s.log()
    if param == "softclamp":
        return SOFT_CLAMP * torch.atanh((s - SOFTCLAMP_FLOOR).log() / SOFT_CLAMP)
    s = s**2 - min_scale**2 if param == "variance" else s - min_scale
    return s + torch.log(-torch.expm1(-s))


class Gaussian:
    """Diagonal Gaussian N(mu, sigma^2), elementwise over any shape."""

    def __init__(self, mu: Tensor, sigma: Tensor):
        self.mu = mu
        self.sigma = sigma

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape

    def rsample(self, temperature: float = 1.0) -> Tensor:
        """Reparameterised sample mu + t * sigma * eps; temperature 0 gives the mean. The noise is drawn in
        the logical order of the elements whatever the memory layout of ``mu`` (channels-last in a compiled
        convolutional graph, say), so one seed gives the same sample eager or compiled."""
        if temperature == 0:
            return self.mu
        return self.mu + temperature * self.sigma * torch.randn_like(self.mu, memory_format=torch.contiguous_format)

    def sample(self, temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            return self.rsample(temperature)

    def log_prob(self, z: Tensor) -> Tensor:
        """Elementwise log N(z; mu, sigma^2) in nats."""
        return -0.5 * (((z - self.mu) / self.sigma) ** 2 + _LOG_2PI) - torch.log(self.sigma)

    def entropy(self) -> Tensor:
        return 0.5 * (1.0 + _LOG_2PI) + torch.log(self.sigma)

    def merge(self, other: Gaussian) -> Gaussian:
        """Ladder VAE precision-weighted merge (Sønderby et al. 2016, eq. 18-19): the normalised product
        N(mu_1, s_1^2) N(mu_2, s_2^2) / Z = N((mu_1 s_1^-2 + mu_2 s_2^-2) s^2, s^2), s^-2 = s_1^-2 + s_2^-2."""
        prec_1 = self.sigma.pow(-2)
        prec_2 = other.sigma.pow(-2)
        var = 1.0 / (prec_1 + prec_2)
        mu = (self.mu * prec_1 + other.mu * prec_2) * var
        return Gaussian(mu, var.sqrt())

    def repeat(self, k: int) -> Gaussian:
        """Tile the batch k times: (B, ...) -> (k*B, ...), sample-major."""
        return Gaussian(_tile(self.mu, k), _tile(self.sigma, k))

    def __repr__(self) -> str:
        return f"Gaussian(shape={tuple(self.mu.shape)})"


class StandardNormal(Gaussian):
    """N(0, I) of a fixed shape: the top prior p(z_L). Its KL against a Gaussian skips the divisions."""

    def __init__(self, shape: tuple[int, ...], device=None, dtype=None):
        mu = torch.zeros(shape, device=device, dtype=dtype)
        super().__init__(mu, torch.ones_like(mu))

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + _LOG_2PI)


@register_kl(Gaussian, Gaussian)
def _kl_gaussian_gaussian(q: Gaussian, p: Gaussian) -> Tensor:
    # KL(N(m_q, s_q^2) || N(m_p, s_p^2)) = log(s_p/s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2
    ratio = q.sigma / p.sigma
    diff = (q.mu - p.mu) / p.sigma
    return 0.5 * (ratio.pow(2) + diff.pow(2) - 1.0) - torch.log(ratio)


@register_kl(Gaussian, StandardNormal)
def _kl_gaussian_standard(q: Gaussian, p: StandardNormal) -> Tensor:
    return 0.5 * (q.sigma.pow(2) + q.mu.pow(2) - 1.0) - torch.log(q.sigma)


def _tile(t: Tensor, k: int) -> Tensor:
    if k == 1:
        return t
    return t.repeat(k, *([1] * (t.dim() - 1)))


class LatentFamily:
    """How a latent layer's networks parameterise its distribution; the base of every registered family.

    ``params_per_channel`` raw channels per latent channel; ``from_raw`` builds the distribution from a
    tensor whose channel dimension (dim 1) holds them; ``prior_top`` is p(z_L); ``merge`` is the Ladder
    VAE's combination of a bottom-up term with the prior. The other methods have defaults that make what
    does not apply to a family a no-op, so the layers and the model never ask which family they hold.
    """

    params_per_channel: int
    #: the posterior is a point mass (vector quantisation): KL(q || p) = -log p(k* | .) is exact whatever the
    #: config's ``kl``, and the training loss adds the posterior's ``aux_loss``
    point_mass_posterior: bool = False
    #: the level's values are codes of a codebook (:meth:`code_indices` reads them back)
    quantized: bool = False
    #: the posterior has a mean per channel that may be normalised (BN-VAE: ``model.bn_posterior_means``)
    has_mean: bool = False

    @classmethod
    def from_config(cls, cfg, index: int) -> LatentFamily:
        """The family of level ``index`` (0 = z_1) from a :class:`~hvae.config.ModelConfig`."""
        return cls()

    @classmethod
    def latent_channels(cls, cfg, index: int) -> int:
        """Channels of z at level ``index`` from the config alone (without building the family)."""
        return cfg.latent_dims[index]

    def from_raw(self, raw: Tensor):
        raise NotImplementedError

    def prior_top(self, shape: tuple[int, ...], device, dtype):
        raise NotImplementedError

    def merge(self, bottom_up, prior):
        raise NotImplementedError

    def residual_posterior(self, raw: Tensor, prior):
        """q from a head's output relative to the prior (``residual_posterior: true``): by default the product
        of the prior with the distribution of ``raw`` (for logits: logits_q = logits_p + delta); a zero head
        then gives q = p for the discrete families."""
        return self.merge(self.from_raw(raw), prior)

    def set_relaxation(self, tau: float | Tensor, relaxed: bool) -> None:
        """Relaxation temperature and whether the coming pass draws relaxed samples; nothing to set by default."""

    def code_indices(self, z: Tensor) -> Tensor | None:
        """Codebook indices of ``z`` for a :attr:`quantized` family; None otherwise."""
        return None

    def channels(self, latent_dim: int) -> int:
        """Channels of the latent tensor z for ``latent_dim`` (the config's entry): what the networks
        downstream of z see. ``latent_dim`` itself for Gaussian and Bernoulli latents, G*K for G one-hot
        groups of K classes."""
        return latent_dim

    def raw_channels(self, latent_dim: int, role: str = "posterior") -> int:
        """Raw channels a head must emit for the prior (``role="prior"``) or the posterior."""
        return self.params_per_channel * self.channels(latent_dim)

    def prior_from_raw(self, raw: Tensor):
        """p(z_l | s_{l+1}) from the prior head's output; the same parameterisation as q unless overridden."""
        return self.from_raw(raw)


_SOFTPLUS_INV_ONE = float(torch.log(torch.expm1(torch.tensor(1.0))))


@LATENT_FAMILIES.register("gaussian")
class GaussianFamily(LatentFamily):
    params_per_channel = 2
    has_mean = True

    def __init__(self, min_scale: float, scale_param: str = "std"):
        _check_scale_param(scale_param)
        self.min_scale, self.scale_param = min_scale, scale_param

    @classmethod
    def from_config(cls, cfg, index: int) -> GaussianFamily:
        return cls(cfg.min_scale, cfg.scale_param)

    def from_raw(self, raw: Tensor) -> Gaussian:
        mu, raw_sigma = raw.chunk(2, dim=1)
        if self.scale_param == "softclamp":  # NVAE's Normal soft-clamps the mean as well
            mu = soft_clamp(mu)
        return Gaussian(mu, scale_from_raw(raw_sigma, self.min_scale, self.scale_param))

    def prior_top(self, shape, device, dtype) -> StandardNormal:
        return StandardNormal(shape, device=device, dtype=dtype)

    def merge(self, bottom_up: Gaussian, prior: Gaussian) -> Gaussian:
        return bottom_up.merge(prior)

    def residual_posterior(self, raw: Tensor, prior: Gaussian) -> Gaussian:
        """NVAE's residual posterior: q = N(mu_p + dmu, (sigma_p * dsigma)^2), dsigma = softplus(.) (its square
        under scale_param: variance), shifted so a zero head gives dsigma = 1 (q = p at first)."""
        d_mu, raw_ds = raw.chunk(2, dim=1)
        if self.scale_param in ("log", "softclamp"):  # NVAE: log_sig_p + log_sig_q, i.e. an exp
            d_sigma = raw_ds.exp()
        else:
            d_sigma = scale_from_raw(raw_ds + _SOFTPLUS_INV_ONE, 0.0, self.scale_param)
        # floored like every other scale (sigma_p is, so q = p at the start still holds): a head driven far
        # negative would otherwise give sigma_q = 0 and a non-finite KL
        return Gaussian(prior.mu + d_mu, (prior.sigma * d_sigma).clamp_min(self.min_scale))


# --- discrete latents ---------------------------------------------------------------------------------
# Relaxed samples (Gumbel-softmax / binary Concrete; Jang et al. 2017, Maddison et al. 2017) feed the
# networks while training; every other pass draws hard samples, so reported bounds use exact log-probs.


def _uniform_open(t: Tensor) -> Tensor:
    """U(0, 1) noise kept off 0 and 1 so that its logarithms stay finite, in the elements' logical order
    (see :meth:`Gaussian.rsample`)."""
    fi = torch.finfo(t.dtype)
    return torch.rand_like(t, memory_format=torch.contiguous_format).clamp(fi.tiny, 1.0 - fi.eps)


class Categorical:
    """G independent categorical latents of K classes each, one-hot encoded.

    ``logits``: (B, G*K, *spatial) with ``num_classes=K`` (group-major channels, the layout a head emits),
    or (B, G, K, *spatial) with ``num_classes=None``. Samples, ``mean`` and the argument of ``log_prob``
    have the layout of ``logits``; ``log_prob``, ``entropy`` and the KL are (B, G, *spatial), nats.

    ``rsample`` draws a hard one-hot sample unless ``relaxed``; relaxed, it is the Gumbel-softmax at
    relaxation temperature ``tau``, and with ``straight_through`` the hard one-hot in the forward pass with
    the relaxed gradient. ``log_prob(z) = sum_k z_k log pi_k`` is the exact log-probability for one-hot z;
    for a relaxed z it is that same linear form (a training surrogate, not the Concrete density).
    """

    def __init__(
        self,
        logits: Tensor,
        num_classes: int | None = None,
        *,
        tau: float | Tensor = 1.0,
        relaxed: bool = False,
        straight_through: bool = False,
    ):
        self.logits = logits
        if num_classes is None:
            self.num_classes = logits.shape[2]
            self._grouped = logits
        else:
            if logits.shape[1] % num_classes:
                raise ValueError(f"{logits.shape[1]} logit channels do not split into groups of {num_classes}")
            self.num_classes = num_classes
            self._grouped = logits.reshape(logits.shape[0], -1, num_classes, *logits.shape[2:])
        self.tau, self.relaxed, self.straight_through = tau, relaxed, straight_through

    def _group(self, z: Tensor) -> Tensor:  # (B, G*K, *spatial) -> (B, G, K, *spatial)
        return z.reshape(z.shape[0], *self._grouped.shape[1:])

    def _ungroup(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.logits.shape[1:])

    @property
    def log_probs(self) -> Tensor:
        """log pi, (B, G, K, *spatial)."""
        return F.log_softmax(self._grouped, dim=2)

    @property
    def probs(self) -> Tensor:
        return F.softmax(self._grouped, dim=2)

    @property
    def mean(self) -> Tensor:
        """The class probabilities, in the layout of ``logits``."""
        return self._ungroup(self.probs)

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def _one_hot(self, index: Tensor) -> Tensor:  # (B, G, *spatial) -> (B, G, K, *spatial)
        return F.one_hot(index, self.num_classes).movedim(-1, 2).to(self.logits.dtype)

    def rsample(self, temperature: float = 1.0, hard: bool | None = None) -> Tensor:
        """A sample from softmax(logits / temperature) (temperature 0: the mode). Hard unless ``relaxed``
        (or ``hard=False``)."""
        hard = (not self.relaxed) if hard is None else hard
        if temperature == 0:
            return self._ungroup(self._one_hot(self._grouped.argmax(2)))
        g = self._grouped / temperature - torch.log(-torch.log(_uniform_open(self._grouped)))  # + Gumbel noise
        one_hot = self._one_hot(g.argmax(2))
        if hard:
            return self._ungroup(one_hot)
        soft = F.softmax(g / self.tau, dim=2)
        if self.straight_through:
            return self._ungroup(one_hot + (soft - soft.detach()))  # exactly one-hot forward
        return self._ungroup(soft)

    def sample(self, temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            return self.rsample(temperature, hard=True)

    def log_prob(self, z: Tensor) -> Tensor:
        """sum_k z_k log pi_k per group, (B, G, *spatial), nats (exact for one-hot z)."""
        return (self._group(z) * self.log_probs).sum(2)

    def entropy(self) -> Tensor:
        return -(self.probs * self.log_probs).sum(2)

    def merge(self, other: Categorical) -> Categorical:
        """Normalised product of experts: prod_i pi_i,k / Z is the softmax of the summed logits."""
        return Categorical(
            self.logits + other.logits,
            None if self._grouped is self.logits else self.num_classes,
            tau=self.tau,
            relaxed=self.relaxed,
            straight_through=self.straight_through,
        )

    def repeat(self, k: int) -> Categorical:
        return Categorical(
            _tile(self.logits, k),
            None if self._grouped is self.logits else self.num_classes,
            tau=self.tau,
            relaxed=self.relaxed,
            straight_through=self.straight_through,
        )

    def __repr__(self) -> str:
        return f"Categorical(shape={tuple(self.logits.shape)}, classes={self.num_classes})"


class BernoulliLatent:
    """Independent binary latents with ``logits`` (B, D, *spatial); samples in {0, 1}, same shape.

    Relaxed, ``rsample`` is the binary Concrete sigmoid((logits + log u - log(1 - u)) / tau) (with
    ``straight_through`` the hard value forward, the relaxed gradient backward). ``log_prob(z) =
    z log s + (1 - z) log(1 - s)``, exact for binary z. Elementwise, nats.
    """

    def __init__(self, logits: Tensor, *, tau: float | Tensor = 1.0, relaxed: bool = False, straight_through=False):
        self.logits = logits
        self.tau, self.relaxed, self.straight_through = tau, relaxed, straight_through

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def rsample(self, temperature: float = 1.0, hard: bool | None = None) -> Tensor:
        """A sample with probability sigmoid(logits / temperature) (temperature 0: the mode)."""
        hard = (not self.relaxed) if hard is None else hard
        if temperature == 0:
            return (self.logits > 0).to(self.logits.dtype)
        u = _uniform_open(self.logits)
        g = self.logits / temperature + torch.log(u) - torch.log1p(-u)  # + logistic noise
        z_hard = (g > 0).to(self.logits.dtype)
        if hard:
            return z_hard
        soft = torch.sigmoid(g / self.tau)
        return z_hard + (soft - soft.detach()) if self.straight_through else soft

    def sample(self, temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            return self.rsample(temperature, hard=True)

    def log_prob(self, z: Tensor) -> Tensor:
        return z * F.logsigmoid(self.logits) + (1 - z) * F.logsigmoid(-self.logits)

    def entropy(self) -> Tensor:
        p = self.probs
        return -(p * F.logsigmoid(self.logits) + (1 - p) * F.logsigmoid(-self.logits))

    def merge(self, other: BernoulliLatent) -> BernoulliLatent:
        """Normalised product of experts: the log-odds add."""
        return BernoulliLatent(
            self.logits + other.logits, tau=self.tau, relaxed=self.relaxed, straight_through=self.straight_through
        )

    def repeat(self, k: int) -> BernoulliLatent:
        return BernoulliLatent(
            _tile(self.logits, k), tau=self.tau, relaxed=self.relaxed, straight_through=self.straight_through
        )

    def __repr__(self) -> str:
        return f"BernoulliLatent(shape={tuple(self.logits.shape)})"


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(q: Categorical, p: Categorical) -> Tensor:
    # KL = sum_k pi_q,k (log pi_q,k - log pi_p,k), per group
    return (q.probs * (q.log_probs - p.log_probs)).sum(2)


@register_kl(BernoulliLatent, BernoulliLatent)
def _kl_bernoulli_bernoulli(q: BernoulliLatent, p: BernoulliLatent) -> Tensor:
    s_q = q.probs
    return s_q * (F.logsigmoid(q.logits) - F.logsigmoid(p.logits)) + (1 - s_q) * (
        F.logsigmoid(-q.logits) - F.logsigmoid(-p.logits)
    )


class _DiscreteFamily(LatentFamily):
    """Shared by the discrete families: the relaxation settings the model sets before each pass, a
    uniform top prior (zero logits) and the logit-sum ladder merge."""

    params_per_channel = 1

    def __init__(self, straight_through: bool = False):
        self.straight_through = straight_through
        self.tau: float | Tensor = 1.0
        self.relaxed = False

    def set_relaxation(self, tau: float | Tensor, relaxed: bool) -> None:
        self.tau, self.relaxed = tau, relaxed

    def prior_top(self, shape, device, dtype):
        return self.from_raw(torch.zeros(shape, device=device, dtype=dtype))

    def merge(self, bottom_up, prior):
        return bottom_up.merge(prior)


@LATENT_FAMILIES.register("categorical")
class CategoricalFamily(_DiscreteFamily):
    """``latent_dim`` groups of ``num_classes`` one-hot classes: the latent has G*K channels."""

    def __init__(self, num_classes: int, straight_through: bool = False):
        super().__init__(straight_through)
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, index: int) -> CategoricalFamily:
        return cls(cfg.categorical_classes, cfg.straight_through)

    @classmethod
    def latent_channels(cls, cfg, index: int) -> int:
        return cfg.latent_dims[index] * cfg.categorical_classes

    def channels(self, latent_dim: int) -> int:
        return latent_dim * self.num_classes

    def from_raw(self, raw: Tensor) -> Categorical:
        return Categorical(
            raw, self.num_classes, tau=self.tau, relaxed=self.relaxed, straight_through=self.straight_through
        )


@LATENT_FAMILIES.register("bernoulli")
class BernoulliFamily(_DiscreteFamily):
    """``latent_dim`` binary units."""

    @classmethod
    def from_config(cls, cfg, index: int) -> BernoulliFamily:
        return cls(cfg.straight_through)

    def from_raw(self, raw: Tensor) -> BernoulliLatent:
        return BernoulliLatent(raw, tau=self.tau, relaxed=self.relaxed, straight_through=self.straight_through)
