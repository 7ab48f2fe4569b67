"""Pieces shared by the cell families."""

from __future__ import annotations

from torch import nn


def activation(name: str, leaky_slope: float = 0.1) -> nn.Module:
    """The nonlinearity named in the config (the Ladder VAE paper uses leaky ReLU with slope 0.1)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(leaky_slope)
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    if name == "swish":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class Sequential(nn.Sequential):
    """``nn.Sequential`` that records its output channel count (``out_ch``) for the layer that follows."""

    def __init__(self, out_ch: int, *modules: nn.Module):
        super().__init__(*modules)
        self.out_ch = out_ch
