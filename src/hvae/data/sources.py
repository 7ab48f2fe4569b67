"""Readers: each turns a file, folder or bundled set into raw arrays; the registry of data sources.

``data.source`` names a :class:`Source` in :data:`SOURCES`; :func:`modality` says what a source carries
(``image``, ``table``, ``text`` or ``audio``), for the code that shows samples and media. To add a source:
subclass :class:`Source`, set ``modality`` (and ``path_hint`` if it needs ``data.path``, ``split_suffixes``
if ``data.path`` may hold ``train`` / ``val`` / ``test`` files or folders, ``streamable`` if it can leave
data on disk), define ``read(config, train_rows)`` returning a :class:`RawData`, and decorate the class with
``@SOURCES.register("name")``; ``data.source: name`` then accepts it.

Every reader returns a :class:`RawData`. Discrete sources (8-bit images and arrays, the 17-level digits,
booleans) keep their integer codes ``k`` as a uint8 tensor and record ``scale`` (the values are
``k / scale`` in [0, 1]) and ``levels`` (the number of intensity levels, ``scale + 1``); continuous sources
give a float32 tensor with ``scale=None`` and ``levels=None``. ``.npy`` files and image folders may instead
be opened lazily (:class:`LazyRows`): examples are read from disk only when a batch asks for them.
Readers know nothing of configs, splits or preprocessing.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from hvae.registry import Registry

CHUNK_BYTES = 64 * 2**20  # whole-array scans of a lazily read array go in chunks of about this size


class DataError(ValueError):
    """Data could not be loaded or is unusable; the message names the problem and the fix."""


class LazyRows:
    """Examples of an on-disk array or image folder, read only when asked for.

    Behaves like a read-only tensor of shape ``(N, *example_shape)`` for what the loader needs: ``len``,
    ``shape``, ``dtype``, indexing by a slice or an index tensor (a view: no data is read), ``reshape(N, -1)``
    and :meth:`take`, which reads the rows of a batch. ``rows`` maps positions to rows of the file, so a split
    is a view of the file, not a copy.
    """

    def __init__(
        self,
        read: Callable[[np.ndarray], np.ndarray],
        rows: np.ndarray,
        example_shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> None:
        self._read = read  # sorted file rows (k,) -> array (k, ...) of `dtype`, any shape of the same size
        self.rows = rows
        self.example_shape = tuple(example_shape)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.example_shape))

    @property
    def nbytes(self) -> int:
        """Bytes the rows would take in memory (``dtype``); what ``in_memory: auto`` compares to its budget."""
        return len(self.rows) * int(np.prod(self.example_shape, dtype=np.int64)) * self.dtype.itemsize

    def _view(self, rows: np.ndarray, example_shape: tuple[int, ...] | None = None) -> LazyRows:
        return LazyRows(self._read, rows, example_shape or self.example_shape, self.dtype)

    def __getitem__(self, index: slice | torch.Tensor | np.ndarray) -> LazyRows:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return self._view(self.rows[index])

    def reshape(self, n: int, *shape: int) -> LazyRows:
        size = int(np.prod(self.example_shape, dtype=np.int64))
        if n != len(self) or shape not in ((-1,), (size,)):
            raise ValueError(f"LazyRows can only be flattened to ({len(self)}, -1), not ({n}, {shape})")
        return self._view(self.rows, (size,))

    def contiguous(self) -> LazyRows:
        return self

    def take(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Read the examples at positions ``index`` -> tensor (len(index), *example_shape) of ``dtype``.

        The file rows are read in ascending order (locality for memory maps and disks), then put back in the
        order asked for.
        """
        index = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        file_rows = self.rows[index]
        order = np.argsort(file_rows, kind="stable")
        got = self._read(file_rows[order]).reshape(len(order), *self.example_shape)
        out = np.empty_like(got)
        out[order] = got
        return torch.from_numpy(out)

    def chunks(self, rows: int | None = None):
        """Consecutive blocks of rows in order (``rows`` per block; default about CHUNK_BYTES of them)."""
        rows = rows or max(1, CHUNK_BYTES // max(1, self.nbytes // max(1, len(self))))
        for lo in range(0, len(self), rows):
            yield self.take(np.arange(lo, min(lo + rows, len(self))))


@dataclass
class RawData:
    """What a reader returns. ``test_x``/``test_labels`` are set only for sources with their own test split.

    ``x`` (N, *shape) holds uint8 codes k with values ``k / scale`` when ``scale`` is set, else float32
    values; in memory (a tensor) or on disk (:class:`LazyRows`).
    """

    x: torch.Tensor | LazyRows
    levels: int | None
    labels: torch.Tensor | None = None  # (N,) int64
    test_x: torch.Tensor | LazyRows | None = None
    test_labels: torch.Tensor | None = None
    scale: float | None = None  # discrete data: values are x / scale (255 for 8-bit, 16 for digits, 1 for bool)
    val_x: torch.Tensor | LazyRows | None = None  # a validation split of the source's own (val.npy, say)
    val_labels: torch.Tensor | None = None


def _from_uint8(a: np.ndarray) -> torch.Tensor:
    """uint8 array -> uint8 tensor of the codes k (values k / 255, converted per batch)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))


def _labels(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.asarray(a).astype(np.int64).reshape(-1))


# ---------------------------------------------------------------------------------------------------- digits


def read_digits() -> RawData:
    """scikit-learn's bundled 8x8 digits (1,797 examples, offline): x (N, 1, 8, 8) = k / 16, 17 levels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8), codes 0..16
    return RawData(x=x, levels=17, labels=_labels(d.target), scale=16.0)


# ---------------------------------------------------------------------------------------------------- IDX

# IDX type codes (third magic byte) -> big-endian numpy dtypes, as in LeCun's MNIST page.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        # Some mirrors ship gzipped files without the .gz suffix, so trust the gzip magic, not the name.
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read or decompress ({e}); download the file again") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or plain) into a numpy array of its stored dtype and dims."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}); check data.path")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header; download the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX file has {len(data)} bytes but its header {list(dims)} needs {expected}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (MNIST format); gzip it when ``path`` ends with ``.gz``."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {a.dtype} has no IDX code; use uint8, int8/16/32 or float32/64")
    body = struct.pack(f">BBBB{a.ndim}I", 0, 0, code, a.ndim, *a.shape) + a.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)


def _find_idx(folder: Path, stem: str) -> Path:
    # The original archives unpack to 'train-images-idx3-ubyte'; some tools write 'train-images.idx3-ubyte'.
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder}: missing {stem}[.gz]; put the four MNIST-format IDX files there or fix data.path")


def read_idx_folder(folder: str | Path) -> RawData:
    """MNIST / Fashion-MNIST IDX files in ``folder``: train -> x, t10k -> test_x; uint8 k / 255, 256 levels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory; set data.path to the folder holding the IDX files")
    parts = {}
    for split in ("train", "t10k"):
        images = read_idx(_find_idx(folder, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(folder, f"{split}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{folder}: {split} images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise DataError(f"{folder}: {split} has {len(images)} images but labels of shape {labels.shape}")
        parts[split] = (_from_uint8(images).unsqueeze(1), _labels(labels))  # (N, H, W) -> (N, 1, H, W)
    return RawData(parts["train"][0], 256, parts["train"][1], parts["t10k"][0], parts["t10k"][1], scale=255.0)


# ---------------------------------------------------------------------------------------------------- arrays


def _keep_in_memory(nbytes: int, in_memory: str, memory_budget: float) -> bool:
    return in_memory == "always" or (in_memory == "auto" and nbytes <= memory_budget)


def _array_to_raw(a: np.ndarray, where: str, lazy: bool = False) -> RawData:
    """(N, D) vectors, (N, H, W) grey images or (N, C, H, W) channels-first images -> RawData.

    With ``lazy`` (``a`` a memory map), nothing is read beyond a range check of integer arrays: the rows are
    gathered per batch.
    """
    if a.ndim not in (2, 3, 4):
        raise DataError(f"{where}: expected an array (N, D), (N, H, W) or (N, C, H, W), got shape {a.shape}")
    shape = a.shape[1:] if a.ndim != 3 else (1, *a.shape[1:])  # (N, H, W) -> (N, 1, H, W)
    target: type[np.generic]  # the array's dtype in memory
    if a.dtype == np.bool_:
        target, dtype, levels, scale = np.uint8, torch.uint8, 2, 1.0
    elif np.issubdtype(a.dtype, np.integer):
        if a.dtype != np.uint8 and a.size and (a.min() < 0 or a.max() > 255):
            raise DataError(f"{where}: integer values must be 8-bit (0..255); store floats for other ranges")
        target, dtype, levels, scale = np.uint8, torch.uint8, 256, 255.0
    elif np.issubdtype(a.dtype, np.floating):
        target, dtype, levels, scale = np.float32, torch.float32, None, None
    else:
        raise DataError(f"{where}: unsupported dtype {a.dtype}; store uint8 or float values")
    x: torch.Tensor | LazyRows
    if lazy:

        def read(rows: np.ndarray) -> np.ndarray:
            return np.asarray(a[rows], dtype=target)

        x = LazyRows(read, np.arange(len(a)), shape, dtype)
    else:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=target)).reshape(len(a), *shape)
    return RawData(x, levels=levels, scale=scale)


def read_npy(path: str | Path, in_memory: str = "always", memory_budget: float = float("inf")) -> RawData:
    """One ``.npy`` array; uint8 kept as codes k (values k / 255, 256 levels), floats as float32.

    ``in_memory``: ``always`` loads the array; ``never`` memory-maps it and reads rows per batch; ``auto``
    loads it when it takes at most ``memory_budget`` bytes in memory (1 byte per 8-bit value, 4 per float).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; set data.path to an existing .npy file")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        if "pickle" in str(e):  # numpy found no .npy header and offers to unpickle, which hvae never does
            raise DataError(
                f"{path}: not a .npy file (no .npy header); a CSV needs source: csv, an archive source: npz"
            ) from None
        raise DataError(f"{path}: not a readable .npy file ({e})") from None
    if not isinstance(a, np.ndarray):
        a.close()
        raise DataError(f"{path}: not a .npy array file; use source: npz for .npz archives")
    itemsize = 4 if np.issubdtype(a.dtype, np.floating) else 1
    lazy = not _keep_in_memory(a.size * itemsize, in_memory, memory_budget)
    if not lazy:
        try:
            a = np.array(a)  # read the whole file into (writable) memory, closing the map
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the .npy file ({e}); check or re-create it") from None
    return _array_to_raw(a, str(path), lazy=lazy)


def read_npz(path: str | Path, key: str | None = None) -> RawData:
    """One array of an ``.npz`` (``key``; default 'x' if present, else the first). Labels from 'y' or 'labels'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; set data.path to an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if not arrays:
        raise DataError(f"{path}: the .npz holds no arrays")
    if key is None:
        key = "x" if "x" in arrays else next(iter(arrays))
    if key not in arrays:
        raise DataError(f"{path}: no array {key!r}; set data.key to one of {', '.join(arrays)}")
    raw = _array_to_raw(arrays[key], f"{path}[{key}]")
    for name in ("y", "labels"):
        y = arrays.get(name)
        if name != key and y is not None and y.shape == (len(raw.x),) and np.issubdtype(y.dtype, np.integer):
            raw.labels = _labels(y)
            break
    return raw


def read_csv(path: str | Path) -> RawData:
    """Numeric table (N, D), one example per row; an optional header row; values not rescaled. Values are
    separated by commas, tabs or semicolons (whichever the first line holds), or else by spaces."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; set data.path to an existing .csv file")
    with path.open(newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first cell
        lines = f.read().splitlines()
    first = next((line for line in lines if line.strip()), "")
    sep = next((s for s in (",", "\t", ";") if s in first), None)
    split = csv.reader(lines, delimiter=sep) if sep else (line.split() for line in lines)
    rows = [r for r in split if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the CSV file is empty")
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = rows[0], rows[1:]  # the first row names the columns
    width = len(header) if header else len(rows[0]) if rows else 0
    values = np.empty((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        line = i + (2 if header else 1)
        if len(row) != width:
            raise DataError(f"{path}: row {line} has {len(row)} columns, expected {width}")
        try:
            values[i] = [float(c) for c in row]
        except ValueError:
            j = next(j for j, c in enumerate(row) if not _is_float(c))
            col = f"column {j + 1}" + (f" ({header[j]!r})" if header else "")
            raise DataError(f"{path}: row {line}, {col}: {row[j]!r} is not a number; fix or drop that cell") from None
    return RawData(torch.from_numpy(values), levels=None)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------- images

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _fit(img, size: tuple[int, int]):
    """Resize so the image covers ``size`` = (H, W) (shorter side first), then center-crop to it."""
    from PIL import Image

    H, W = size
    w, h = img.size
    scale = max(H / h, W / w)
    new_w, new_h = max(W, round(w * scale)), max(H, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - W) // 2, (new_h - H) // 2
    return img.crop((left, top, left + W, top + H))


def _decode(p: Path, channels: int, size: tuple[int, int], fit: bool, first: Path) -> np.ndarray:
    """One image file -> uint8 (C, H, W): converted to ``channels``, resized and cropped when ``fit``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            if img.mode.startswith("I"):  # 16-bit grey: its top 8 bits (convert("L") would clip at 255)
                grey = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(grey, "L")
            img = img.convert("L" if channels == 1 else "RGB")
            if fit:
                img = _fit(img, size)
            elif (img.height, img.width) != size:
                raise DataError(
                    f"{p}: size {img.height}x{img.width} differs from {size[0]}x{size[1]} of {first}; "
                    "set data.image_size: [H, W] to resize and crop all images"
                )
            a = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{p}: cannot read image ({e}); remove or replace the file") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (H, W[, C]) -> (C, H, W)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # PIL releases the GIL while decoding, so a few threads decode a batch of files in parallel.
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hvae-images")
    return _POOL


def read_images(
    folder: str | Path,
    image_size: list[int] | None = None,
    channels: int | None = None,
    in_memory: str = "always",
    memory_budget: float = float("inf"),
) -> RawData:
    """PNG/JPEG files under ``folder`` (recursive, sorted by path) -> x (N, C, H, W) uint8 codes, k / 255.

    ``channels``: 1 (grey) or 3 (RGB); by default that of the first image. ``image_size`` [H, W]: every image
    is resized (shorter side) and center-cropped to it; without it all images must already share one size.
    When every file sits in a sub-folder, labels are the sub-folder's index in sorted order.

    ``in_memory``: ``always`` decodes every file now; ``never`` lists the files and decodes those of each
    batch when it is asked for (a broken file or one of another size then raises when its batch is read);
    ``auto`` decodes now when N*C*H*W bytes fit in ``memory_budget``.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory; set data.path to a folder of PNG/JPEG images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no .png/.jpg/.jpeg files found (searched recursively); check data.path")
    try:
        with Image.open(files[0]) as img:  # reads the header only
            if channels is None:
                channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            # image_size is [H, W] (the config checks it)
            size = cast(tuple[int, int], tuple(image_size)) if image_size else (img.height, img.width)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{files[0]}: cannot read image ({e}); remove or replace the file") from None
    fit = bool(image_size)

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), channels, *size), dtype=np.uint8)
        # one preallocated uint8 block: peak memory stays at 1 byte per value while reading
        for i, a in enumerate(_pool().map(lambda r: _decode(files[r], channels, size, fit, files[0]), rows)):
            out[i] = a
        return out

    x: torch.Tensor | LazyRows = LazyRows(read, np.arange(len(files)), (channels, *size), torch.uint8)
    if _keep_in_memory(x.nbytes, in_memory, memory_budget):
        x = torch.from_numpy(read(np.arange(len(files))))
    labels = None
    rel = [p.relative_to(folder).parts for p in files]
    if all(len(r) > 1 for r in rel):
        index = {c: k for k, c in enumerate(sorted({r[0] for r in rel}))}
        labels = torch.tensor([index[r[0]] for r in rel], dtype=torch.int64)
    return RawData(x, levels=256, labels=labels, scale=255.0)


# ---------------------------------------------------------------------------------------------------- registry

SOURCES = Registry("data source", ("hvae.data.sources", "hvae.data.cifar10", "hvae.data.text", "hvae.data.audio"))
MODALITIES = ("image", "table", "text", "audio")


class Source:
    """How ``data.source`` reads data. Class attributes describe it; :meth:`read` reads it.

    * ``modality``: what it carries, one of :data:`MODALITIES` (:meth:`modality_of` may decide by shape).
    * ``path_hint``: what ``data.path`` must name when the source needs one (None: it needs none).
    * ``default_path``: where it reads without ``data.path``.
    * ``split_suffixes``: the endings of predefined split files inside a ``data.path`` folder (``train.npy``:
      ``".npy"``; ``""`` for sub-folders ``train/``); empty for sources that carry no such splits.
    * ``streamable``: it can leave the data on disk (``in_memory: never``).
    * ``own_test``: it reads a test set of its own.
    """

    modality = "table"
    path_hint: str | None = None
    default_path: str | None = None
    split_suffixes: tuple[str, ...] = ()
    streamable = False
    own_test = False  # it reads a test set of its own (RawData.test_x): IDX t10k files, CIFAR's test batch

    def read(self, config, train_rows) -> RawData:
        """The examples of ``config.path`` (``train_rows(n)``: the rows of n examples the loader will train on)."""
        raise NotImplementedError

    def read_splits(self, config, paths: dict[str, Path], train_rows) -> RawData:
        """Predefined splits: ``paths["train"]`` and ``val`` and/or ``test``, each read as :meth:`read` reads
        ``data.path``; the held-out ones become ``val_x`` / ``test_x``. Every split must hold examples of one
        shape and kind (8-bit codes or floats)."""
        parts = {name: self.read(dataclasses.replace(config, path=str(p)), train_rows) for name, p in paths.items()}
        train = parts["train"]
        for name, part in parts.items():
            if tuple(part.x.shape[1:]) != tuple(train.x.shape[1:]):
                raise DataError(
                    f"{paths[name]}: examples of shape {tuple(part.x.shape[1:])}, but the training split's are "
                    f"{tuple(train.x.shape[1:])}; give every split one shape (images: set data.image_size)"
                )
            if (part.scale, part.levels) != (train.scale, train.levels):
                raise DataError(
                    f"{paths[name]}: {_kind(part)} values, but the training split ({paths['train']}) holds "
                    f"{_kind(train)}; store every split the same way"
                )
        val, test = parts.get("val"), parts.get("test", train if train.test_x is not None else None)
        return RawData(
            train.x,
            train.levels,
            train.labels,
            test_x=None if test is None else (test.test_x if test is train else test.x),
            test_labels=None if test is None else (test.test_labels if test is train else test.labels),
            scale=train.scale,
            val_x=None if val is None else val.x,
            val_labels=None if val is None else val.labels,
        )

    def modality_of(self, shape: tuple[int, ...] | None = None) -> str:
        """What data of one example's ``shape`` from this source are: ``modality`` unless it depends on it."""
        return self.modality


def modality(source: str, shape: tuple[int, ...] | list[int] | None = None) -> str:
    """What ``source`` carries: ``image``, ``table``, ``text`` or ``audio``. Array sources (npy, npz) carry
    images or tables: given one example's ``shape``, (C, H, W) is an image, anything else a table."""
    return SOURCES[source]().modality_of(None if shape is None else tuple(shape))


def _kind(raw: RawData) -> str:
    return "float" if raw.scale is None else f"{raw.levels}-level"


def _budget(config) -> float:
    return config.memory_budget_gb * 2**30


@SOURCES.register("digits")
class Digits(Source):
    modality = "image"

    def read(self, config, train_rows) -> RawData:
        return read_digits()


@SOURCES.register("fashion_mnist")
class FashionMNIST(Source):
    modality = "image"
    default_path = "/usr/share/datasets/fashion-mnist"
    own_test = True

    def read(self, config, train_rows) -> RawData:
        return read_idx_folder(config.path or self.default_path)


@SOURCES.register("mnist")
class MNIST(Source):
    modality = "image"
    path_hint = "folder of IDX files"
    own_test = True

    def read(self, config, train_rows) -> RawData:
        return read_idx_folder(config.path)


class _Array(Source):
    def modality_of(self, shape: tuple[int, ...] | None = None) -> str:
        return "image" if shape is not None and len(shape) == 3 else "table"


@SOURCES.register("npz")
class Npz(_Array):
    path_hint = ".npz file"
    split_suffixes = (".npz",)

    def read(self, config, train_rows) -> RawData:
        return read_npz(config.path, config.key)


@SOURCES.register("npy")
class Npy(_Array):
    path_hint = ".npy file"
    split_suffixes = (".npy",)
    streamable = True

    def read(self, config, train_rows) -> RawData:
        return read_npy(config.path, config.in_memory, _budget(config))


@SOURCES.register("csv")
class Csv(Source):
    path_hint = ".csv file"
    split_suffixes = (".csv",)

    def read(self, config, train_rows) -> RawData:
        return read_csv(config.path)


@SOURCES.register("images")
class Images(Source):
    modality = "image"
    path_hint = "image folder"
    split_suffixes = ("",)
    streamable = True

    def read(self, config, train_rows) -> RawData:
        return read_images(config.path, config.image_size, config.channels, config.in_memory, _budget(config))
