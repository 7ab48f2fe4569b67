"""The sampling job: unconditional grids, keep-top-k grids and interpolations through the top layer.

Each function returns images ``(N, *data_shape)`` in [0, 1] and the number of grid columns; the CLI
turns them into a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import HierarchicalVAE


@torch.no_grad()
def unconditional(model: HierarchicalVAE, n: int, temperature: float | Sequence[float]) -> torch.Tensor:
    model.eval()
    return model.sample(n, temperature=temperature)


@torch.no_grad()
def keep_top_rows(
    model: HierarchicalVAE, x: torch.Tensor, keep_top: Sequence[int], temperature: float | Sequence[float]
) -> torch.Tensor:
    """First row the inputs ``x`` (n, ...), then one row per k in ``keep_top``: the top k levels from
    q(z | x), the rest re-sampled from the prior. Returns ((1 + len(keep_top)) * n, *data_shape)."""
    model.eval()
    rows = [x]
    for k in keep_top:
        rows.append(model.sample_conditional(x, keep_top=k, temperature=temperature))
    return torch.cat(rows)


@torch.no_grad()
def interpolate(model: HierarchicalVAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode a straight line between the top-level posterior means of ``x_a`` and ``x_b`` (each (n, ...)),
    the lower levels at their prior means. Returns (n * steps, *data_shape), one row per pair."""
    model.eval()
    top_a = model.encode(x_a, sample=False)[-1]
    top_b = model.encode(x_b, sample=False)[-1]
    t = torch.linspace(0, 1, steps).tolist()
    z_top = torch.cat([(1 - ti) * top_a + ti * top_b for ti in t])  # (steps*n, ...), step-major
    n = x_a.shape[0]
    L = model.config.num_layers
    out = model.generate([None] * (L - 1) + [z_top], temperature=0.0)
    # (steps, n, ...) -> (n, steps, ...): one row per pair
    return out.view(steps, n, *out.shape[1:]).transpose(0, 1).reshape(n * steps, *out.shape[1:])
