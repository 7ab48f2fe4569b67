"""Attention cells: spatial self-attention inside a level, and depth-wise attention across levels.

* :class:`SpatialSelfAttention` — multi-head self-attention over the positions of a feature map
  ``(B, C, H, W)``, pre-norm and residual, without positional encodings (so it is equivariant to any
  permutation of the positions). :func:`with_attention` appends one to a cell of a conv-type family.
* :class:`DepthAttention` — Apostolopoulou et al., "Deep Attentive Variational Inference" (ICLR 2022):
  a query state attends, at every spatial position, over a list of states from other levels of the
  hierarchy (its "memory"), so information need not pass through every level in between. Memory states
  are projected to a common width and resized to the query's resolution (average pooling when larger,
  nearest upsampling when smaller). The caller decides what the memory holds; the model passes only
  levels already computed (top-down: the levels above; bottom-up: the levels below).

Vectors ``(B, C)`` are handled as one position. All projections act per position.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Sequential


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each position (dim 1): the pre-norm of the attention cells.
    Statistics are per position, so the norm commutes with any permutation of the positions."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.LayerNorm(ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def _positions(t: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, P, C) with P = prod(spatial); vectors (B, C) -> (B, 1, C)."""
    return t.unsqueeze(1) if t.dim() == 2 else t.flatten(2).transpose(1, 2)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """(N, S, D) -> (N, heads, S, D / heads)."""
    N, S, D = t.shape
    return t.view(N, S, heads, D // heads).transpose(1, 2)


class SpatialSelfAttention(nn.Module):
    """x + W_o MHA(norm(x)) over the H*W positions of ``x`` (B, C, H, W); shape preserved.

    No positional encoding: permuting the positions of the input permutes the output the same way.
    """

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = ChannelNorm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.out_ch = ch

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = _positions(self.qkv(self.norm(x)))  # (B, H*W, 3C)
        q, k, v = (_split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))  # (B, heads, H*W, C/heads)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
        return x + self.out(a)


def with_attention(block: nn.Module, heads: int) -> Sequential:
    """The cell ``block`` followed by spatial self-attention on its output (``block.out_ch`` channels)."""
    out_ch = cast(int, block.out_ch)  # every cell states its output channels
    return Sequential(out_ch, block, SpatialSelfAttention(out_ch, heads))


def _resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bring a memory state (B, C, *spatial) to the query's spatial ``size``: average-pool when larger,
    nearest-upsample when smaller. Vectors pass through."""
    if t.dim() == 2 or tuple(t.shape[2:]) == tuple(size):
        return t
    if all(a >= b for a, b in zip(t.shape[2:], size)):  # sequences (B, C, T) and images (B, C, H, W)
        if t.dim() == 3:
            return F.adaptive_avg_pool1d(t, cast(tuple[int], size))
        return F.adaptive_avg_pool2d(t, cast(tuple[int, int], size))
    return F.interpolate(t, size=size, mode="nearest")


class DepthAttention(nn.Module):
    """query + W_o MHA(q = norm(query), k, v = the memory states) per position, over the depth axis.

    ``query``: (B, C_q, *spatial) or (B, C_q); ``memory``: a list of ``len(memory_chs)`` states
    ``(B, C_i, *spatial_i)`` (the i-th has ``memory_chs[i]`` channels), each projected by its own
    per-position map to ``dim`` keys and values. Returns the query's shape. With one memory state the
    attention weights are 1 whatever the query, so no query map is built: the output reads its value.
    """

    def __init__(self, query_ch: int, memory_chs: list[int], dim: int = 64, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"depth attention: width {dim} does not split into {heads} heads")
        self.heads, self.dim = heads, dim
        self.num_memory = len(memory_chs)
        self.norm_q = ChannelNorm(query_ch) if self.num_memory > 1 else None
        self.to_q = nn.Linear(query_ch, dim) if self.num_memory > 1 else None
        self.norms_m = nn.ModuleList(ChannelNorm(c) for c in memory_chs)
        self.to_kv = nn.ModuleList(nn.Linear(c, 2 * dim) for c in memory_chs)
        self.out = nn.Linear(dim, query_ch)

    def forward(self, query: Tensor, memory: list[Tensor]) -> Tensor:
        if len(memory) != self.num_memory:
            raise ValueError(f"depth attention was built for {self.num_memory} memory states, got {len(memory)}")
        size = query.shape[2:]
        kvs = [proj(_positions(norm(_resize(m, size)))) for m, norm, proj in zip(memory, self.norms_m, self.to_kv)]
        kv = torch.stack(kvs, dim=2)  # (B, P, N, 2 dim): N memory states at every position
        B, P = kv.shape[:2]
        k, v = kv.reshape(B * P, self.num_memory, 2 * self.dim).chunk(2, dim=-1)
        if self.to_q is None or self.norm_q is None:  # (both or neither) one memory state: its value, with weight 1
            a = v.reshape(B, P, self.dim)
        else:
            q = self.to_q(_positions(self.norm_q(query)))  # (B, P, dim)
            q = _split_heads(q.reshape(B * P, 1, self.dim), self.heads)  # (B*P, heads, 1, dim/heads)
            a = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
            a = a.transpose(1, 2).reshape(B, P, self.dim)
        a = self.out(a)  # (B, P, C_q)
        if query.dim() == 2:
            return query + a[:, 0]
        return query + a.transpose(1, 2).reshape(query.shape)


class DepthAttentionStack(nn.Module):
    """The depth-attention modules of one hierarchy (built by the model when ``attention.depth`` is on).

    * ``prior[l]`` (l < L-1): the state s_{l+1} feeding p(z_l | ·) attends over s_L, …, s_{l+1}.
    * ``decoder``: the state s_1 feeding p(x | ·) attends over s_L, …, s_1.
    * ``posterior[l]``: the bottom-up features of level l attend over those of levels 1..l (below and
      itself). With the stacked VAE (``inference: bottom_up``) the upward features of levels 2..l are
      those computed from z_1, …, z_{l-1}; level 1 attends over itself.
    """

    def __init__(self, state_chs: list[int], feature_chs: list[int], dim: int, heads: int, stacked: bool):
        super().__init__()
        L = len(state_chs)
        # top-down memory of level l: s_L, ..., s_{l+1} in the order they are computed
        self.prior = nn.ModuleList(
            DepthAttention(state_chs[l + 1], [state_chs[j] for j in reversed(range(l + 1, L))], dim, heads)
            for l in range(L - 1)
        )
        self.decoder = DepthAttention(state_chs[0], [state_chs[j] for j in reversed(range(L))], dim, heads)
        first = 1 if stacked else 0
        self.posterior = nn.ModuleList(
            DepthAttention(feature_chs[l], feature_chs[min(first, l) : l + 1], dim, heads) for l in range(L)
        )
