"""Autoregressive networks for observation models p(x | c) = ∏_i p(x_i | x_<i, c).

Positions run in raster order over the spatial axes of the channel layout ``(B, C, *spatial)``; all
channels of one position (the colours of a pixel) are predicted together, and a per-position
distribution that orders them (the discretised logistic mixture's coefficients) handles R → G → B.

Every net has the same two entry points:
  * ``forward(x, cond)`` — teacher forcing, one parallel pass. ``x`` (B, C, *spatial), values in [0, 1];
    ``cond`` (B, P_c, *spatial) the latents' decoder features. Returns the parameters of the per-position
    distribution (B, P_out, *spatial); those at position i depend on ``x`` only through positions < i.
  * ``stepper(cond)`` — sequential generation: ``stepper.step(x, t)`` returns the parameters at position
    ``t`` (B, P_out) given ``x`` whose positions < t are filled in; steps are taken in order t = 0, 1, …
    and the stepper caches what it can (GRU state, transformer keys and values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --- gated PixelCNN ----------------------------------------------------------------------------------


def _gate(a: Tensor) -> Tensor:
    """tanh(a_1) * sigmoid(a_2): the gated activation of van den Oord et al. (2016), eq. 2."""
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN with a vertical and a horizontal stack (no blind spot).

    The vertical stack at row i sees rows <= i; it reaches the horizontal stack only shifted down by one
    row, so position (i, j) reads rows < i from it. The horizontal stack sees columns <= j of row i; in
    the first layer it is shifted right by one (mask A: x_ij itself is excluded), later layers may read
    their own position (mask B), whose features depend on x_<(i,j) only.
    """

    def __init__(self, in_ch: int, ch: int, kernel: int, cond_ch: int, first: bool):
        super().__init__()
        self.k, self.first = kernel, first
        self.v_conv = nn.Conv2d(in_ch, 2 * ch, (kernel // 2 + 1, kernel))
        self.h_conv = nn.Conv2d(in_ch, 2 * ch, (1, kernel // 2 + 1))
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = nn.Conv2d(ch, ch, 1)
        self.cond = nn.Conv2d(cond_ch, 4 * ch, 1)  # conditioning on the latents, per position (PixelVAE)

    def forward(self, v: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        H, W = v.shape[2:]
        r = self.k // 2
        c_v, c_h = self.cond(c).chunk(2, dim=1)
        v_feat = self.v_conv(F.pad(v, (r, r, r, 0)))  # (B, 2ch, H, W): rows i-r..i
        v_down = F.pad(v_feat, (0, 0, 1, 0))[:, :, :H]  # rows < i
        h_feat = self.h_conv(F.pad(h, (r, 0, 0, 0)))  # columns j-r..j
        if self.first:
            h_feat = F.pad(h_feat, (1, 0))[..., :W]  # columns < j
        h_new = self.h_out(_gate(h_feat + self.v_to_h(v_down) + c_h))
        if not self.first:
            h_new = h + h_new
        return _gate(v_feat + c_v), h_new


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN conditioned on per-pixel features of the latents (PixelVAE; VLAE).

    ``x`` (B, C, H, W) in [0, 1] -> parameters (B, out_ch, H, W). With r = kernel // 2 the receptive field
    of ``layers`` layers reaches layers * r + 1 rows up and columns left and layers * r columns right (in
    the rows above): a small one leaves global structure to the latents.
    """

    def __init__(self, in_ch: int, cond_ch: int, out_ch: int, channels: int = 64, layers: int = 4, kernel: int = 5):
        super().__init__()
        self.layers = nn.ModuleList(
            GatedLayer(in_ch if i == 0 else channels, channels, kernel, cond_ch, first=(i == 0)) for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, out_ch, 1)
        )
        self.reach = layers * (kernel // 2) + 1  # rows above a pixel that its output can read

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        v = h = 2 * x - 1
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h)

    def stepper(self, cond: Tensor) -> _PixelStepper:
        return _PixelStepper(self, cond)


class _PixelStepper:
    """Recomputes the network for each pixel on the rows its output can read: those below row i cannot
    reach it, nor can those more than ``reach`` rows above, so cropping them changes nothing."""

    def __init__(self, net: GatedPixelCNN, cond: Tensor):
        self.net, self.cond = net, cond
        self.W = cond.shape[-1]

    def step(self, x: Tensor, t: int) -> Tensor:
        i, j = divmod(t, self.W)
        top = max(0, i - self.net.reach)
        return self.net(x[:, :, top : i + 1], self.cond[:, :, top : i + 1])[:, :, i - top, j]


# --- sequences: causal transformer and GRU --------------------------------------------------------------


def _tokens(x: Tensor, levels: int) -> Tensor:
    """(B, 1, *spatial) values k / (levels - 1) -> (B, T) token ids."""
    return torch.round(x.flatten(1) * (levels - 1)).long().clamp(0, levels - 1)


def _per_position(cond: Tensor) -> Tensor:
    """(B, P, *spatial) -> (B, T, P)."""
    return cond.flatten(2).transpose(1, 2)


def _to_layout(out: Tensor, like: Tensor) -> Tensor:
    """(B, T, P) -> (B, P, *spatial of ``like``)."""
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], *like.shape[2:])


class _SequenceNet(nn.Module):
    """Shared pieces: token embedding with a start token (id ``levels``), conditioning projection, head."""

    def __init__(self, levels: int, cond_ch: int, out_ch: int, width: int):
        super().__init__()
        self.levels = levels
        self.embed = nn.Embedding(levels + 1, width)
        self.cond_proj = nn.Linear(cond_ch, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_ch)

    def _shifted_tokens(self, x: Tensor) -> Tensor:
        """Input at position t is x_{t-1}; at t = 0 the start token."""
        tok = _tokens(x, self.levels)
        start = torch.full_like(tok[:, :1], self.levels)
        return torch.cat([start, tok[:, :-1]], dim=1)

    def _token_at(self, x: Tensor, t: int) -> Tensor:
        """The input token of step t, (B,)."""
        if t == 0:
            return torch.full((x.shape[0],), self.levels, dtype=torch.long, device=x.device)
        return _tokens(x.flatten(2)[:, :, t - 1], self.levels)[:, 0]


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal multi-head self-attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor, cache: dict | None = None) -> Tensor:
        B, T, D = h.shape
        q, k, v = (
            t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(h)).chunk(3, -1)
        )
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # one new position attends over every cached one and itself: nothing later exists, no mask
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.ln2(h))


class CausalTransformer(_SequenceNet):
    """Decoder-only transformer over the tokens of a sequence, conditioned on per-position latent features
    (added to the token and learned position embeddings). Sampling keeps a key/value cache per layer."""

    def __init__(self, levels: int, cond_ch: int, out_ch: int, length: int, width=128, layers=2, heads=4):
        super().__init__(levels, cond_ch, out_ch, width)
        self.pos = nn.Parameter(torch.randn(length, width) / math.sqrt(width))
        self.blocks = nn.ModuleList(_CausalBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.embed(self._shifted_tokens(x)) + self.pos + self.cond_proj(_per_position(cond))  # (B, T, width)
        for blk in self.blocks:
            h = blk(h)
        return _to_layout(self.head(self.norm(h)), cond)

    def stepper(self, cond: Tensor) -> _TransformerStepper:
        return _TransformerStepper(self, cond)


class _TransformerStepper:
    def __init__(self, net: CausalTransformer, cond: Tensor):
        self.net, self.cond = net, _per_position(cond)
        self.caches = [{} for _ in net.blocks]

    def step(self, x: Tensor, t: int) -> Tensor:
        net = self.net
        h = net.embed(net._token_at(x, t)) + net.pos[t] + net.cond_proj(self.cond[:, t])  # (B, width)
        h = h.unsqueeze(1)
        for blk, cache in zip(net.blocks, self.caches):
            h = blk(h, cache)
        return net.head(net.norm(h[:, 0]))


class GRUDecoder(_SequenceNet):
    """A GRU over the shifted tokens, conditioned on per-position latent features. Sampling carries the
    hidden state from step to step."""

    def __init__(self, levels: int, cond_ch: int, out_ch: int, width=128, layers=2):
        super().__init__(levels, cond_ch, out_ch, width)
        self.gru = nn.GRU(width, width, num_layers=layers, batch_first=True)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.embed(self._shifted_tokens(x)) + self.cond_proj(_per_position(cond))
        out, _ = self.gru(h)
        return _to_layout(self.head(self.norm(out)), cond)

    def stepper(self, cond: Tensor) -> _GRUStepper:
        return _GRUStepper(self, cond)


class _GRUStepper:
    def __init__(self, net: GRUDecoder, cond: Tensor):
        self.net, self.cond = net, _per_position(cond)
        self.state = None

    def step(self, x: Tensor, t: int) -> Tensor:
        net = self.net
        h = net.embed(net._token_at(x, t)) + net.cond_proj(self.cond[:, t])
        out, self.state = net.gru(h.unsqueeze(1), self.state)
        return net.head(net.norm(out[:, 0]))


def build(config, in_ch: int, cond_ch: int, out_ch: int, levels: int, length: int) -> nn.Module:
    """The network named by ``config.decoder``. ``in_ch``: data channels; ``cond_ch``: conditioning channels;
    ``out_ch``: parameters per position; ``levels``: values per token; ``length``: positions."""
    if config.decoder == "pixelcnn":
        return GatedPixelCNN(
            in_ch, cond_ch, out_ch, config.pixelcnn_channels, config.pixelcnn_layers, config.pixelcnn_kernel
        )
    if config.decoder == "transformer":
        return CausalTransformer(levels, cond_ch, out_ch, length, config.seq_width, config.seq_layers, config.seq_heads)
    if config.decoder == "gru":
        return GRUDecoder(levels, cond_ch, out_ch, config.seq_width, config.seq_layers)
    raise ValueError(f"unknown autoregressive decoder {config.decoder!r}")
