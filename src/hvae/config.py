"""Typed, validated configuration objects and their YAML/JSON round trip.

Every config is a dataclass. Configs are validated where they enter (``from_dict``, ``__post_init__``):
an unknown key or a bad value raises :class:`ConfigError` naming the key and what is accepted. Past
that point the code trusts them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .registry import LATENT_FAMILIES, LIKELIHOODS


class ConfigError(ValueError):
    """A configuration key is unknown or its value is not accepted."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lossless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        hint = "; YAML reads yes/no/on/off as true/false: quote the word" if isinstance(value, bool) else ""
        raise ConfigError(f"{key}: {value!r} is not accepted; use one of {_type_name(tp)}{hint}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not accepted; expected {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a plain mapping, rejecting unknown keys and ill-typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + u for u in unknown)}; "
            f"valid keys are: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(prefix + str(e)) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-safe mapping of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


class _Loader(yaml.SafeLoader):
    """YAML as configs mean it: ``1e-3`` and ``5e+4`` are numbers (YAML 1.1, PyYAML's default, reads a float
    without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way hvae reads configs and overrides (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``key.sub=value`` command-line override; the value is read as YAML (``3``, ``[1,2]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write it as key.sub=value")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (validation happens in ``from_dict``)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


class _Serializable:
    """Mixin: JSON/YAML round trip for config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path):
        text = text_or_path
        if isinstance(text_or_path, Path) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml"))
        ):
            text = Path(text_or_path).read_text()
        data = load_yaml(text) or {}
        return cls.from_dict(data)

    def replace(self, **changes):
        """A validated copy with some fields changed."""
        return self.from_dict({**self.to_dict(), **changes})


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


Inference = Literal["ladder", "top_down", "bottom_up"]
Block = Literal["mlp", "conv", "nvae", "vdvae", "temporal"]
Likelihood = str  # a name in hvae.registry.LIKELIHOODS (checked in ModelConfig.__post_init__)
Activation = Literal["leaky_relu", "relu", "elu", "swish", "gelu", "tanh", "identity"]


@dataclass
class ModelConfig(_Serializable):
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
    kl_balancing: bool = False  # NVAE's KL balancing while beta < 1
    # BN-VAE (Zhu et al. 2020): the posterior means of Gaussian levels batch-normalised to a fixed scale gamma (a
    # learned shift per channel), which keeps each level's batch-averaged KL above a floor; 0 disables
    bn_posterior_means: float = 0.0
    # NVAE's spectral regularisation: + lambda * sum of the largest singular values of every conv / linear
    # weight (training loss only); lambda anneals log-linearly from spectral_reg_init to spectral_reg over
    # spectral_reg_warmup_steps (0: constant)
    spectral_reg: float = 0.0
    spectral_reg_init: float = 10.0
    spectral_reg_warmup_steps: int = 0
    # power iterations per training step and at the first (NVAE's model.py spectral_norm_parallel: 4 and 40);
    # which weights the penalty covers ("conv": NVAE's all_conv_layers; "all": also linear layers); and NVAE's
    # batch-norm penalty, sum over batch norms of max |gamma| (model.py batchnorm_loss), at the same lambda
    spectral_iterations: int = 1
    spectral_seed_iterations: int = 20
    spectral_over: Literal["all", "conv"] = "all"
    bn_scale_penalty: bool = False
    # the deterministic top-down state s_l = act(W_z z + W_h h): "activation" (the config's) or "linear"
    # (NVAE's combiner, a 1x1 conv of cat(s, z); VDVAE's x + z_proj(z))
    state_activation: Literal["activation", "linear"] = "activation"
    # the cell family's initialisation as its official code does it (nets/vdvae.py official_init: the prior
    # head zero, W_z and the blocks' last convolutions scaled by sqrt(1 / levels))
    official_init: bool = False
    checkpointing: bool = False  # recompute activations per level in the backward pass (saves memory)
    # attention (nets/attention.py): spatial self-attention after the bottom-up cell and the prior cell
    # of these levels (conv-type blocks; 0 = z_1), and depth-wise attention across levels (DAVI)
    attention_levels: list[int] = field(default_factory=list)
    attention_heads: int = 4
    depth_attention: bool = False
    depth_attention_dim: int = 64  # common width of the depth-attention keys and values
    # autoregressive observation model p(x | z_1) = prod_i p(x_i | x_<i, z_1) (nets/autoregressive.py);
    # the decoder then emits ar_cond_channels conditioning features per position
    decoder: Literal["plain", "pixelcnn", "transformer", "gru"] = "plain"
    ar_cond_channels: int = 16
    pixelcnn_layers: int = 4
    pixelcnn_channels: int = 64
    pixelcnn_kernel: int = 5  # odd; with pixelcnn_layers it sets the receptive field
    seq_layers: int = 2  # transformer / gru
    seq_width: int = 128
    seq_heads: int = 4  # transformer
    # keeping a strong sequence decoder from ignoring the latents (Bowman et al. 2016): the share of input
    # tokens replaced by a dropped-token symbol while training, and the positions a transformer attends to
    # (a sliding window; 0 = all before it)
    seq_word_dropout: float = 0.0
    seq_context: int = 0
    # discrete latents (distributions.py, quantize.py): one type per level, bottom to top (null: all
    # gaussian). For categorical and vq levels latent_dims[l] counts groups G: a categorical latent is G
    # one-hot groups of categorical_classes (G*K channels), a vq latent G code vectors of vq_dim (G*E).
    latent_types: list[str] | None = None  # names in hvae.registry.LATENT_FAMILIES
    categorical_classes: int = 10
    # Gumbel-softmax / Concrete relaxation temperature while training: geometric from
    # gumbel_temperature_start to gumbel_temperature over gumbel_anneal_steps (0: constant)
    gumbel_temperature: float = 0.5
    gumbel_temperature_start: float = 1.0
    gumbel_anneal_steps: int = 0
    straight_through: bool = False  # hard samples forward, relaxed gradients backward
    vq_codes: int = 512  # K codes per vq codebook
    vq_dim: int = 16  # E, the dimension of a code
    vq_decay: float = 0.99  # EMA decay of the codebook statistics
    vq_commitment: float = 0.25  # beta of the commitment loss beta ||e - sg(c)||^2
    vq_dead_threshold: float = 0.01  # restart a code used less than this fraction of the uniform share 1/K
    vq_top_prior: Literal["learned", "uniform"] = "learned"
    # sequences of token ids (B, T) (data/text.py): the padding id (padded positions never count in the
    # likelihood), and embed_dim > 0 for an encoder that embeds the ids (nets/temporal.py; block: mlp)
    pad_id: int | None = None
    embed_dim: int = 0

    def __post_init__(self) -> None:
        # direct construction (ModelConfig(...)) is checked like from_dict: every field's type and literal
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name))
        _require(
            self.likelihood in LIKELIHOODS,
            f"likelihood: {self.likelihood!r} is not accepted; use one of {LIKELIHOODS.choices()}",
        )
        for t in self.latent_types or ():
            _require(
                t in LATENT_FAMILIES, f"latent_types: {t!r} is not accepted; use one of {LATENT_FAMILIES.choices()}"
            )
        L = len(self.latent_dims)
        _require(L >= 1, "latent_dims: a hierarchy needs at least one latent layer, e.g. [32, 16]")
        _require(
            len(self.hidden_dims) == L,
            f"hidden_dims: needs one width per latent layer ({L}), got {len(self.hidden_dims)}",
        )
        _require(all(d > 0 for d in self.latent_dims), "latent_dims: every entry must be a positive integer")
        _require(all(d > 0 for d in self.hidden_dims), "hidden_dims: every entry must be a positive integer")
        _require(
            len(self.data_shape) in (1, 2, 3) and all(d > 0 for d in self.data_shape),
            f"data_shape: expected [D], [C, T] or [C, H, W] with positive sizes, got {self.data_shape}",
        )
        _require(self.depth >= 0, f"depth: must be >= 0, got {self.depth}")
        _require(self.min_scale > 0, f"min_scale: must be > 0, got {self.min_scale}")
        _require(self.beta >= 0, f"beta: must be >= 0, got {self.beta}")
        _require(self.kl_warmup_steps >= 0, f"kl_warmup_steps: must be >= 0, got {self.kl_warmup_steps}")
        _require(self.free_bits >= 0, f"free_bits: must be >= 0 nats, got {self.free_bits}")
        _require(
            self.bn_posterior_means >= 0,
            f"bn_posterior_means: the fixed scale gamma must be >= 0 (0 = off), got {self.bn_posterior_means}",
        )
        _require(self.kl_cycles >= 0, f"kl_cycles: must be >= 0 (0 = no cyclical annealing), got {self.kl_cycles}")
        if self.kl_cycles:
            _require(
                self.kl_cycle_steps >= 1,
                f"kl_cycle_steps: the length of a KL cycle must be >= 1 step with kl_cycles, got {self.kl_cycle_steps}",
            )
            _require(0 < self.kl_cycle_ramp <= 1, f"kl_cycle_ramp: must be in (0, 1], got {self.kl_cycle_ramp}")
            _require(
                self.kl_warmup_steps == 0,
                "kl_cycles and kl_warmup_steps are two KL schedules: set kl_warmup_steps: 0 (the cycles ramp up; "
                "train.kl_warmup_epochs / kl_warmup_fraction set it: set them to 0)",
            )
        _require(
            not (self.free_bits_mode == "sequence" and self.kl_balancing),
            "free_bits_mode: sequence floors the sum of the levels' KL, which KL balancing would reweight: "
            "set kl_balancing: false or free_bits_mode: layer",
        )
        _require(self.num_mixtures >= 1, f"num_mixtures: must be >= 1, got {self.num_mixtures}")
        _require(1 <= self.num_bits <= 16, f"num_bits: must be in 1..16, got {self.num_bits}")
        _require(self.num_classes >= 2, f"num_classes: must be >= 2, got {self.num_classes}")
        _require(
            self.likelihood_scale is None or self.likelihood_scale > 0,
            f"likelihood_scale: must be > 0 or null (learned), got {self.likelihood_scale}",
        )
        if self.block == "mlp":
            _require(self.strides is None, "strides: only used by block: conv; remove it for block: mlp")
        elif self.block == "temporal":  # 1-D: sequences [C, T], each level coarser in time
            _require(
                len(self.data_shape) == 2,
                f"data_shape: block: temporal needs sequences [C, T], got {self.data_shape}",
            )
            strides = self.strides if self.strides is not None else [2] * L
            _require(
                len(strides) == L and all(s >= 1 and s & (s - 1) == 0 for s in strides),
                f"strides: needs one entry per latent layer ({L}), each a power of two (1, 2, 4, ...), got {strides}",
            )
            self.strides = list(strides)
        else:
            _require(
                len(self.data_shape) == 3,
                f"data_shape: block: {self.block} needs images [C, H, W], got {self.data_shape}",
            )
            strides = self.strides if self.strides is not None else [2] * L
            if self.block == "conv":
                _require(
                    len(strides) == L and all(s in (1, 2) for s in strides),
                    f"strides: needs one entry per latent layer ({L}), each 1 or 2, got {strides}",
                )
            else:  # nvae / vdvae: a level may cross several scales (e.g. NVAE's pre-processing, VDVAE's 4 -> 1)
                _require(
                    len(strides) == L and all(s >= 1 and s & (s - 1) == 0 for s in strides),
                    f"strides: needs one entry per latent layer ({L}), each a power of two (1, 2, 4, ...), "
                    f"got {strides}",
                )
            total = 1
            for s in strides:
                total *= s
            _, H, W = self.data_shape
            # nvae / vdvae pad the images to a multiple of the total stride inside the model
            _require(
                self.block != "conv" or (H % total == 0 and W % total == 0),
                f"strides: the image {H}x{W} must divide by the total downsampling {total}; "
                "pad the images or use fewer stride-2 layers",
            )
            self.strides = list(strides)
        _require(0 <= self.kl_warmup_floor <= 1, f"kl_warmup_floor: must be in [0, 1], got {self.kl_warmup_floor}")
        _require(self.kl_const_steps >= 0, f"kl_const_steps: must be >= 0, got {self.kl_const_steps}")
        for name in ("spectral_iterations", "spectral_seed_iterations"):
            _require(getattr(self, name) >= 1, f"{name}: must be >= 1, got {getattr(self, name)}")
        _require(self.spectral_reg >= 0, f"spectral_reg: must be >= 0, got {self.spectral_reg}")
        _require(self.spectral_reg_init >= 0, f"spectral_reg_init: must be >= 0, got {self.spectral_reg_init}")
        _require(
            self.spectral_reg_warmup_steps >= 0,
            f"spectral_reg_warmup_steps: must be >= 0, got {self.spectral_reg_warmup_steps}",
        )
        if self.residual_posterior:
            _require(
                self.inference == "top_down",
                "residual_posterior: only defined for inference: top_down (NVAE); set it to false",
            )
        if self.likelihood == "discretized_logistic_mixture":
            _require(
                len(self.data_shape) == 3,
                "likelihood: discretized_logistic_mixture models images [C, H, W]; use gaussian for vectors",
            )
        self._check_attention_and_decoder()
        self._check_discrete()
        self._check_tokens()

    def _check_tokens(self) -> None:
        if self.pad_id is not None:
            _require(
                0 <= self.pad_id < self.num_classes and self.likelihood == "categorical",
                f"pad_id: padding is a class of a categorical likelihood, in 0..num_classes-1 "
                f"({self.num_classes - 1}); got pad_id {self.pad_id} with likelihood {self.likelihood}",
            )
        _require(self.embed_dim >= 0, f"embed_dim: must be >= 0 (0: no token embedding), got {self.embed_dim}")
        if self.embed_dim:
            _require(
                self.block == "mlp" and len(self.data_shape) == 1 and self.likelihood == "categorical",
                "embed_dim: token ids (B, T) are embedded for block: mlp with data_shape [T] and likelihood "
                f"categorical; got block {self.block}, data_shape {self.data_shape}, likelihood {self.likelihood}",
            )

    def _check_attention_and_decoder(self) -> None:
        L = len(self.latent_dims)
        levels = self.attention_levels
        _require(self.attention_heads >= 1, f"attention_heads: must be >= 1, got {self.attention_heads}")
        _require(
            all(0 <= l < L for l in levels) and len(set(levels)) == len(levels),
            f"attention_levels: distinct level indices in 0..{L - 1} (0 = z_1), got {levels}",
        )
        if levels:
            _require(
                self.block != "mlp",
                "attention_levels: spatial attention needs a conv-type block (vectors have no positions); "
                "use depth_attention for block: mlp",
            )
            widths = {self.hidden_dims[l] for l in levels} | {self.hidden_dims[l + 1] for l in levels if l + 1 < L}
            _require(
                all(w % self.attention_heads == 0 for w in widths),
                f"attention_heads: {self.attention_heads} must divide the widths of the attended cells "
                f"(hidden_dims at levels l and l+1: {sorted(widths)})",
            )
        if self.depth_attention:
            _require(
                self.depth_attention_dim % self.attention_heads == 0,
                f"depth_attention_dim: {self.depth_attention_dim} must divide into attention_heads "
                f"({self.attention_heads})",
            )
        if self.decoder == "plain":
            return
        for name in ("ar_cond_channels", "pixelcnn_layers", "pixelcnn_channels", "seq_layers", "seq_width"):
            _require(getattr(self, name) >= 1, f"{name}: must be >= 1, got {getattr(self, name)}")
        C = self.data_shape[0] if len(self.data_shape) > 1 else 1
        if self.decoder == "pixelcnn":
            _require(
                len(self.data_shape) == 3,
                f"decoder: pixelcnn models images [C, H, W], got data_shape {self.data_shape}; "
                "use transformer or gru for sequences",
            )
            _require(
                self.likelihood in ("bernoulli", "categorical", "discretized_logistic_mixture"),
                f"likelihood: decoder: pixelcnn needs a discrete likelihood (bernoulli, categorical, "
                f"discretized_logistic_mixture), got {self.likelihood!r}",
            )
            _require(
                self.pixelcnn_kernel >= 3 and self.pixelcnn_kernel % 2 == 1,
                f"pixelcnn_kernel: must be odd and >= 3, got {self.pixelcnn_kernel}",
            )
        else:
            _require(
                self.likelihood in ("bernoulli", "categorical"),
                f"likelihood: decoder: {self.decoder} predicts tokens; use bernoulli or categorical, "
                f"got {self.likelihood!r}",
            )
            _require(
                C == 1,
                f"decoder: {self.decoder} models one channel of tokens ([T], [1, T] or [1, H, W]), got {C} channels",
            )
            _require(
                self.seq_heads >= 1 and self.seq_width % self.seq_heads == 0,
                f"seq_heads: {self.seq_heads} must divide seq_width ({self.seq_width})",
            )
            _require(
                0 <= self.seq_word_dropout < 1,
                f"seq_word_dropout: the share of dropped input tokens must be in [0, 1), got {self.seq_word_dropout}",
            )
            _require(self.seq_context >= 0, f"seq_context: must be >= 0 (0 = unlimited), got {self.seq_context}")
            _require(
                self.seq_context == 0 or self.decoder == "transformer",
                "seq_context: a limited context needs decoder: transformer (a GRU's state carries everything)",
            )

    def _check_discrete(self) -> None:
        L = len(self.latent_dims)
        if self.latent_types is not None:
            _require(
                len(self.latent_types) == L,
                f"latent_types: needs one type per latent layer ({L}, bottom to top), got {len(self.latent_types)}",
            )
        _require(self.categorical_classes >= 2, f"categorical_classes: must be >= 2, got {self.categorical_classes}")
        for name in ("gumbel_temperature", "gumbel_temperature_start"):
            _require(getattr(self, name) > 0, f"{name}: must be > 0, got {getattr(self, name)}")
        _require(self.gumbel_anneal_steps >= 0, f"gumbel_anneal_steps: must be >= 0, got {self.gumbel_anneal_steps}")
        _require(self.vq_codes >= 2, f"vq_codes: must be >= 2, got {self.vq_codes}")
        _require(self.vq_dim >= 1, f"vq_dim: must be >= 1, got {self.vq_dim}")
        _require(0 < self.vq_decay < 1, f"vq_decay: must be in (0, 1), got {self.vq_decay}")
        _require(self.vq_commitment >= 0, f"vq_commitment: must be >= 0, got {self.vq_commitment}")
        _require(0 <= self.vq_dead_threshold < 1, f"vq_dead_threshold: must be in [0, 1), got {self.vq_dead_threshold}")

    def latent_type(self, index: int) -> str:
        """The latent type of level ``index`` (0 = z_1)."""
        return "gaussian" if self.latent_types is None else self.latent_types[index]

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)
