"""Data sources, splits and preprocessing: shapes, determinism and the errors users see."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvae.config import ConfigError
from hvae.data import (
    DataConfig,
    DataError,
    dequantization_log_jacobian,
    load_dataset,
    load_like,
    read_idx,
    write_idx,
)
from hvae.data.loader import FASHION_MNIST_PATH, LazyRows


def _idx_folder(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), a)
    return tuple(arrays.values())


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


# ------------------------------------------------------------------------------------------------ sources


def test_digits_shapes_levels_and_range():
    d = load_dataset(DataConfig())
    assert d.shape == (1, 8, 8) and d.levels == 17
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert len(d.val) == len(d.test) == 180
    x = torch.cat([d.train.x, d.val.x, d.test.x])
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    assert torch.equal(x * 16, torch.round(x * 16))  # exactly the 17 levels k / 16
    assert d.train.labels.shape == (len(d.train),)
    assert load_dataset(DataConfig(flatten=True)).shape == (64,)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / f"a{suffix}", a)
    b = read_idx(tmp_path / f"a{suffix}")
    assert b.dtype == np.uint8 and np.array_equal(a, b)


def test_truncated_idx_is_an_error(tmp_path):
    write_idx(tmp_path / "a", np.zeros((10, 4, 4), dtype=np.uint8))
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "a")
    write_idx(tmp_path / "c.gz", np.zeros((10, 4, 4), dtype=np.uint8))
    (tmp_path / "c.gz").write_bytes((tmp_path / "c.gz").read_bytes()[:-9])
    with pytest.raises(DataError, match="c.gz"):
        read_idx(tmp_path / "c.gz")
    (tmp_path / "b").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "b")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder_uses_its_own_test_split(tmp_path, gz):
    train_x, train_y, test_x, test_y = _idx_folder(tmp_path, gz=gz)
    d = load_dataset(DataConfig(source="mnist", path=str(tmp_path), val_fraction=0.2))
    assert d.levels == 256 and d.shape == (1, 6, 5)
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 10)
    assert torch.equal(d.test.x[:, 0] * 255, torch.from_numpy(test_x).float())
    assert torch.equal(d.test.labels, torch.from_numpy(test_y).long())
    assert _rows(torch.cat([d.train.x, d.val.x])) == _rows(torch.from_numpy(train_x).float() / 255)


def test_mnist_without_path_or_files_tells_to_set_path(tmp_path):
    with pytest.raises(DataError, match="data.path"):
        load_dataset(DataConfig(source="mnist"))
    with pytest.raises(DataError, match="t10k-images|train-images"):
        load_dataset(DataConfig(source="mnist", path=str(tmp_path)))


@pytest.mark.skipif(not Path(FASHION_MNIST_PATH).is_dir(), reason=f"{FASHION_MNIST_PATH} is not installed")
def test_fashion_mnist_default_path():
    d = load_dataset(DataConfig(source="fashion_mnist", max_examples=100))
    assert d.shape == (1, 28, 28) and d.levels == 256
    assert len(d.train) == len(d.val) == len(d.test) == 100


def test_a_sources_own_test_set_is_binarised_alike_whatever_the_data_seed(tmp_path):
    _idx_folder(tmp_path)
    a, b = (load_dataset(DataConfig(source="mnist", path=str(tmp_path), seed=s, binarize="dynamic")) for s in (0, 3))
    assert torch.equal(a.eval_tensor("test"), b.eval_tensor("test"))
    assert torch.equal(torch.cat(list(b.eval_batches("test", 3))), a.eval_tensor("test"))
    assert not torch.equal(a.eval_tensor("val"), b.eval_tensor("val"))  # drawn from the training file by seed
    x = np.random.default_rng(0).random((40, 6))  # no test set of its own: the seed draws it and its noise
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    c, d = (
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy"), seed=s, binarize="dynamic")) for s in (0, 3)
    )
    assert not torch.equal(c.eval_tensor("test"), d.eval_tensor("test"))


def test_npz_uint8_key_and_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", other=np.zeros((5, 2)), images=x, y=np.arange(20))
    d = load_dataset(
        DataConfig(source="npz", path=str(tmp_path / "d.npz"), key="images", val_fraction=0, test_fraction=0)
    )
    assert d.levels == 256 and d.shape == (3, 4, 4)
    order = d.train.labels
    assert torch.equal(d.train.x, torch.from_numpy(x).float()[order] / 255)
    with pytest.raises(DataError, match="images, y"):
        load_dataset(DataConfig(source="npz", path=str(tmp_path / "d.npz"), key="nope"))


def test_npy_float_kept_and_nan_rejected(tmp_path):
    x = np.linspace(-3, 5, 40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    d = load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy"), val_fraction=0, test_fraction=0))
    assert d.levels is None and d.shape == (4,)
    assert _rows(d.train.x) == _rows(torch.from_numpy(x))
    x[3, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="NaN"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy")))


def test_npy_wrong_dims_is_an_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(DataError, match="shape"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy")))


def test_csv_with_header_and_bad_cell(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,c\n1,2,3\n4,5,6.5\n-1,0,1e3\n")
    d = load_dataset(DataConfig(source="csv", path=str(tmp_path / "t.csv"), val_fraction=0, test_fraction=0))
    assert d.shape == (3,) and d.levels is None
    assert _rows(d.train.x) == _rows(torch.tensor([[1, 2, 3], [4, 5, 6.5], [-1, 0, 1000.0]]))
    (tmp_path / "t.csv").write_text("a,b,c\n1,2,3\n4,x,6\n")
    with pytest.raises(DataError, match=r"row 3, column 2 \('b'\)"):
        load_dataset(DataConfig(source="csv", path=str(tmp_path / "t.csv")))


@pytest.mark.parametrize("sep", ["\t", ";", " ", "   "])
def test_csv_separated_by_tabs_semicolons_or_spaces_reads_like_commas(tmp_path, sep):
    rows = [["a", "b", "c"], ["1", "2", "3"], ["4", "5", "6.5"]]
    (tmp_path / "t.csv").write_text("\n".join(sep.join(r) for r in rows) + "\n")
    d = load_dataset(DataConfig(source="csv", path=str(tmp_path / "t.csv"), val_fraction=0, test_fraction=0))
    assert _rows(d.train.x) == _rows(torch.tensor([[1, 2, 3], [4, 5, 6.5]]))


def test_a_csv_given_as_npy_is_named_and_never_unpickled(tmp_path):
    (tmp_path / "t.npy").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="not a .npy file.*source: csv") as e:
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "t.npy")))
    assert "allow_pickle" not in str(e.value)


def test_image_folder_resize_crop_channels_and_labels(tmp_path):
    for i, (cls, size) in enumerate([("cat", (20, 10)), ("dog", (10, 10)), ("dog", (12, 30))]):
        (tmp_path / cls).mkdir(exist_ok=True)
        Image.new("RGB", size, (255, 0, 0)).save(tmp_path / cls / f"{i}.png")
    cfg = dict(source="images", path=str(tmp_path), val_fraction=0, test_fraction=0)
    d = load_dataset(DataConfig(**cfg, image_size=[8, 8]))
    assert d.shape == (3, 8, 8) and d.levels == 256
    assert torch.allclose(d.train.x[:, 0], torch.ones(3, 8, 8)) and d.train.x[:, 1:].max() == 0
    assert sorted(d.train.labels.tolist()) == [0, 1, 1]
    grey = load_dataset(DataConfig(**cfg, image_size=[4, 6], channels=1))
    assert grey.shape == (1, 4, 6)
    with pytest.raises(DataError, match="image_size"):
        load_dataset(DataConfig(**cfg))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no .png"):
        load_dataset(DataConfig(source="images", path=str(tmp_path)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(DataConfig(source="images", path=str(tmp_path)))


# ------------------------------------------------------------------------------------------------ config


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys are: .*binarize"):
        DataConfig.from_dict({"sorce": "digits"})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"source": "images", "image_size": [8]}, "image_size"),
        ({"source": "images", "image_size": [8, 0]}, "image_size"),
        ({"image_size": [8, 8]}, "only used by source: images"),
        ({"binarize": "static", "dequantize": True}, "exclude"),
        ({"binarize": "sometimes"}, "binarize"),
    ],
)
def test_bad_config_values_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_dict(bad)


def test_config_round_trip():
    cfg = DataConfig(binarize="dynamic", flatten=True, seed=3)
    assert DataConfig.from_yaml(cfg.to_yaml()) == cfg


# ------------------------------------------------------------------------------------------------ splits


def test_splits_are_deterministic_disjoint_and_covering(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(1000, dtype=np.float32).reshape(100, 10))  # every row unique
    cfg = dict(source="npy", path=str(tmp_path / "x.npy"), val_fraction=0.2, test_fraction=0.15)
    a, b = load_dataset(DataConfig(**cfg, seed=1)), load_dataset(DataConfig(**cfg, seed=1))
    c = load_dataset(DataConfig(**cfg, seed=2))
    for s in ("train", "val", "test"):
        assert torch.equal(a.split(s).x, b.split(s).x)
    assert not torch.equal(a.test.x, c.test.x)
    assert (len(a.train), len(a.val), len(a.test)) == (65, 20, 15)
    first = {int(r[0]) for s in ("train", "val", "test") for r in a.split(s).x}
    assert first == set(range(0, 1000, 10))  # 100 distinct rows across the splits: disjoint and covering


def test_max_examples_caps_each_split():
    d = load_dataset(DataConfig(max_examples=50))
    assert (len(d.train), len(d.val), len(d.test)) == (50, 50, 50)


# ------------------------------------------------------------------------------------------------ batches


def test_batches_cover_train_once_per_epoch():
    d = load_dataset(DataConfig(flatten=True))
    batches = list(d.batches("train", 100))
    assert len(batches) == d.num_batches("train", 100) == len(d.train) // 100
    assert all(b.shape == (100, 64) for b in batches)
    assert len(list(d.batches("val", 100))) == d.num_batches("val", 100) == 2
    assert torch.equal(torch.cat(list(d.batches("val", 100))), d.val.x)  # eval: unshuffled, all kept


def test_dynamic_binarization_changes_per_epoch_and_is_reproducible():
    d = load_dataset(DataConfig(binarize="dynamic"))
    e0, e0_again = next(d.batches("train", 64, epoch=0)), next(d.batches("train", 64, epoch=0))
    e1 = next(d.batches("train", 64, epoch=1))
    assert set(e0.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(e0, e0_again) and not torch.equal(e0, e1)
    same_order = list(d.batches("train", 64, epoch=0, shuffle=False))[0]
    other_epoch = list(d.batches("train", 64, epoch=1, shuffle=False))[0]
    assert not torch.equal(same_order, other_epoch)  # same examples, fresh binarization


def test_eval_binarization_is_fixed_and_shared_by_both_modes():
    dyn, sta = load_dataset(DataConfig(binarize="dynamic")), load_dataset(DataConfig(binarize="static"))
    for split in ("val", "test"):
        t = dyn.eval_tensor(split)
        assert torch.equal(t, load_dataset(DataConfig(binarize="dynamic")).eval_tensor(split))
        assert torch.equal(torch.cat(list(dyn.batches(split, 50, epoch=3))), t)
        assert torch.equal(t, sta.eval_tensor(split))


def test_static_binarization_is_fixed_across_epochs():
    d = load_dataset(DataConfig(binarize="static"))
    e0 = torch.cat(list(d.batches("train", 100, epoch=0, shuffle=False)))
    e5 = torch.cat(list(d.batches("train", 100, epoch=5, shuffle=False)))
    assert torch.equal(e0, e5) and torch.equal(e0, d.eval_tensor("train")[: len(e0)])


def test_start_batch_resumes_exactly():
    d = load_dataset(DataConfig(binarize="dynamic"))
    full = list(d.batches("train", 32, epoch=2))
    resumed = list(d.batches("train", 32, epoch=2, start_batch=5))
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed, strict=True))


def test_dequantized_values_lie_in_their_bins():
    d = load_dataset(DataConfig(dequantize=True))
    k = torch.round(d.train.x * 16)
    x = torch.cat(list(d.batches("train", 100, shuffle=False, drop_last=False)))
    assert torch.all(x >= k / 17) and torch.all(x < (k + 1) / 17)
    assert not torch.equal(x, torch.cat(list(d.batches("train", 100, epoch=1, shuffle=False, drop_last=False))))
    assert torch.equal(d.eval_tensor("test"), load_dataset(DataConfig(dequantize=True)).eval_tensor("test"))
    assert dequantization_log_jacobian(256, 784) == pytest.approx(784 * math.log(256))


def test_standardization_uses_train_stats_only(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, (200, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    d = load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy"), standardize=True))
    assert torch.allclose(d.train.x.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(d.train.x.std(0, correction=0), torch.ones(5), atol=1e-4)
    raw = load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy")))
    assert torch.allclose(d.mean, raw.train.x.mean(0)) and not torch.allclose(d.mean, raw.test.x.mean(0))
    assert torch.allclose(d.test.x, (raw.test.x - d.mean) / d.std)


def test_a_column_constant_in_training_is_only_centred():
    from hvae.data.transforms import standardization_stats

    x = torch.randn(50, 3)
    x[:, 1] = 7.0
    mean, std = standardization_stats(x)
    assert std[1] == 1.0 and mean[1] == 7.0 and std[0] != 1.0
    assert ((torch.tensor([[0.0, 7.5, 0.0]]) - mean) / std)[0, 1] == 0.5  # not 5e5


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    (tmp_path / "t.csv").write_bytes("\ufeff1,2\n3,4\n5,6\n".encode())
    d = load_dataset(DataConfig(source="csv", path=str(tmp_path / "t.csv"), val_fraction=0, test_fraction=0))
    assert _rows(d.train.x) == _rows(torch.tensor([[1.0, 2], [3, 4], [5, 6]]))


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16) * 1024).reshape(8, 8)  # 0 .. 64512
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I")
    img.save(tmp_path / "a.png")
    d = load_dataset(DataConfig(source="images", path=str(tmp_path), val_fraction=0, test_fraction=0, channels=1))
    got = (d.train.x[0, 0] * 255).round().to(torch.int64)
    assert torch.equal(got, torch.from_numpy((ramp >> 8).astype(np.int64)))


def test_batch_larger_than_train_split_is_an_error():
    d = load_dataset(DataConfig(max_examples=10))
    with pytest.raises(DataError, match="batch size"):
        list(d.batches("train", 64))


# ------------------------------------------------------------------------------------------------ storage


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _all_batches(d, bs: int = 7) -> list[torch.Tensor]:
    """Everything a training run reads: train batches of three epochs, a resumed epoch, val/test batches."""
    out = [b for e in range(3) for b in d.batches("train", bs, epoch=e)]
    out += list(d.batches("train", bs, epoch=4, start_batch=3))
    out += list(d.batches("train", bs, epoch=1, shuffle=False, drop_last=False))
    out += [b for s in ("val", "test") for b in d.batches(s, bs)]
    out += list(d.batches("val", bs, epoch=2, shuffle=True))
    return out


def test_uint8_storage_gives_the_batches_of_the_float_path(tmp_path):
    k = np.random.default_rng(0).integers(0, 256, (60, 2, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "f.npy", (torch.from_numpy(k).float() / 255).numpy())  # the old float32 k / 255 values
    for binarize in ("none", "dynamic", "static"):
        q = load_dataset(DataConfig(source="npy", path=str(tmp_path / "k.npy"), binarize=binarize))
        f = load_dataset(DataConfig(source="npy", path=str(tmp_path / "f.npy"), binarize=binarize))
        assert q.train.data.dtype == torch.uint8 and f.train.data.dtype == torch.float32
        assert _same(_all_batches(q), _all_batches(f))
        assert all(torch.equal(q.eval_tensor(s), f.eval_tensor(s)) for s in ("train", "val", "test"))
        assert all(torch.equal(q.split(s).x, f.split(s).x) for s in ("train", "val", "test"))


def test_in_memory_uint8_split_holds_one_byte_per_value(tmp_path):
    _idx_folder(tmp_path)
    d = load_dataset(DataConfig(source="mnist", path=str(tmp_path), flatten=True))
    for s in ("train", "val", "test"):
        split = d.split(s)
        assert split.data.dtype == torch.uint8 and split.scale == 255.0 and not split.streamed
        assert split.nbytes == len(split) * 30  # N * D bytes (D = 6 * 5)
        assert split.x.dtype == torch.float32
    digits = load_dataset(DataConfig())
    assert digits.train.data.dtype == torch.uint8 and digits.train.scale == 16.0
    from sklearn.datasets import load_digits

    old = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)  # the former float storage
    x = torch.cat([digits.train.x, digits.val.x, digits.test.x])[:, 0]
    assert _rows(x) == _rows(old)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("uint8", {"binarize": "dynamic"}),
        ("uint8", {"binarize": "static"}),
        ("uint8", {"dequantize": True, "flatten": True}),
        ("uint8", {"max_examples": 20}),
        ("bool", {}),
        ("float", {"standardize": True}),
        ("float", {"binarize": "static", "flatten": True}),
    ],
)
def test_streamed_npy_gives_the_batches_of_in_memory(tmp_path, kind, options):
    rng = np.random.default_rng(1)
    a = {
        "uint8": rng.integers(0, 256, (57, 3, 5, 4), dtype=np.uint8),
        "bool": rng.random((57, 12)) < 0.3,
        "float": rng.random((57, 1, 6, 6), dtype=np.float32),
    }[kind]
    np.save(tmp_path / "x.npy", a)
    cfg = dict(source="npy", path=str(tmp_path / "x.npy"), seed=5, **options)
    mem = load_dataset(DataConfig(**cfg, in_memory="always"))
    disk = load_dataset(DataConfig(**cfg, in_memory="never"))
    assert not mem.train.streamed and disk.train.streamed and disk.train.nbytes == 0
    assert disk.shape == mem.shape and disk.levels == mem.levels
    assert _same(_all_batches(disk), _all_batches(mem))
    for s in ("train", "val", "test"):
        assert disk.split(s).labels is None and mem.split(s).labels is None
        assert torch.equal(disk.split(s).x, mem.split(s).x)
        assert _same(list(disk.eval_batches(s, 6)), list(mem.eval_batches(s, 6)))
        assert torch.equal(torch.cat(list(disk.eval_batches(s, 4))), mem.eval_tensor(s))
        assert torch.equal(disk.eval_tensor(s), mem.eval_tensor(s))
    if options.get("standardize"):
        assert torch.equal(disk.mean, mem.mean) and torch.equal(disk.std, mem.std)


def test_eval_batches_equal_eval_tensor_in_any_chunking():
    d = load_dataset(DataConfig(binarize="dynamic"))
    fresh = [torch.cat(list(d.eval_batches("test", bs))) for bs in (1, 17, 1000)]
    t = d.eval_tensor("test")
    assert all(torch.equal(f, t) for f in fresh)
    assert torch.equal(torch.cat(list(d.eval_batches("test", 33))), t)  # now served from the cache
    b = next(d.eval_batches("test", 8))
    b += 1
    assert not torch.equal(d.eval_tensor("test")[:8], b)  # batches are copies
    deq = load_dataset(DataConfig(dequantize=True, flatten=True))
    assert torch.equal(torch.cat(list(deq.eval_batches("val", 7))), deq.eval_tensor("val"))


def test_auto_streams_beyond_the_memory_budget(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((20, 8), dtype=np.uint8))  # 160 bytes in memory
    path = str(tmp_path / "x.npy")
    assert not load_dataset(DataConfig(source="npy", path=path)).train.streamed
    assert load_dataset(DataConfig(source="npy", path=path, memory_budget_gb=100 / 2**30)).train.streamed
    assert not load_dataset(DataConfig(source="npy", path=path, memory_budget_gb=160 / 2**30)).train.streamed


def test_streamed_static_binarization_beyond_the_budget_uses_a_temporary_file(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).integers(0, 256, (40, 10), dtype=np.uint8))
    cfg = dict(source="npy", path=str(tmp_path / "x.npy"), binarize="static")
    disk = load_dataset(DataConfig(**cfg, in_memory="never"))
    mem = load_dataset(DataConfig(**cfg))
    assert _same(list(disk.batches("train", 5, epoch=1)), list(mem.batches("train", 5, epoch=1)))
    assert isinstance(disk._fixed["train"].data, LazyRows)  # in_memory: never keeps it on disk too


def test_streamed_float_npy_is_checked_for_nan_at_load(tmp_path):
    x = np.ones((30, 4), dtype=np.float32)
    x[17, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match=r"1 inf values in 1 examples \(first: example 17\)"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "x.npy"), in_memory="never"))


def test_in_memory_never_is_refused_for_sources_it_cannot_stream():
    with pytest.raises(ConfigError, match="in_memory: never streams only sources npy and images"):
        DataConfig(in_memory="never")
    with pytest.raises(ConfigError, match="memory_budget_gb"):
        DataConfig(memory_budget_gb=0)
    with pytest.raises(ConfigError, match="in_memory"):
        DataConfig.from_dict({"in_memory": "sometimes"})


def _image_folder(folder: Path, n: int = 23) -> None:
    rng = np.random.default_rng(3)
    for i in range(n):
        cls = folder / ("a" if i % 3 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(6, 12)), int(rng.integers(6, 12))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(cls / f"{i:03d}.png")


@pytest.mark.parametrize("options", [{"binarize": "dynamic"}, {"dequantize": True, "channels": 1}, {}])
def test_lazy_image_folder_gives_the_batches_of_in_memory(tmp_path, options):
    _image_folder(tmp_path)
    cfg = dict(source="images", path=str(tmp_path), image_size=[5, 6], **options)
    mem = load_dataset(DataConfig(**cfg, in_memory="always"))
    lazy = load_dataset(DataConfig(**cfg, in_memory="never"))
    assert lazy.train.streamed and mem.train.data.dtype == torch.uint8
    assert mem.train.nbytes == len(mem.train) * math.prod(mem.shape)
    assert lazy.shape == mem.shape
    assert _same(_all_batches(lazy, bs=4), _all_batches(mem, bs=4))
    for s in ("train", "val", "test"):
        assert torch.equal(lazy.split(s).labels, mem.split(s).labels)
        assert torch.equal(lazy.eval_tensor(s), mem.eval_tensor(s))
        assert torch.equal(torch.cat(list(lazy.eval_batches(s, 3))), mem.eval_tensor(s))


def test_lazy_image_folder_names_a_broken_file_when_its_batch_is_read(tmp_path):
    _image_folder(tmp_path, n=6)
    (tmp_path / "a" / "zz.png").write_bytes(b"not a png")
    d = load_dataset(DataConfig(source="images", path=str(tmp_path), image_size=[4, 4], in_memory="never"))
    with pytest.raises(DataError, match="zz.png"):
        list(d.batches("train", 1, drop_last=False))
    with pytest.raises(DataError, match="zz.png"):
        load_dataset(DataConfig(source="images", path=str(tmp_path), image_size=[4, 4]))


def test_flattened_data_with_an_empty_validation_split():
    ds = load_dataset(DataConfig(source="digits", flatten=True, val_fraction=0.0))
    assert len(ds.val) == 0 and ds.shape == (64,) and ds.val.x.shape == (0, 64)


# ------------------------------------------------------------------------------------------------ load_like


def test_load_like_reads_an_idx_folder_as_the_runs_own_test_split(tmp_path):
    _idx_folder(tmp_path)
    for seed in (0, 3):
        cfg = DataConfig(source="mnist", path=str(tmp_path), binarize="dynamic", seed=seed)
        x = load_like(cfg, tmp_path, data_shape=[1, 6, 5])
        assert torch.equal(x, load_dataset(cfg).eval_tensor("test"))
    one_file = load_like(DataConfig(source="mnist", path=str(tmp_path)), tmp_path / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(one_file, load_dataset(DataConfig(source="mnist", path=str(tmp_path))).test.x)


def test_load_like_binarizes_other_data_with_the_test_split_rule(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "run.npy", rng.random((40, 6)).astype(np.float32))
    cfg = DataConfig(source="npy", path=str(tmp_path / "run.npy"), binarize="static", seed=5)
    d = load_dataset(cfg)
    np.save(tmp_path / "held_out.npy", d.test.x.numpy())  # the run's test rows, as another file
    assert torch.equal(load_like(cfg, tmp_path / "held_out.npy"), d.eval_tensor("test"))
    np.save(tmp_path / "pixels.npy", (255 * rng.random((4, 6))).astype(np.float32))
    with pytest.raises(DataError, match="divide by 255 or save as uint8"):
        load_like(cfg, tmp_path / "pixels.npy")


def test_load_like_standardizes_with_the_training_statistics(tmp_path):
    x = np.random.default_rng(2).normal(3.0, 2.0, (50, 4)).astype(np.float32)
    np.savetxt(tmp_path / "t.csv", x, delimiter=",")
    cfg = DataConfig(source="csv", path=str(tmp_path / "t.csv"), standardize=True)
    d = load_dataset(cfg)
    other = np.random.default_rng(3).normal(0.0, 1.0, (7, 4)).astype(np.float32)
    np.save(tmp_path / "other.npy", other)
    got = load_like(cfg, tmp_path / "other.npy", data_shape=[4])
    assert torch.equal(got, (torch.from_numpy(other) - d.mean) / d.std)
    assert torch.equal(load_like(cfg, tmp_path / "other.npy", train_stats=(d.mean, d.std)), got)
    with pytest.raises(DataError, match=r"data_shape is \(5,\)"):
        load_like(cfg, tmp_path / "other.npy", data_shape=[5])


def test_load_like_images_of_another_size_say_how_to_resize(tmp_path):
    _image_folder(tmp_path / "imgs", n=5)
    cfg = DataConfig(source="images", path=str(tmp_path / "imgs"), image_size=[8, 8])
    assert load_like(cfg, tmp_path / "imgs", data_shape=[3, 8, 8]).shape == (5, 3, 8, 8)
    first = sorted((tmp_path / "imgs").rglob("*.png"))[0]
    assert torch.equal(load_like(cfg, first), load_like(cfg, tmp_path / "imgs")[:1])
    npy = DataConfig(source="npy", path=str(tmp_path / "x.npy"))
    with pytest.raises(DataError, match=r"image_size: \[H, W\]"):
        load_like(npy, tmp_path / "imgs", data_shape=[1, 8, 8])


def test_load_like_text_uses_the_runs_tokenizer_and_length(tmp_path):
    from hvae.data.text import ByteTokenizer, CharTokenizer

    (tmp_path / "a.txt").write_text("hello\n\nworld wide\n")
    cfg = DataConfig(source="text", path=str(tmp_path / "a.txt"), max_length=8)
    x = load_like(cfg, tmp_path / "a.txt", data_shape=[8])
    assert x.dtype == torch.int64 and x.shape == (2, 8)
    assert ByteTokenizer().decode_batch(x) == ["hello", "world w"]  # truncated to 7 bytes + end-of-sequence
    char = DataConfig(source="text", path=str(tmp_path / "a.txt"), tokenizer="char", max_length=8)
    with pytest.raises(DataError, match="run_tokenizer"):
        load_like(char, tmp_path / "a.txt")
    tok = CharTokenizer("helowrd ")
    assert tok.decode_batch(load_like(char, tmp_path / "a.txt", tokenizer=tok)) == ["hello", "world w"]
    with pytest.raises(DataError, match="models text"):
        np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
        load_like(cfg, tmp_path / "x.npy")


# ------------------------------------------------------------------------------------------------ predefined splits


def test_predefined_npy_splits_are_read_as_given_and_a_missing_val_is_carved(tmp_path):
    rng = np.random.default_rng(4)
    parts = {name: rng.random((n, 3)).astype(np.float32) for name, n in (("train", 40), ("test", 6))}
    for name, a in parts.items():
        np.save(tmp_path / f"{name}.npy", a)
    d = load_dataset(DataConfig(source="npy", path=str(tmp_path), val_fraction=0.1))
    assert torch.equal(d.test.x, torch.from_numpy(parts["test"]))  # the file, in its order
    assert (len(d.train), len(d.val)) == (36, 4)
    assert _rows(d.train.x) | _rows(d.val.x) == _rows(torch.from_numpy(parts["train"]))
    assert d.splits_from == {
        "train": f"{tmp_path / 'train.npy'} less the val split",
        "val": f"10% of {tmp_path / 'train.npy'}",
        "test": str(tmp_path / "test.npy"),
    }
    assert d.official_test  # its fixed binarisation would take seed 0, like a source's own test set


def test_explicit_split_paths_and_the_default_split_report(tmp_path):
    rng = np.random.default_rng(5)
    np.save(tmp_path / "a.npy", rng.random((30, 2)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.random((5, 2)).astype(np.float32))
    d = load_dataset(DataConfig(source="npy", path=str(tmp_path / "a.npy"), val_path=str(tmp_path / "b.npy")))
    assert torch.equal(d.val.x, torch.from_numpy(np.load(tmp_path / "b.npy")))
    assert (len(d.train), len(d.test)) == (27, 3)
    assert d.splits_from["val"] == str(tmp_path / "b.npy") and d.splits_from["test"] == f"10% of {tmp_path / 'a.npy'}"
    same = load_dataset(DataConfig(source="npy", train_path=str(tmp_path / "a.npy"), val_path=str(tmp_path / "b.npy")))
    assert torch.equal(same.train.x, d.train.x)
    plain = load_dataset(DataConfig(source="digits"))
    assert plain.splits_from == {
        "train": "digits less the val and test split",
        "val": "10% of digits",
        "test": "10% of digits",
    }
    with pytest.raises(DataError, match="data.test_path .*missing.npy does not exist"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path / "a.npy"), test_path=str(tmp_path / "missing.npy")))
    with pytest.raises(ConfigError, match="set data.train_path"):
        DataConfig(source="npy", val_path=str(tmp_path / "b.npy"))


def test_image_folders_train_val_test_are_splits_not_classes(tmp_path):
    for name, n in (("train", 9), ("val", 4), ("test", 3)):
        _image_folder(tmp_path / name, n)
    d = load_dataset(DataConfig(source="images", path=str(tmp_path), image_size=[6, 6], channels=1))
    assert (len(d.train), len(d.val), len(d.test)) == (9, 4, 3)
    assert d.train.labels is not None and set(d.train.labels.tolist()) == {0, 1}  # the class folders a/ b/ inside
    (tmp_path / "val.npy").write_bytes(b"")  # only folders count for images
    (tmp_path / "test").rename(tmp_path / "valid")  # now two val splits
    with pytest.raises(DataError, match="several val splits \\(val, valid\\)"):
        load_dataset(DataConfig(source="images", path=str(tmp_path), image_size=[6, 6]))


def test_predefined_splits_must_share_shape_and_kind(tmp_path):
    np.save(tmp_path / "train.npy", np.zeros((10, 3), np.uint8))
    np.save(tmp_path / "test.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(DataError, match="float values, but the training split .* holds 256-level"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    np.save(tmp_path / "test.npy", np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError, match=r"shape \(5,\), but the training split's are \(3,\)"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))
    (tmp_path / "train.npy").unlink()
    with pytest.raises(DataError, match="holds test split\\(s\\) but no train split"):
        load_dataset(DataConfig(source="npy", path=str(tmp_path)))


def test_load_like_takes_the_test_noise_of_a_predefined_test_file(tmp_path):
    rng = np.random.default_rng(6)
    np.save(tmp_path / "train.npy", rng.random((20, 4)).astype(np.float32))
    np.save(tmp_path / "test.npy", rng.random((5, 4)).astype(np.float32))
    cfg = DataConfig(source="npy", path=str(tmp_path), binarize="dynamic", seed=7)
    assert torch.equal(load_like(cfg, tmp_path / "test.npy"), load_dataset(cfg).eval_tensor("test"))
