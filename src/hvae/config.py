"""The model's configuration, :class:`ModelConfig` (the ``model:`` section of a run's config).

Configs are validated where they enter (``from_dict``, ``__post_init__``): an unknown key or a bad value
raises :class:`ConfigError` naming the key and what is accepted. Past that point the code trusts them. The
generic machinery (reading mappings, YAML and overrides) is :mod:`hvae.configbase`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .configbase import ConfigError, Serializable, coerce_fields, require
from .registry import CELL_FAMILIES, LATENT_FAMILIES, LIKELIHOODS

__all__ = ["ConfigError", "ModelConfig"]  # ConfigError: what ModelConfig raises, importable from here too

Inference = Literal["ladder", "top_down", "bottom_up"]
Block = str  # a name in hvae.registry.CELL_FAMILIES (checked in ModelConfig.__post_init__)
Likelihood = str  # a name in hvae.registry.LIKELIHOODS (checked in ModelConfig.__post_init__)
Activation = Literal["leaky_relu", "relu", "elu", "swish", "gelu", "tanh", "identity"]


@dataclass
class VQConfig(Serializable):
    """``model.vq``: the vector-quantised latents (``latent_types: vq``; :mod:`hvae.quantize`). Messages name
    the keys without the section: :func:`hvae.configbase.from_dict` puts ``vq.`` (``model.vq.``) before them."""

    codes: int = 512  # K codes per vq codebook
    dim: int = 16  # E, the dimension of a code
    decay: float = 0.99  # EMA decay of the codebook statistics
    commitment: float = 0.25  # beta of the commitment loss beta ||e - sg(c)||^2
    dead_threshold: float = 0.01  # restart a code used less than this fraction of the uniform share 1/K
    top_prior: Literal["learned", "uniform"] = "learned"

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.codes >= 2, f"codes: must be >= 2, got {self.codes}")
        require(self.dim >= 1, f"dim: must be >= 1, got {self.dim}")
        require(0 < self.decay < 1, f"decay: must be in (0, 1), got {self.decay}")
        require(self.commitment >= 0, f"commitment: must be >= 0, got {self.commitment}")
        require(0 <= self.dead_threshold < 1, f"dead_threshold: must be in [0, 1), got {self.dead_threshold}")


@dataclass
class GumbelConfig(Serializable):
    """``model.gumbel``: the Gumbel-softmax / Concrete relaxation of discrete latents while training; its
    temperature is geometric from ``temperature_start`` to ``temperature`` over ``anneal_steps`` (0: constant)."""

    temperature: float = 0.5
    temperature_start: float = 1.0
    anneal_steps: int = 0

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("temperature", "temperature_start"):
            require(getattr(self, name) > 0, f"{name}: must be > 0, got {getattr(self, name)}")
        require(self.anneal_steps >= 0, f"anneal_steps: must be >= 0, got {self.anneal_steps}")


@dataclass
class PixelCNNConfig(Serializable):
    """``model.pixelcnn``: the PixelCNN observation model (``decoder: pixelcnn``; nets/autoregressive.py).
    Checked by :class:`ModelConfig` when the decoder is autoregressive."""

    layers: int = 4
    channels: int = 64
    kernel: int = 5  # odd; with layers it sets the receptive field

    def __post_init__(self) -> None:
        coerce_fields(self)


@dataclass
class SpectralConfig(Serializable):
    """``model.spectral``: NVAE's spectral regularisation, + lambda * the sum of the largest singular values
    of every conv / linear weight (training loss only). lambda anneals log-linearly from ``reg_init`` to
    ``reg`` over ``reg_warmup_steps`` (0: constant); ``reg: 0`` turns it off."""

    reg: float = 0.0
    reg_init: float = 10.0
    reg_warmup_steps: int = 0
    # power iterations per training step and at the first (NVAE's model.py spectral_norm_parallel: 4 and 40)
    iterations: int = 1
    seed_iterations: int = 20
    over: Literal["all", "conv"] = "all"  # the weights covered: "conv" is NVAE's all_conv_layers

    def __post_init__(self) -> None:
        coerce_fields(self)
        for name in ("iterations", "seed_iterations"):
            require(getattr(self, name) >= 1, f"{name}: must be >= 1, got {getattr(self, name)}")
        require(self.reg >= 0, f"reg: must be >= 0, got {self.reg}")
        require(self.reg_init >= 0, f"reg_init: must be >= 0, got {self.reg_init}")
        require(self.reg_warmup_steps >= 0, f"reg_warmup_steps: must be >= 0, got {self.reg_warmup_steps}")


@dataclass
class AttentionConfig(Serializable):
    """``model.attention`` (nets/attention.py): spatial self-attention after the bottom-up cell and the prior
    cell of ``levels`` (conv-type blocks; 0 = z_1), and with ``depth`` depth-wise attention across levels
    (DAVI) with keys and values ``depth_dim`` wide. Levels and widths are checked by :class:`ModelConfig`."""

    levels: list[int] = field(default_factory=list)
    heads: int = 4
    depth: bool = False
    depth_dim: int = 64

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.heads >= 1, f"heads: must be >= 1, got {self.heads}")


@dataclass
class VDVAEConfig(Serializable):
    """``model.vdvae``: openai/vdvae's construction of a level (``vae.py``), for ``block: vdvae``; every switch
    off (the default) keeps hvae's generic top-down level. docs/fidelity.md cites file and function for each."""

    posterior_block: bool = False  # q from a bottleneck block on cat(h, d) (DecBlock.enc)
    prior_block: bool = False  # p and an update of the stream from a block on h, last conv zero (DecBlock.prior)
    identity_state: bool = False  # s = h + W_z z: W_h the identity, no parameters (DecBlock.forward)
    # bottom-up blocks per level (Encoder.build): at a level that downsamples, one runs before the pooling
    # ("32d2") and the rest after it; null: model.depth, all before the pooling
    encoder_depths: list[int] | None = None
    pointwise_at: int = 0  # the blocks' middle convs are 1x1 at resolutions <= this (Block: use_3x3 = res > 2)
    bias_maps: bool = False  # a learned map at the first level of each resolution, the top's prior from it
    upsample_last: bool = False  # a top-down cell runs its blocks at the resolution above, then upsamples
    output_gain: bool = False  # a learned per-channel gain and bias before the output conv (Decoder's final_fn)

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.pointwise_at >= 0, f"pointwise_at: must be >= 0 (0: 3x3 everywhere), got {self.pointwise_at}")
        require(
            all(d >= 0 for d in self.encoder_depths or ()),
            f"encoder_depths: every entry must be >= 0, got {self.encoder_depths}",
        )

    def active(self) -> bool:
        return self != VDVAEConfig()


@dataclass
class NVAEConfig(Serializable):
    """``model.nvae``: the details of NVlabs/NVAE's construction, options of the ``nvae`` cell family
    (nets/nvae.py; docs/fidelity.md cites the official file and function of each). Every default keeps the
    family as it was before them; ``nvae_mnist`` and ``nvae_cifar10`` set the official values."""

    leading_bn: bool = False  # the decoder cells start with a batch norm (InvertedResidual)
    weight_norm: bool = False  # w = exp(log g) v / (|v| + 1e-5) on the convolutions NVAE normalises (Conv2D)
    residual_resampling: bool = False  # resampling cells are residual: FactorizedReduce / UpSample skips
    official_heads: bool = False  # posterior 3x3 of enc + 1x1(dec), prior ELU + 1x1, ELU + 3x3 output
    learned_top: bool = False  # a learned feature map (prior_ftr0) enters the top level's combiner
    # pre-processing of the first bottom-up block: 0 = resampling convolutions with one cell between them;
    # n >= 1 = a 3x3 stem, then per halving n - 1 cells and a down cell (init_pre_process)
    pre_cells: int = 0
    # post-processing of the decoder: 0 = up-sampling then ``depth`` decoder cells; n >= 1 = per doubling an up
    # cell and n - 1 cells of expansion 3, nothing else (init_post_process)
    post_cells: int = 0
    symmetric_input: bool = False  # the networks read 2x - 1 in [-1, 1] (the likelihood still reads x)
    # paired inverse autoregressive cells on each group's posterior sample (NVAE's --num_nf; PosteriorFlow):
    # the KL of every level becomes log q(z) - log p(z) of the flowed sample
    flows: int = 0
    # the state as one (weight-normalised) 1x1 of cat(h, z) (DecCombinerCell) instead of W_z z + b + W_h h
    one_combiner: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self)
        require(self.pre_cells >= 0, f"pre_cells: must be >= 0 (0 = no stem), got {self.pre_cells}")
        require(self.post_cells >= 0, f"post_cells: must be >= 0 (0 = no post-processing), got {self.post_cells}")
        require(self.flows >= 0, f"flows: must be >= 0 (0 = no flow on q's samples), got {self.flows}")


# the flat keys of configs and saved models written before the sections, and where each is now
_FLAT = {
    **{f"vq_{k}": f"vq.{k}" for k in ("codes", "dim", "decay", "commitment", "dead_threshold", "top_prior")},
    **{f"gumbel_{k}": f"gumbel.{k}" for k in ("temperature", "temperature_start", "anneal_steps")},
    **{f"pixelcnn_{k}": f"pixelcnn.{k}" for k in ("layers", "channels", "kernel")},
    **{f"spectral_{k}": f"spectral.{k}" for k in ("reg", "reg_init", "reg_warmup_steps", "iterations")},
    **{f"spectral_{k}": f"spectral.{k}" for k in ("seed_iterations", "over")},
    "attention_levels": "attention.levels",
    "attention_heads": "attention.heads",
    "depth_attention": "attention.depth",
    "depth_attention_dim": "attention.depth_dim",
}


@dataclass
class ModelConfig(Serializable):
    """The architecture of a hierarchical VAE and the options of its training loss.

    Lists indexed by layer run bottom (``z_1``, nearest the data) to top (``z_L``).

    Data and latent shapes:
      * ``data_shape``: one example's shape: ``[D]`` for vectors, ``[C, H, W]`` for images.
      * ``latent_dims``: units (``mlp``) or channels (``conv``) of each latent layer ``z_l``.
      * ``hidden_dims``: width of the deterministic networks at each layer.
      * ``strides`` (``conv`` only): downsampling factor entering each layer (1 or 2).
    """

    data_shape: list[int] = field(default_factory=lambda: [64])
    latent_dims: list[int] = field(default_factory=lambda: [32, 16, 8])
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128, 64])
    block: Block = "mlp"
    strides: list[int] | None = None
    depth: int = 2  # hidden layers per deterministic mapping (the Ladder VAE paper uses 2)
    batch_norm: bool = True
    activation: Activation = "leaky_relu"
    leaky_slope: float = 0.1
    inference: Inference = "ladder"
    generative_skip: bool = False
    residual_posterior: bool = False
    min_scale: float = 1e-3  # floor on the sigma each head gives (latents and Gaussian likelihood)
    # what the softplus of a Gaussian latent's scale head gives: the standard deviation ("std"), or the
    # variance ("variance", the Ladder VAE paper's sigma^2 = softplus(Linear(d)); lvae_mnist uses it)
    # "log": sigma = exp(head), VDVAE's; "softclamp": NVAE's mu = 5 tanh(mu / 5), sigma = exp(5 tanh(head / 5)) + 0.01
    scale_param: Literal["std", "variance", "log", "softclamp"] = "std"
    likelihood: Likelihood = "bernoulli"
    likelihood_scale: float | None = None  # Gaussian: fixed sigma; null learns one sigma per dimension
    num_mixtures: int = 10  # discretized logistic mixture components
    num_bits: int = 8  # discretized logistic: bits per value (8, or 5 as in NVAE's CelebA-HQ runs)
    num_classes: int = 256  # categorical likelihood: values per dimension
    kl: Literal["analytic", "mc"] = "analytic"
    beta: float = 1.0  # weight of the KL term once warm-up is over
    kl_warmup_steps: int = 0  # beta grows linearly from 0 over this many training steps
    # NVAE's utils.kl_coeff: beta = max(min((step - kl_const_steps) / kl_warmup_steps, 1), kl_warmup_floor)
    kl_warmup_floor: float = 0.0
    kl_const_steps: int = 0
    # cyclical KL annealing (Fu et al. 2019): kl_cycles cycles of kl_cycle_steps steps each; in each, beta rises
    # linearly from 0 over the first kl_cycle_ramp of the cycle, then holds; after the cycles it stays at beta
    kl_cycles: int = 0  # 0 disables
    kl_cycle_steps: int = 0
    kl_cycle_ramp: float = 0.5
    free_bits: float = 0.0  # nats; 0 disables
    # layer: a floor on each level's batch-mean KL; channel: on each channel's; sequence: on each example's KL
    # summed over all levels (a KL target per sequence: below it an example's KL costs nothing)
    free_bits_mode: Literal["layer", "channel", "sequence"] = "layer"
    # a KL minimum per level, nats, z_1 first (empty: none): a level's KL below its minimum is free, so every level
    # may hold that much; layer mode: on the level's batch mean, at least free_bits; sequence mode: on each
    # example's KL of the level, inside the sequence's target free_bits (spreads the target over the levels)
    free_bits_levels: list[float] = field(default_factory=list)
    kl_balancing: bool = False  # NVAE's KL balancing while beta < 1
    # BN-VAE (Zhu et al. 2020): the posterior means of Gaussian levels batch-normalised to a fixed scale gamma (a
    # learned shift per channel), which keeps each level's batch-averaged KL above a floor; 0 disables
    bn_posterior_means: float = 0.0
    spectral: SpectralConfig = field(default_factory=lambda: SpectralConfig())
    # NVAE's batch-norm penalty, sum over batch norms of max |gamma| (model.py batchnorm_loss), at the
    # spectral regularisation's lambda
    bn_scale_penalty: bool = False
    # the deterministic top-down state s_l = act(W_z z + W_h h): "activation" (the config's) or "linear"
    # (NVAE's combiner, a 1x1 conv of cat(s, z); VDVAE's x + z_proj(z))
    state_activation: Literal["activation", "linear"] = "activation"
    # the cell family's initialisation as its official code does it (nets/vdvae.py official_init: the prior
    # head zero, W_z and the blocks' last convolutions scaled by sqrt(1 / levels))
    official_init: bool = False
    nvae: NVAEConfig = field(default_factory=lambda: NVAEConfig())  # block: nvae only
    vdvae: VDVAEConfig = field(default_factory=lambda: VDVAEConfig())
    checkpointing: bool = False  # recompute activations per level in the backward pass (saves memory)
    attention: AttentionConfig = field(default_factory=lambda: AttentionConfig())
    # autoregressive observation model p(x | z_1) = prod_i p(x_i | x_<i, z_1) (nets/autoregressive.py);
    # the decoder then emits ar_cond_channels conditioning features per position
    decoder: Literal["plain", "pixelcnn", "transformer", "gru"] = "plain"
    ar_cond_channels: int = 16
    pixelcnn: PixelCNNConfig = field(default_factory=lambda: PixelCNNConfig())
    seq_layers: int = 2  # transformer / gru
    seq_width: int = 128
    seq_heads: int = 4  # transformer
    # keeping a strong sequence decoder from ignoring the latents (Bowman et al. 2016): the share of input
    # tokens replaced by a dropped-token symbol while training, and the positions a transformer attends to
    # (a sliding window; 0 = all before it), and the latents' features added at every transformer block's input,
    # not only at the embedding
    seq_word_dropout: float = 0.0
    seq_context: int = 0
    seq_cond_every_layer: bool = False
    # the yardstick of a latent-variable model with an autoregressive decoder: the same decoder with no latents
    # (only the decoder is built; it reads a constant zero state), trained and scored by the same code; its ELBO
    # and IW bound are then its exact log-likelihood
    decoder_only: bool = False
    # discrete latents (distributions.py, quantize.py): one type per level, bottom to top (null: all
    # gaussian). For categorical and vq levels latent_dims[l] counts groups G: a categorical latent is G
    # one-hot groups of categorical_classes (G*K channels), a vq latent G code vectors of vq.dim (G*E).
    latent_types: list[str] | None = None  # names in hvae.registry.LATENT_FAMILIES
    categorical_classes: int = 10
    gumbel: GumbelConfig = field(default_factory=lambda: GumbelConfig())
    straight_through: bool = False  # hard samples forward, relaxed gradients backward
    vq: VQConfig = field(default_factory=lambda: VQConfig())
    # sequences of token ids (B, T) (data/text.py): the padding id (padded positions never count in the
    # likelihood), and embed_dim > 0 for an encoder that embeds the ids (nets/temporal.py; block: mlp)
    pad_id: int | None = None
    embed_dim: int = 0

    RENAMED = _FLAT

    def __post_init__(self) -> None:
        # direct construction (ModelConfig(...)) is checked like from_dict: every field's type and literal
        coerce_fields(self)
        require(
            self.likelihood in LIKELIHOODS,
            f"likelihood: {self.likelihood!r} is not accepted; use one of {LIKELIHOODS.choices()}",
        )
        require(
            self.block in CELL_FAMILIES, f"block: {self.block!r} is not accepted; use one of {CELL_FAMILIES.choices()}"
        )
        for t in self.latent_types or ():
            require(
                t in LATENT_FAMILIES, f"latent_types: {t!r} is not accepted; use one of {LATENT_FAMILIES.choices()}"
            )
        L = len(self.latent_dims)
        require(L >= 1, "latent_dims: a hierarchy needs at least one latent layer, e.g. [32, 16]")
        require(
            len(self.hidden_dims) == L,
            f"hidden_dims: needs one width per latent layer ({L}), got {len(self.hidden_dims)}",
        )
        require(all(d > 0 for d in self.latent_dims), "latent_dims: every entry must be a positive integer")
        require(all(d > 0 for d in self.hidden_dims), "hidden_dims: every entry must be a positive integer")
        require(
            len(self.data_shape) in (1, 2, 3) and all(d > 0 for d in self.data_shape),
            f"data_shape: expected [D], [C, T] or [C, H, W] with positive sizes, got {self.data_shape}",
        )
        require(self.depth >= 0, f"depth: must be >= 0, got {self.depth}")
        require(self.min_scale > 0, f"min_scale: must be > 0, got {self.min_scale}")
        require(self.beta >= 0, f"beta: must be >= 0, got {self.beta}")
        require(self.kl_warmup_steps >= 0, f"kl_warmup_steps: must be >= 0, got {self.kl_warmup_steps}")
        require(self.free_bits >= 0, f"free_bits: must be >= 0 nats, got {self.free_bits}")
        require(
            self.bn_posterior_means >= 0,
            f"bn_posterior_means: the fixed scale gamma must be >= 0 (0 = off), got {self.bn_posterior_means}",
        )
        require(self.kl_cycles >= 0, f"kl_cycles: must be >= 0 (0 = no cyclical annealing), got {self.kl_cycles}")
        if self.kl_cycles:
            require(
                self.kl_cycle_steps >= 1,
                f"kl_cycle_steps: the length of a KL cycle must be >= 1 step with kl_cycles, got {self.kl_cycle_steps}",
            )
            require(0 < self.kl_cycle_ramp <= 1, f"kl_cycle_ramp: must be in (0, 1], got {self.kl_cycle_ramp}")
            require(
                self.kl_warmup_steps == 0,
                "kl_cycles and kl_warmup_steps are two KL schedules: set kl_warmup_steps: 0 (the cycles ramp up; "
                "train.kl_warmup_epochs / kl_warmup_fraction set it: set them to 0)",
            )
        if self.free_bits_levels:
            require(
                len(self.free_bits_levels) == L and all(f >= 0 for f in self.free_bits_levels),
                f"free_bits_levels: needs one minimum >= 0 nats per latent level ({L}), z_1 first, "
                f"got {self.free_bits_levels}: give {L} values, or [] for none",
            )
            require(
                self.free_bits_mode != "channel",
                "free_bits_levels: minima per level apply to a level's KL (free_bits_mode: layer) or to each "
                "example's (sequence), not per channel: set free_bits_mode: layer or sequence",
            )
        require(
            not (self.free_bits_mode == "sequence" and self.kl_balancing),
            "free_bits_mode: sequence floors the sum of the levels' KL, which KL balancing would reweight: "
            "set kl_balancing: false or free_bits_mode: layer",
        )
        require(self.num_mixtures >= 1, f"num_mixtures: must be >= 1, got {self.num_mixtures}")
        require(1 <= self.num_bits <= 16, f"num_bits: must be in 1..16, got {self.num_bits}")
        require(self.num_classes >= 2, f"num_classes: must be >= 2, got {self.num_classes}")
        require(
            self.likelihood_scale is None or self.likelihood_scale > 0,
            f"likelihood_scale: must be > 0 or null (learned), got {self.likelihood_scale}",
        )
        if self.block == "mlp":
            require(self.strides is None, "strides: only used by block: conv; remove it for block: mlp")
        elif self.block == "temporal":  # 1-D: sequences [C, T], each level coarser in time
            require(
                len(self.data_shape) == 2,
                f"data_shape: block: temporal needs sequences [C, T], got {self.data_shape}",
            )
            strides = self.strides if self.strides is not None else [2] * L
            require(
                len(strides) == L and all(s >= 1 and s & (s - 1) == 0 for s in strides),
                f"strides: needs one entry per latent layer ({L}), each a power of two (1, 2, 4, ...), got {strides}",
            )
            self.strides = list(strides)
        else:
            require(
                len(self.data_shape) == 3,
                f"data_shape: block: {self.block} needs images [C, H, W], got {self.data_shape}",
            )
            strides = self.strides if self.strides is not None else [2] * L
            if self.block == "conv":
                require(
                    len(strides) == L and all(s in (1, 2) for s in strides),
                    f"strides: needs one entry per latent layer ({L}), each 1 or 2, got {strides}",
                )
            else:  # nvae / vdvae: a level may cross several scales (e.g. NVAE's pre-processing, VDVAE's 4 -> 1)
                require(
                    len(strides) == L and all(s >= 1 and s & (s - 1) == 0 for s in strides),
                    f"strides: needs one entry per latent layer ({L}), each a power of two (1, 2, 4, ...), "
                    f"got {strides}",
                )
            total = 1
            for s in strides:
                total *= s
            _, H, W = self.data_shape
            # nvae / vdvae pad the images to a multiple of the total stride inside the model
            require(
                self.block != "conv" or (H % total == 0 and W % total == 0),
                f"strides: the image {H}x{W} must divide by the total downsampling {total}; "
                "pad the images or use fewer stride-2 layers",
            )
            self.strides = list(strides)
        require(
            self.block == "nvae" or self.nvae == NVAEConfig(),
            f"nvae: options of block: nvae (the model has block: {self.block}); remove the nvae section",
        )
        if self.nvae.flows:
            require(
                self.inference != "bottom_up" and all(t == "gaussian" for t in self.latent_types or ()),
                "nvae.flows: flows act on the Gaussian samples of a top-down posterior; use inference: top_down or "
                "ladder with Gaussian latents, or set nvae.flows: 0",
            )
        require(0 <= self.kl_warmup_floor <= 1, f"kl_warmup_floor: must be in [0, 1], got {self.kl_warmup_floor}")
        require(self.kl_const_steps >= 0, f"kl_const_steps: must be >= 0, got {self.kl_const_steps}")
        if self.residual_posterior:
            require(
                self.inference == "top_down",
                "residual_posterior: only defined for inference: top_down (NVAE); set it to false",
            )
        if self.likelihood == "discretized_logistic_mixture":
            require(
                len(self.data_shape) == 3,
                "likelihood: discretized_logistic_mixture models images [C, H, W]; use gaussian for vectors",
            )
        self._check_attention_and_decoder()
        self._check_vdvae()
        self._check_discrete()
        self._check_tokens()

    def _check_tokens(self) -> None:
        if self.pad_id is not None:
            require(
                0 <= self.pad_id < self.num_classes and self.likelihood == "categorical",
                f"pad_id: padding is a class of a categorical likelihood, in 0..num_classes-1 "
                f"({self.num_classes - 1}); got pad_id {self.pad_id} with likelihood {self.likelihood}",
            )
        require(self.embed_dim >= 0, f"embed_dim: must be >= 0 (0: no token embedding), got {self.embed_dim}")
        if self.embed_dim:
            require(
                self.block == "mlp" and len(self.data_shape) == 1 and self.likelihood == "categorical",
                "embed_dim: token ids (B, T) are embedded for block: mlp with data_shape [T] and likelihood "
                f"categorical; got block {self.block}, data_shape {self.data_shape}, likelihood {self.likelihood}",
            )

    def _check_attention_and_decoder(self) -> None:
        L = len(self.latent_dims)
        levels, heads = self.attention.levels, self.attention.heads
        require(
            all(0 <= l < L for l in levels) and len(set(levels)) == len(levels),
            f"attention.levels: distinct level indices in 0..{L - 1} (0 = z_1), got {levels}",
        )
        if levels:
            require(
                self.block != "mlp",
                "attention.levels: spatial attention needs a conv-type block (vectors have no positions); "
                "use attention.depth for block: mlp",
            )
            widths = {self.hidden_dims[l] for l in levels} | {self.hidden_dims[l + 1] for l in levels if l + 1 < L}
            require(
                all(w % heads == 0 for w in widths),
                f"attention.heads: {heads} must divide the widths of the attended cells "
                f"(hidden_dims at levels l and l+1: {sorted(widths)})",
            )
        if self.attention.depth:
            require(
                self.attention.depth_dim % heads == 0,
                f"attention.depth_dim: {self.attention.depth_dim} must divide into attention.heads ({heads})",
            )
        require(
            not self.decoder_only or self.decoder != "plain",
            "decoder_only: needs an autoregressive decoder (decoder: transformer, gru or pixelcnn); a plain decoder "
            "without latents predicts the same distribution for every example",
        )
        if self.decoder == "plain":
            return
        for name, value in [
            ("ar_cond_channels", self.ar_cond_channels),
            ("pixelcnn.layers", self.pixelcnn.layers),
            ("pixelcnn.channels", self.pixelcnn.channels),
            ("seq_layers", self.seq_layers),
            ("seq_width", self.seq_width),
        ]:
            require(value >= 1, f"{name}: must be >= 1, got {value}")
        C = self.data_shape[0] if len(self.data_shape) > 1 else 1
        if self.decoder == "pixelcnn":
            require(
                len(self.data_shape) == 3,
                f"decoder: pixelcnn models images [C, H, W], got data_shape {self.data_shape}; "
                "use transformer or gru for sequences",
            )
            require(
                self.likelihood in ("bernoulli", "categorical", "discretized_logistic_mixture"),
                f"likelihood: decoder: pixelcnn needs a discrete likelihood (bernoulli, categorical, "
                f"discretized_logistic_mixture), got {self.likelihood!r}",
            )
            require(
                self.pixelcnn.kernel >= 3 and self.pixelcnn.kernel % 2 == 1,
                f"pixelcnn.kernel: must be odd and >= 3, got {self.pixelcnn.kernel}",
            )
        else:
            require(
                self.likelihood in ("bernoulli", "categorical"),
                f"likelihood: decoder: {self.decoder} predicts tokens; use bernoulli or categorical, "
                f"got {self.likelihood!r}",
            )
            require(
                C == 1,
                f"decoder: {self.decoder} models one channel of tokens ([T], [1, T] or [1, H, W]), got {C} channels",
            )
            require(
                self.seq_heads >= 1 and self.seq_width % self.seq_heads == 0,
                f"seq_heads: {self.seq_heads} must divide seq_width ({self.seq_width})",
            )
            require(
                0 <= self.seq_word_dropout < 1,
                f"seq_word_dropout: the share of dropped input tokens must be in [0, 1), got {self.seq_word_dropout}",
            )
            require(self.seq_context >= 0, f"seq_context: must be >= 0 (0 = unlimited), got {self.seq_context}")
            require(
                self.seq_context == 0 or self.decoder == "transformer",
                "seq_context: a limited context needs decoder: transformer (a GRU's state carries everything)",
            )
            require(
                not self.seq_cond_every_layer or self.decoder == "transformer",
                "seq_cond_every_layer: needs decoder: transformer (a GRU reads the latents once, at its input)",
            )

    def _check_vdvae(self) -> None:
        v, L = self.vdvae, len(self.latent_dims)
        if not v.active():
            return
        require(
            self.block == "vdvae", f"vdvae: these options build VDVAE's levels; set block: vdvae (got {self.block})"
        )
        if v.encoder_depths is not None:
            require(
                len(v.encoder_depths) == L,
                f"vdvae.encoder_depths: needs one entry per latent layer ({L}), got {len(v.encoder_depths)}; "
                "give one per level, or null for model.depth blocks at every level",
            )
        if v.posterior_block:
            require(self.inference == "top_down", "vdvae.posterior_block: needs inference: top_down")
        if v.identity_state or v.prior_block or v.bias_maps:
            require(
                self.generative_skip and len(set(self.hidden_dims)) == 1,
                "vdvae.identity_state, prior_block and bias_maps add to a skip stream of one width: set "
                f"generative_skip: true and one width in hidden_dims (got {sorted(set(self.hidden_dims))})",
            )

    def _check_discrete(self) -> None:
        L = len(self.latent_dims)
        if self.latent_types is not None:
            require(
                len(self.latent_types) == L,
                f"latent_types: needs one type per latent layer ({L}, bottom to top), got {len(self.latent_types)}",
            )
        require(self.categorical_classes >= 2, f"categorical_classes: must be >= 2, got {self.categorical_classes}")

    def latent_type(self, index: int) -> str:
        """The latent type of level ``index`` (0 = z_1)."""
        return "gaussian" if self.latent_types is None else self.latent_types[index]

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)
