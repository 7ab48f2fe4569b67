"""Preprocessing of whole batches: binarization, uniform dequantization, standardization.

Every function works on a tensor ``(B, ...)`` at once (no per-example Python work) and takes its randomness
from an explicit ``torch.Generator`` so that each result is fixed by a seed. :func:`derive_seed` turns a
tuple such as ``(seed, "train", epoch, batch)`` into such a seed, identically on every machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch

STD_FLOOR = 1e-6  # standardization: a column whose std is below this is constant, and gets std 1
STATS_CHUNK_ROWS = 4096  # standardization statistics are merged over blocks of this many rows


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


def standardization_stats(
    x: torch.Tensor | Iterable[torch.Tensor], chunk_rows: int = STATS_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (1 where below ``STD_FLOOR``) of x (N, ...) -> two float32 tensors of shape x[0].

    ``x`` is a tensor or an iterable of consecutive row blocks of one (e.g. read from disk). A tensor is cut
    into blocks of ``chunk_rows``; the blocks' float64 statistics are merged (Chan et al.), so the result
    depends only on the values and the block boundaries: a tensor and its blocks read lazily give the same
    bits.
    """
    blocks = x.split(chunk_rows) if isinstance(x, torch.Tensor) else x
    stats: tuple[int, torch.Tensor, torch.Tensor] | None = None  # rows, mean, sum of squared deviations so far
    for block in blocks:
        b = block.to(torch.float64)
        k = len(b)
        if k == 0:
            continue
        b_mean = b.mean(dim=0)
        b_m2 = ((b - b_mean) ** 2).sum(dim=0)
        if stats is None:
            stats = (k, b_mean, b_m2)
        else:
            n, mean, m2 = stats
            delta = b_mean - mean
            total = n + k
            stats = (total, mean + delta * (k / total), m2 + b_m2 + delta**2 * (n * k / total))
    if stats is None:
        raise ValueError("standardization_stats: no rows")
    n, mean, m2 = stats
    std = (m2 / n).sqrt() if n > 1 else torch.ones_like(mean)
    std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)  # a constant column is only centred
    return mean.to(torch.float32), std.to(torch.float32)


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std, broadcast over the leading batch dimension."""
    return (x - mean) / std
