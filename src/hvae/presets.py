"""Named model configurations.

Each preset is a function returning a :class:`~hvae.config.ModelConfig`; keyword arguments override its
fields (``lvae_mnist(inference="bottom_up")`` is the paper's stacked-VAE baseline).
"""

from __future__ import annotations

from .config import ModelConfig, NVAEConfig, VDVAEConfig
from .configbase import merge, move_renamed


def _build(base: dict, overrides: dict) -> ModelConfig:
    """The preset ``base`` with ``overrides``, section by section (old flat keys moved to their sections)."""
    return ModelConfig.from_dict(merge(base, move_renamed(ModelConfig, overrides)))


def lvae_mnist(**overrides) -> ModelConfig:
    """The Ladder VAE paper's MNIST model (Sønderby et al. 2016): 5 stochastic layers of 64-32-16-8-4
    units, deterministic widths 512-256-128-64-32 with two hidden layers per mapping, batch norm,
    leaky ReLU (0.1), variances from a softplus (sigma^2 = softplus(Linear(d))), Bernoulli likelihood on
    28x28 = 784 binarised pixels. The paper's KL warm-up (200 epochs) is a training setting, not part of the
    model: ``configs/lvae_mnist.yaml`` sets ``train.kl_warmup_epochs``; in your own loop pass
    ``lvae_mnist(kl_warmup_steps=N)``."""
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
        scale_param="variance",
    )
    return _build(base, overrides)


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
    return _build(base, overrides)


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
    return _build(base, overrides)


# NVAE / VDVAE: the shared top-down path (skip state, posterior from encoder and decoder states, residual
# posterior for NVAE). Levels with stride 1 are further groups at the same scale.
_NVAE = dict(
    block="nvae",
    activation="swish",
    batch_norm=True,
    inference="top_down",
    generative_skip=True,
    residual_posterior=True,
    kl_balancing=True,
)
_VDVAE = dict(
    block="vdvae",
    activation="gelu",
    batch_norm=False,
    inference="top_down",
    generative_skip=True,
)
# What the official code does and the paper presets follow (docs/fidelity.md cites file and function for each).
# NVAE (NVlabs/NVAE): the combiner is a 1x1 conv of cat(s, z), linear (model.py ``combiner_dec`` /
# neural_operations.py ``DecCombinerCell``); Normal soft-clamps mu and log sigma, sigma = exp(.) + 1e-2
# (distributions.py ``Normal``); lambda = --weight_decay_norm 1e-2, constant without --weight_decay_norm_anneal
# (train.py ``train``: wdn_coeff), 4 power iterations per step and 40 the first time (model.py
# ``spectral_norm_parallel``, num_power_iter = 4), over the convolutions (``all_conv_layers``), plus max |gamma|
# of every batch norm at the same lambda (``batchnorm_loss``); KL weight utils.kl_coeff with floor 1e-4.
_NVAE_OFFICIAL = dict(
    state_activation="linear",
    scale_param="softclamp",
    spectral={"reg": 1e-2, "reg_warmup_steps": 0, "iterations": 4, "seed_iterations": 40, "over": "conv"},
    bn_scale_penalty=True,
    kl_warmup_floor=1e-4,  # train.py --kl_const_coeff
)


def _nvae_construction(cells: int) -> dict:
    """NVlabs/NVAE's construction (``model.nvae``, docs/fidelity.md): leading BN in the decoder cells, weight
    normalisation, residual resampling cells, its heads, combiners and ``prior_ftr0``, input in [-1, 1], and ``cells``
    per pre- and post-processing block (the run commands' --num_preprocess_cells = --num_postprocess_cells)."""
    on = ["leading_bn", "weight_norm", "residual_resampling", "official_heads", "learned_top", "symmetric_input"]
    on.append("one_combiner")  # DecCombinerCell: one weight-normalised 1x1 of cat(s, z)
    return dict(dict.fromkeys(on, True), pre_cells=cells, post_cells=cells)


# VDVAE (openai/vdvae vae.py ``DecBlock``): x + z_proj(z), linear; q and p give log sigma
# (vae_helpers.py ``draw_gaussian_diag_samples``, ``gaussian_analytical_kl``); the prior block's last conv
# zero and z_proj / the residual blocks' last convs scaled by sqrt(1 / n_blocks) (``DecBlock.__init__``).
_VDVAE_OFFICIAL = dict(state_activation="linear", scale_param="log", official_init=True)


def nvae_mnist(**overrides) -> ModelConfig:
    """NVAE's MNIST model (Vahdat & Kautz 2020, appendix table and the official run command) as we read it:
    28x28 images padded to 32x32 inside the model, dynamically binarised (``data.binarize: dynamic``),
    Bernoulli likelihood; 2 latent scales, 8x8 with 10 groups and 4x4 with 5 (``--ada_groups`` halves the
    groups per scale), 20 latent channels per group, 2 cells per group, 32 channels at 32x32 doubling with
    every downsampling (128 at 8x8, 256 at 4x4), Swish, SE, residual posterior, KL balancing, spectral
    regularisation lambda = 1e-2 (constant, as the official command runs it; 4 power iterations per step)
    with the batch-norm penalty, soft-clamped Gaussians, a linear top-down state (docs/fidelity.md). NVAE
    trains it 400 epochs at batch 200 with Adamax, lr 1e-2, KL warm-up over 30% of training with floor 1e-4.
    Built as NVlabs/NVAE builds it (``model.nvae``): a 3x3 stem on 2x - 1, two pre-processing blocks of three
    cells, residual resampling cells, weight normalisation, decoder cells with a leading batch norm, its
    posterior / prior / output heads, the learned top map ``prior_ftr0``, two post-processing blocks of three
    cells, each combiner one 1x1 of cat(s, z). 33,363,134 parameters, as the official construction
    (docs/fidelity.md)."""
    base = dict(
        _NVAE,
        **_NVAE_OFFICIAL,
        data_shape=[1, 28, 28],
        latent_dims=[20] * 15,
        hidden_dims=[128] * 10 + [256] * 5,
        strides=[4] + [1] * 9 + [2] + [1] * 4,
        depth=2,
        likelihood="bernoulli",
        nvae=_nvae_construction(3),
        # utils.kl_coeff over 30% of 400 epochs x 300 steps (60,000 images at batch 200), held at the floor for
        # the first 0.01% (12 steps); configs/nvae_mnist.yaml sets both as fractions of the run instead
        kl_warmup_steps=36000,
        kl_const_steps=12,
    )
    return _build(base, overrides)


def nvae_cifar10(**overrides) -> ModelConfig:
    """NVAE's CIFAR-10 model (for GPUs): one latent scale at 16x16 with 30 groups of 20 channels, 128
    channels at 32x32 (256 at 16x16), 2 cells per group, discretised logistic mixture of 10 components on
    8-bit colour, spectral regularisation 1e-2 (constant) with NVAE's batch-norm penalty, soft-clamped
    Gaussians, a linear top-down state, KL weight over 30% of the run with floor 1e-4 (docs/fidelity.md).
    Built as NVlabs/NVAE builds it (``model.nvae``, pre- and post-processing blocks of two cells; see
    :func:`nvae_mnist`) with one pair of inverse autoregressive cells on each group's posterior sample
    (``--num_nf 1``, ``nvae.flows``). 130,852,480 parameters, as the official construction (docs/fidelity.md)."""
    base = dict(
        _NVAE,
        data_shape=[3, 32, 32],
        latent_dims=[20] * 30,
        hidden_dims=[256] * 30,
        strides=[2] + [1] * 29,
        depth=2,
        likelihood="discretized_logistic_mixture",
        num_mixtures=10,
        **_NVAE_OFFICIAL,
        nvae=dict(_nvae_construction(2), flows=1),  # --num_nf 1
        # utils.kl_coeff over 30% of 400 epochs x 195 steps (50,000 images at 32 per GPU x 8 GPUs, drop_last),
        # held at the floor for the first 0.01% (8 steps); configs/nvae_cifar10.yaml sets both as fractions
        kl_warmup_steps=23400,
        kl_const_steps=8,
    )
    return _build(base, overrides)


def vdvae_cifar10(**overrides) -> ModelConfig:
    """VDVAE's CIFAR-10 model (Child 2021, ``hps.py`` ``cifar10``), for GPUs: width 384, 16 latent channels
    per group, bottleneck blocks (ratio 0.25, GELU, no batch norm), 43 groups: 22 at 32x32, 11 at 16x16,
    6 at 8x8, 3 at 4x4, 1 at 1x1 (decoder ``1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21``), discretised
    logistic mixture of 10 components. Each level as vae.py ``DecBlock`` builds it (``model.vdvae``): q from a
    block on cat(h, d), p and an update of the stream from a block on h (its last conv zero), the state
    h + z_proj(z) then the residual block, learned bias maps per resolution (the top's prior read from its map),
    1x1 middle convs at 1x1; the encoder's 33 blocks as ``Encoder.build`` lays them out, each level reading the
    last output at its resolution; linear state, log-sigma Gaussians, last convs scaled by sqrt(1 / n_blocks),
    zero biases, the output's gain and bias. 39,145,700 parameters, as vae.py's construction (docs/fidelity.md).
    To change the number of levels, give ``vdvae.encoder_depths`` one entry per level."""
    base = dict(
        _VDVAE,
        data_shape=[3, 32, 32],
        latent_dims=[16] * 43,
        hidden_dims=[384] * 43,
        strides=[1] * 22 + [2] + [1] * 10 + [2] + [1] * 5 + [2] + [1] * 2 + [4],
        depth=1,
        likelihood="discretized_logistic_mixture",
        num_mixtures=10,
        **_VDVAE_OFFICIAL,
        # vae.py's level (docs/fidelity.md): the encoder's 33 blocks (hps.py enc_blocks "32x11,32d2,16x6,16d2,8x6,
        # 8d2,4x3,4d4,1x3") at the first level of each resolution, every level there reading their last output
        vdvae=dict(
            posterior_block=True,
            prior_block=True,
            identity_state=True,
            encoder_depths=[11] + [0] * 21 + [7] + [0] * 10 + [7] + [0] * 5 + [4] + [0] * 2 + [4],
            pointwise_at=2,
            bias_maps=True,
            upsample_last=True,
            output_gain=True,
        ),
    )
    return _build(base, overrides)


def nvae_small(**overrides) -> ModelConfig:
    """A 3-group NVAE for 28x28 grey images (Fashion-MNIST; padded to 32x32), trains on 2 CPU cores in minutes:
    latents 8x8, 8x8, 4x4 with 8 channels, widths 32-32-64, one cell per group, Bernoulli likelihood. Built
    from NVAE's official cells and settings as :func:`nvae_mnist` (``model.nvae``: a 3x3 stem on 2x - 1, one
    cell per pre- and post-processing block, residual resampling cells, weight normalisation, the decoder
    cells' leading batch norm, the official heads and ``prior_ftr0``; a linear state, soft-clamped Gaussians,
    a constant spectral coefficient 1e-2 over the convolutions with the batch-norm penalty, KL floor 1e-4).
    :data:`NVAE_SMALL_BEFORE` gives the options' values the preset had before it followed NVAE's code."""
    base = dict(
        _NVAE,
        **_NVAE_OFFICIAL,
        data_shape=[1, 28, 28],
        latent_dims=[8, 8, 8],
        hidden_dims=[32, 32, 64],
        strides=[4, 1, 2],
        depth=1,
        likelihood="bernoulli",
        nvae=_nvae_construction(1),
    )
    return _build(base, overrides)


def vdvae_small(**overrides) -> ModelConfig:
    """A 4-group VDVAE for small 32x32 colour images, trains on 2 CPU cores in minutes: latents 16x16, 16x16,
    8x8, 4x4 with 8 channels, width 32, mixture of 5 discretised logistics. Each level built as vae.py's
    ``DecBlock`` (``model.vdvae``, as :func:`vdvae_cifar10`): q and p from bottleneck blocks, the prior's extra
    output added to the stream, the state h + z_proj(z), bias maps per resolution, the output's gain and bias,
    log-sigma Gaussians, the official initialisation; four encoder blocks laid out as ``Encoder.build`` lays
    them (at the first level of a resolution, the others reading its output). :data:`VDVAE_SMALL_BEFORE` gives
    the options' values the preset had before it followed VDVAE's code."""
    base = dict(
        _VDVAE,
        **_VDVAE_OFFICIAL,
        data_shape=[3, 32, 32],
        latent_dims=[8, 8, 8, 8],
        hidden_dims=[32, 32, 32, 32],
        strides=[2, 1, 2, 2],
        depth=1,
        likelihood="discretized_logistic_mixture",
        num_mixtures=5,
        vdvae=dict(
            posterior_block=True,
            prior_block=True,
            identity_state=True,
            encoder_depths=[2, 0, 1, 1],
            pointwise_at=2,
            bias_maps=True,
            upsample_last=True,
            output_gain=True,
        ),
    )
    return _build(base, overrides)


# The small presets' options as they were before they followed the official code (the "before" side of
# benchmarks/fidelity_budget.py): ``nvae_small(**NVAE_SMALL_BEFORE)`` builds the old nvae_small exactly.
NVAE_SMALL_BEFORE: dict = dict(
    state_activation="activation",
    scale_param="std",
    spectral={
        "reg": 1e-2,
        "reg_init": 1.0,
        "reg_warmup_steps": 500,
        "iterations": 1,
        "seed_iterations": 20,
        "over": "all",
    },  # fmt: skip
    bn_scale_penalty=False,
    kl_warmup_floor=0.0,
    nvae=NVAEConfig().to_dict(),  # every option off
)
VDVAE_SMALL_BEFORE: dict = dict(
    state_activation="activation", scale_param="std", official_init=False, vdvae=VDVAEConfig().to_dict()
)


# Attention (Apostolopoulou et al. 2022) and autoregressive decoders (PixelVAE, Gulrajani et al. 2017;
# VLAE, Chen et al. 2017) on top of the convolutional hierarchy.


def attentive(**overrides) -> ModelConfig:
    """A 4-level attentive hierarchy for 28x28 grey images (Fashion-MNIST), in the spirit of DAVI: latents
    16x14x14 then three levels of 16x7x7, widths 64, top-down inference with a deterministic skip state,
    spatial self-attention (4 heads) in the cells of the three 7x7 levels, and depth-wise attention across
    levels in both passes. Bernoulli likelihood on binarised pixels."""
    base = dict(
        data_shape=[1, 28, 28],
        latent_dims=[16, 16, 16, 16],
        hidden_dims=[64, 64, 64, 64],
        block="conv",
        strides=[2, 2, 1, 1],
        depth=2,
        inference="top_down",
        generative_skip=True,
        attention={"levels": [1, 2, 3], "heads": 4, "depth": True, "depth_dim": 64},
        likelihood="bernoulli",
    )
    return _build(base, overrides)


def attentive_small(**overrides) -> ModelConfig:
    """:func:`attentive` for the bundled 1x8x8 digits: latents 4x4x4, 4x4x4, 4x2x2, widths 16, 2 heads."""
    base = dict(
        data_shape=[1, 8, 8],
        latent_dims=[4, 4, 4],
        hidden_dims=[16, 16, 16],
        block="conv",
        strides=[2, 1, 2],
        depth=1,
        inference="top_down",
        generative_skip=True,
        attention={"levels": [0, 1], "heads": 2, "depth": True, "depth_dim": 16},
        likelihood="bernoulli",
    )
    return _build(base, overrides)


def pixelvae(**overrides) -> ModelConfig:
    """A PixelVAE for 28x28 binarised grey images (Fashion-MNIST): a 2-level ladder hierarchy (latents
    8x14x14 and 16x7x7, widths 64) whose p(x | z_1) is a gated PixelCNN of 4 layers with 5x5 kernels (a
    receptive field of 9 rows up, 9 columns left: local strokes; global shape is left to the latents)
    conditioned on 16 feature channels of the decoder. One nat of free bits per latent channel keeps the
    powerful decoder from ignoring the latents (posterior collapse); use KL warm-up as well."""
    base = dict(
        data_shape=[1, 28, 28],
        latent_dims=[8, 16],
        hidden_dims=[64, 64],
        block="conv",
        strides=[2, 2],
        depth=2,
        inference="ladder",
        likelihood="bernoulli",
        decoder="pixelcnn",
        ar_cond_channels=16,
        pixelcnn={"layers": 4, "channels": 64, "kernel": 5},
        free_bits=1.0,
        free_bits_mode="channel",
    )
    return _build(base, overrides)


def pixelvae_small(**overrides) -> ModelConfig:
    """:func:`pixelvae` for the bundled 1x8x8 digits: latents 4x4x4 and 4x2x2, widths 16, a 2-layer
    PixelCNN of 16 channels with 3x3 kernels."""
    base = dict(
        data_shape=[1, 8, 8],
        latent_dims=[4, 4],
        hidden_dims=[16, 16],
        block="conv",
        strides=[2, 2],
        depth=1,
        inference="ladder",
        likelihood="bernoulli",
        decoder="pixelcnn",
        ar_cond_channels=8,
        pixelcnn={"layers": 2, "channels": 16, "kernel": 3},
    )
    return _build(base, overrides)


def lvae_discrete(**overrides) -> ModelConfig:
    """The Ladder VAE's MNIST architecture with discrete levels between Gaussian ones, for 784 binary
    pixels: z_1 Gaussian (64), z_2 categorical (16 groups of 10 classes), z_3 Gaussian (16), z_4 categorical
    (8 groups of 10), z_5 Gaussian (4); the Gaussian levels' variances from a softplus, as in
    :func:`lvae_mnist`. The Gumbel-softmax temperature anneals from 1 to 0.5 over 40k steps
    (about 190 epochs of 60k images at batch 256); the KL of the categorical levels is exact."""
    base = lvae_mnist().to_dict()
    base.update(
        latent_types=["gaussian", "categorical", "gaussian", "categorical", "gaussian"],
        latent_dims=[64, 16, 16, 8, 4],
        categorical_classes=10,
        gumbel={"temperature_start": 1.0, "temperature": 0.5, "anneal_steps": 40000},
    )
    return _build(base, overrides)


def lvae_discrete_small(**overrides) -> ModelConfig:
    """:func:`lvae_discrete` at the scale of the bundled 8x8 digits (64 binary pixels): Gaussian (16),
    categorical (4 groups of 8), categorical (2 groups of 8)."""
    base = small().to_dict()
    base.update(
        latent_types=["gaussian", "categorical", "categorical"],
        latent_dims=[16, 4, 2],
        categorical_classes=8,
        gumbel={"temperature_start": 1.0, "temperature": 0.5, "anneal_steps": 1000},
    )
    return _build(base, overrides)


# Sequences (data/text.py, data/audio.py): a sentence-level model with global latent vectors over token ids,
# and a temporal hierarchy with latents at several time resolutions for audio.


def text_fortunes(**overrides) -> ModelConfig:
    """A sentence VAE (Bowman et al. 2016) with a 3-level hierarchy of global latent vectors (32, 16, 8;
    widths 256-128-64, ladder inference) for byte-level text of up to 128 bytes (the ``fortunes`` source):
    token ids (B, 128) over 258 classes (256 bytes, end-of-sequence 256, padding 257, which never counts),
    embedded (64) and convolved to a quarter of the length for the bottom-up pass; p(x | z_1) a causal
    Transformer (2 layers, width 128, 4 heads) conditioned on 16 features per position from z_1. Two nats of
    free bits per level keep the strong decoder from ignoring the latents. Trains on 2 CPU cores in minutes."""
    base = dict(
        data_shape=[128],
        latent_dims=[32, 16, 8],
        hidden_dims=[256, 128, 64],
        block="mlp",
        depth=2,
        inference="ladder",
        likelihood="categorical",
        num_classes=258,
        pad_id=257,
        embed_dim=64,
        decoder="transformer",
        ar_cond_channels=16,
        seq_layers=2,
        seq_width=128,
        seq_heads=4,
        free_bits=2.0,
    )
    return _build(base, overrides)


def audio_digits(**overrides) -> ModelConfig:
    """A temporal hierarchy for 1-second spoken digits as scaled log-mel frames (32 bands x 63 frames at 8 kHz,
    hop 128; padded to 64 frames inside): latents of 8 channels at 32, 16 and 8 frames (each level twice as
    coarse in time), widths 64, 1-D convolutions, ladder inference, a Gaussian likelihood with one learned
    scale per band and frame. Samples are heard through Griffin-Lim. Trains on 2 CPU cores in minutes."""
    base = dict(
        data_shape=[32, 63],
        latent_dims=[8, 8, 8],
        hidden_dims=[64, 64, 64],
        block="temporal",
        strides=[2, 2, 2],
        depth=2,
        inference="ladder",
        likelihood="gaussian",
    )
    return _build(base, overrides)


PRESETS = {
    f.__name__: f
    for f in (
        lvae_mnist,
        small,
        conv_small,
        nvae_mnist,
        nvae_cifar10,
        vdvae_cifar10,
        nvae_small,
        vdvae_small,
        attentive,
        attentive_small,
        pixelvae,
        pixelvae_small,
        lvae_discrete,
        lvae_discrete_small,
        text_fortunes,
        audio_digits,
    )
}


def get(name: str, **overrides) -> ModelConfig:
    """A preset by name."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
