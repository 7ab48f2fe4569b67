"""The configuration of a run: model, data, training and evaluation sections, as one YAML file."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import ModelConfig
from .configbase import ConfigError, Serializable, apply_overrides, from_dict, load_yaml, merge, move_renamed, require
from .data import DataConfig, Dataset


@dataclass
class TrainConfig(Serializable):
    """How to train. Steps count optimizer updates (skipped updates included)."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps even mid-epoch
    # a wall-clock budget, as PyTorch Lightning's max_time: "15m", "2h", "1d12h", "DD:HH:MM:SS" or seconds;
    # counted from the start of hvae train (data, compilation included); training stops cleanly at it
    max_time: str | float | None = None
    batch_size: int = 128
    # under torchrun: "global" (the default) keeps batch_size examples per step, split evenly over the
    # ranks (it must divide by their number); "rank" gives every rank batch_size examples
    batch_size_per: Literal["global", "rank"] = "global"
    optimizer: Literal["adam", "adamw", "adamax"] = "adam"  # adamw: decoupled weight decay (VDVAE)
    lr: float = 1e-3
    lr_warmup_steps: int = 0  # linear warm-up of the learning rate from 0
    lr_decay: Literal["none", "cosine", "exponential"] = "none"
    lr_decay_rate: float = 1.0  # exponential: factor per epoch (the Ladder VAE paper anneals the lr)
    # cosine: final learning rate, reached at the last step (under train.max_time at the end of the budget,
    # the steps that fit in it estimated from the pace so far)
    lr_min: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; null disables clipping
    # VDVAE (Child 2021): skip an update whose gradient norm (before clipping) is above this; null: never
    skip_threshold: float | None = None
    # what grad_clip, skip_threshold and the logged grad_norm measure: the gradient of the loss per example
    # (hvae's loss) or per data dimension (the loss divided by the example's size before backward, as
    # VDVAE's vae.py divides distortion and rate by the number of dimensions: its 200 / 400 apply as published)
    grad_norm_per: Literal["example", "dim"] = "example"
    # optimiser settings (null: torch's defaults): Adam(W)'s beta2 (VDVAE: 0.9), eps (NVAE's Adamax: 1e-3)
    adam_beta2: float | None = None
    adam_eps: float | None = None
    # KL warm-up as fractions of the run's total steps (NVAE's utils.kl_coeff: kl_anneal_portion 0.3 after
    # kl_const_portion 1e-4 held at the floor model.kl_warmup_floor); sets model.kl_warmup_steps / kl_const_steps.
    # Under train.max_time: fractions of the steps that fit in the budget (estimated from the pace so far)
    kl_warmup_fraction: float | None = None
    kl_const_fraction: float = 0.0
    kl_warmup_epochs: float | None = None  # sets model.kl_warmup_steps from the epoch length
    ema_decay: float | None = None  # e.g. 0.999: evaluate and sample with an EMA of the weights
    log_every: int = 50  # steps between training-metric lines
    eval_every: int = 500  # steps between validation ELBOs (also at the end of every epoch)
    checkpoint_every: int = 500  # steps between checkpoints (also at the end of every epoch)
    # schedules in seconds of wall time instead: with eval_every_s set, validation (and its checkpoint) runs when
    # that many seconds have passed since the last one, not at every epoch's end nor every eval_every steps;
    # checkpoint_every_s likewise replaces checkpoint_every. The run's end always validates and checkpoints.
    eval_every_s: float | None = None
    checkpoint_every_s: float | None = None
    max_consecutive_skips: int = 100  # stop with an error after this many non-finite updates in a row
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun auto/cuda = cuda:LOCAL_RANK)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the networks; fp16 adds a grad scaler
    channels_last: bool = False  # conv models: NHWC memory layout (faster convolutions on recent GPUs)
    # torch.compile of the training step (hvae.compiled): auto compiles once the training left would take at
    # least compile_after_s seconds eagerly (timed over the first 20 steps; never otherwise) and keeps it only
    # where it is faster; always | never. Failures fall back to eager (logged).
    compile: Literal["auto", "always", "never"] | bool = "auto"  # true / false (older configs): always / never
    compile_after_s: float = 300.0
    # keep compiled graphs on disk for later runs of the same model shape ($TORCHINDUCTOR_CACHE_DIR, else
    # ~/.cache/hvae/inductor; hvae.compiled.compile_cache): a second run loads them instead of compiling
    compile_cache: bool = True
    dist_timeout: float = 1800.0  # seconds a rank waits for the others in a collective before failing
    # aggressive encoder updates early in training (He et al. 2019; hvae.aggressive): before each step the
    # inference network alone is updated until its loss stops falling (at most aggressive_inner_steps), then the
    # step updates the generative model; the phase ends when the mutual information I_q(x; z), measured every
    # aggressive_mi_every steps, stops rising
    aggressive_encoder: bool = False
    aggressive_inner_steps: int = 100
    aggressive_mi_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):
            self.compile = "always" if self.compile else "never"
        require(self.compile_after_s >= 0, f"train.compile_after_s: must be >= 0, got {self.compile_after_s}")
        for name in ("eval_every_s", "checkpoint_every_s"):
            v = getattr(self, name)
            require(v is None or v > 0, f"train.{name}: must be > 0 seconds or null, got {v}")
        require(self.epochs >= 1, f"train.epochs: must be >= 1, got {self.epochs}")
        require(self.max_steps is None or self.max_steps >= 1, "train.max_steps: must be >= 1 or null")
        if self.max_time is not None:
            parse_duration(self.max_time)  # a bad value is refused when the config is read, not at the budget
        require(self.batch_size >= 1, f"train.batch_size: must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"train.lr: must be > 0, got {self.lr}")
        require(0 < self.lr_decay_rate <= 1, f"train.lr_decay_rate: must be in (0, 1], got {self.lr_decay_rate}")
        require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip: must be > 0 or null")
        require(self.skip_threshold is None or self.skip_threshold > 0, "train.skip_threshold: must be > 0 or null")
        require(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            f"train.ema_decay: must be in (0, 1), got {self.ema_decay}",
        )
        for name in (
            "log_every", "eval_every", "checkpoint_every", "max_consecutive_skips", "aggressive_inner_steps",
            "aggressive_mi_every",
        ):  # fmt: skip
            require(getattr(self, name) >= 1, f"train.{name}: must be >= 1, got {getattr(self, name)}")
        require(
            self.kl_warmup_epochs is None or self.kl_warmup_epochs >= 0,
            f"train.kl_warmup_epochs: must be >= 0, got {self.kl_warmup_epochs}",
        )
        require(
            self.adam_beta2 is None or 0 <= self.adam_beta2 < 1,
            f"train.adam_beta2: must be in [0, 1), got {self.adam_beta2}",
        )
        require(self.adam_eps is None or self.adam_eps > 0, f"train.adam_eps: must be > 0, got {self.adam_eps}")
        require(
            self.kl_warmup_fraction is None or 0 <= self.kl_warmup_fraction <= 1,
            f"train.kl_warmup_fraction: a fraction of the run's steps in [0, 1], got {self.kl_warmup_fraction}",
        )
        require(
            0 <= self.kl_const_fraction < 1,
            f"train.kl_const_fraction: a fraction of the run's steps in [0, 1), got {self.kl_const_fraction}",
        )
        require(
            self.kl_warmup_fraction is None or self.kl_warmup_epochs is None,
            "train.kl_warmup_fraction and train.kl_warmup_epochs both set the KL warm-up; keep one",
        )
        require(self.dist_timeout > 0, f"train.dist_timeout: must be > 0 seconds, got {self.dist_timeout}")
        dev = self.device
        require(
            dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit()),
            f"train.device: {dev!r} is not accepted; use auto, cpu, cuda or cuda:N",
        )


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: str | float | int) -> float:
    """Seconds in a ``train.max_time``: a number of seconds, units ``15m``, ``2h``, ``1d12h``, ``90s``
    (days, hours, minutes, seconds, in that order), or Lightning's ``DD:HH:MM:SS`` (``00:12:00:00``)."""
    fix = 'give seconds (3600), units ("15m", "2h", "1d12h30m") or "DD:HH:MM:SS" ("00:12:00:00")'
    if isinstance(value, bool):
        raise ConfigError(f"train.max_time: {value!r} is not a duration; {fix}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = text.split(":")
        match = _DURATION.match(text)
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            d, h, m, s = (int(p) for p in parts)
            seconds = d * 86400.0 + h * 3600.0 + m * 60.0 + s
        elif text and match:
            seconds = sum(float(v) * u for v, u in zip(match.groups(), _UNITS.values()) if v is not None)
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ConfigError(f"train.max_time: {value!r} is not a duration; {fix}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"train.max_time: must be a positive, finite duration, got {value!r}; {fix}")
    return seconds


@dataclass
class EvalConfig(Serializable):
    """How ``hvae eval`` measures a model."""

    split: Literal["test", "val"] = "test"
    num_samples: int = 1000  # importance samples K of the IW bound
    chunk_size: int | None = None  # importance samples per top-down pass (memory bound); null = automatic
    batch_size: int = 100
    max_examples: int | None = None  # evaluate on the first N examples of the split only
    active_unit_threshold: float = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u]) > 0.01

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, f"eval.num_samples: must be >= 1, got {self.num_samples}")
        require(self.batch_size >= 1, f"eval.batch_size: must be >= 1, got {self.batch_size}")
        require(self.chunk_size is None or self.chunk_size >= 1, "eval.chunk_size: must be >= 1 or null")
        require(self.max_examples is None or self.max_examples >= 1, "eval.max_examples: must be >= 1 or null")


@dataclass
class RunConfig(Serializable):
    """Everything a run needs; ``config.yaml`` in a run directory holds the resolved version."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """Read a YAML run config, apply ``key.sub=value`` overrides and validate.

    Returns the config and the raw mapping (which says, e.g., whether ``model.data_shape`` was given).
    A ``model.preset: NAME`` entry starts the model section from a named preset.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; see configs/ for examples")
        try:
            raw = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping with sections model, data, train, eval")
    raw = apply_overrides(raw, list(overrides))
    for section, value in raw.items():
        if section in ("model", "data", "train", "eval") and value is not None and not isinstance(value, dict):
            where = f"{p}: " if path is not None else ""
            raise ConfigError(f"{where}{section} must be a section of key: value lines, got {value!r}")
    model = dict(raw.get("model") or {})
    if "preset" in model:
        from . import presets

        name = model.pop("preset")
        try:
            base = presets.get(name).to_dict()
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        # section by section, the old flat keys first moved to theirs: a preset's sections keep the keys not given
        model = merge(base, move_renamed(ModelConfig, model, "model."))
    return from_dict(RunConfig, {**raw, "model": model}), raw


def global_batch_size(tc, world_size: int) -> int:
    """Examples per optimizer step over all ranks; with ``batch_size_per: global`` it must split evenly."""
    if tc.batch_size_per == "rank":
        return tc.batch_size * world_size
    if tc.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: {tc.batch_size} does not divide by the {world_size} ranks; choose a multiple of "
            f"{world_size}, or set train.batch_size_per=rank to give every rank batch_size examples"
        )
    return tc.batch_size


def resolve_config(cfg: RunConfig, raw: dict[str, Any], dataset: Dataset, batch_size: int | None = None) -> RunConfig:
    """Fill what the data decide: ``model.data_shape`` (when not given) and the KL warm-up in steps
    (``batch_size``: the global batch, default ``train.batch_size``)."""
    model_raw = raw.get("model") or {}
    model = cfg.model
    shape = list(dataset.shape)
    if list(model.data_shape) != shape:
        if "data_shape" in model_raw:
            raise ConfigError(
                f"model.data_shape is {list(model.data_shape)} but the data have examples of shape {shape}; "
                f"set model.data_shape={shape} (or data.flatten to match an MLP model)"
            )
        model = model.replace(data_shape=shape)
    if cfg.data.dequantize and model.likelihood != "gaussian":
        # dequantised pixels are continuous: only a density scores them (its bound in the discrete space is
        # the density's plus the Jacobian); the other likelihoods score the discrete values themselves
        raise ConfigError(
            f"data.dequantize: true makes the data continuous, but likelihood {model.likelihood} scores discrete "
            "values; set data.dequantize: false (or likelihood: gaussian)"
        )
    levels = dataset.levels
    if model.likelihood == "discretized_logistic_mixture" and cfg.data.binarize == "none" and levels is not None:
        if levels != 2**model.num_bits:  # the bins would not sit on the data's values
            bits = math.log2(levels)
            fix = (
                f"set model.num_bits={int(bits)}"
                if bits.is_integer()
                else f"use likelihood: categorical with num_classes: {levels}"
            )
            raise ConfigError(
                f"the data have {levels} levels but model.num_bits={model.num_bits} gives {2**model.num_bits} "
                f"bins, which would not sit on the data's values; {fix}"
            )
    tokenizer = getattr(dataset, "tokenizer", None)
    if tokenizer is not None:  # token ids: the classes and the padding id are the tokeniser's
        if model.likelihood != "categorical":
            raise ConfigError(
                f"data.source {cfg.data.source} gives token ids, which need a categorical sequence model, not "
                f"likelihood {model.likelihood}; start from configs/text_fortunes.yaml (model.preset: text_fortunes)"
            )
        wanted = {"num_classes": tokenizer.vocab_size, "pad_id": tokenizer.pad_id}
        for key, value in wanted.items():
            if getattr(model, key) != value and key in model_raw:
                raise ConfigError(
                    f"model.{key} is {getattr(model, key)} but the {cfg.data.tokenizer} tokenizer has "
                    f"{key} {value}; remove model.{key} (it is set from the data) or set it to {value}"
                )
        model = model.replace(**wanted)
    if cfg.train.kl_warmup_epochs is not None:
        batches = dataset.num_batches("train", batch_size or cfg.train.batch_size)
        steps = int(round(cfg.train.kl_warmup_epochs * batches))
        if "kl_warmup_steps" in model_raw and model.kl_warmup_steps not in (0, steps):
            raise ConfigError("set either train.kl_warmup_epochs or model.kl_warmup_steps, not both")
        model = model.replace(kl_warmup_steps=steps)
    tc = cfg.train
    if tc.kl_warmup_fraction is not None:  # NVAE's: fractions of the run's total steps
        per_epoch = dataset.num_batches("train", batch_size or tc.batch_size)
        total = tc.epochs * per_epoch if tc.max_steps is None else min(tc.max_steps, tc.epochs * per_epoch)
        model = model.replace(
            kl_warmup_steps=int(round(tc.kl_warmup_fraction * total)),
            kl_const_steps=int(round(tc.kl_const_fraction * total)),
        )
    return RunConfig(model=model, data=cfg.data, train=cfg.train, eval=cfg.eval)


# data settings that change how the data are read, not what they are
_DATA_IO_KEYS = {"in_memory", "memory_budget_gb"}


def check_compatible(saved: RunConfig, now: RunConfig) -> None:
    """Refuse a resume whose model or data settings differ from the run's (``saved``)."""
    for section in ("model", "data"):
        a, b = getattr(saved, section).to_dict(), getattr(now, section).to_dict()
        diff = sorted(
            k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (section == "data" and k in _DATA_IO_KEYS)
        )
        if diff:
            raise ConfigError(
                f"cannot resume: {section} settings differ from the run's "
                f"({', '.join(section + '.' + k for k in diff)}); only train.* and eval.* may change on resume"
            )
