"""The per-batch draws of dynamic binarization and dequantization (``Dataset._noisy_rows``): Bernoulli(x) and
U[0, 1) from numpy's counter-based Philox stream of the batch, exactly; and which batches use them."""

from __future__ import annotations

import math

import numpy as np
import torch

from hvae.data import DataConfig, load_dataset, transforms
from hvae.data.transforms import generator


def _uniforms(seed: int, epoch: int, b: int, n: int) -> np.ndarray:
    bits = np.random.Philox(key=transforms.derive_seed(seed, "batch", epoch, b))
    return np.random.Generator(bits).random(n, dtype=np.float32)


def test_dynamic_batches_are_one_exactly_where_the_batch_uniform_is_below_x():
    d = load_dataset(DataConfig(binarize="dynamic", seed=3))
    order = torch.randperm(len(d.train), generator=generator(3, "order", "train", 2))
    b1 = list(d.batches("train", 50, epoch=2))[1]
    rows = d.train.rows(order[50:100])
    u = torch.from_numpy(_uniforms(3, 2, 1, rows.numel())).view(rows.shape)
    assert torch.equal(b1, (u < rows).float())


def test_dynamic_binarization_keeps_zero_and_one_and_has_the_mean_of_x():
    d = load_dataset(DataConfig(binarize="dynamic", seed=0))
    x = torch.tensor([0.0, 1.0, 0.3]).repeat(2000, 1)
    b = d._noisy_rows(x, epoch=0, b=0, first=0)
    assert b.dtype == x.dtype and b.shape == x.shape
    assert torch.all(b[:, 0] == 0) and torch.all(b[:, 1] == 1)
    assert abs(float(b[:, 2].mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 2000)
    assert torch.equal(b, d._noisy_rows(x, epoch=0, b=0, first=0))  # reproducible
    assert not torch.equal(b, d._noisy_rows(x, epoch=0, b=1, first=0))  # another batch, other noise


def test_the_fixed_splits_keep_torch_bernoulli():
    d = load_dataset(DataConfig(binarize="dynamic", seed=3))
    for split in ("train", "val", "test"):  # evaluation (and static training data): torch.bernoulli's stream
        want = transforms.binarize(d.split(split).x, generator(3, "fixed", split))
        assert torch.equal(d.eval_tensor(split), want)


def test_dynamic_dequantization_draws_its_noise_in_its_bins():
    d = load_dataset(DataConfig(dequantize=True, flatten=True, seed=1))
    b0 = next(d.batches("train", 40, epoch=0, shuffle=False))
    rows = d.train.rows(torch.arange(40))
    k = torch.round(rows * (d.levels - 1))
    u = torch.from_numpy(_uniforms(1, 0, 0, rows.numel())).view(rows.shape)
    assert torch.equal(b0, (k + u) / d.levels)
    assert torch.all(b0 >= k / d.levels) and torch.all(b0 < (k + 1) / d.levels)
    assert torch.equal(d.eval_tensor("val"), transforms.dequantize(d.val.x, d.levels, generator(1, "fixed", "val")))
