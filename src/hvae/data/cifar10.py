"""CIFAR-10 "python version" batches (https://www.cs.toronto.edu/~kriz/cifar.html), read without unpickling.

The batches are pickles of ``{b"data": uint8 array (N, 3072), b"labels": [int], ...}``. Loading a pickle
runs whatever it names, so this reader walks them with a restricted :class:`pickle.Unpickler` whose
``find_class`` hands out inert stand-ins for the three names an array needs (numpy's ``_reconstruct``,
``ndarray``, ``dtype``) and for ``_codecs.encode`` (how protocol-2 pickles spell bytes), and refuses every
other name. The stand-ins only record their arguments; the array is then built here with ``np.frombuffer``
from its raw bytes, for unsigned 8-bit data only.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .sources import SOURCES, DataError, RawData, Source

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"


class _Array:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, ...)``: BUILD passes it the array's state
    ``(version, shape, dtype, fortran_order, raw_bytes)``."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _Dtype:
    """Stand-in for ``numpy.dtype(name, align, copy)``: keeps the name and the byte order from its state."""

    def __init__(self, name, *args):
        self.name = name.decode("latin1") if isinstance(name, bytes) else name
        self.state = None

    def __setstate__(self, state):
        self.state = state


def _ndarray_marker(*args):
    raise pickle.UnpicklingError("numpy.ndarray may only appear as the argument of _reconstruct")


def _reconstruct(cls, *args):
    if cls is not _ndarray_marker:
        raise pickle.UnpicklingError("_reconstruct may only build numpy.ndarray")
    return _Array()


def _latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only accepted as protocol 2's spelling of bytes")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ndarray_marker,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds no such object")
        return fn


def _to_array(obj, where: Path) -> np.ndarray:
    if not isinstance(obj, _Array) or obj.state is None or len(obj.state) != 5:
        raise DataError(f"{where}: 'data' is not an array; the file is not a CIFAR-10 python batch")
    _, shape, dtype, fortran, raw = obj.state
    if not isinstance(dtype, _Dtype) or dtype.name not in ("u1", "uint8"):
        raise DataError(f"{where}: 'data' must be uint8, got {getattr(dtype, 'name', dtype)!r}")
    if isinstance(raw, str):  # Python 2 pickles loaded with encoding="latin1"
        raw = raw.encode("latin1")
    shape = tuple(int(s) for s in shape)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != int(np.prod(shape)):
        raise DataError(f"{where}: 'data' holds {len(raw)} bytes for shape {shape}; the file is truncated")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e}); download cifar-10-python.tar.gz again") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a mapping with 'data' and 'labels', got {type(d).__name__}")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: missing 'data' or 'labels'; the file is not a CIFAR-10 python batch")
    x = _to_array(d["data"], path)
    labels = d["labels"]
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of integers")
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(labels) != x.shape[0]:
        raise DataError(f"{path}: expected data (N, 3072) and N labels, got {x.shape} and {len(labels)}")
    return x.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)  # rows are R, G, B planes of 32x32


def read_cifar10(folder: str | Path) -> RawData:
    """The CIFAR-10 python batches in ``folder`` (``cifar-10-batches-py`` or the folder holding it):
    ``data_batch_1..5`` -> x, ``test_batch`` -> test_x; (N, 3, 32, 32) uint8 codes k / 255, 256 levels."""
    folder = Path(folder)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory; set data.path to the unpacked cifar-10-batches-py folder")
    missing = [n for n in [*TRAIN_FILES, TEST_FILE] if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; unpack cifar-10-python.tar.gz there")
    train = [read_batch(folder / n) for n in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    x = torch.from_numpy(np.concatenate([a for a, _ in train]))
    y = torch.from_numpy(np.concatenate([b for _, b in train]))
    return RawData(x, 256, y, torch.from_numpy(test_x.copy()), torch.from_numpy(test_y), scale=255.0)


@SOURCES.register("cifar10")
class CIFAR10(Source):
    modality = "image"
    path_hint = "cifar-10-batches-py folder"
    own_test = True

    def read(self, config, train_rows) -> RawData:
        return read_cifar10(config.path)
