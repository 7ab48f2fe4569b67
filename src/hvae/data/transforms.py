"""Preprocessing of whole batches: binarization, uniform dequantization, standardization.

Every function works on a tensor ``(B, ...)`` at once (no per-example Python work) and takes its randomness
from an explicit ``torch.Generator`` so that each result is fixed by a seed. :func:`derive_seed` turns a
tuple such as ``(seed, "train", epoch, batch)`` into such a seed, identically on every machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np
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
    """x (B, ...) in [0, 1] -> {0, 1} floats, each value ~ Bernoulli(x).

    The fixed draws (evaluation splits, static binarization) use this; the per-batch draws of dynamic
    binarization use :func:`binarize_fast`, the same distribution at about a quarter of the cost.
    """
    return torch.bernoulli(x, generator=gen)


UNIFORM_BITS = 24  # a float32 uniform's resolution: torch.rand's and torch.bernoulli's on the CPU alike
_SCALE = np.float32(2.0**UNIFORM_BITS)


def _uniform_bits(n: int, gen: torch.Generator) -> np.ndarray:
    # ceil(n / 2) full-range 64-bit draws of gen, each read as two little-endian int32 halves (low half first
    # on any machine: a big-endian one swaps the bytes), each masked to its low 24 bits
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None, generator=gen).numpy()
    u = words.astype("<i8", copy=False).view("<i4")[:n].astype(np.int32, copy=False)
    u &= (1 << UNIFORM_BITS) - 1
    return u


def uniform_bits(n: int, gen: torch.Generator) -> torch.Tensor:
    """n integers (n,) int32, independent and uniform on {0, ..., 2^24 - 1}: the low 24 bits of each 32-bit half
    of ``ceil(n / 2)`` full-range 64-bit draws from ``gen`` (low half first, on any byte order).

    Half as many draws as ``torch.rand(n)`` makes (one 32-bit draw per value, 24 bits of it kept), and a
    64-bit draw costs about what a 32-bit one does: the cheap half of :func:`binarize_fast`.
    """
    return torch.from_numpy(_uniform_bits(n, gen))


def uniform_fast(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Float32 uniforms of ``shape`` on [0, 1): k * 2^-24, k uniform on {0, ..., 2^24 - 1}.

    The distribution of ``torch.rand`` (float32, CPU: 24 random bits per value) from another stream of
    ``gen``'s draws, at half the draws (see :func:`uniform_bits`).
    """
    u = _uniform_bits(math.prod(shape), gen).reshape(shape).astype(np.float32)
    u *= np.float32(2.0**-UNIFORM_BITS)
    return torch.from_numpy(u)


def binarize_fast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x (B, ...) float32 in [0, 1] on the CPU -> {0, 1} float32 (same shape), each value ~ Bernoulli(x).

    The value is 1 where ``u < x`` for a uniform u of :func:`uniform_fast`, so P(1) = ceil(x * 2^24) / 2^24:
    the distribution of :func:`binarize` (``torch.bernoulli`` on the CPU compares a float32 uniform of 24 bits
    with x the same way; exact for every x on the 2^-24 grid, all of 0, 1 and k / 2^n for n <= 24 included),
    from another stream of ``gen``'s draws, about 4x cheaper than ``torch.bernoulli``'s one draw per value in
    a serial loop (batch 256 x 784, one thread: benchmarks/RESULTS.md). The comparison is
    ``u * 2^24 < x * 2^24`` in float32, both sides exact (integers below 2^24; x scaled by a power of two), so
    no rounding enters the draw. The elementwise work is numpy's, which never starts threads: on a CPU the
    batch is prepared between two training steps, whose thread pool would otherwise take the cores for these
    small operations too.
    """
    u = _uniform_bits(x.numel(), gen).reshape(x.shape).astype(np.float32)
    one = np.less(u, x.detach().numpy() * _SCALE)
    return torch.from_numpy(one.astype(np.float32))


def dequantize(x: torch.Tensor, levels: int, gen: torch.Generator, fast: bool = False) -> torch.Tensor:
    """Uniform dequantization of x (B, ...) = k / (levels - 1): returns (k + u) / levels, u ~ U[0, 1).

    The result lies in bin [k / levels, (k + 1) / levels) of [0, 1). See :func:`dequantization_log_jacobian`
    for how its log-density relates to the discrete log-probability of k. ``fast``: u from
    :func:`uniform_fast` (the same distribution as ``torch.rand``, another stream, half the draws).
    """
    k = torch.round(x * (levels - 1))
    if fast and x.dtype == torch.float32:
        u = uniform_fast(tuple(x.shape), gen)
    else:
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
