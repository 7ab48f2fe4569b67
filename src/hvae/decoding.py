"""How an autoregressive decoder picks each value when it generates: the conventions of text generation
libraries (greedy, ancestral sampling, top-k, nucleus / top-p), with a temperature of its own.

The decoder's temperature divides the logits of each position's conditional p(x_t | x_<t, z) before a value is
picked; it is separate from the latent temperature of :meth:`hvae.HierarchicalVAE.sample`, which scales the
priors' standard deviations. ``sample`` at temperature 1 draws from p(x | z) itself (what the bound scores);
``greedy`` takes the most probable value at each position (deterministic, and for text prone to loops);
``top_k`` samples among the k most probable values (Fan et al. 2018); ``top_p`` samples among the smallest
set of most probable values whose probabilities add up to at least p (Holtzman et al. 2020).

    Decoding("top_p", temperature=0.8, top_p=0.9).pick(logits)    # logits (B, K, ...) -> ids (B, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

METHODS = ("sample", "greedy", "top_k", "top_p")


@dataclass(frozen=True)
class Decoding:
    """One way of picking values. ``method``: sample | greedy | top_k | top_p; ``temperature`` > 0 divides the
    logits (ignored by greedy); ``top_k`` >= 1 (for top_k); ``top_p`` in (0, 1] (for top_p)."""

    method: str = "sample"
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"decode must be one of {', '.join(METHODS)}, got {self.method!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"the decoder temperature must be a finite number > 0, got {t!r} (use decode='greedy')")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")

    @property
    def is_sampling(self) -> bool:
        """Whether values are drawn at random (all but greedy)."""
        return self.method != "greedy"

    def warp(self, logits: Tensor, dim: int = 1) -> Tensor:
        """The logits values are drawn from: divided by the temperature, those outside the top k or the nucleus
        set to -inf. Same shape as ``logits``; the classes run along ``dim``."""
        logits = logits / self.temperature
        if self.method == "top_k" and self.top_k < logits.shape[dim]:
            kth = logits.topk(self.top_k, dim=dim).values.narrow(dim, self.top_k - 1, 1)
            logits = logits.masked_fill(logits < kth, -math.inf)
        elif self.method == "top_p" and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=dim, descending=True)
            probs = sorted_logits.softmax(dim=dim)
            # a class is dropped when the classes more probable than it already hold top_p: the most
            # probable class always stays
            before = probs.cumsum(dim=dim) - probs
            drop_sorted = before >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(dim, order, drop_sorted)
            logits = logits.masked_fill(drop, -math.inf)
        return logits

    def pick(self, logits: Tensor, dim: int = 1) -> Tensor:
        """Class indices (int64), ``logits``' shape without ``dim``."""
        if self.method == "greedy":
            return logits.argmax(dim)
        probs = self.warp(logits.float(), dim).softmax(dim).movedim(dim, -1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1).view(probs.shape[:-1])

    def pick_binary(self, logits: Tensor) -> Tensor:
        """{0, 1} values of Bernoulli variables with these logits, as float: the two outcomes as two classes."""
        two = torch.stack([torch.zeros_like(logits), logits], dim=-1)
        return self.pick(two, dim=-1).to(logits.dtype)


#: what every caller gets unless it says otherwise: p(x | z) itself
SAMPLE = Decoding()
GREEDY = Decoding("greedy")
