"""Preprocessing of whole batches: binarization, uniform dequantization, standardization.

Every function works on a tensor ``(B, ...)`` at once (no per-example Python work) and takes its randomness
from an explicit ``torch.Generator`` so that each result is fixed by a seed. :func:`derive_seed` turns a
tuple such as ``(seed, "train", epoch, batch)`` into such a seed, identically on every machine.
"""

from __future__ import annotations

import hashlib
import math

import torch

STD_FLOOR = 1e-6  # standardization: constant columns would otherwise divide by zero


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts``; stable across runs and machines (unlike Python's salted ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from :func:`derive_seed` ``(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def binarize(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x (B, ...) in [0, 1] -> {0, 1} floats, each value ~ Bernoulli(x)."""
    return torch.bernoulli(x, generator=gen)


def dequantize(x: torch.Tensor, levels: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform dequantization of x (B, ...) = k / (levels - 1): returns (k + u) / levels, u ~ U[0, 1).

    The result lies in bin [k / levels, (k + 1) / levels) of [0, 1). See :func:`dequantization_log_jacobian`
    for how its log-density relates to the discrete log-probability of k.
    """
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype)
    return (k + u) / levels


def dequantization_log_jacobian(levels: int, num_dims: int) -> float:
    """D * log(levels), in nats: the gap between densities of dequantized data and discrete log-probabilities.

    Each of the D values of x_deq lies in a bin of width 1 / levels, so for a model density p on [0, 1)^D,
    ``log P(k) >= E_u[log p(x_deq)] - D * log(levels)`` (Theis et al. 2016). Subtract this from a
    log-density of dequantized data (or add it to the negative) before reporting nats or bits per dimension
    of the discrete data.
    """
    return float(num_dims * math.log(levels))


def standardization_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored at ``STD_FLOOR``) of x (N, ...) -> two tensors of shape x[0]."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0).clamp_min(STD_FLOOR) if len(x) > 1 else torch.ones_like(mean)
    return mean, std


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std, broadcast over the leading batch dimension."""
    return (x - mean) / std
