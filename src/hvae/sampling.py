"""The sampling job: unconditional grids, keep-top-k grids and interpolations through the top layer.

Each function returns images ``(N, *data_shape)`` in [0, 1] and the number of grid columns; the CLI
turns them into a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .decoding import Decoding
from .model import HierarchicalVAE


@torch.no_grad()
def unconditional(
    model: HierarchicalVAE, n: int, temperature: float | Sequence[float], decode: Decoding | None = None
) -> torch.Tensor:
    """``n`` samples; ``decode`` as in :meth:`HierarchicalVAE.sample` (None: the mean of p(x | z))."""
    model.eval()
    return model.sample(n, temperature=temperature, decode=decode)


@torch.no_grad()
def keep_top_rows(
    model: HierarchicalVAE,
    x: torch.Tensor,
    keep_top: Sequence[int],
    temperature: float | Sequence[float],
    decode: Decoding | None = None,
) -> torch.Tensor:
    """First row the inputs ``x`` (n, ...), then one row per k in ``keep_top``: the top k levels from
    q(z | x), the rest re-sampled from the prior. Returns ((1 + len(keep_top)) * n, *data_shape)."""
    model.eval()
    rows = [x]
    for k in keep_top:
        rows.append(model.sample_conditional(x, keep_top=k, temperature=temperature, decode=decode))
    return torch.cat(rows)


@torch.no_grad()
def interpolate(
    model: HierarchicalVAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8, decode: Decoding | None = None
) -> torch.Tensor:
    """Decode a straight line between the top-level posterior means of ``x_a`` and ``x_b`` (each (n, ...)),
    the lower levels at their prior means. Returns (n * steps, *data_shape), one row per pair."""
    model.eval()
    top_a = model.encode(x_a, sample=False)[-1]
    top_b = model.encode(x_b, sample=False)[-1]
    t = torch.linspace(0, 1, steps).tolist()
    z_top = torch.cat([(1 - ti) * top_a + ti * top_b for ti in t])  # (steps*n, ...), step-major
    n = x_a.shape[0]
    L = model.config.num_layers
    out = model.generate([None] * (L - 1) + [z_top], temperature=0.0, decode=decode)
    # (steps, n, ...) -> (n, steps, ...): one row per pair
    return out.view(steps, n, *out.shape[1:]).transpose(0, 1).reshape(n * steps, *out.shape[1:])


@torch.no_grad()
def readjust_batchnorm(
    model: HierarchicalVAE, n: int, temperature: float | Sequence[float] = 1.0, num_batches: int = 100
) -> int:
    """NVAE's sampling trick: re-estimate the batch-norm statistics of the generative path from the
    model's own samples at ``temperature`` (low temperatures shift the activations away from those seen
    in training). The batch norms that sampling runs are reset and re-estimated as the plain average over
    ``num_batches`` sampling passes of ``n`` samples, in train mode without gradients; the encoder's are
    untouched. A layer whose new statistics come out non-finite keeps its old ones, and if the passes stop
    early (an error, an interrupt) every layer gets its old ones back. The model is left in eval mode.
    Returns the number of batch-norm layers readjusted."""
    if n < 2 or num_batches < 1:
        raise ValueError(f"readjust_batchnorm needs n >= 2 and num_batches >= 1, got n={n}, num_batches={num_batches}")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = {m: tuple(t.clone() for t in _stats(m)) for m in norms}
    momenta = {m: m.momentum for m in norms}
    step = model.step.clone()
    used: list[_BatchNorm] = []
    done = False
    try:
        # find the batch norms of the generative path in train mode: in eval mode a linear map may run with
        # its batch norm folded in, which never calls the batch norm itself
        hooks = [m.register_forward_hook(lambda m, i, o: used.append(m) if m not in used else None) for m in norms]
        model.train()
        try:
            model.sample(2, temperature=temperature)
        finally:
            for h in hooks:
                h.remove()
        _restore(saved)  # the probe's pass moved them
        for m in used:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
        for _ in range(num_batches):
            model.sample(n, temperature=temperature)
        done = True
    finally:
        model.eval()
        model.step.copy_(step)
        for m in norms:
            m.momentum = momenta[m]
            mean, var, _ = _stats(m)
            if not done or not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
                _restore({m: saved[m]})
    return len(used)


def _stats(m: _BatchNorm) -> tuple[Tensor, Tensor, Tensor]:
    """A batch norm's running mean, variance and count (never None: it tracks running statistics)."""
    return cast(Tensor, m.running_mean), cast(Tensor, m.running_var), cast(Tensor, m.num_batches_tracked)


def _restore(saved: dict[_BatchNorm, tuple[Tensor, ...]]) -> None:
    for m, kept in saved.items():
        for t, k in zip(_stats(m), kept):
            t.copy_(k)
