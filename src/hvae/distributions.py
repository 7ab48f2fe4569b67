"""Latent distributions and the registry of their KL divergences.

The vocabulary follows ``torch.distributions``: ``rsample``, ``sample``, ``log_prob``, ``mean``; KL pairs
live in one registry (:func:`register_kl`, :func:`kl_divergence`). Every quantity is elementwise over the
latent's shape ``(B, *latent_shape)``; the model sums over the latent dimensions.

A latent family is described to the layers by :class:`LatentFamily`: how many raw channels a network
must emit per latent channel, how to turn those into a distribution, and how the Ladder VAE merges a
bottom-up term with the prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}


def register_kl(type_q: type, type_p: type):
    """Decorator: register ``fn(q, p) -> Tensor`` as the analytic KL(q || p), elementwise."""

    def wrap(fn: Callable) -> Callable:
        _KL_REGISTRY[(type_q, type_p)] = fn
        return fn

    return wrap


def kl_divergence(q, p) -> Tensor:
    """Analytic KL(q || p), elementwise over the latent shape (nats)."""
    fn = _KL_REGISTRY.get((type(q), type(p)))
    if fn is None:
        raise NotImplementedError(f"no analytic KL registered for ({type(q).__name__}, {type(p).__name__}); use kl: mc")
    return fn(q, p)


def scale_from_raw(raw: Tensor, min_scale: float) -> Tensor:
    """A standard deviation from an unconstrained value: softplus keeps it positive and smooth,
    ``min_scale`` keeps the log-density and the KL finite when a network pushes sigma towards 0."""
    return F.softplus(raw) + min_scale


def raw_from_scale(scale: Tensor | float, min_scale: float) -> Tensor:
    """Inverse of :func:`scale_from_raw` (for initialising and for tests)."""
    s = torch.as_tensor(scale, dtype=torch.get_default_dtype()) - min_scale
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
        """Reparameterised sample mu + t * sigma * eps; temperature 0 gives the mean."""
        if temperature == 0:
            return self.mu
        return self.mu + temperature * self.sigma * torch.randn_like(self.mu)

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
    """How a latent layer's networks parameterise its distribution.

    ``params_per_channel`` raw channels per latent channel; ``from_raw`` builds the distribution from a
    tensor whose channel dimension (dim 1) holds them; ``prior_top`` is p(z_L); ``merge`` is the Ladder
    VAE's combination of a bottom-up term with the prior.
    """

    params_per_channel: int

    def from_raw(self, raw: Tensor):
        raise NotImplementedError

    def prior_top(self, shape: tuple[int, ...], device, dtype):
        raise NotImplementedError

    def merge(self, bottom_up, prior):
        raise NotImplementedError


class GaussianFamily(LatentFamily):
    params_per_channel = 2

    def __init__(self, min_scale: float):
        self.min_scale = min_scale

    def from_raw(self, raw: Tensor) -> Gaussian:
        mu, raw_sigma = raw.chunk(2, dim=1)
        return Gaussian(mu, scale_from_raw(raw_sigma, self.min_scale))

    def prior_top(self, shape, device, dtype) -> StandardNormal:
        return StandardNormal(shape, device=device, dtype=dtype)

    def merge(self, bottom_up: Gaussian, prior: Gaussian) -> Gaussian:
        return bottom_up.merge(prior)
