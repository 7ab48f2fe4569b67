"""Activation checkpointing of the model's cells (``config.checkpointing``): less memory for more compute.

A cell's activations are dropped after the forward pass and recomputed in the backward pass, one level's
cells at a time; the numbers are those of the plain pass.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def cells(enabled: bool, fn, *args):
    """``fn(*args)`` (a module or a module's method), its activations recomputed in the backward pass when
    ``enabled`` and gradients are on; otherwise a plain call."""
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    from torch.utils.checkpoint import checkpoint

    owner = fn if isinstance(fn, nn.Module) else fn.__self__
    return checkpoint(fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), frozen_bn(owner)))


@contextlib.contextmanager
def frozen_bn(module: nn.Module):
    """While a checkpointed module is recomputed, its batch norms leave their running statistics alone
    (the forward pass already counted this batch)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)
