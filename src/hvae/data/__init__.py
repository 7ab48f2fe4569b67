"""Data: sources (readers of raw arrays), transforms (binarize, dequantize, standardize) and the loader.

``load_dataset(DataConfig(...))`` returns a :class:`Dataset` whose ``batches`` yield preprocessed float32
tensors ``(B, *shape)`` and whose ``eval_tensor`` gives the fixed preprocessing evaluation uses.
"""

from hvae.data.loader import DataConfig, Dataset, Split, load_dataset
from hvae.data.sources import DataError, read_idx, write_idx
from hvae.data.transforms import dequantization_log_jacobian

__all__ = [
    "DataConfig",
    "DataError",
    "Dataset",
    "Split",
    "dequantization_log_jacobian",
    "load_dataset",
    "read_idx",
    "write_idx",
]
