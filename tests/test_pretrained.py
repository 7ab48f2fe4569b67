"""Saved models and checkpoints carry a digest of their tensors: bytes changed after the save are caught."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hvae
from hvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hvae.files import DamagedFileError, tensors_digest


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = hvae.ModelConfig.from_dict(dict(data_shape=[12], latent_dims=[4, 2], hidden_dims=[16, 8], depth=1))
    return hvae.build_model(cfg)


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of a safetensors file's tensor data (past its JSON header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")  # u64 header length, the header, then the data
    mid = start + (len(raw) - start - count) // 2
    assert mid >= start and mid + count <= len(raw)
    raw[mid : mid + count] = bytes(b ^ 0xFF for b in raw[mid : mid + count])
    path.write_bytes(bytes(raw))


def test_tensors_digest_is_sha256_over_sorted_names_dtypes_shapes_and_bytes():
    a = torch.tensor([1.0, 2.0])
    b = torch.tensor([[7]], dtype=torch.int16)
    want = hashlib.sha256()
    for name, t, dtype in (("a", a, "float32"), ("b", b, "int16")):  # sorted by name
        want.update(f"{name}\0{dtype}\0{tuple(t.shape)}\0".encode())
        want.update(t.numpy().tobytes())
    assert tensors_digest({"b": b, "a": a}) == want.hexdigest()


def test_tensors_digest_changes_with_any_name_dtype_shape_or_bit():
    t = torch.arange(6, dtype=torch.float32)
    base = tensors_digest({"w": t})
    flipped = t.clone()
    flipped.view(torch.int32)[3] ^= 1  # one bit of one element
    others = [
        {"v": t},
        {"w": t.double()},
        {"w": t.view(2, 3)},
        {"w": flipped},
        {"w": t, "x": torch.zeros(0)},
    ]
    digests = [tensors_digest(o) for o in others]
    assert base not in digests and len(set(digests)) == len(digests)
    # the layout in memory does not count: a transposed view hashes as its contiguous copy; bf16 and bool work
    m = torch.randn(3, 4)
    assert tensors_digest({"m": m.t()}) == tensors_digest({"m": m.t().contiguous()})
    assert tensors_digest({"h": m.bfloat16(), "f": m > 0}) != tensors_digest({"h": m.bfloat16(), "f": m < 0})


def test_a_saved_model_with_flipped_bytes_raises_damaged_file_error(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    assert hvae.load(tmp_path) is not None  # intact: loads
    _flip_tensor_bytes(path)
    with pytest.raises(DamagedFileError) as caught:
        hvae.load(tmp_path)
    assert caught.value.path == path
    assert str(caught.value) == f"{path} is damaged: its tensors do not match the digest written with them"
    assert isinstance(caught.value, ValueError)  # callers catching ValueError keep working


def test_a_truncated_model_file_is_damaged_too(tmp_path):
    _model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DamagedFileError, match="model.safetensors cannot be read .*truncated or damaged") as caught:
        hvae.load(tmp_path)
    assert caught.value.path == path


def test_a_model_saved_without_a_digest_still_loads(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    # as an older hvae wrote it: the config in the metadata, no digest
    save_file(load_file(path), path, metadata={"format": "pt", "config": model.config.to_json()})
    back = hvae.load(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def _checkpoint(tmp_path, ema=True):
    model = _model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.rand(4, 12).round()).loss.backward()
    opt.step()
    ema_model = _model(seed=1) if ema else None
    return save_checkpoint(tmp_path, model, opt, ema_model, {"step": 1, "epoch": 0}), model


@pytest.mark.parametrize("name", ["model/model.safetensors", "optimizer.safetensors", "ema.safetensors"])
def test_a_checkpoint_with_flipped_bytes_raises_damaged_file_error_naming_the_file(tmp_path, name):
    ckpt, model = _checkpoint(tmp_path)
    fresh = _model(seed=5)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    state = load_checkpoint(ckpt, fresh, opt, _model(seed=6), "cpu")  # intact: loads
    assert state["step"] == 1 and all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    _flip_tensor_bytes(ckpt / name)
    with pytest.raises(DamagedFileError, match="do not match the digest written with them") as caught:
        load_checkpoint(ckpt, _model(), torch.optim.Adam(_model().parameters()), _model(), "cpu")
    assert caught.value.path == ckpt / name
    assert isinstance(caught.value, CheckpointError)  # what the trainer's callers catch


def test_checkpoint_files_carry_their_digest(tmp_path):
    from safetensors import safe_open

    ckpt, _ = _checkpoint(tmp_path)
    for name in ("model/model.safetensors", "optimizer.safetensors", "ema.safetensors", "rng.safetensors"):
        with safe_open(str(ckpt / name), framework="pt") as f:
            assert f.metadata()["sha256"] == tensors_digest({k: f.get_tensor(k) for k in f.keys()}), name  # noqa: SIM118 (safe_open is not iterable)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 1
