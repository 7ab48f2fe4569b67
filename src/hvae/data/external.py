"""Other data, read and preprocessed as a trained run reads its own test split.

``hvae eval --data``, out-of-distribution scoring, compression and ``sample --from-data`` all ask the same
question: "these files, as this run's model sees data". :func:`load_like` answers it for every source hvae
reads, with the run's own rules (scale, binarisation, dequantisation, standardisation with the training
statistics, flattening, tokeniser, image size and channels), and checks the result against the model's shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import numpy as np
import torch

from hvae.data import sources, transforms
from hvae.data.sources import SOURCES, DataError, RawData, modality

__all__ = ["load_like", "infer_source"]

_SUFFIX_SOURCES = {".npy": "npy", ".npz": "npz", ".csv": "csv", ".tsv": "csv", ".txt": "text"}


def _is_idx_file(p: Path) -> bool:
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return "idx" in name and name.endswith("-ubyte")


def infer_source(path: str | Path, run_source: str | None = None) -> str:
    """The hvae source that reads ``path``: by suffix for a file (``.npy``, ``.npz``, ``.csv``, ``.txt``, an
    image, an IDX ``*-ubyte[.gz]`` file), by content for a folder (the run's own text or audio source, IDX
    files, else images)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() in _SUFFIX_SOURCES:
            return _SUFFIX_SOURCES[p.suffix.lower()]
        if p.suffix.lower() in sources._IMAGE_SUFFIXES:
            return "image"
        if _is_idx_file(p):
            return "idx"
        if run_source is not None and modality(run_source) == "text":
            return "text"
        raise DataError(
            f"{p}: cannot tell the format from the name; pass source= (npy, npz, csv, text, images, idx, mnist)"
        )
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder; give the data file or folder to read")
    if run_source is not None and modality(run_source) in ("text", "audio"):
        return run_source
    if any(_is_idx_file(f) for f in p.iterdir()):
        return "mnist"
    return "images"


def _read(config, path: Path, source: str) -> RawData:
    """Raw examples of ``path`` as ``source``: a registered source (a folder of IDX files gives its test
    (t10k) files), or one IDX file (``idx``) or image file (``image``)."""
    if source == "idx":
        a = sources.read_idx(path)
        if a.dtype != np.uint8 or a.ndim != 3:
            raise DataError(f"{path}: expected uint8 images (N, H, W) in the IDX file, got {a.dtype} {a.shape}")
        return RawData(torch.from_numpy(a.copy()).unsqueeze(1), levels=256, scale=255.0)  # (N, H, W) -> (N, 1, H, W)
    if source == "image":
        channels = config.channels or _channels_of(path)
        size = tuple(config.image_size) if config.image_size else _size_of(path)
        a = sources._decode(path, channels, size, bool(config.image_size), path)  # (C, H, W) uint8
        return RawData(torch.from_numpy(a.copy()).unsqueeze(0), levels=256, scale=255.0)
    if source not in SOURCES:
        raise DataError(f"source {source!r} is not known; use one of {SOURCES.choices()}, 'image' or 'idx'")
    # the run's options, less those only its own source takes; one file or folder, read into memory
    own = {} if source == config.source else {"image_size": None, "channels": None, "key": None}
    read_config = dataclasses.replace(
        config, source=source, path=str(path), train_path=None, val_path=None, test_path=None, in_memory="always", **own
    )
    raw = SOURCES[source]().read(read_config, lambda n: torch.arange(n))
    if SOURCES[source].own_test:
        return RawData(raw.test_x, raw.levels, raw.test_labels, scale=raw.scale)
    return raw


def _channels_of(p: Path) -> int:
    from PIL import Image

    with Image.open(p) as img:  # reads the header only
        return 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def _size_of(p: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(p) as img:
        return (img.height, img.width)


def _read_text(config, path: Path, source: str, tokenizer) -> torch.Tensor:
    from hvae.data import text

    if tokenizer is None:
        if config.tokenizer != "byte":
            raise DataError(
                f"the run's {config.tokenizer} tokenizer is needed to read text; pass "
                "tokenizer=hvae.data.text.run_tokenizer(run_dir, run_data_config)"
            )
        tokenizer = text.ByteTokenizer()
    texts, _ = text.read_examples(dataclasses.replace(config, source=source, path=str(path)))
    if not texts:
        raise DataError(f"{path}: no text examples found")
    x, _, _ = text.encode_rows(texts, tokenizer, config.max_length, config.too_long, config.text_unit == "line")
    if len(x) == 0:
        raise DataError(f"{path}: every example is longer than max_length {config.max_length}")
    return x


def load_like(
    run_data_config,
    path: str | Path,
    source: str | None = None,
    tokenizer=None,
    *,
    data_shape: tuple[int, ...] | list[int] | None = None,
    train_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Read ``path`` and preprocess it exactly as the run's test split is preprocessed -> (N, *shape) tensor.

    ``load_like(run_data_config, path, source=None, tokenizer=None, *, data_shape=None, train_stats=None)``

    * ``run_data_config``: the run's :class:`~hvae.data.DataConfig` (``RunConfig.data``).
    * ``path``: a ``.npy`` / ``.npz`` / ``.csv`` / ``.txt`` file, an image file, an IDX file (``*-ubyte[.gz]``),
      or a folder (images, IDX files -- their t10k test files are read --, text, fortunes, audio).
    * ``source``: how to read ``path`` (npy, npz, csv, text, fortunes, audio, images, image, idx, mnist); by
      default told from the name or, for a folder, from the run's source and the folder's contents.
    * ``tokenizer``: text only; the run's tokeniser (``hvae.data.text.run_tokenizer(run_dir, data_config)``);
      may be left out for the byte tokeniser.
    * ``data_shape``: the model's data shape; when given, a different shape is a :class:`DataError` that says
      how to fix it (``data.image_size`` / ``data.channels`` for images).
    * ``train_stats``: ``(mean, std)`` of the run's training split for ``standardize``; when left out they are
      computed by loading the run's own data (as ``hvae eval`` does).

    The run's rules: uint8 codes scaled to ``k / scale``; ``binarize`` (static or dynamic) and ``dequantize``
    draw one fixed noise, from the generator the run's test split uses (``data.seed``, or seed 0 when the
    source has a test set of its own: IDX t10k files, a predefined test file), so its test data read this way equal
    ``Dataset.eval_tensor("test")``; ``standardize`` with the training statistics; ``flatten``. Text gives
    int64 token ids (N, max_length) padded with the tokeniser's padding id; everything else float32.

    Example::

        cfg, _ = hvae.runconfig.load_run_config(run_dir / "config.yaml")  # import hvae.runconfig first
        x = hvae.data.load_like(cfg.data, "holdout.npy", data_shape=cfg.model.data_shape)
        result = hvae.evaluate.evaluate(model, x)  # model: the run's trained model (hvae.load)
    """
    from hvae.data.loader import load_dataset

    config = run_data_config
    path = Path(path).expanduser()
    source = source or infer_source(path, config.source)
    where = f"{path} (read as {source})"
    if source in SOURCES and modality(source) == "text":
        x = _read_text(config, path, source, tokenizer)
        _check_shape(x, data_shape, where, config, source)
        return x
    if modality(config.source) == "text":
        raise DataError(f"{where}: the run models text; give a text file or folder (source text or fortunes)")
    raw = _read(config, path, source)
    x = raw.x.take(np.arange(len(raw.x))) if isinstance(raw.x, sources.LazyRows) else raw.x
    if len(x) == 0:
        raise DataError(f"{where}: 0 examples read")
    if raw.scale is not None:
        x = x.to(torch.float32).div_(raw.scale)  # the same k / scale, bit for bit, as the loader's splits
    x = x.to(torch.float32)
    bad = ~torch.isfinite(x)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} NaN or inf values; clean or drop those examples")
    if config.standardize:
        if train_stats is None:
            d = load_dataset(config)
            # standardize: the loader computed both
            train_stats = cast(tuple[torch.Tensor, torch.Tensor], (d.mean, d.std))
        mean, std = train_stats
        if tuple(mean.shape) != tuple(x.shape[1:]):
            raise DataError(
                f"{where}: examples of shape {tuple(x.shape[1:])} but the run standardizes shape {tuple(mean.shape)}"
            )
        x = transforms.standardize(x, mean, std)
    if config.flatten:
        x = x.flatten(1)  # (N, C, H, W) -> (N, C*H*W)
    _check_shape(x, data_shape, where, config, source)
    gen = transforms.generator(0 if _official_test(config) else config.seed, "fixed", "test")
    if config.binarize != "none":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataError(
                f"{where}: the run binarizes values in [0, 1], found [{lo:g}, {hi:g}]; divide by 255 or save as uint8"
            )
        x = transforms.binarize(x, gen)
    elif config.dequantize:
        if raw.levels is None:
            raise DataError(f"{where}: the run dequantizes discrete data; give uint8 data (8-bit images or arrays)")
        x = transforms.dequantize(x, raw.levels, gen)
    return x


def _official_test(config) -> bool:
    """Whether the run's test split is a set of its own (IDX t10k files, a test.npy...): its fixed noise then
    takes seed 0 whatever ``data.seed`` (see ``Dataset.eval_tensor``)."""
    from hvae.data.loader import split_paths

    if SOURCES[config.source].own_test:
        return True
    try:
        return "test" in split_paths(config)
    except DataError:  # the run's data are not on this machine: its test split was drawn by data.seed
        return False


def _check_shape(x: torch.Tensor, data_shape, where: str, config, source: str) -> None:
    if data_shape is None:
        return
    want, got = tuple(data_shape), tuple(x.shape[1:])
    if len(want) == 1 and len(got) == 1 and modality(config.source) == "text":
        if got[0] == want[0]:
            return
        raise DataError(f"{where}: rows of {got[0]} tokens, the model reads {want[0]}; use the run's max_length")
    if got == want:
        return
    fix = "reshape or re-save the data to that shape"
    if source in ("images", "image", "idx", "mnist", "fashion_mnist"):
        fix = (
            "resize the images: pass a copy of the run's data config with source: images and image_size: [H, W] / "
            "channels: 1 or 3 set to the model's (dataclasses.replace(cfg.data, source='images', image_size=..., "
            "channels=...))"
        )
    raise DataError(f"{where}: examples of shape {got}, but the model's data_shape is {want}; {fix}")
