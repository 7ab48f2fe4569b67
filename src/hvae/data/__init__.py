"""Data: sources (readers of raw arrays), transforms (binarize, dequantize, standardize) and the loader.

``load_dataset(DataConfig(...))`` returns a :class:`Dataset` whose ``batches`` yield preprocessed float32
tensors ``(B, *shape)`` and whose ``eval_tensor`` (whole split) / ``eval_batches`` (chunk by chunk) give the
fixed preprocessing evaluation uses. 8-bit data is held as uint8 codes and converted per batch; ``.npy``
arrays and image folders beyond ``DataConfig.memory_budget_gb`` (or with ``in_memory: never``) stay on disk
(:class:`LazyRows`) and each batch reads its own rows, giving the same batches. ``load_like(run_data_config,
path)`` reads other data as a trained run reads its test split (:mod:`hvae.data.external`).
"""

from hvae.data.external import load_like
from hvae.data.loader import DataConfig, Dataset, Split, load_dataset
from hvae.data.sources import DataError, LazyRows, read_idx, write_idx
from hvae.data.transforms import dequantization_log_jacobian

__all__ = [
    "DataConfig",
    "DataError",
    "Dataset",
    "LazyRows",
    "Split",
    "dequantization_log_jacobian",
    "load_dataset",
    "load_like",
    "read_idx",
    "write_idx",
]
