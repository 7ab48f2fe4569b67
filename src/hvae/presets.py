"""Named model configurations.

Each preset is a function returning a :class:`~hvae.config.ModelConfig`; keyword arguments override its
fields (``lvae_mnist(inference="bottom_up")`` is the paper's stacked-VAE baseline).
"""

from __future__ import annotations

from .config import ModelConfig


def lvae_mnist(**overrides) -> ModelConfig:
    """The Ladder VAE paper's MNIST model (Sønderby et al. 2016): 5 stochastic layers of 64-32-16-8-4
    units, deterministic widths 512-256-128-64-32 with two hidden layers per mapping, batch norm,
    leaky ReLU (0.1), Bernoulli likelihood on 28x28 = 784 binarised pixels."""
    base = dict(
        data_shape=[784],
        latent_dims=[64, 32, 16, 8, 4],
        hidden_dims=[512, 256, 128, 64, 32],
        block="mlp",
        depth=2,
        batch_norm=True,
        activation="leaky_relu",
        leaky_slope=0.1,
        inference="ladder",
        likelihood="bernoulli",
    )
    return ModelConfig.from_dict({**base, **overrides})


def small(**overrides) -> ModelConfig:
    """A 3-level Ladder VAE for the bundled 8x8 digits (64 binary pixels): trains in a minute on a CPU."""
    base = dict(
        data_shape=[64],
        latent_dims=[16, 8, 4],
        hidden_dims=[128, 64, 32],
        block="mlp",
        depth=2,
        inference="ladder",
        likelihood="bernoulli",
    )
    return ModelConfig.from_dict({**base, **overrides})


def conv_small(**overrides) -> ModelConfig:
    """A 2-level convolutional hierarchy with spatial latents at two resolutions: for 1x8x8 digits,
    z_1 is 8x4x4 and z_2 is 8x2x2."""
    base = dict(
        data_shape=[1, 8, 8],
        latent_dims=[8, 8],
        hidden_dims=[32, 64],
        block="conv",
        strides=[2, 2],
        depth=2,
        inference="ladder",
        likelihood="bernoulli",
    )
    return ModelConfig.from_dict({**base, **overrides})


PRESETS = {"lvae_mnist": lvae_mnist, "small": small, "conv_small": conv_small}


def get(name: str, **overrides) -> ModelConfig:
    """A preset by name."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
