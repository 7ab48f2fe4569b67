"""DataConfig, and the Dataset it loads: deterministic splits and preprocessed batches.

A split that fits in memory is one tensor (uint8 codes for 8-bit data, converted to float32 per batch; float32
otherwise) and a batch is a gather of it by index; a larger ``.npy`` array is memory-mapped and an image
folder read lazily, a batch then reading only its own rows. Either way a training batch is binarized or
dequantized with uniforms from a counter-based generator keyed by ``(seed, epoch, batch index)``, each row at
its own place in the stream, so the stream of batches depends only on the config and the epoch, not on where
the data lives nor on how many processes share a batch (each reads and preprocesses only its rows), and a
run resumed at ``start_batch`` sees the same data.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch

from hvae.configbase import Serializable, require
from hvae.data import sources, text, transforms
from hvae.data.sources import SOURCES, DataError, LazyRows

__all__ = ["DataConfig", "DataError", "Dataset", "LazyRows", "Split", "load_dataset", "split_paths"]

FASHION_MNIST_PATH = sources.FashionMNIST.default_path
SPLITS = ("train", "val", "test")
# names of predefined split files or folders inside data.path (PTB: ptb.valid.txt; WikiText: wiki.valid.tokens)
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class DataConfig(Serializable):
    """Where the data comes from and how it is preprocessed.

    * ``source``: ``digits`` (scikit-learn's bundled 8x8 digits), ``fashion_mnist`` / ``mnist`` (a folder of
      IDX files), ``cifar10``, ``npz`` / ``npy`` (an array file), ``images`` (a folder of PNG/JPEG), ``csv`` (a
      table), ``text`` / ``fortunes``, ``audio``; or any source registered in :data:`hvae.data.sources.SOURCES`.
    * ``binarize``: ``dynamic`` resamples the training binarization every epoch and binarizes val/test once
      with a fixed seed; ``static`` binarizes every split once. Numbers from the two are not comparable.
    * ``dequantize``: x = (k + u) / levels, u ~ U[0, 1), for discrete data; see
      :func:`hvae.data.dequantization_log_jacobian` for the log-Jacobian to count.
    * ``standardize``: subtract the train split's mean, divide by its std (for tabular data).
    * ``val_fraction`` is carved from train; ``test_fraction`` only for sources without their own test split.
    * Predefined splits: ``train_path`` / ``val_path`` / ``test_path``, or files or folders named ``train`` /
      ``val`` (or ``valid``) / ``test`` inside a ``path`` folder (``train.npy``, ``train.csv``, ``train.txt``,
      image or audio folders ``train/``); each read as ``source`` reads ``path``. A split not given is carved
      from train by its fraction. :attr:`Dataset.splits_from` says where each split came from.
    * ``max_examples`` caps each split at this many examples (fast runs).
    * ``in_memory``: ``always`` loads the data into memory; ``never`` streams it from disk (``npy``: a memory
      map, rows gathered per batch; ``images``: files decoded per batch); ``auto`` streams ``npy`` and
      ``images`` sources whose data would take more than ``memory_budget_gb`` in memory (1 byte per 8-bit
      value, 4 per float). Other sources are always loaded. Batches are the same either way.

    Text (``source: text`` — a .txt file or folder — or ``fortunes``; see :mod:`hvae.data.text`): examples are
    rows of ``max_length`` int64 token ids (end-of-sequence, then padding) from the ``tokenizer``
    (``byte`` | ``char`` | ``bpe``); ``text_unit`` ``line`` (one example per line or fortune) or ``window``
    (fixed windows of ``max_length`` characters over the stream); ``too_long`` examples are truncated or
    skipped, ``text_errors`` says what non-UTF-8 text does (error | replace | skip); with ``dedupe`` (the
    default for text) a ``line`` example equal to an earlier one after whitespace is normalised is dropped
    before the split, so no text lands on both sides of it; all counted and printed.
    Every text batch is trimmed of the padding all its rows share, (B, T') with T' <= ``max_length``; with
    ``length_buckets`` the shuffled training batches group examples of similar length (pools of 50 batches
    sorted by length, the batches shuffled), so a batch costs about the tokens it holds.

    Audio (``source: audio``, a folder of WAV / FLAC / OGG; see :mod:`hvae.data.audio`): mixed to mono
    (``multichannel: mix``; ``error`` refuses), resampled to ``sample_rate`` (``resample: false`` refuses other
    rates), cropped or padded to ``duration`` seconds; ``audio_features`` ``mulaw`` (1, T) 8-bit codes for a
    categorical likelihood, or ``logmel`` (n_mels, frames) for a Gaussian one; unreadable files raise or are
    skipped and counted (``audio_errors``).
    """

    source: str = "digits"  # a name in hvae.data.sources.SOURCES
    path: str | None = None  # folder (IDX, images) or file (npz, npy, csv)
    train_path: str | None = None  # predefined splits, each read as source reads path
    val_path: str | None = None
    test_path: str | None = None
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
    # text
    tokenizer: Literal["byte", "char", "bpe"] = "byte"
    max_length: int = 128  # tokens per example, end-of-sequence included
    text_unit: Literal["line", "window"] = "line"
    too_long: Literal["truncate", "skip"] = "truncate"
    text_errors: Literal["error", "replace", "skip"] = "error"
    bpe_vocab_size: int = 1000
    length_buckets: bool = True  # text: shuffled training batches hold examples of similar length
    dedupe: bool | None = None  # text: drop repeated examples before splitting (null: on for text sources)
    # audio
    sample_rate: int = 8000
    duration: float = 1.0  # seconds per example (cropped or zero-padded)
    audio_features: Literal["mulaw", "logmel"] = "mulaw"
    n_mels: int = 32
    n_fft: int = 256
    hop_length: int = 128
    multichannel: Literal["mix", "error"] = "mix"
    resample: bool = True
    audio_errors: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        require(self.source in SOURCES, f"source: {self.source!r} is not accepted; use one of {SOURCES.choices()}")
        for name in ("path", "train_path", "val_path", "test_path"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.expanduser(str(getattr(self, name))))  # ~/data as a shell would read it
        require(
            (self.val_path is None and self.test_path is None) or self.path is not None or self.train_path is not None,
            "val_path / test_path: set data.train_path (or data.path) to the training data too",
        )
        kind = SOURCES[self.source]()
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            require(0 <= v < 1, f"{name}: must be in [0, 1), got {v}")
        require(
            self.val_fraction + self.test_fraction < 1,
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{self.val_fraction} + {self.test_fraction}; lower one of them",
        )
        if self.image_size is not None:
            require(
                len(self.image_size) == 2 and all(s > 0 for s in self.image_size),
                f"image_size: expected two positive integers [H, W], got {self.image_size}",
            )
            self.image_size = list(self.image_size)
        require(self.channels in (None, 1, 3), f"channels: use 1 (grey) or 3 (RGB), got {self.channels}")
        for name in ("image_size", "channels"):
            require(
                getattr(self, name) is None or self.source == "images",
                f"{name}: only used by source: images; remove it for source: {self.source}",
            )
        require(self.key is None or self.source == "npz", f"key: only used by source: npz; remove it for {self.source}")
        require(
            self.max_examples is None or self.max_examples > 0,
            f"max_examples: must be a positive integer or null, got {self.max_examples}",
        )
        require(self.memory_budget_gb > 0, f"memory_budget_gb: must be a positive number, got {self.memory_budget_gb}")
        streamable = [name for name in SOURCES if SOURCES[name].streamable]
        require(
            self.in_memory != "never" or kind.streamable,
            f"in_memory: never streams only sources {' and '.join(streamable)}, not {self.source}; "
            "set in_memory: auto, or save the data as a .npy file and use source: npy",
        )
        require(
            not (self.dequantize and self.binarize != "none"),
            "dequantize and binarize exclude each other; set dequantize: false or binarize: none",
        )
        require(self.max_length >= 2, f"max_length: must be >= 2 tokens, got {self.max_length}")
        require(
            self.bpe_vocab_size >= 260, f"bpe_vocab_size: must be >= 260 (256 bytes + 2), got {self.bpe_vocab_size}"
        )
        require(self.sample_rate > 0 and self.duration > 0, "sample_rate and duration: must be positive")
        require(self.n_mels >= 1 and self.hop_length >= 1, "n_mels and hop_length: must be >= 1")
        require(self.n_fft >= 16, f"n_fft: must be >= 16, got {self.n_fft}")
        require(
            self.dedupe is not True or kind.modality == "text",
            f"dedupe: only text sources deduplicate; remove it for source: {self.source}",
        )
        if kind.modality in ("text", "audio"):
            require(
                self.binarize == "none" and not self.dequantize and not self.standardize and not self.flatten,
                f"source {self.source}: binarize, dequantize, standardize and flatten do not apply; remove them",
            )
        require(
            not (self.standardize and (self.dequantize or self.binarize != "none")),
            "standardize works on continuous values; set binarize: none and dequantize: false, or standardize: false",
        )


@dataclass
class Split:
    """One split: ``data`` holds its examples (N, *shape) as stored; :attr:`x` and :meth:`rows` give float32 values.

    ``data`` is either a tensor in memory -- uint8 codes k when ``scale`` is set (values ``k / scale``, one byte
    per value; 8-bit images and arrays, digits), float32 values otherwise -- or :class:`LazyRows` read from
    disk per batch (:attr:`streamed`). Values are the raw scaled ones (before binarize/dequantize; after
    standardize and flatten): a streamed split applies ``mean``/``std`` as it reads, one in memory holds the
    standardized values. ``labels``: (N,) int64 or None.
    """

    name: str
    data: torch.Tensor | LazyRows
    labels: torch.Tensor | None = None
    scale: float | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape."""
        return tuple(self.data.shape[1:])

    @property
    def streamed(self) -> bool:
        """True when the examples stay on disk and each batch reads its own rows."""
        return isinstance(self.data, LazyRows)

    @property
    def nbytes(self) -> int:
        """Bytes of examples held in memory: N * D for uint8 codes, 4 * N * D for floats, 0 when streamed."""
        return 0 if isinstance(self.data, LazyRows) else self.data.numel() * self.data.element_size()

    def _values(self, raw: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            raw = raw.to(torch.float32).div_(self.scale)  # the same k / scale, bit for bit, as a float source
        if self.mean is not None and self.std is not None:  # (set together)
            raw = transforms.standardize(raw, self.mean, self.std)
        return raw

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Float32 values (B, *shape) of the examples at positions ``index`` (B,); a new tensor, never a view."""
        if isinstance(self.data, torch.Tensor):
            return self._values(self.data.index_select(0, index))
        return self._values(self.data.take(index))

    def chunks(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """Float32 values of consecutive blocks of ``rows`` examples, in order (default: about 64 MiB each)."""
        rows = rows or self._chunk_rows()
        for lo in range(0, len(self), rows):
            yield self.rows(torch.arange(lo, min(lo + rows, len(self))))

    def _chunk_rows(self) -> int:
        return max(1, sources.CHUNK_BYTES // (4 * max(1, math.prod(self.shape))))

    @property
    def x(self) -> torch.Tensor:
        """All values (N, *shape), float32.

        For float data in memory this is the stored tensor itself (treat it as read-only); otherwise a new
        tensor on every access -- for a streamed split, the whole split read from disk into memory.
        """
        if isinstance(self.data, torch.Tensor):
            return self._values(self.data)
        blocks = list(self.chunks())
        return torch.cat(blocks) if blocks else torch.empty((0, *self.shape), dtype=torch.float32)

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        self.data, self.scale, self.mean, self.std = value, None, None, None


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
        self.shape: tuple[int, ...] = train.shape
        self._eval: dict[str, torch.Tensor] = {}
        self.tokenizer: text.Tokenizer | None = None  # text sources: the tokeniser of the token ids (hvae.data.text)
        self.notes: list[str] = []
        # the source's own test set (Fashion-MNIST's t10k, say): its fixed noise does not depend on data.seed,
        # so that runs with different seeds are measured on the same binarised test images
        self.official_test = False
        # where each split came from, e.g. {"train": "<path> less the val split", "val": "10% of <path>",
        # "test": "<path>/test.npy"}: what the trainer prints
        self.splits_from: dict[str, str] = {}
        self._fixed: dict[str, Split] = {}
        self._row_lengths: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        where = ", streamed" if self.train.streamed else ""
        return f"Dataset({self.config.source}, shape={self.shape}, levels={self.levels}, {sizes}{where})"

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def _noise(self) -> bool:
        return self.config.binarize != "none" or self.config.dequantize

    def _per_batch_noise(self, split: str) -> bool:
        # Only training data is resampled per batch; evaluation always sees one fixed draw.
        return split == "train" and (self.config.binarize == "dynamic" or self.config.dequantize)

    def _preprocess(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.config.binarize != "none":
            return transforms.binarize(x, gen)
        if self.config.dequantize:
            # discrete data: load_dataset refuses dequantize where levels is None
            return transforms.dequantize(x, cast(int, self.levels), gen)
        return x

    def _fixed_generator(self, split: str) -> torch.Generator:
        seed = 0 if split == "test" and self.official_test else self.config.seed
        return transforms.generator(seed, "fixed", split)

    def eval_tensor(self, split: str) -> torch.Tensor:
        """The whole split (N, *shape), preprocessed once with a generator seeded from (seed, split name); a
        source's own test set takes seed 0 whatever ``data.seed``.

        This fixed binarization / dequantization noise is what evaluation uses (and what static binarization
        trains on). Cached; treat it as read-only. It is held in memory as float32 (4 bytes per value), also
        for a streamed split, which it reads whole: to evaluate a split too large for that, cap it with
        ``max_examples`` or iterate :meth:`eval_batches`, which yields the same values chunk by chunk.
        """
        if split not in self._eval:
            s = self.split(split)
            if s.streamed:
                blocks = list(self.eval_batches(split, s._chunk_rows()))
                t = torch.cat(blocks) if blocks else torch.empty((0, *s.shape), dtype=torch.float32)
            else:
                t = self._preprocess(s.x, self._fixed_generator(split))
            self._eval[split] = t
        return self._eval[split]

    def eval_batches(self, split: str, batch_size: int, *, device=None) -> Iterator[torch.Tensor]:
        """Yield :meth:`eval_tensor`'s values in order, ``batch_size`` examples at a time, without holding the split.

        The fixed evaluation noise is drawn from one generator chunk after chunk, so the concatenated batches
        equal ``eval_tensor(split)`` bit for bit (whatever the batch size). Each batch is a new tensor.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split in self._eval:
            for t in self._eval[split].split(batch_size):
                yield t.clone() if device is None else t.to(device, copy=True)
            return
        s = self.split(split)
        gen = self._fixed_generator(split)
        for x in s.chunks(batch_size):
            x = self._preprocess(x, gen)
            yield x if device is None else x.to(device)

    def _fixed_split(self, name: str) -> Split:
        """The split as non-noisy batches see it: raw values, or its fixed preprocessing (see eval_tensor)."""
        s = self.split(name)
        if not self._noise():
            return s
        if not s.streamed:
            return Split(name, self.eval_tensor(name))
        if name not in self._fixed:
            self._fixed[name] = self._fixed_copy(s)
        return self._fixed[name]

    def _fixed_copy(self, s: Split) -> Split:
        # Shuffled batches of a fixed preprocessing need random access to it, so a streamed split's is written
        # once, chunk by chunk: binarized values as uint8 (1 byte each), dequantized ones as float32; in memory
        # within the budget, else in an anonymous temporary file that is memory-mapped.
        binary = self.config.binarize != "none"
        np_dtype, dtype = (np.uint8, torch.uint8) if binary else (np.float32, torch.float32)
        n, shape = len(s), s.shape
        nbytes = n * math.prod(shape) * dtype.itemsize
        in_memory = n == 0 or (self.config.in_memory != "never" and nbytes <= self.config.memory_budget_gb * 2**30)
        if in_memory:
            store = np.empty((n, *shape), dtype=np_dtype)
        else:
            # removed when closed; the map keeps it open as long as the split lives (so no `with`)
            file = tempfile.TemporaryFile(prefix="hvae-fixed-")  # noqa: SIM115
            store = np.memmap(file, dtype=np_dtype, mode="w+", shape=(n, *shape))
        lo = 0
        for x in self.eval_batches(s.name, s._chunk_rows()):
            store[lo : lo + len(x)] = x.numpy().astype(np_dtype)
            lo += len(x)
        if in_memory:
            data: torch.Tensor | LazyRows = torch.from_numpy(store)
        else:
            cast(np.memmap, store).flush()  # (a memmap when not in memory)
            data = LazyRows(lambda rows: np.asarray(store[rows]), np.arange(n), shape, dtype)
        return Split(s.name, data, s.labels, scale=1.0 if binary else None)

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
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[torch.Tensor]:
        """Yield preprocessed float32 batches (B, *shape) of ``split`` on ``device``.

        Order (when shuffled; default for train only) depends on (seed, split, epoch); training noise
        (dynamic binarization, dequantization) on (seed, epoch, batch index), each row at its own place in the
        batch's stream (see :meth:`_noisy_rows`). ``part=(r, N)`` yields only rows ``[r*B/N, (r+1)*B/N)`` of
        every batch (rank r's share under torchrun, ``B // N`` rows each), read and preprocessed alone: the
        values are those rows of the whole batch, bit for bit, and the other rows are never touched (token rows
        are trimmed to the whole batch's width). ``start_batch`` skips the first batches without computing
        them, for exact resume. A batch is a new tensor (never a view of the stored split), gathered by index
        from memory or, for a streamed split, read from disk; the values are the same either way. Static
        binarization of a streamed split writes its one fixed binarization once (1 byte per value; to a
        temporary file beyond ``memory_budget_gb``) on first use.
        """
        shuffle = split == "train" if shuffle is None else shuffle
        n_batches = self.num_batches(split, batch_size, drop_last)
        noisy = self._per_batch_noise(split)
        source = self.split(split) if noisy else self._fixed_split(split)
        order = None
        pad = self.tokenizer.pad_id if self.tokenizer is not None else None
        if shuffle:
            gen = transforms.generator(self.config.seed, "order", split, epoch)
            if pad is not None and self.config.length_buckets:
                order = text.bucket_order(self._lengths(split), batch_size, gen)
            else:
                order = torch.randperm(len(source), generator=gen)
        r, n_parts = part
        if not 0 <= r < n_parts:
            raise ValueError(f"part: rank {r} of {n_parts} does not exist; use 0 <= r < N")
        for b in range(start_batch, n_batches):
            lo, hi = b * batch_size, min((b + 1) * batch_size, len(source))
            rows = order[lo:hi] if order is not None else torch.arange(lo, hi)
            per = len(rows) // n_parts  # as distributed.shard cuts the whole batch
            mine = rows[r * per : (r + 1) * per] if n_parts > 1 else rows
            batch = source.rows(mine)
            if noisy:
                batch = self._noisy_rows(batch, epoch, b, first=r * per if n_parts > 1 else 0)
            if pad is not None:
                width = int(self._lengths(split)[rows].max()) if n_parts > 1 and len(rows) else None
                batch = text.trim_batch(batch, pad) if width is None else batch[:, : max(1, width)]
            yield batch if device is None else batch.to(device)

    def _noisy_rows(self, x: torch.Tensor, epoch: int, b: int, first: int) -> torch.Tensor:
        """Training noise of rows ``first, first+1, ...`` of batch ``b`` (x: (rows, *shape), float32 values).

        The batch's uniforms u come from a counter-based generator (numpy's Philox) keyed by (seed, epoch, b):
        value j of row i is draw ``i * D + j`` of its stream (D values a row), and skipping to row ``first`` is
        one counter jump, so any range of rows gets the values of those rows of the whole batch without
        drawing the others'. Binarized: 1 where u < x (Bernoulli(x)); dequantized: (k + u) / levels."""
        d = math.prod(x.shape[1:])
        bits = np.random.Philox(key=transforms.derive_seed(self.config.seed, "batch", epoch, b))
        skip = first * d
        bits.advance(skip // 8)  # a Philox block holds 4 x 64 bits: 8 float32 draws
        gen = np.random.Generator(bits)
        gen.random(skip % 8, dtype=np.float32)
        u = gen.random(x.numel(), dtype=np.float32).reshape(x.shape)  # [0, 1), 24-bit steps
        # the elementwise work is numpy's, which starts no threads: on a CPU the batch is made between two
        # training steps, whose thread pool would otherwise take the cores for these small operations too
        if self.config.binarize != "none":
            xn = x.numpy()
            return torch.from_numpy(np.less(u, xn).astype(xn.dtype))
        levels = cast(int, self.levels)  # dequantize: load_dataset refuses it where levels is None
        return (torch.round(x * (levels - 1)) + torch.from_numpy(u)) / levels  # as transforms.dequantize

    def _lengths(self, split: str) -> torch.Tensor:
        """Token rows: each example's length without its padding (N,), computed once per split."""
        if self.tokenizer is None:
            raise ValueError(f"row lengths are for token rows; source {self.config.source} has no tokeniser")
        if split not in self._row_lengths:
            rows = cast(torch.Tensor, self.split(split).data)  # token rows are held in memory
            self._row_lengths[split] = text.row_lengths(rows, self.tokenizer.pad_id)
        return self._row_lengths[split]


def _train_rows(config: DataConfig, n: int, carve_val: bool = True, carve_test: bool = True) -> torch.Tensor:
    """The rows of n examples that :func:`load_dataset` puts in the training split (vocabularies use only those);
    ``carve_val`` / ``carve_test``: whether those splits are drawn from these examples."""
    perm = torch.randperm(n, generator=transforms.generator(config.seed, "split"))
    n_held = _count(n, config.val_fraction) * carve_val + _count(n, config.test_fraction) * carve_test
    return perm[n_held:][: config.max_examples]


def split_paths(config: DataConfig) -> dict[str, Path]:
    """The predefined splits of ``config``: ``{"train": path, "val": path, "test": path}`` for those given by
    ``data.train_path`` / ``val_path`` / ``test_path`` or found by name inside a ``data.path`` folder (see
    :data:`SPLIT_NAMES`; files with the source's ``split_suffixes``, or sub-folders); ``train`` is ``data.path``
    itself when only held-out splits are given. Empty when there are none."""
    source = SOURCES[config.source]
    found: dict[str, Path] = {}
    base = Path(config.path) if config.path else None
    if base is not None and source.split_suffixes and base.is_dir():
        entries = sorted(base.iterdir())
        for split, names in SPLIT_NAMES.items():
            hits = [
                p
                for p in entries
                if any(
                    p.name == n + suf or p.name.endswith(f".{n}{suf}") for n in names for suf in source.split_suffixes
                )
                and (p.is_dir() if "" in source.split_suffixes else p.is_file())
            ]
            if len(hits) > 1:
                raise DataError(
                    f"{base}: several {split} splits ({', '.join(p.name for p in hits)}); keep one, or set "
                    f"data.{split}_path"
                )
            if hits:
                found[split] = hits[0]
        if found and "train" not in found:
            raise DataError(
                f"{base} holds {' and '.join(found)} split(s) but no train split; add one named train, or set "
                "data.train_path"
            )
    for split in SPLITS:
        given = getattr(config, f"{split}_path")
        if given is not None:
            found[split] = Path(given)
    if found and "train" not in found:
        found["train"] = cast(Path, base)  # DataConfig asks for data.path or data.train_path with held-out splits
    for split, p in found.items():
        if not p.exists():
            key = f"data.{split}_path" if getattr(config, f"{split}_path") else "data.path"
            raise DataError(f"{key} {p} does not exist; give an existing file or folder")
    return found


def _read(config: DataConfig) -> tuple[sources.RawData, dict[str, Path]]:
    """The source's raw data (with ``val_x`` / ``test_x`` for predefined splits) and the split paths read."""
    source = SOURCES[config.source]()
    paths = split_paths(config)
    if not paths and config.path is None and source.path_hint:
        raise DataError(f"source {config.source} needs data.path: set it to the {source.path_hint}")

    def train_rows(n: int) -> torch.Tensor:
        return _train_rows(config, n, "val" not in paths, "test" not in paths)

    raw = source.read_splits(config, paths, train_rows) if paths else source.read(config, train_rows)
    return raw, paths


def _blocks(x: torch.Tensor | LazyRows | Split) -> Iterable[torch.Tensor]:
    if isinstance(x, Split):
        return x.chunks() if x.streamed else [x.x]
    return x.chunks() if isinstance(x, LazyRows) else [x]


def _check_values(x: torch.Tensor | LazyRows, where: str) -> None:
    # Float data only (uint8 codes are finite); an array on disk is checked block by block, at load time.
    if x.dtype != torch.float32:
        return
    n_nan = n_inf = n_rows = offset = 0
    first = None
    for block in _blocks(x):
        bad = ~torch.isfinite(block)
        if bad.any():
            rows = bad.reshape(len(block), -1).any(dim=1).nonzero().flatten()
            first = offset + int(rows[0]) if first is None else first
            n_rows += len(rows)
            n_nan, n_inf = n_nan + int(torch.isnan(block).sum()), n_inf + int(torch.isinf(block).sum())
        offset += len(block)
    if n_rows:
        raise DataError(
            f"{where}: {n_nan} NaN and {n_inf} inf values in {n_rows} examples (first: example {first}); "
            "clean or drop those examples"
        )


def _count(n: int, fraction: float) -> int:
    # A nonzero fraction always gets at least one example, so a requested split is never silently empty.
    return 0 if fraction == 0 else max(1, round(n * fraction))


def load_dataset(config: DataConfig) -> Dataset:
    """Read ``config.source`` and split it deterministically (torch permutation seeded from config.seed).

    ``npy`` and ``images`` sources larger than ``config.memory_budget_gb`` (or all of them with
    ``in_memory: never``) stay on disk; the splits are then views of the file that batches read from.
    """
    raw, paths = _read(config)
    origin = str(paths.get("train") or config.path or SOURCES[config.source].default_path or config.source)
    where = f"source {config.source} ({origin})" if paths or config.path else f"source {config.source}"
    if len(raw.x) == 0:
        raise DataError(f"{where}: 0 examples loaded; check data.path")
    if config.dequantize and raw.levels is None:
        raise DataError(f"{where}: dequantize needs discrete data (uint8 or digits); set dequantize: false")
    _check_values(raw.x, where)
    for name in ("val", "test"):
        if getattr(raw, f"{name}_x") is not None:
            _check_values(getattr(raw, f"{name}_x"), f"{paths.get(name, where)} ({name} split)")

    n = len(raw.x)
    n_val = 0 if raw.val_x is not None else _count(n, config.val_fraction)
    n_test = 0 if raw.test_x is not None else _count(n, config.test_fraction)
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} examples leave none for training after val/test; lower the fractions")
    perm = torch.randperm(n, generator=transforms.generator(config.seed, "split"))
    index = {"train": perm[n_val + n_test :], "val": perm[:n_val], "test": perm[n_val : n_val + n_test]}
    cap = config.max_examples
    splits = {}
    for name, idx in index.items():
        given = getattr(raw, f"{name}_x", None) if name != "train" else None
        if given is not None:
            x, y = given, getattr(raw, f"{name}_labels")
            if cap is not None and len(x) > cap:  # copies: a capped view would keep the whole array alive
                x = x[:cap].clone() if isinstance(x, torch.Tensor) else x[:cap]
                y = None if y is None else y[:cap].clone()
        else:
            idx = idx[:cap]
            x, y = raw.x[idx], None if raw.labels is None else raw.labels[idx]
        if config.flatten:
            # (N, C, H, W) -> (N, C*H*W); flatten(1) also handles an empty split
            x = x.flatten(1) if isinstance(x, torch.Tensor) else x.reshape(len(x), -1)
        splits[name] = Split(name, x.contiguous(), y, scale=raw.scale)
    levels, official_test = raw.levels, raw.test_x is not None
    splits_from = _splits_from(config, paths, origin, raw.val_x is not None, raw.test_x is not None)
    tokenizer, notes = getattr(raw, "tokenizer", None), list(getattr(raw, "notes", []))  # text sources only
    del raw  # the splits are copies (or views of the file): drop the full array before standardizing

    mean = std = None
    if config.standardize:
        train = splits["train"]
        mean, std = transforms.standardization_stats(
            train.chunks(transforms.STATS_CHUNK_ROWS) if train.streamed else train.x
        )
        for s in splits.values():
            if s.streamed:
                s.mean, s.std = mean, std
            else:
                s.x = transforms.standardize(s.x, mean, std)
    if config.binarize != "none":
        lo, hi = math.inf, -math.inf
        for s in splits.values():
            if s.scale is None:  # codes k / scale lie in [0, 1] already
                for block in _blocks(s):
                    if len(block):
                        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        if lo < 0 or hi > 1:
            fix = (
                "they look like 0..255 pixel values: divide them by 255, or save them as uint8 (read as k / 255)"
                if lo >= 0 and hi <= 255
                else "scale them into [0, 1]"
            )  # binarize: none would only move the error to a Bernoulli likelihood, which needs 0/1 values
            raise DataError(f"{where}: binarize needs values in [0, 1], found [{lo:g}, {hi:g}]; {fix}")
    dataset = Dataset(splits["train"], splits["val"], splits["test"], levels, config, mean, std)
    dataset.tokenizer, dataset.notes = tokenizer, notes  # text: the tokeniser; what reading skipped or fixed
    dataset.official_test = official_test
    dataset.splits_from = splits_from
    return dataset


def _splits_from(config: DataConfig, paths: dict[str, Path], origin: str, has_val: bool, has_test: bool) -> dict:
    """Where each split came from, for the run's printout: a path, or "10% of <path>" for a carved one."""
    out, carved = {}, []
    for name, fraction, given in (("val", config.val_fraction, has_val), ("test", config.test_fraction, has_test)):
        if name in paths:
            out[name] = str(paths[name])
        elif given:
            out[name] = f"{origin} (the source's own {name} files)"
        elif fraction:
            out[name] = f"{fraction:.0%} of {origin}"
            carved.append(name)
        else:
            out[name] = "none"
    return {"train": f"{origin} less the {' and '.join(carved)} split" if carved else origin, **out}
