"""The stacked VAE's inference (``inference: bottom_up``): a stochastic pass upward through the levels.

    q(z | x) = q(z_1 | x) ∏_{l>1} q(z_l | z_{l-1})

Level 1 reads the deterministic bottom-up features of ``x`` (:meth:`HierarchicalVAE._bottom_up`); every level
above reads the sample of the level below through its bottom-up block. The generative side is the same
top-down pass as every other hierarchy's, scoring these samples (``_top_down(zs_given=...)``); the codec
(:mod:`hvae.codec`) runs this pass with its own choice of each z_l.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor

from .distributions import Gaussian

if TYPE_CHECKING:  # the model imports this module to run it
    from .model import HierarchicalVAE

#: chooses z_l given (l, the prior: None in this pass, q_l) instead of drawing it
Pick = Callable[[int, None, Gaussian], Tensor]


def upward(
    model: HierarchicalVAE, ctx0: Tensor, use_mean: bool = False, pick: Pick | None = None
) -> tuple[list[Tensor], list[Gaussian]]:
    """z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1}) for l = 2 … L, from level 1's posterior context ``ctx0``
    (B, ...). Returns the samples and the posteriors, bottom to top; ``use_mean`` takes each posterior's mean
    instead of a sample, ``pick(l, None, q_l)``, if given, chooses z_l (the codec decodes it from its stack)."""
    model._set_relaxation()
    zs: list[Tensor] = []
    qs: list[Gaussian] = []
    feats: list[Tensor] = []  # the upward features of levels 2 … l: level l's depth attention reads these
    ctx = ctx0
    for l, layer in enumerate(model.layers):
        if l > 0:
            f = model.encoder[l](zs[-1].to(ctx0.dtype))  # d_l = block_l(z_{l-1})
            feats.append(f)
            if model.depth_attn is not None:
                f = model.depth_attn.posterior[l](f, feats)
            ctx = layer.context(f)
        q = layer.posterior(ctx, None, None)  # no prior goes in: q(z_l | z_{l-1}) reads z_{l-1} alone
        zs.append(pick(l, None, q) if pick is not None else q.mean if use_mean else q.rsample())
        qs.append(q)
    return zs, qs
