"""Generation: x from latents given at every level (``decode``), at some (``generate``, ``sample_conditional``)
or at none (``sample``), as :class:`GenerationMixin`, a base of :class:`~hvae.HierarchicalVAE`.

Each runs the model's top-down pass with z_l given where fixed and drawn from the prior conditional
p(z_l | s_{l+1}) at a temperature elsewhere (a scale of its standard deviation: 0 gives its mean), then
draws x from p(x | z_1): its mean, a sample, or, for an autoregressive decoder, text-style decoding
(:mod:`hvae.decoding`). The sampling job (:mod:`hvae.sampling`) lays these out in grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from . import inputs
from .config import ModelConfig
from .decoding import METHODS, Decoding
from .likelihoods import AutoregressiveDistribution

if TYPE_CHECKING:  # the model imports this module to inherit from it
    from .model import _Pass


class _TopDown(Protocol):
    """What generation reads of the model (:class:`~hvae.HierarchicalVAE` has it)."""

    config: ModelConfig

    def _bottom_up(self, x: Tensor) -> list[Tensor]: ...

    def _infer(self, x: Tensor | None, k: int = 1, ctxs: list[Tensor] | None = None) -> _Pass: ...

    def _top_down(
        self,
        batch: int,
        ctxs: list[Tensor] | None = None,
        infer_from: int = 0,
        zs_given: Sequence[Tensor | None] | None = None,
        temperatures: list[float] | None = None,
    ) -> _Pass: ...

    def _decode_state(self, state: Tensor, length: int | None = None): ...


class GenerationMixin:
    """``decode``, ``sample``, ``generate`` and ``sample_conditional`` of a model with a top-down pass."""

    @torch.no_grad()
    def decode(self: _TopDown, zs: Sequence[Tensor]):
        """p(x | z): the observation distribution given latents for every level (bottom to top).
        Without ``generative_skip`` only ``zs[0]`` matters. Use ``.mean`` or ``.sample()``."""
        _needs_latents(self, "decode")
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"decode needs one latent per level ({L}, bottom to top), got {len(zs)}")
        inputs.check_latents(self, zs)
        run = self._top_down(zs[0].shape[0], zs_given=zs)
        return self._decode_state(run.state)

    @torch.no_grad()
    def sample(
        self: _TopDown,
        n: int,
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ) -> Tensor:
        """``n`` unconditional samples (n, *data_shape). ``temperature``: one float or one per level
        (bottom to top) scaling each prior's standard deviation (0 = the means). ``mean=True`` returns
        the mean of p(x | z_1) (probabilities for Bernoulli data); ``False`` samples it. Autoregressive
        decoders: ``decode`` (a :class:`hvae.decoding.Decoding` or its method's name) generates as text
        libraries do (sample / greedy / top_k / top_p with a decoder temperature of its own, stopping at
        end-of-sequence) and overrides ``mean``."""
        n = inputs.count(n, "n (the number of samples)")
        run = self._top_down(n, temperatures=inputs.temperatures(temperature, self.config.num_layers))
        return _draw(self._decode_state(run.state), mean, decode)

    @torch.no_grad()
    def generate(
        self: _TopDown,
        zs: Sequence[Tensor | None],
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ) -> Tensor:
        """Decode with some levels fixed: ``zs[l]`` is used where given (bottom to top, batch-major) and
        the other levels are drawn from the prior conditionals at ``temperature``; ``mean`` and ``decode``
        as in :meth:`sample`. Returns (B, *data_shape)."""
        _needs_latents(self, "generate")
        L = self.config.num_layers
        if len(zs) != L:
            raise ValueError(f"generate needs one entry per level ({L}, bottom to top; None to sample), got {len(zs)}")
        given = [z for z in zs if z is not None]
        if not given:
            raise ValueError("generate needs at least one given level; use sample() to draw all of them")
        inputs.check_latents(self, zs)
        run = self._top_down(given[0].shape[0], zs_given=zs, temperatures=inputs.temperatures(temperature, L))
        return _draw(self._decode_state(run.state), mean, decode)

    @torch.no_grad()
    def sample_conditional(
        self: _TopDown,
        x: Tensor,
        keep_top: int,
        temperature: float | Sequence[float] = 1.0,
        mean: bool = True,
        decode: Decoding | str | None = None,
    ) -> Tensor:
        """Keep the top ``keep_top`` levels from q(z | x) and re-sample the levels below from the prior
        conditionals: what the kept levels encode stays, the rest varies; ``mean`` and ``decode`` as in
        :meth:`sample`. Returns (B, *data_shape)."""
        inputs.check_batch(self, x)
        _needs_latents(self, "sample_conditional")
        L = self.config.num_layers
        if not inputs.whole(keep_top) or not 0 <= keep_top <= L:
            raise ValueError(f"keep_top must be in 0..{L}, got {keep_top}")
        temps = inputs.temperatures(temperature, L)
        B = x.shape[0]
        if keep_top == 0:
            run = self._top_down(B, temperatures=temps)
        elif self.config.inference == "bottom_up":  # z_l depends on the levels below: draw all, keep the top
            zs = self._infer(x).zs
            kept = [None] * (L - keep_top) + zs[L - keep_top :]
            run = self._top_down(B, zs_given=kept, temperatures=temps)
        else:
            run = self._top_down(B, ctxs=self._bottom_up(x), infer_from=L - keep_top, temperatures=temps)
        return _draw(self._decode_state(run.state), mean, decode)


def _needs_latents(model: _TopDown, what: str) -> None:
    if model.config.decoder_only:
        raise ValueError(
            f"{what}: this model is decoder-only (model.decoder_only: true): it has no latents to give, keep or "
            "infer; use sample() for its text"
        )


def _draw(px, mean: bool, decode: Decoding | str | None) -> Tensor:
    """What sample / generate / sample_conditional return from p(x | z_1)."""
    if decode is None:
        return px.mean if mean else px.sample()
    if isinstance(decode, str):
        decode = Decoding(decode)
    if not isinstance(decode, Decoding):
        raise TypeError(f"decode must be a hvae.decoding.Decoding or one of {', '.join(METHODS)}, got {decode!r}")
    if not isinstance(px, AutoregressiveDistribution):
        raise ValueError(
            "decode= applies to autoregressive decoders (model.decoder: pixelcnn, transformer, gru); this model's "
            "p(x | z_1) factorises: use mean=True for its mean or mean=False to sample it"
        )
    return px.decode(decode)
