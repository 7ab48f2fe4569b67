"""The per-batch draws of dynamic binarization and dequantization: the distributions of torch.bernoulli and
torch.rand, exactly, from fewer random draws; and which batches use them."""

from __future__ import annotations

import math

import pytest
import torch

from hvae.data import DataConfig, load_dataset, transforms
from hvae.data.transforms import UNIFORM_BITS, binarize_fast, generator, uniform_bits, uniform_fast

MASK = (1 << UNIFORM_BITS) - 1


def test_uniform_bits_are_the_low_24_bits_of_each_half_of_64_bit_draws_low_half_first():
    for n in (1, 6, 7):
        words = torch.empty((n + 1) // 2, dtype=torch.int64).random_(-(2**63), None, generator=generator(4))
        want = [int(w) >> shift & MASK for w in words for shift in (0, 32)][:n]  # Python ints: no byte order
        u = uniform_bits(n, generator(4))
        assert u.dtype == torch.int32 and u.tolist() == want


def test_uniform_bits_use_all_24_bits_and_no_more():
    u = uniform_bits(100_000, generator(0))
    assert int(u.min()) >= 0 and int(u.max()) <= MASK
    assert int(u.max()) > MASK - 2**10 and int(u.min()) < 2**10  # the whole range is reached
    assert all(0.49 < float(((u >> b) & 1).float().mean()) < 0.51 for b in range(UNIFORM_BITS))


def test_binarize_fast_is_one_exactly_where_the_uniform_is_below_x():
    # u * 2^-24 < x decided without rounding: x on the uniform's grid point gives 0, one grid step above gives 1
    n = 1000
    u = uniform_bits(n, generator(7)).double()
    at = (u * 2.0**-UNIFORM_BITS).float()  # exact in float32: integers below 2^24 times a power of two
    above = ((u + 1) * 2.0**-UNIFORM_BITS).float()
    assert torch.equal(binarize_fast(at, generator(7)), torch.zeros(n))
    assert torch.equal(binarize_fast(above, generator(7)), torch.ones(n))


def test_binarize_fast_keeps_zero_and_one_and_the_shape():
    x = torch.tensor([[0.0, 1.0] * 500] * 3).view(3, 10, 100)
    b = binarize_fast(x, generator(1))
    assert b.shape == x.shape and b.dtype == torch.float32 and torch.equal(b, x)


@pytest.mark.parametrize("p", [3 / 255, 0.5, 200 / 255])
def test_binarize_fast_has_the_mean_of_torch_bernoulli(p):
    # 2^20 draws: the standard error of a mean is below 5e-4; 5 of them apart would be a biased draw
    n = 2**20
    x = torch.full((n,), p)
    fast, ref = binarize_fast(x, generator(2)).mean(), torch.bernoulli(x, generator=generator(2)).mean()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(float(fast) - p) < 5 * se and abs(float(ref) - p) < 5 * se
    pairs = binarize_fast(x, generator(3)).view(-1, 2)  # the two halves of one 64-bit draw are independent
    assert abs(float((pairs[:, 0] * pairs[:, 1]).mean()) - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / (n // 2))


def test_binarize_fast_is_reproducible_and_differs_between_seeds():
    x = torch.rand(64, 50, generator=generator(0))
    assert torch.equal(binarize_fast(x, generator(5)), binarize_fast(x, generator(5)))
    assert not torch.equal(binarize_fast(x, generator(5)), binarize_fast(x, generator(6)))


def test_uniform_fast_is_on_the_grid_of_torch_rand_in_0_1():
    v = uniform_fast((300, 7), generator(9))
    assert v.shape == (300, 7) and v.dtype == torch.float32
    assert float(v.min()) >= 0 and float(v.max()) < 1
    assert torch.equal(v * 2.0**UNIFORM_BITS, torch.round(v * 2.0**UNIFORM_BITS))
    assert abs(float(v.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / v.numel())


def test_dynamic_batches_use_the_fast_draw_and_the_fixed_splits_keep_torch_bernoulli():
    d = load_dataset(DataConfig(binarize="dynamic", seed=3))
    order = torch.randperm(len(d.train), generator=generator(3, "order", "train", 2))
    b1 = list(d.batches("train", 50, epoch=2))[1]
    rows = d.train.rows(order[50:100])
    assert torch.equal(b1, binarize_fast(rows, generator(3, "batch", 2, 1)))
    for split in ("train", "val", "test"):  # evaluation (and static training data): the former stream
        want = transforms.binarize(d.split(split).x, generator(3, "fixed", split))
        assert torch.equal(d.eval_tensor(split), want)


def test_dynamic_dequantization_draws_its_noise_fast_in_its_bins():
    d = load_dataset(DataConfig(dequantize=True, flatten=True, seed=1))
    b0 = next(d.batches("train", 40, epoch=0, shuffle=False))
    rows = d.train.rows(torch.arange(40))
    assert torch.equal(b0, transforms.dequantize(rows, d.levels, generator(1, "batch", 0, 0), fast=True))
    k = torch.round(rows * (d.levels - 1))
    assert torch.all(b0 >= k / d.levels) and torch.all(b0 < (k + 1) / d.levels)
    assert torch.equal(d.eval_tensor("val"), transforms.dequantize(d.val.x, d.levels, generator(1, "fixed", "val")))
