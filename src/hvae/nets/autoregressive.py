"""Autoregressive networks for observation models p(x | c) = ∏_i p(x_i | x_<i, c).

Positions run in raster order over the spatial axes of the channel layout ``(B, C, *spatial)``. The
channels of one position (the colours of a pixel) are ordered too, in one of two ways: a per-position
distribution that orders them itself (the discretised logistic mixture's coefficients shift G by R and B by
R and G), or a net that orders them (``orders_channels``: the gated PixelCNN with Bernoulli or categorical
outputs), p(x_i) = ∏_c p(x_i^c | x_i^<c, x_<i, c) as in PixelCNN (van den Oord et al. 2016).

Every net has the same two entry points:
  * ``forward(x, cond)`` — teacher forcing, one parallel pass. ``x`` (B, C, *spatial), values in [0, 1];
    ``cond`` (B, P_c, *spatial) the latents' decoder features. Returns the parameters of the per-position
    distribution (B, P_out, *spatial); those at position i depend on ``x`` only through positions < i,
    and where the net ``orders_channels``, those of channel c also through channels < c of position i.
  * ``stepper(cond)`` — sequential generation: ``stepper.step(x, t)`` returns the parameters at position
    ``t`` (B, P_out) given ``x`` whose positions < t are filled in; steps are taken in order t = 0, 1, …
    and the stepper caches what it can (GRU state, transformer keys and values). A net that
    ``orders_channels`` reads the channels of position t that ``x`` holds, and its stepper's
    ``head(x, t)`` returns the parameters at t again after channels of t were filled in, reusing the
    spatial features of the last step.

Every net also says whether it ``orders_channels`` (a bool). :class:`AutoregressiveNet` is this contract as a
protocol: a net of one's own needs no base class; its stepper subclasses :class:`Stepper`, whose ``head``
refuses (only the stepper of a net that orders channels reruns it).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --- the contract: nets and their steppers ----------------------------------------------------------


class Stepper:
    """Sequential generation, one position at a time (see the module docstring); subclasses define ``step``
    and, for a net that ``orders_channels``, ``head``."""

    def step(self, x: Tensor, t: int) -> Tensor:
        """The parameters at position ``t`` (B, P_out), from ``x`` (B, C, *spatial) filled in before ``t``."""
        raise NotImplementedError(f"{type(self).__name__} defines no step(x, t)")

    def head(self, x: Tensor, t: int) -> Tensor:
        """The parameters at ``t`` (B, P_out) again, once channels of ``t`` are filled in."""
        raise NotImplementedError(
            f"{type(self).__name__} predicts the channels of a position together: only the stepper of a net "
            "that orders_channels reruns its head"
        )


class AutoregressiveNet(Protocol):
    """What an observation model asks of its autoregressive net (:class:`~hvae.likelihoods.Autoregressive`)."""

    orders_channels: bool

    def __call__(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher forcing: ``x`` (B, C, *spatial) in [0, 1], ``cond`` (B, P_c, *spatial) -> (B, P_out, *spatial)."""
        ...

    def stepper(self, cond: Tensor) -> Stepper:
        """A :class:`Stepper` for one batch of conditioning features ``cond`` (B, P_c, *spatial)."""
        ...


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


class _ChannelHead(nn.Module):
    """Output head that orders the C channels of a pixel (PixelCNN's colour masks, van den Oord et al. 2016).

    Hidden units come in C blocks of ``ch``: every block reads the spatial features h (which see positions
    < i only), block c also reads the pixel's own channels < c through a masked 1x1 convolution (mask A),
    and the P parameters of channel c read block c alone (a 1x1 convolution in C groups: mask B). So channel
    c's parameters depend on x_i^<c through a hidden layer, not only linearly as the mixture's coefficients do.
    """

    mask: Tensor  # (C ch, C, 1, 1) bool: a buffer, not saved (rebuilt from the shapes)

    def __init__(self, ch: int, C: int, P: int):
        super().__init__()
        self.C = C
        self.h_in = nn.Conv2d(ch, C * ch, 1)
        self.x_in = nn.Conv2d(C, C * ch, 1, bias=False)
        block = torch.arange(C).repeat_interleave(ch)  # (C ch,): the block of each hidden unit
        mask = torch.arange(C).view(1, C) < block.view(-1, 1)  # (C ch, C): block c reads channels < c
        self.register_buffer("mask", mask.view(C * ch, C, 1, 1), persistent=False)
        self.out = nn.Conv2d(C * ch, C * P, 1, groups=C)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        """h (B, ch, H, W), x (B, C, H, W) in [-1, 1] -> (B, P C, H, W), parameter p of channel c at p C + c."""
        a = self.h_in(F.relu(h)) + F.conv2d(x, self.x_in.weight * self.mask)
        out = self.out(F.relu(a))  # (B, C P, H, W), channel-major
        B, _, *sp = out.shape
        # the likelihoods' layout is parameter-major: Bernoulli's logit c at c, Categorical's (K, C) view
        return out.view(B, self.C, -1, *sp).transpose(1, 2).reshape(B, -1, *sp)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN conditioned on per-pixel features of the latents (PixelVAE; VLAE).

    ``x`` (B, C, H, W) in [0, 1] -> parameters (B, out_ch, H, W). With r = kernel // 2 the receptive field
    of ``layers`` layers reaches layers * r + 1 rows up and columns left and layers * r columns right (in
    the rows above): a small one leaves global structure to the latents.

    With ``order_channels`` and C > 1 the head orders the channels of a pixel (see ``_ChannelHead``): the
    ``out_ch`` = P C parameters hold parameter p of channel c at index p C + c, the layout of the Bernoulli
    and categorical likelihoods. Otherwise all channels of a pixel are predicted together, for an output
    distribution that orders them itself (the discretised logistic mixture).
    """

    def __init__(
        self,
        in_ch: int,
        cond_ch: int,
        out_ch: int,
        channels: int = 64,
        layers: int = 4,
        kernel: int = 5,
        order_channels: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            GatedLayer(in_ch if i == 0 else channels, channels, kernel, cond_ch, first=(i == 0)) for i in range(layers)
        )
        self.orders_channels = order_channels and in_ch > 1
        self.head: nn.Module
        if self.orders_channels:
            if out_ch % in_ch:
                raise ValueError(f"order_channels needs parameters per channel: {out_ch} over {in_ch} channels")
            self.head = _ChannelHead(channels, in_ch, out_ch // in_ch)
        else:
            self.head = nn.Sequential(
                nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, out_ch, 1)
            )
        self.reach = layers * (kernel // 2) + 1  # rows above a pixel that its output can read

    def _features(self, x: Tensor, cond: Tensor) -> Tensor:
        """The spatial stacks: (B, channels, H, W), at position i reading ``x`` at positions < i only."""
        v = h = 2 * x - 1
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return h

    def _params(self, h: Tensor, x: Tensor) -> Tensor:
        """Features h (B, channels, H, W) and ``x`` (B, C, H, W) in [0, 1] -> parameters (B, out_ch, H, W);
        ``x`` is read at the same position only, and only when the net orders channels."""
        return self.head(h, 2 * x - 1) if self.orders_channels else self.head(h)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self._params(self._features(x, cond), x)

    def stepper(self, cond: Tensor) -> _PixelStepper:
        return _PixelStepper(self, cond)


class _PixelStepper(Stepper):
    """Recomputes the spatial stacks for each pixel on the rows its output can read: those below row i
    cannot reach it, nor can those more than ``reach`` rows above, so cropping them changes nothing. The
    features of the pixel are kept for ``head``, which the channels of one pixel share."""

    def __init__(self, net: GatedPixelCNN, cond: Tensor):
        self.net, self.cond = net, cond
        self.W = cond.shape[-1]
        self.h: Tensor | None = None  # (B, channels, 1, 1): the features of the last step's pixel

    def step(self, x: Tensor, t: int) -> Tensor:
        i, j = divmod(t, self.W)
        top = max(0, i - self.net.reach)
        h = self.net._features(x[:, :, top : i + 1], self.cond[:, :, top : i + 1])
        self.h = h[:, :, i - top, j].unsqueeze(-1).unsqueeze(-1)
        return self.head(x, t)

    def head(self, x: Tensor, t: int) -> Tensor:
        """The parameters at ``t`` (B, P_out) from the last step's features and the channels of ``x`` at
        ``t`` (those a channel-ordering head reads: the ones filled in since the step)."""
        if self.h is None:
            raise RuntimeError("head(x, t) reads the features that step(x, t) computes: call step first")
        i, j = divmod(t, self.W)
        return self.net._params(self.h, x[:, :, i : i + 1, j : j + 1])[:, :, 0, 0]


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
    """Shared pieces: token embedding with a start token (id ``levels``), conditioning projection, head.

    ``word_dropout`` (Bowman et al. 2016, "Generating sentences from a continuous space", sec. 3.2): while
    training, each input token (the previous position's value) is replaced by a dropped-token symbol (id
    ``levels + 1``) with this probability, so the decoder must read more of the sentence from the latents. The
    bound is still that of the model the decoder is at evaluation: nothing is dropped outside training.
    """

    orders_channels = False  # one channel of token ids

    def __init__(self, levels: int, cond_ch: int, out_ch: int, width: int, word_dropout: float = 0.0):
        super().__init__()
        self.levels = levels
        self.word_dropout = word_dropout
        # the dropped-token row exists only where it is used, so models saved without it load unchanged
        self.embed = nn.Embedding(levels + (2 if word_dropout > 0 else 1), width)
        self.cond_proj = nn.Linear(cond_ch, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_ch)

    def _shifted_tokens(self, x: Tensor) -> Tensor:
        """Input at position t is x_{t-1}; at t = 0 the start token; in training some dropped (``word_dropout``)."""
        tok = _tokens(x, self.levels)
        start = torch.full_like(tok[:, :1], self.levels)
        prev = tok[:, :-1]
        if self.training and self.word_dropout > 0:
            dropped = torch.rand(prev.shape, device=prev.device) < self.word_dropout
            prev = prev.masked_fill(dropped, self.levels + 1)
        return torch.cat([start, prev], dim=1)

    def _token_at(self, x: Tensor, t: int) -> Tensor:
        """The input token of step t, (B,)."""
        if t == 0:
            return torch.full((x.shape[0],), self.levels, dtype=torch.long, device=x.device)
        return _tokens(x.flatten(2)[:, :, t - 1], self.levels)[:, 0]


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal multi-head self-attention; with ``context`` each position
    attends to itself and the ``context - 1`` positions before it only (a sliding window)."""

    def __init__(self, width: int, heads: int, context: int = 0, cond: bool = False):
        super().__init__()
        self.heads, self.context = heads, context
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        # the latents' features added again at this block's input (seq_cond_every_layer); zero at first, so
        # a new model starts as the one that reads them once, at the embedding
        self.cond = nn.Linear(width, width) if cond else None
        if self.cond is not None:
            nn.init.zeros_(self.cond.weight)
            nn.init.zeros_(self.cond.bias)

    def forward(self, h: Tensor, cache: dict[str, Tensor] | None = None, c: Tensor | None = None) -> Tensor:
        """``h`` (B, T, width); ``c`` (B, T, width) the latents' projected features, read when the block was
        built with ``cond``."""
        if self.cond is not None:
            h = h + self.cond(c)
        B, T, D = h.shape
        q, k, v = (
            t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(h)).chunk(3, -1)
        )
        if cache is None:
            if self.context and self.context < T:
                i = torch.arange(T, device=h.device)
                back = i.view(-1, 1) - i.view(1, -1)  # (T, T): how far key j lies before query i
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=(back >= 0) & (back < self.context))
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # one new position attends over every cached one and itself: nothing later exists, no mask
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if self.context:  # the window: the cache keeps the last context - 1 positions and the new one
                k, v = k[:, :, -self.context :], v[:, :, -self.context :]
            cache["k"], cache["v"] = k, v
            a = F.scaled_dot_product_attention(q, k, v)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.ln2(h))


class CausalTransformer(_SequenceNet):
    """Decoder-only transformer over the tokens of a sequence, conditioned on per-position latent features
    (added to the token and learned position embeddings; with ``cond_every_layer`` a learned projection of
    them is added again at every block's input, so that the latents need not survive the layers below to
    steer the prediction). Sampling keeps a key/value cache per layer.
    ``context`` > 0 limits what each layer attends to (a sliding window of that many positions): a decoder
    that cannot see far back leaves the sentence's content to the latents (Bowman et al. 2016; Yang et al.
    2017 limit the decoder for the same reason)."""

    def __init__(self, levels: int, cond_ch: int, out_ch: int, length: int, width=128, layers=2, heads=4, **kw):
        context = kw.pop("context", 0)
        every = kw.pop("cond_every_layer", False)
        super().__init__(levels, cond_ch, out_ch, width, **kw)
        self.pos = nn.Parameter(torch.randn(length, width) / math.sqrt(width))
        self.blocks = nn.ModuleList(_CausalBlock(width, heads, context, cond=every) for _ in range(layers))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        tok = self._shifted_tokens(x)  # (B, T): T may be shorter than the length built for (trimmed padding)
        c = self.cond_proj(_per_position(cond))  # (B, T, width)
        h = self.embed(tok) + self.pos[: tok.shape[1]] + c
        for blk in self.blocks:
            h = blk(h, c=c)
        return _to_layout(self.head(self.norm(h)), cond)

    def stepper(self, cond: Tensor) -> _TransformerStepper:
        return _TransformerStepper(self, cond)


class _TransformerStepper(Stepper):
    def __init__(self, net: CausalTransformer, cond: Tensor):
        self.net, self.cond = net, _per_position(cond)
        self.caches: list[dict[str, Tensor]] = [{} for _ in net.blocks]  # per layer: keys "k", "v" (B, heads, T, d)

    def step(self, x: Tensor, t: int) -> Tensor:
        net = self.net
        c = net.cond_proj(self.cond[:, t : t + 1])  # (B, 1, width)
        h = net.embed(net._token_at(x, t)).unsqueeze(1) + net.pos[t] + c
        for blk, cache in zip(net.blocks, self.caches):
            h = blk(h, cache, c)
        return net.head(net.norm(h[:, 0]))


class GRUDecoder(_SequenceNet):
    """A GRU over the shifted tokens, conditioned on per-position latent features. Sampling carries the
    hidden state from step to step."""

    def __init__(self, levels: int, cond_ch: int, out_ch: int, width=128, layers=2, **kw):
        super().__init__(levels, cond_ch, out_ch, width, **kw)
        self.gru = nn.GRU(width, width, num_layers=layers, batch_first=True)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.embed(self._shifted_tokens(x)) + self.cond_proj(_per_position(cond))
        out, _ = self.gru(h)
        return _to_layout(self.head(self.norm(out)), cond)

    def stepper(self, cond: Tensor) -> _GRUStepper:
        return _GRUStepper(self, cond)


class _GRUStepper(Stepper):
    def __init__(self, net: GRUDecoder, cond: Tensor):
        self.net, self.cond = net, _per_position(cond)
        self.state: Tensor | None = None  # (layers, B, width): the GRU's hidden state after the last step

    def step(self, x: Tensor, t: int) -> Tensor:
        net = self.net
        h = net.embed(net._token_at(x, t)) + net.cond_proj(self.cond[:, t])
        out, self.state = net.gru(h.unsqueeze(1), self.state)
        return net.head(net.norm(out[:, 0]))


def build(
    config, in_ch: int, cond_ch: int, out_ch: int, levels: int, length: int, order_channels: bool = False
) -> AutoregressiveNet:
    """The network named by ``config.decoder``. ``in_ch``: data channels; ``cond_ch``: conditioning channels;
    ``out_ch``: parameters per position; ``levels``: values per token; ``length``: positions;
    ``order_channels``: the net, not the output distribution, orders the channels of a position."""
    if config.decoder == "pixelcnn":
        return GatedPixelCNN(
            in_ch,
            cond_ch,
            out_ch,
            config.pixelcnn.channels,
            config.pixelcnn.layers,
            config.pixelcnn.kernel,
            order_channels=order_channels,
        )
    if config.decoder == "transformer":
        return CausalTransformer(
            levels,
            cond_ch,
            out_ch,
            length,
            config.seq_width,
            config.seq_layers,
            config.seq_heads,
            context=config.seq_context,
            word_dropout=config.seq_word_dropout,
            cond_every_layer=config.seq_cond_every_layer,
        )
    if config.decoder == "gru":
        return GRUDecoder(
            levels, cond_ch, out_ch, config.seq_width, config.seq_layers, word_dropout=config.seq_word_dropout
        )
    raise ValueError(f"unknown autoregressive decoder {config.decoder!r}")
