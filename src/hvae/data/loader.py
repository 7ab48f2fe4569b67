"""DataConfig, and the Dataset it loads: deterministic splits and preprocessed batches.

A split that fits in memory is one tensor (uint8 codes for 8-bit data, converted to float32 per batch; float32
otherwise) and a batch is a gather of it by index; a larger ``.npy`` array is memory-mapped and an image
folder read lazily, a batch then reading only its own rows. Either way a batch is preprocessed as a whole
(binarized or dequantized) with a generator seeded from ``(seed, epoch, batch index)``, so the stream of
batches depends only on the config and the epoch, not on where the data lives, and a run resumed at
``start_batch`` sees the same data.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hvae.config import _require, _Serializable
from hvae.data import sources, transforms
from hvae.data.sources import DataError, LazyRows

__all__ = ["DataConfig", "DataError", "Dataset", "LazyRows", "Split", "load_dataset"]

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "val", "test")
STREAMABLE = ("npy", "images")


@dataclass
class DataConfig(_Serializable):
    """Where the data comes from and how it is preprocessed.

    * ``source``: ``digits`` (scikit-learn's bundled 8x8 digits), ``fashion_mnist`` / ``mnist`` (a folder of
      IDX files), ``npz`` / ``npy`` (an array file), ``images`` (a folder of PNG/JPEG), ``csv`` (a table).
    * ``binarize``: ``dynamic`` resamples the training binarization every epoch and binarizes val/test once
      with a fixed seed; ``static`` binarizes every split once. Numbers from the two are not comparable.
    * ``dequantize``: x = (k + u) / levels, u ~ U[0, 1), for discrete data; see
      :func:`hvae.data.dequantization_log_jacobian` for the log-Jacobian to count.
    * ``standardize``: subtract the train split's mean, divide by its std (for tabular data).
    * ``val_fraction`` is carved from train; ``test_fraction`` only for sources without their own test split.
    * ``max_examples`` caps each split at this many examples (fast runs).
    * ``in_memory``: ``always`` loads the data into memory; ``never`` streams it from disk (``npy``: a memory
      map, rows gathered per batch; ``images``: files decoded per batch); ``auto`` streams ``npy`` and
      ``images`` sources whose data would take more than ``memory_budget_gb`` in memory (1 byte per 8-bit
      value, 4 per float). Other sources are always loaded. Batches are the same either way.
    """

    source: Literal["digits", "fashion_mnist", "mnist", "npz", "npy", "images", "csv"] = "digits"
    path: str | None = None  # folder (IDX, images) or file (npz, npy, csv)
    key: str | None = None  # npz: array name (default 'x' if present, else the first)
    image_size: list[int] | None = None  # images: [H, W], resize shorter side then center-crop
    channels: int | None = None  # images: 1 (grey) or 3 (RGB); default that of the first image
    flatten: bool = False  # (C, H, W) -> (C*H*W,) for MLP models
    binarize: Literal["none", "dynamic", "static"] = "none"
    dequantize: bool = False
    standardize: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_examples: int | None = None
    seed: int = 0
    in_memory: Literal["auto", "always", "never"] = "auto"
    memory_budget_gb: float = 4.0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            _require(0 <= v < 1, f"{name}: must be in [0, 1), got {v}")
        _require(
            self.val_fraction + self.test_fraction < 1,
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{self.val_fraction} + {self.test_fraction}; lower one of them",
        )
        if self.image_size is not None:
            _require(
                len(self.image_size) == 2 and all(s > 0 for s in self.image_size),
                f"image_size: expected two positive integers [H, W], got {self.image_size}",
            )
            self.image_size = list(self.image_size)
        _require(self.channels in (None, 1, 3), f"channels: use 1 (grey) or 3 (RGB), got {self.channels}")
        for name in ("image_size", "channels"):
            _require(
                getattr(self, name) is None or self.source == "images",
                f"{name}: only used by source: images; remove it for source: {self.source}",
            )
        _require(
            self.key is None or self.source == "npz", f"key: only used by source: npz; remove it for {self.source}"
        )
        _require(
            self.max_examples is None or self.max_examples > 0,
            f"max_examples: must be a positive integer or null, got {self.max_examples}",
        )
        _require(
            self.memory_budget_gb > 0, f"memory_budget_gb: must be a positive number, got {self.memory_budget_gb}"
        )
        _require(
            self.in_memory != "never" or self.source in STREAMABLE,
            f"in_memory: never streams only sources {' and '.join(STREAMABLE)}, not {self.source}; "
            "set in_memory: auto, or save the data as a .npy file and use source: npy",
        )
        _require(
            not (self.dequantize and self.binarize != "none"),
            "dequantize and binarize exclude each other; set dequantize: false or binarize: none",
        )
        _require(
            not (self.standardize and (self.dequantize or self.binarize != "none")),
            "standardize works on continuous values; set binarize: none and dequantize: false, or standardize: false",
        )


@dataclass
class Split:
    """One split in memory: ``x`` (N, *shape) float32 raw scaled values (before binarize/dequantize;
    after standardize and flatten), ``labels`` (N,) int64 or None."""

    name: str
    x: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)


class Dataset:
    """Train, val and test splits plus the preprocessing that turns them into batches.

    ``shape`` is one example's shape (``(64,)`` flattened, ``(1, 8, 8)`` otherwise); ``levels`` the number of
    discrete intensity levels (None for continuous data); ``mean``/``std`` the train statistics when
    ``config.standardize`` is set (else None).
    """

    def __init__(
        self,
        train: Split,
        val: Split,
        test: Split,
        levels: int | None,
        config: DataConfig,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        self.train, self.val, self.test = train, val, test
        self.levels = levels
        self.config = config
        self.mean, self.std = mean, std
        self.shape: tuple[int, ...] = tuple(train.x.shape[1:])
        self._eval: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return f"Dataset({self.config.source}, shape={self.shape}, levels={self.levels}, {sizes})"

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def _per_batch_noise(self, split: str) -> bool:
        # Only training data is resampled per batch; evaluation always sees one fixed draw.
        return split == "train" and (self.config.binarize == "dynamic" or self.config.dequantize)

    def _preprocess(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.config.binarize != "none":
            return transforms.binarize(x, gen)
        if self.config.dequantize:
            return transforms.dequantize(x, self.levels, gen)
        return x

    def eval_tensor(self, split: str) -> torch.Tensor:
        """The whole split (N, *shape), preprocessed once with a generator seeded from (seed, split name).

        This fixed binarization / dequantization noise is what evaluation uses (and what static binarization
        trains on). Cached; treat it as read-only.
        """
        if split not in self._eval:
            x = self.split(split).x
            self._eval[split] = self._preprocess(x, transforms.generator(self.config.seed, "fixed", split))
        return self._eval[split]

    def num_batches(self, split: str, batch_size: int, drop_last: bool | None = None) -> int:
        """Batches per pass over ``split``; drop_last defaults True for train, False otherwise."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self.split(split))
        drop_last = split == "train" if drop_last is None else drop_last
        if drop_last and 0 < n < batch_size:
            raise DataError(
                f"split {split} has {n} examples, fewer than one batch of {batch_size}; lower the batch size"
            )
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        epoch: int = 0,
        shuffle: bool | None = None,
        start_batch: int = 0,
        drop_last: bool | None = None,
        device=None,
    ) -> Iterator[torch.Tensor]:
        """Yield preprocessed float32 batches (B, *shape) of ``split`` on ``device``.

        Order (when shuffled; default for train only) depends on (seed, split, epoch); training noise
        (dynamic binarization, dequantization) on (seed, epoch, batch index). ``start_batch`` skips the
        first batches without computing them, for exact resume.
        """
        shuffle = split == "train" if shuffle is None else shuffle
        n_batches = self.num_batches(split, batch_size, drop_last)
        noisy = self._per_batch_noise(split)
        source = self.split(split).x if noisy else self.eval_tensor(split)
        order = None
        if shuffle:
            order = torch.randperm(len(source), generator=transforms.generator(self.config.seed, "order", split, epoch))
        for b in range(start_batch, n_batches):
            lo, hi = b * batch_size, min((b + 1) * batch_size, len(source))
            # index_select / clone: a batch never aliases the stored split, so callers may modify it.
            batch = source.index_select(0, order[lo:hi]) if order is not None else source[lo:hi].clone()
            if noisy:
                batch = self._preprocess(batch, transforms.generator(self.config.seed, "batch", epoch, b))
            yield batch if device is None else batch.to(device)


def _read(config: DataConfig) -> sources.RawData:
    src, path = config.source, config.path
    if src == "digits":
        return sources.read_digits()
    if src == "fashion_mnist":
        return sources.read_idx_folder(path or FASHION_MNIST_PATH)
    if path is None:
        what = "folder of IDX files" if src == "mnist" else "image folder" if src == "images" else f".{src} file"
        raise DataError(f"source {src} needs data.path: set it to the {what}")
    if src == "mnist":
        return sources.read_idx_folder(path)
    if src == "npz":
        return sources.read_npz(path, config.key)
    if src == "npy":
        return sources.read_npy(path)
    if src == "csv":
        return sources.read_csv(path)
    return sources.read_images(path, config.image_size, config.channels)


def _check_values(x: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(len(x), -1).any(dim=1).nonzero().flatten()
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise DataError(
            f"{where}: {n_nan} NaN and {n_inf} inf values in {len(rows)} examples (first: example {int(rows[0])}); "
            "clean or drop those examples"
        )


def _count(n: int, fraction: float) -> int:
    # A nonzero fraction always gets at least one example, so a requested split is never silently empty.
    return 0 if fraction == 0 else max(1, round(n * fraction))


def load_dataset(config: DataConfig) -> Dataset:
    """Read ``config.source`` and split it deterministically (torch permutation seeded from config.seed)."""
    raw = _read(config)
    where = f"source {config.source}" + (f" ({config.path})" if config.path else "")
    if len(raw.x) == 0:
        raise DataError(f"{where}: 0 examples loaded; check data.path")
    _check_values(raw.x, where)
    if raw.test_x is not None:
        _check_values(raw.test_x, where + " test split")

    n = len(raw.x)
    n_val = _count(n, config.val_fraction)
    n_test = 0 if raw.test_x is not None else _count(n, config.test_fraction)
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} examples leave none for training after val/test; lower the fractions")
    perm = torch.randperm(n, generator=transforms.generator(config.seed, "split"))
    index = {"train": perm[n_val + n_test :], "val": perm[:n_val], "test": perm[n_val : n_val + n_test]}
    splits = {}
    for name, idx in index.items():
        x, y = raw.x[idx], None if raw.labels is None else raw.labels[idx]
        if name == "test" and raw.test_x is not None:
            x, y = raw.test_x, raw.test_labels
        if config.max_examples is not None:
            x, y = x[: config.max_examples], None if y is None else y[: config.max_examples]
        if config.flatten:
            x = x.reshape(len(x), -1)  # (N, C, H, W) -> (N, C*H*W)
        splits[name] = Split(name, x.contiguous(), y)

    mean = std = None
    if config.standardize:
        mean, std = transforms.standardization_stats(splits["train"].x)
        for s in splits.values():
            s.x = transforms.standardize(s.x, mean, std)
    if config.binarize != "none":
        lo = min(float(s.x.min()) for s in splits.values() if len(s))
        hi = max(float(s.x.max()) for s in splits.values() if len(s))
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: binarize needs values in [0, 1], found [{lo:g}, {hi:g}]; set binarize: none")
    if config.dequantize and raw.levels is None:
        raise DataError(f"{where}: dequantize needs discrete data (uint8 or digits); set dequantize: false")
    return Dataset(splits["train"], splits["val"], splits["test"], raw.levels, config, mean, std)
