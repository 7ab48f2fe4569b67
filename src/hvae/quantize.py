"""Vector-quantised latents (VQ-VAE, van den Oord et al. 2017; VQ-VAE-2, Razavi et al. 2019).

A VQ level has G groups per position; each group's encoder output e (E channels) is replaced by its
nearest code c_{k*}, k* = argmin_k ||e - c_k||, from a codebook of K codes. So the posterior q(k | x) is
one-hot, and with a learned categorical prior p(k | z_{l+1}) the level still enters the ELBO with
KL(q || p) = -log p(k* | .). The codebook is learned by exponential moving averages of the assigned
encoder outputs (with Laplace smoothing of the counts), the encoder by the straight-through gradient and
the commitment loss beta ||e - sg(c_{k*})||^2, and codes that fall out of use are restarted at random
encoder outputs.

Latent tensors are the code vectors: (B, G*E, *spatial). The EMA statistics are updated only in
training passes with gradients on; under data parallelism the counts and sums are summed over the
processes first, so the codebook follows the whole batch on every rank (a restarted code takes rank 0's
encoder output: DDP copies rank 0's buffers to the others before each forward).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .distributions import Categorical, LatentFamily, register_kl
from .registry import LATENT_FAMILIES


def _vectors(z: Tensor, code_dim: int) -> Tensor:
    """(B, G*E, *spatial) -> (B, G, *spatial, E)."""
    return z.reshape(z.shape[0], -1, code_dim, *z.shape[2:]).movedim(2, -1)


def _unvectors(v: Tensor) -> Tensor:
    """(B, G, *spatial, E) -> (B, G*E, *spatial)."""
    v = v.movedim(-1, 2)
    return v.reshape(v.shape[0], -1, *v.shape[3:])


def _counts(index: Tensor, num_codes: int) -> Tensor:
    """How often each of the codes occurs in ``index``, (K,) float32. ``bincount`` would read the indices'
    range back to the host (a wait on an accelerator, and a graph break for torch.compile)."""
    k = index.flatten()
    return torch.zeros(num_codes, device=k.device).index_add_(0, k, torch.ones(k.shape, device=k.device))


def code_indices(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code for every group and position of ``z`` (B, G*E, *spatial): (B, G, *spatial)."""
    v = _vectors(z, codebook.shape[1]).float()
    with torch.autocast(v.device.type, enabled=False):  # in float32 under autocast too: bf16 picks other codes
        # ||v - c||^2 = ||v||^2 - 2 v.c + ||c||^2; the first term does not change the argmin
        dist = codebook.float().pow(2).sum(1) - 2 * v @ codebook.float().t()
    return dist.argmin(-1)


def embed(index: Tensor, codebook: Tensor) -> Tensor:
    """Code vectors for indices (B, G, *spatial): (B, G*E, *spatial)."""
    return _unvectors(codebook[index])


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code usage in ``counts`` (K,): K for uniform use, 1 for a single code."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(torch.xlogy(p, p)).sum())


class CodePrior:
    """p(k | .): G categorical variables over the K codes, ``logits`` (B, G*K, *spatial); its values are
    code vectors (B, G*E, *spatial), read back to indices by the nearest code."""

    def __init__(self, logits: Tensor, codebook: Tensor):
        self.codebook = codebook
        self.cat = Categorical(logits, codebook.shape[0])
        self.logits = logits

    @property
    def mean(self) -> Tensor:
        """The expected code vector sum_k p_k c_k."""
        probs = self.cat.probs.movedim(2, -1)  # (B, G, *spatial, K)
        return _unvectors(probs @ self.codebook.to(probs.dtype))

    def rsample(self, temperature: float = 1.0) -> Tensor:
        """Code vectors of k ~ softmax(logits / temperature) (temperature 0: the most probable code)."""
        one_hot = self.cat._group(self.cat.rsample(temperature, hard=True))
        return embed(one_hot.argmax(2), self.codebook)

    def sample(self, temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            return self.rsample(temperature)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(k(z)), k(z) the nearest code of z: (B, G, *spatial), nats."""
        k = code_indices(z, self.codebook)
        return self.cat.log_probs.gather(2, k.unsqueeze(2)).squeeze(2)

    def repeat(self, k: int) -> CodePrior:
        return CodePrior(self.cat.repeat(k).logits, self.codebook)


class VQPosterior:
    """q(k | x) = one-hot on k* = argmin_k ||e - c_k||, as a distribution over code vectors.

    ``e``: encoder output (B, G*E, *spatial); ``index``: k* (B, G, *spatial); ``z_q``: c_{k*} in the
    layout of ``e``; ``aux_loss``: the commitment loss per example (B,), added to the training loss.
    """

    def __init__(self, e: Tensor, codebook: Tensor, index: Tensor, aux_loss: Tensor):
        self.e, self.codebook, self.index, self.aux_loss = e, codebook, index, aux_loss
        self.z_q = embed(index, codebook).to(e.dtype)

    @property
    def mean(self) -> Tensor:
        return self.z_q

    def rsample(self, temperature: float = 1.0) -> Tensor:
        """c_{k*} forward, identity gradient to e backward (the straight-through estimator)."""
        return self.e + (self.z_q - self.e).detach()

    def sample(self, temperature: float = 1.0) -> Tensor:
        return self.z_q.detach()

    def log_prob(self, z: Tensor) -> Tensor:
        """0 where z is the chosen code, -inf elsewhere (q is a point mass): (B, G, *spatial)."""
        same = code_indices(z, self.codebook) == self.index
        return torch.where(same, 0.0, -math.inf).to(self.e.dtype)

    def code_counts(self) -> Tensor:
        """How often each code was chosen in this batch, (K,)."""
        return _counts(self.index, self.codebook.shape[0])

    def perplexity(self) -> Tensor:
        return perplexity(self.code_counts())


@register_kl(VQPosterior, CodePrior)
def _kl_vq(q: VQPosterior, p: CodePrior) -> Tensor:
    # q is one-hot on k*: KL(q || p) = -log p(k* | .)
    return -p.cat.log_probs.gather(2, q.index.unsqueeze(2)).squeeze(2)


@LATENT_FAMILIES.register("vq")
class VQFamily(nn.Module, LatentFamily):
    """The VQ latent family of one level: the codebook (K x E) with its EMA statistics, and on the top
    level the learned (or uniform) prior logits. ``latent_dim`` groups per position; z has G*E channels;
    the prior head emits G*K logits, the posterior head G*E encoder channels.
    """

    params_per_channel = 1
    # the buffers registered in __init__ (declared for the type checker: nn.Module's attributes are untyped)
    codebook: Tensor
    ema_count: Tensor
    ema_sum: Tensor
    initialised: Tensor

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        decay: float = 0.99,
        commitment: float = 0.25,
        dead_threshold: float = 0.01,
        epsilon: float = 1e-5,
        top_prior: str | None = None,
        groups: int = 1,
    ):
        nn.Module.__init__(self)
        self.num_codes, self.code_dim = num_codes, code_dim
        self.decay, self.commitment, self.dead_threshold, self.epsilon = decay, commitment, dead_threshold, epsilon
        codebook = torch.randn(num_codes, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", codebook.clone())
        # the first training pass restarts every code at encoder outputs (a data-dependent initialisation)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.top_logits = nn.Parameter(torch.zeros(groups * num_codes)) if top_prior == "learned" else None

    point_mass_posterior = True
    quantized = True

    @classmethod
    def from_config(cls, cfg, index: int) -> VQFamily:
        top = index == cfg.num_layers - 1
        return cls(
            cfg.vq.codes,
            cfg.vq.dim,
            decay=cfg.vq.decay,
            commitment=cfg.vq.commitment,
            dead_threshold=cfg.vq.dead_threshold,
            top_prior=cfg.vq.top_prior if top else None,
            groups=cfg.latent_dims[index],
        )

    @classmethod
    def latent_channels(cls, cfg, index: int) -> int:
        return cfg.latent_dims[index] * cfg.vq.dim

    def channels(self, latent_dim: int) -> int:
        return latent_dim * self.code_dim

    def raw_channels(self, latent_dim: int, role: str = "posterior") -> int:
        return latent_dim * (self.num_codes if role == "prior" else self.code_dim)

    def prior_from_raw(self, raw: Tensor) -> CodePrior:
        return CodePrior(raw, self.codebook)

    def prior_top(self, shape, device, dtype) -> CodePrior:
        B, C, *spatial = shape
        logits_shape = (B, C // self.code_dim * self.num_codes, *spatial)
        if self.top_logits is None:
            return CodePrior(torch.zeros(logits_shape, device=device, dtype=dtype), self.codebook)
        logits = self.top_logits.to(dtype).view(1, -1, *([1] * len(spatial))).expand(logits_shape)
        return CodePrior(logits, self.codebook)

    def merge(self, bottom_up: VQPosterior, prior: CodePrior) -> VQPosterior:
        """The nearest-code posterior does not read the prior: the ladder rule is the bottom-up term."""
        return bottom_up

    def code_indices(self, z: Tensor) -> Tensor:
        """Nearest code of each group of ``z`` (B, G*E, *spatial): (B, G, *spatial)."""
        return code_indices(z, self.codebook)

    def from_raw(self, raw: Tensor) -> VQPosterior:
        """Quantise the encoder output ``raw`` (B, G*E, *spatial); in training (with gradients) also
        update the codebook."""
        e, codebook = raw, self.codebook
        index = code_indices(e.detach(), codebook)
        z_q = embed(index, codebook).to(e.dtype)
        commit = self.commitment * (e - z_q.detach()).pow(2).flatten(1).sum(1)  # (B,), beta ||e - sg(c)||^2
        if self.training and torch.is_grad_enabled():
            self._ema_update(e.detach(), index)  # replaces self.codebook; this q keeps the one it used
        return VQPosterior(e, codebook, index, commit)

    @torch.no_grad()
    def _ema_update(self, e: Tensor, index: Tensor) -> None:
        K = self.num_codes
        v = _vectors(e, self.code_dim).reshape(-1, self.code_dim).float()  # (N, E)
        k = index.reshape(-1)
        counts = _counts(k, K)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, k, v)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # data parallel: the statistics of the whole batch, so that every rank moves the codebook alike
            # (DDP copies rank 0's buffers to the others before each forward: without this the codebook
            # would learn from rank 0's shard only)
            both = torch.cat([counts.unsqueeze(1), sums], 1)
            dist.all_reduce(both)
            counts, sums = both[:, 0], both[:, 1:]
        d = self.decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (n + K * self.epsilon) * n  # Laplace smoothing
        codebook = self.ema_sum / smoothed.unsqueeze(1)
        # restart codes whose share of use fell below dead_threshold of the uniform share 1/K
        dead = (self.ema_count / n < self.dead_threshold / K) | ~self.initialised
        N = v.shape[0]
        rows = torch.randperm(N, device=v.device)[:K] if N >= K else torch.randint(N, (K,), device=v.device)
        fresh = v[rows]  # (K, E)
        share = (n / K).expand(K)
        # a new tensor, not an in-place write: distributions of this pass keep the codebook they were built on
        self.codebook = torch.where(dead.unsqueeze(1), fresh, codebook)
        self.ema_sum.copy_(torch.where(dead.unsqueeze(1), fresh * share.unsqueeze(1), self.ema_sum))
        self.ema_count.copy_(torch.where(dead, share, self.ema_count))
        self.initialised.fill_(True)
