"""What a :class:`~hvae.HierarchicalVAE` accepts from its users: batches, latents, temperatures and counts,
each checked with an error that names the problem and the fix (the model's methods call these first)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import cast

from torch import Tensor


def check_batch(model, x: Tensor, values: bool = False) -> None:
    """The shape and dtype of a batch ``x`` (B, *data_shape), or token ids (B, T <= data_shape[0]); with
    ``values``, also its values against the likelihood's support (a pass over the data: the evaluation calls
    do it, a training step leaves it to the data pipeline)."""
    shape, tokens = model.data_shape, model.reads_tokens
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, {', '.join(map(str, shape))}), got {type(x).__name__}")
    if tokens and x.dim() == 2 and 1 <= x.shape[1] <= shape[0]:
        pass  # token rows may stop early: the positions after T' are padding (see trim_padding)
    elif tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
        want = f"(B, T) token ids with T <= {shape[0]}" if tokens else "(B, " + ", ".join(map(str, shape)) + ")"
        hint = ""
        if math.prod(x.shape[1:]) == math.prod(shape):
            hint = f"; reshape it with x.reshape(-1, {', '.join(map(str, shape))})"
        raise ValueError(f"input has shape {tuple(x.shape)}, but this model takes {want}{hint}")
    if x.shape[0] == 0:
        raise ValueError("input batch is empty")
    # integer class ids are accepted by categorical models (plain or autoregressive)
    if not x.dtype.is_floating_point and model.config.likelihood != "categorical":
        raise TypeError(
            f"input must be a floating tensor (values in [0, 1]), got {x.dtype}; integer token ids need "
            f"likelihood categorical (this model's is {model.config.likelihood})"
        )
    if values:
        model.likelihood.check_support(x)


def check_latents(model, zs: Sequence[Tensor | None]) -> None:
    """Latents given per level (bottom to top; None: not given) have the level's shape and one batch size."""
    batch = None
    for l, (z, layer) in enumerate(zip(zs, model.layers)):
        if z is None:
            continue
        want = f"(B, {', '.join(map(str, layer.latent_shape))})"
        if not isinstance(z, Tensor) or tuple(z.shape[1:]) != layer.latent_shape:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"zs[{l}] has shape {got}, expected {want} (level {l + 1}, bottom to top)")
        if batch is not None and z.shape[0] != batch:
            raise ValueError(f"zs[{l}] holds {z.shape[0]} rows but the levels below hold {batch}; give one batch")
        batch = z.shape[0]


def temperatures(temperature: float | Sequence[float], L: int) -> list[float]:
    """One float, or one per level (bottom to top; numpy and 0-d tensor scalars too), as L floats, each
    finite and >= 0."""
    if isinstance(temperature, Tensor):
        temperature = temperature.tolist()
    if isinstance(temperature, numbers.Real):  # numpy's scalars too
        temps = [float(temperature)] * L
    else:
        temps = [float(t) for t in cast(Sequence[float], temperature)]
    if len(temps) != L:
        raise ValueError(f"temperature: give one float or one per layer ({L}, bottom to top), got {len(temps)}")
    if not all(0 <= t < math.inf for t in temps):  # a NaN fails both comparisons
        raise ValueError(f"temperature: must be finite and >= 0 (0 gives the prior means), got {temps}")
    return temps


def whole(n) -> bool:
    """Whether ``n`` is a whole number: an integer, numpy's too, not a bool."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def count(n, name: str, none: str = "") -> int:
    """A count (samples, a chunk's samples): a whole number >= 1, numpy's integers too, not a bool."""
    if not whole(n) or n < 1:
        raise ValueError(f"{name} must be a whole number >= 1{none}, got {n!r}")
    return int(n)
