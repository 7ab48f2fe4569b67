"""Optimisers for hierarchical VAEs."""

from __future__ import annotations

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float = 1e-3, name: str = "adam", **kwargs) -> torch.optim.Optimizer:
    """Adam (default) or Adamax over the model's parameters, using the fused or multi-tensor kernel.

    Keyword arguments go to the optimiser (``betas``, ``eps``, ``weight_decay``, ...).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        try:
            return torch.optim.Adam(params, lr=lr, fused=kwargs.pop("fused", True), **kwargs)
        except (RuntimeError, TypeError):  # fused kernel unavailable for this device / dtype / release
            return torch.optim.Adam(params, lr=lr, foreach=True, **kwargs)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, foreach=True, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam' or 'adamax'")
