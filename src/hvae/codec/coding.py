"""Bits-back coding with ANS (BB-ANS, Townsend et al. 2019) over a trained hierarchy.

For a batch of examples on one ANS stack (``constriction``'s ``AnsCoder``, a last-in first-out coder):

    encode:  pop z ~ q(z | x) level by level (bits back)  ->  push x with p(x | z)  ->  push z with p(z)
    decode:  pop z with p(z) (top first)  ->  pop x with p(x | z)  ->  push z back with q(z | x)

so each example costs -log p(x | z) - log p(z) + log q(z | x) bits: -ELBO in expectation.

Each level's latents become integer symbols (:class:`LevelCode`):
  * Gaussian, ladder / top_down: HiLLoC's dynamic discretisation (Townsend et al. 2020): 2^latent_bits
    buckets of equal mass under the level's own conditional prior p(z_l | z_>l), so p is uniform over the
    buckets and q is the categorical of q's mass in each; z_l is the prior's median of the bucket.
  * Gaussian, bottom_up (the stacked VAE, whose q(z_l | z_{l-1}) comes before p(z_l | z_{l+1})): buckets of
    equal mass under N(0, 1), fixed, so that both p and q are categoricals over the same buckets.
  * categorical and Bernoulli latents: their classes; VQ: the code index (q is a point mass: nothing back).

Determinism: every coding distribution is computed in float64 from the model's float32 parameters and
quantised to integers (:func:`_table`) before it reaches the coder; the codec runs the model with one
thread and deterministic algorithms (:func:`deterministic`), and the decoder processes the same batches as
the encoder, so that both sides compute the same integers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..distributions import BernoulliLatent, Gaussian, StandardNormal
from ..likelihoods import (
    Autoregressive,
    Bernoulli,
    BernoulliDistribution,
    CategoricalDistribution,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureDistribution,
)
from ..likelihoods import Categorical as CategoricalLikelihood
from ..quantize import CodePrior, embed
from ..stacked import upward as stacked_upward

#: probabilities reach the coder as integers out of about 2^PROB_BITS (constriction codes at 24 bits)
PROB_BITS = 24


def _constriction():
    try:
        import constriction
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ImportError("hvae.codec needs constriction: pip install constriction") from None
    return constriction


@contextlib.contextmanager
def deterministic():
    """One thread and deterministic algorithms while coding: the same floats on the encoder's and the
    decoder's side whatever the machine's thread count (a reduction split over threads sums in another
    order). The previous settings come back afterwards."""
    threads = torch.get_num_threads()
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn)


def _table(probs: Tensor) -> np.ndarray:
    """Probabilities (..., K) float64 -> integer weights (N, K) as float64 for the coder. Every weight is
    at least 1, so no row is all zero and every symbol stays codable; the coder normalises the rows."""
    k = probs.shape[-1]
    return (torch.floor(probs.reshape(-1, k) * 2.0**PROB_BITS) + 1.0).numpy()


def _interval_mass(cdf: Callable[[Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
    """cdf(b) - cdf(a) for a symmetric distribution, from the tail nearer the interval (no cancellation
    of two values near 1)."""
    return torch.where(a > 0, cdf(-a) - cdf(-b), cdf(b) - cdf(a))


class Coder:
    """A thin wrapper of constriction's ``AnsCoder``: symbols as int tensors (B, n), tables of integer weights."""

    def __init__(self, words: np.ndarray | None = None):
        c = _constriction()
        self.ans = c.stream.stack.AnsCoder() if words is None else c.stream.stack.AnsCoder(words)
        self._cat = c.stream.model.Categorical(perfect=False)
        self._c = c

    def push(self, symbols: Tensor, probs: Tensor) -> None:
        """Encode ``symbols`` (any shape, N in all) with ``probs`` (*symbols.shape, K)."""
        s = symbols.reshape(-1).numpy().astype(np.int32)
        if s.size:
            self.ans.encode_reverse(s, self._cat, _table(probs))

    def pop(self, probs: Tensor) -> Tensor:
        """Decode one symbol per row of ``probs`` (*shape, K): int64 (*shape)."""
        shape = probs.shape[:-1]
        if not math.prod(shape):
            return torch.zeros(shape, dtype=torch.long)
        return torch.from_numpy(self.ans.decode(self._cat, _table(probs)).astype(np.int64)).reshape(shape)

    def push_uniform(self, symbols: Tensor, n: int) -> None:
        s = symbols.reshape(-1).numpy().astype(np.int32)
        if s.size:
            self.ans.encode_reverse(s, self._c.stream.model.Uniform(n))

    def pop_uniform(self, shape: tuple[int, ...], n: int) -> Tensor:
        if not math.prod(shape):
            return torch.zeros(shape, dtype=torch.long)
        out = self.ans.decode(self._c.stream.model.Uniform(n), math.prod(shape))
        return torch.from_numpy(out.astype(np.int64)).reshape(shape)

    def num_bits(self) -> int:
        return int(self.ans.num_bits())

    def words(self) -> np.ndarray:
        return self.ans.get_compressed()

    def clone(self) -> Coder:
        other = Coder.__new__(Coder)
        other.ans, other._cat, other._c = self.ans.clone(), self._cat, self._c
        return other


# ---------------------------------------------------------------------------------------------------------
# latent levels


class LevelCode:
    """How one level's latents become symbols. ``q_probs(q)`` and ``p_probs(p)`` are (B, n, K) float64;
    ``p_probs`` is None when p is uniform over the K symbols; ``value(s, p)`` is the latent z (B, *shape) that
    the networks see for the symbols ``s`` (B, n)."""

    def __init__(self, kind: str, K: int, latent_bits: int, dtype: torch.dtype):
        self.kind, self.K, self.latent_bits, self.dtype = kind, K, latent_bits, dtype

    # --- Gaussian: equal-mass buckets under p (``prior``) or under N(0, 1) (``fixed``) ---------------------

    def _edges(self) -> tuple[Tensor, Tensor]:
        """Standardised bucket edges (K+1,) and medians (K,) of N(0, 1), float64."""
        N = self.K
        u = torch.arange(N + 1, dtype=torch.float64) / N
        edges = torch.special.ndtri(u)  # -inf .. +inf
        mids = torch.special.ndtri((torch.arange(N, dtype=torch.float64) + 0.5) / N)
        return edges, mids

    def _abs_edges(self, p: Gaussian | None) -> Tensor:
        """Bucket edges in z units, (B, n, K+1)."""
        edges, _ = self._edges()
        if self.kind == "fixed" or p is None:
            return edges.view(1, 1, -1)
        mu, sigma = _flat(p.mu).double(), _flat(p.sigma).double()
        # mu + sigma * (-inf) is -inf for sigma > 0: the outer edges stay infinite
        return mu.unsqueeze(-1) + sigma.unsqueeze(-1) * edges

    def _gaussian_mass(self, d: Gaussian, edges: Tensor) -> Tensor:
        mu, sigma = _flat(d.mu).double().unsqueeze(-1), _flat(d.sigma).double().unsqueeze(-1)
        t = (edges - mu) / sigma  # (B, n, K+1)
        return _interval_mass(torch.special.ndtr, t[..., :-1], t[..., 1:])

    def q_probs(self, q, p) -> Tensor | None:
        if self.kind in ("prior", "fixed"):
            return self._gaussian_mass(q, self._abs_edges(p))
        if self.kind == "vq":
            return None  # a point mass: the symbol is q's code, nothing is popped
        return _discrete_probs(q)

    def p_probs(self, p) -> Tensor | None:
        if self.kind == "prior":
            return None  # equal-mass buckets: uniform
        if self.kind == "fixed":
            return self._gaussian_mass(p, self._abs_edges(None))
        if self.kind == "vq":
            return _discrete_probs(p.cat)
        return _discrete_probs(p)

    def value(self, s: Tensor, p, like: Tensor) -> Tensor:
        """z for symbols ``s`` (B, n); ``like``: a tensor of the level's latent shape (B, *shape)."""
        B = s.shape[0]
        if self.kind in ("prior", "fixed"):
            _, mids = self._edges()
            z = mids[s]
            if self.kind == "prior":
                z = _flat(p.mu).double() + _flat(p.sigma).double() * z
            return z.reshape(like.shape).to(self.dtype)
        if self.kind == "bernoulli":
            return s.reshape(like.shape).to(self.dtype)
        if self.kind == "categorical":  # one-hot in the logits' (B, G*K, *spatial) layout
            K = self.K
            spatial = like.shape[2:]
            idx = s.reshape(B, -1, *spatial)
            return torch.nn.functional.one_hot(idx, K).movedim(-1, 2).reshape(like.shape).to(self.dtype)
        # vq: the code vectors
        idx = s.reshape(B, -1, *like.shape[2:])
        return embed(idx, p.codebook).to(self.dtype)

    def q_symbols(self, q) -> Tensor:
        """VQ only: q's chosen codes (B, n)."""
        return q.index.reshape(q.index.shape[0], -1)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _discrete_probs(d) -> Tensor:
    """(B, n, K) float64 probabilities of a categorical or Bernoulli latent distribution."""
    if isinstance(d, BernoulliLatent):
        s = torch.sigmoid(_flat(d.logits).double())
        return torch.stack([1 - s, s], -1)
    logp = torch.log_softmax(d._grouped.double(), dim=2)  # (B, G, K, *spatial)
    return logp.movedim(2, -1).reshape(logp.shape[0], -1, d.num_classes).exp()


def level_codes(model, latent_bits: int) -> list[LevelCode]:
    """One :class:`LevelCode` per level, bottom to top, from the model's config."""
    cfg = model.config
    dtype = model.decoder_head.weight.dtype
    codes = []
    for l in range(cfg.num_layers):
        kind = cfg.latent_type(l)
        if kind == "gaussian":
            kind = "fixed" if cfg.inference == "bottom_up" else "prior"  # see the module's docstring
            codes.append(LevelCode(kind, 2**latent_bits, latent_bits, dtype))
        elif kind == "categorical":
            codes.append(LevelCode("categorical", cfg.categorical_classes, latent_bits, dtype))
        elif kind == "bernoulli":
            codes.append(LevelCode("bernoulli", 2, latent_bits, dtype))
        else:
            codes.append(LevelCode("vq", cfg.vq.codes, latent_bits, dtype))
    return codes


# ---------------------------------------------------------------------------------------------------------
# the passes, level by level (the model's own layers, in the order of its _top_down / hvae.stacked.upward)


def _walk_down(model, B: int, pick, ctxs: list[Tensor] | None = None):
    """The top-down pass with ``z_l = pick(l, p_l, q_l)`` (q_l None without ``ctxs``); returns the state
    p(x | z) is decoded from."""
    L = model.config.num_layers
    dtype = model.decoder_head.weight.dtype
    state, states = None, []
    model._set_relaxation()
    for l in reversed(range(L)):
        layer = model.layers[l]
        if model.depth_attn is not None and state is not None:
            state = model.depth_attn.prior[l](state, states)
        p, h_p = layer.prior(state, B, model.step.device, torch.float32)
        q = layer.posterior(ctxs[l], p, h_p) if ctxs is not None else None
        if q is not None and layer.flow is not None:
            raise ValueError("a posterior with a flow (model.nvae.flows) has no coding tables; retrain with flows: 0")
        z = pick(l, p, q)
        state = layer.transition(z.to(dtype), h_p)
        states.append(state)
    if model.depth_attn is not None:
        state = model.depth_attn.decoder(state, states)
    return state


def _infer(model, x: Tensor, pick) -> list[int]:
    """Run q(z | x) level by level with ``pick``; returns the order the levels were visited in."""
    ctxs = model._bottom_up(x)
    if model.config.inference == "bottom_up":
        stacked_upward(model, ctxs[0], pick=pick)  # the stacked VAE's pass, z_l chosen by pick
        return list(range(model.config.num_layers))
    _walk_down(model, x.shape[0], pick, ctxs)
    return list(reversed(range(model.config.num_layers)))


# ---------------------------------------------------------------------------------------------------------
# the data


def data_levels(model) -> int:
    """Values per data dimension of the model's likelihood (its ``levels``); refuses the models that cannot
    code data."""
    cfg = model.config
    lik = _base(model)  # an autoregressive decoder's data: coded position by position in sampling order
    if lik.levels is None:
        raise ValueError(
            f"likelihood {cfg.likelihood!r} is a density over continuous values: a lossless code needs a "
            "likelihood with a discrete support (bernoulli, categorical or discretized_logistic_mixture), so "
            "that each value has a probability; retrain with one of those"
        )
    if _blocks_for(lik) is None:
        raise ValueError(
            f"likelihood {cfg.likelihood!r} has no coding tables in hvae.codec (it codes "
            f"{', '.join(c.__name__ for c in _BLOCKS)}); add its tables to hvae.codec.coding._BLOCKS"
        )
    return lik.levels


def _base(model):
    lik = model.likelihood
    return lik.base if isinstance(lik, Autoregressive) else lik


def token_stops(model) -> tuple[int, int] | None:
    """Token models with a padding id: (end-of-sequence id, padding id), else None. Every hvae tokeniser
    puts end-of-sequence right before padding (:class:`hvae.data.text.Tokenizer`: the last two ids)."""
    pad = model.config.pad_id
    if not model.config.embed_dim or pad is None:
        return None
    return pad - 1, pad


def check_rows(model, s: Tensor) -> None:
    """Token rows (B, T): each row is coded up to and including its first end-of-sequence or padding id,
    and decodes as padding after it, so everything after that id must be padding."""
    stops = token_stops(model)
    if stops is None:
        return
    eos, pad = stops
    stop = (s == eos) | (s == pad)
    after = (stop.long().cumsum(1) - stop.long()) > 0  # the positions after each row's first stop id
    bad = after & (s != pad)
    if bad.any():
        row = int(bad.any(1).nonzero()[0])
        raise ValueError(
            f"token row {row} has ids other than padding ({pad}) after its end-of-sequence ({eos}) or first "
            "padding id: a row ends at its first end-of-sequence; pad the rest with the padding id"
        )


def to_symbols(model, x: Tensor) -> Tensor:
    """Data (B, *data_shape) in the likelihood's support -> int64 levels, same shape."""
    lik = _base(model)
    if not x.dtype.is_floating_point:
        return x.long()
    levels = lik.levels
    if isinstance(lik, DiscretizedLogisticMixture):  # its bins, as its log_prob reads them
        return torch.floor(x.double() * levels * (1 - 1e-6)).clamp(0, levels - 1).long()
    return torch.round(x.double() * (levels - 1)).long()  # the levels k / (K - 1) (binary: K = 2)


def from_symbols(model, s: Tensor) -> Tensor:
    """int64 levels -> data in [0, 1] as the data pipeline gives them: float32 k / (levels - 1); token
    models: the int64 ids themselves."""
    if model.config.embed_dim:
        return s.long()
    return s.float() / (data_levels(model) - 1)


def _x_blocks(px):
    """The conditionals of the data given z, as (blocks, probs): a generator over blocks of symbols in
    decoding order; it yields (index into the flat (B, D) symbols, probs (B, m, K)) and takes back the decoded
    symbols of each block (``send``) before the next (a channel of a colour mixture reads the ones before).
    One function per likelihood class: :data:`_BLOCKS`."""
    return _blocks_for(px._model)(px)


def _bernoulli_blocks(px: BernoulliDistribution):
    s = torch.sigmoid(_flat(px.logits).double())
    yield slice(None), torch.stack([1 - s, s], -1)


def _categorical_blocks(px: CategoricalDistribution):
    logp = torch.log_softmax(px.logits.double(), dim=1)  # (B, K, C, *spatial)
    yield slice(None), logp.movedim(1, -1).reshape(logp.shape[0], -1, px.K).exp()


def _dlm_blocks(px: DiscretizedLogisticMixtureDistribution):
    """Channel by channel: p(x_c | x_<c, z) = sum_m w_m p_m(x_c | x_<c), w_m ∝ pi_m prod_{j<c} p_m(x_j | x_<j)
    (the mixture's components read the channels before through their mean shifts)."""
    B, M, C = px.mu.shape[:3]
    spatial = px.mu.shape[3:]
    P = math.prod(spatial)
    bins = px.bins
    levels = torch.arange(bins + 1, dtype=torch.float64)
    centres = 2 * levels / bins - 1
    lower = torch.where(levels > 0, centres - 1.0 / bins, torch.tensor(-math.inf, dtype=torch.float64))
    upper = torch.where(levels < bins, centres + 1.0 / bins, torch.tensor(math.inf, dtype=torch.float64))
    mu = px.mu.double().reshape(B, M, C, P)
    inv_s = torch.exp(-px.log_s.double()).reshape(B, M, C, P)
    coeffs = px.coeffs.double().reshape(B, M, -1, P)
    log_w = torch.log_softmax(px.logit_pi.double().reshape(B, M, P), dim=1)  # (B, M, P)
    xs: list[Tensor] = []  # decoded channels as bin centres in [-1, 1], (B, P)
    chunk = max(1, 2**18 // (P * (bins + 2)))
    edges = torch.cat([lower, upper[-1:]])  # (bins + 2,): -inf, the bins' inner edges, +inf
    base = 0
    for c in range(C):
        mean = mu[:, :, c]
        for j in range(c):
            mean = mean + coeffs[:, :, base + j] * xs[j].unsqueeze(1)
        base += c
        probs = torch.zeros(B, P, bins + 1, dtype=torch.float64)
        w = torch.softmax(log_w, dim=1)  # (B, M, P)
        for i in range(0, B, chunk):  # examples at a time: a few (chunk, P, edges) float64 arrays in cache
            rows = slice(i, i + chunk)
            for mi in range(M):  # the levels' masses from the CDF at the shared edges, from the nearer tail
                t = (edges - mean[rows, mi].unsqueeze(-1)) * inv_s[rows, mi, c].unsqueeze(-1)  # (chunk, P, bins + 2)
                F, G = torch.sigmoid(t), torch.sigmoid(-t)  # the lower and the upper tail
                mass = torch.where(t[..., :-1] > 0, G[..., :-1] - G[..., 1:], F[..., 1:] - F[..., :-1])
                probs[rows] += w[rows, mi].unsqueeze(-1) * mass
        k = yield (c, probs)  # (B, P, levels) -> the channel's symbols (B, P)
        # each component's mass at the chosen levels, computed alike on both sides (the same shapes)
        m, s = mean, inv_s[:, :, c]
        picked = _interval_mass(torch.sigmoid, (lower[k].unsqueeze(1) - m) * s, (upper[k].unsqueeze(1) - m) * s)
        log_w = log_w + torch.log(picked.clamp_min(1e-300))
        log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True)
        xs.append(centres[k])


#: the data's coding tables, per likelihood class (a subclass uses its nearest registered base's)
_BLOCKS = {
    Bernoulli: _bernoulli_blocks,
    CategoricalLikelihood: _categorical_blocks,
    DiscretizedLogisticMixture: _dlm_blocks,
}


def _blocks_for(lik):
    return next((_BLOCKS[c] for c in type(lik).__mro__ if c in _BLOCKS), None)


def _x_layout(model, s: Tensor) -> Tensor:
    """Data symbols (B, *data_shape) -> (B, C, P) in the likelihood's channel layout."""
    lik = model.likelihood
    return s.reshape(s.shape[0], lik.channels, -1)


def push_x(model, coder: Coder, px, s: Tensor) -> None:
    """Push the data symbols ``s`` (B, *data_shape) with p(x | z); blocks pushed last-decoded first."""
    if isinstance(model.likelihood, Autoregressive):
        _ar_walk(model, px, coder, s.reshape(s.shape[0], model.likelihood.channels, -1))
        return
    if (stops := token_stops(model)) is not None:
        _token_walk(model, stops, coder, lambda t, x: _position_probs(px, t), s.reshape(s.shape[0], -1), s.shape[0])
        return
    lay = _x_layout(model, s)
    B = s.shape[0]
    pending = []
    gen = _x_blocks(px)
    item = next(gen)
    while True:
        key, probs = item
        sym = lay.reshape(B, -1) if isinstance(key, slice) else lay[:, key]
        pending.append((sym, probs))
        try:
            item = gen.send(sym)
        except StopIteration:
            break
    for sym, probs in reversed(pending):
        coder.push(sym, probs)


def pop_x(model, coder: Coder, px, B: int) -> Tensor:
    """Pop the data symbols with p(x | z): (B, *data_shape) int64."""
    lik = model.likelihood
    if isinstance(lik, Autoregressive):
        return _ar_walk(model, px, coder, None).reshape(B, *model.data_shape)
    if (stops := token_stops(model)) is not None:
        ids = _token_walk(model, stops, coder, lambda t, x: _position_probs(px, t), None, B)
        return ids.reshape(B, *model.data_shape)
    C = lik.channels
    out = torch.zeros(B, C, math.prod(lik.spatial), dtype=torch.long)
    gen = _x_blocks(px)
    item = next(gen)
    while True:
        key, probs = item
        sym = coder.pop(probs)
        if isinstance(key, slice):
            out = sym.reshape(out.shape)
        else:
            out[:, key] = sym
        try:
            item = gen.send(sym)
        except StopIteration:
            break
    return out.reshape(B, *model.data_shape)


def _position_probs(px, t: int) -> Tensor:
    """A token model's plain (not autoregressive) p(x_t | z): (B, K) float64."""
    return torch.softmax(px.logits[:, :, 0, t].double(), dim=1)


def _token_walk(model, stops: tuple[int, int], coder: Coder, probs_at, s: Tensor | None, B: int) -> Tensor:
    """Token rows, position by position: each row's ids up to and including its first end-of-sequence or
    padding id (a row's length is coded by that id: padding is not data), the rest padding. ``stops`` is
    :func:`token_stops`'s (end-of-sequence id, padding id). ``probs_at(t, out)`` gives p(x_t | x_<t, z)
    (B, K) from the ids so far ``out`` (B, T). With ``s`` (B, T) the ids are pushed (last position first);
    without, popped. Returns the ids (B, T)."""
    eos, pad = stops
    T = math.prod(model.data_shape)
    out = torch.full((B, T), pad, dtype=torch.long)
    live = torch.ones(B, dtype=torch.bool)
    pending: list[tuple[Tensor, Tensor]] = []
    for t in range(T):
        if not live.any():
            break  # every row has ended: both sides stop here
        probs = probs_at(t, out)[live]
        if s is None:
            k = coder.pop(probs.unsqueeze(1))[:, 0]
        else:
            k = s[live, t]
            pending.append((k, probs.unsqueeze(1)))
        out[live, t] = k
        live = live & (out[:, t] != eos) & (out[:, t] != pad)
    for k, probs in reversed(pending):
        coder.push(k, probs)
    return out


def _ar_walk(model, px, coder: Coder, s: Tensor | None) -> Tensor:
    """An autoregressive decoder's data, position by position in its sampling order (the steps of
    ``AutoregressiveDistribution._sequential``: the same network calls on the same buffer, so encoder and
    decoder see the same conditionals). With ``s`` (B, C, T) the symbols are pushed (last position first);
    without, they are popped. Returns the symbols (B, C, T)."""
    m = model.likelihood
    B, C, T = px.cond.shape[0], m.channels, math.prod(m.spatial)
    x = px.cond.new_zeros(B, C, *m.spatial)
    x_flat = x.view(B, C, T)

    def step(params: Tensor):
        return m.step_base(params.float() if params.dtype not in (torch.float32, torch.float64) else params)

    if (stops := token_stops(model)) is not None:  # one channel of ids: the rows stop at their end-of-sequence
        stepper = m.net.stepper(px.cond)

        def probs_at(t: int, ids: Tensor) -> Tensor:
            if t:
                x_flat[:, 0, t - 1] = ids[:, t - 1].to(x.dtype) / (m.levels - 1)  # as _sequential's buffer
            params = stepper.step(x, t).view(B, -1, *(1,) * len(m.spatial))
            return next(_x_blocks(step(params)))[1][:, 0]

        return _token_walk(model, stops, coder, probs_at, None if s is None else s.reshape(B, T), B).view(B, 1, T)
    out = torch.zeros(B, C, T, dtype=torch.long)
    one = (1,) * len(m.spatial)
    pending: list[tuple[Tensor, Tensor]] = []

    def code(probs: Tensor, c: int, t: int) -> Tensor:  # probs (B, 1, K) of channel c at position t
        if s is None:
            k = coder.pop(probs)[:, 0]
        else:
            k = s[:, c, t]
            pending.append((k, probs))
        out[:, c, t] = k
        x_flat[:, c, t] = k.to(x.dtype) / (m.levels - 1)
        return k

    stepper = m.net.stepper(px.cond)
    for t in range(T):
        params = stepper.step(x, t)
        for c in range(1, C if m.orders_channels else 1):  # channel c's conditional reads channels < c
            _, probs = next(_x_blocks(step(params.view(B, -1, *one))))
            code(probs[:, c - 1 : c], c - 1, t)
            params = stepper.head(x, t)
        d = step(params.view(B, -1, *one))
        if isinstance(d, DiscretizedLogisticMixtureDistribution):
            gen = _dlm_blocks(d)
            item = next(gen)
            while True:
                c, probs = item
                k = code(probs, c, t)
                try:
                    item = gen.send(k.view(B, 1))
                except StopIteration:
                    break
        else:
            _, probs = next(_x_blocks(d))
            code(probs[:, C - 1 : C], C - 1, t)
    for k, probs in reversed(pending):
        coder.push(k, probs)
    return out


# ---------------------------------------------------------------------------------------------------------
# one batch


def encode_batch(model, coder: Coder, codes: list[LevelCode], x: Tensor, s_x: Tensor) -> int:
    """Push a batch: pop z with q (bits back), push x with p(x | z), push z with p. Returns the bits the
    coder held right after the pops (below 96, the pops may have run past the words it held)."""
    B = x.shape[0]
    syms: dict[int, Tensor] = {}  # level -> its symbols, as the walk codes them

    def infer_pick(l, p, q):
        code = codes[l]
        s = code.q_symbols(q) if code.kind == "vq" else coder.pop(code.q_probs(q, p))
        syms[l] = s
        return code.value(s, q if code.kind == "vq" else p, q.mean)

    _infer(model, x, infer_pick)
    low = coder.num_bits()
    p_tables: list[Tensor | None] = [None] * len(codes)

    def gen_pick(l, p, q):
        code = codes[l]
        p_tables[l] = code.p_probs(p)
        return code.value(syms[l], p, _like(p, code))

    state = _walk_down(model, B, gen_pick)
    px = model._decode_state(state)
    push_x(model, coder, px, s_x)
    for l, (code, table) in enumerate(zip(codes, p_tables)):  # z_1 first: the decoder pops z_L first
        if table is None:
            coder.push_uniform(syms[l], code.K)
        else:
            coder.push(syms[l], table)
    return low


def _like(p, code: LevelCode) -> Tensor:
    """A tensor of the level's latent shape (B, *shape), from the prior."""
    if isinstance(p, CodePrior):
        B = p.logits.shape[0]
        G = p.logits.shape[1] // p.codebook.shape[0]
        return torch.empty(B, G * p.codebook.shape[1], *p.logits.shape[2:])
    if isinstance(p, (Gaussian, StandardNormal)):
        return p.mu
    return p.logits


def decode_batch(model, coder: Coder, codes: list[LevelCode], B: int) -> Tensor:
    """Pop a batch pushed by :func:`encode_batch`: its data symbols (B, *data_shape)."""
    syms: dict[int, Tensor] = {}  # level -> its symbols, as the walk codes them

    def gen_pick(l, p, q):
        code = codes[l]
        like = _like(p, code)
        n = like[0].numel() if code.kind not in ("categorical", "vq") else _n_symbols(p, code)
        probs = code.p_probs(p)
        s = coder.pop_uniform((B, n), code.K) if probs is None else coder.pop(probs)
        syms[l] = s
        return code.value(s, p, like)

    state = _walk_down(model, B, gen_pick)
    px = model._decode_state(state)
    s_x = pop_x(model, coder, px, B)
    x = from_symbols(model, s_x)
    q_tables: list[tuple[int, Tensor | None]] = []

    def infer_pick(l, p, q):
        code = codes[l]
        if code.kind == "vq":
            if not torch.equal(code.q_symbols(q), syms[l]):
                raise CorruptError("a decoded code is not the one the data choose")
            q_tables.append((l, None))
            return code.value(syms[l], q, q.z_q)
        q_tables.append((l, code.q_probs(q, p)))
        return code.value(syms[l], p if p is not None else q, q.mean)

    _infer(model, x, infer_pick)
    for l, probs in reversed(q_tables):  # the reverse of the encoder's pops
        if probs is not None:
            coder.push(syms[l], probs)
    return s_x


def _n_symbols(p, code: LevelCode) -> int:
    """Symbols per example of a categorical or VQ level."""
    if code.kind == "vq":
        return p.logits[0].numel() // p.codebook.shape[0]
    return p._grouped[0, :, 0].numel()


class CorruptError(ValueError):
    """The data do not decode: a damaged file, or one coded by another model."""
