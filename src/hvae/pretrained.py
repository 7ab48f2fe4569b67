"""Saved models: ``save_pretrained`` / ``from_pretrained``, as diffusers' ``ModelMixin``.

A saved model is a folder of two files, nothing pickled::

    config.json         the model's config (``config.to_json()``)
    model.safetensors   every parameter and buffer; its metadata holds the config again and a digest of the
                        tensors (:func:`hvae.files.tensors_digest`)

Each file is written atomically (to a temporary file, then renamed). The two are replaced one after the
other, so the weights carry their config: a save cut short between them never passes for a model. The
digest catches bytes changed after the save (:class:`hvae.files.DamagedFileError`); saves of older hvae
versions, without config or digest in the metadata, still load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .files import atomic_path, atomic_write_text, load_tensors, save_tensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


if TYPE_CHECKING:  # the type checker sees the nn.Module the mixin is used with; at run time a plain mixin
    _Module = torch.nn.Module
else:
    _Module = object


class PretrainedMixin(_Module):
    """``save_pretrained`` and ``from_pretrained`` for an ``nn.Module`` built from one config: the class sets
    ``config_class`` (with ``from_dict`` and ``to_json``) and keeps its config as ``self.config``."""

    config_class: Any  # a config class: from_dict(dict) -> config, config.to_json() -> str
    config: Any  # an instance of config_class

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and buffers, with their config and
        digest) into ``directory``, each atomically. Returns the folder."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.config.to_json()
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(out / WEIGHTS_NAME) as tmp:
            save_tensors(tensors, tmp, metadata={"format": "pt", "library": "hvae", "config": config})
        atomic_write_text(out / CONFIG_NAME, config)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """Load a model written by :meth:`save_pretrained` (JSON + safetensors; nothing is unpickled), in the
        dtype it was saved in, on ``map_location``. The model comes back in eval mode; call ``.train()`` to
        fine-tune it. Raises ``FileNotFoundError`` for a missing file, :class:`~hvae.files.DamagedFileError`
        for a file that is truncated or whose tensors changed since the save, ``ValueError`` for a config
        and weights of different saves or architectures."""
        d = Path(directory)
        cfg_path, w_path = d / CONFIG_NAME, d / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing: {d} is not a saved hvae model (save_pretrained writes it)")
        try:
            config = cls.config_class.from_dict(json.loads(cfg_path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e}); the file is damaged") from None
        try:
            state, metadata = load_tensors(w_path)  # on the host: checked there, then moved with the model
        except OSError as e:
            raise ValueError(f"{w_path} cannot be read ({e})") from None
        saved_config = metadata.get("config")
        if saved_config is not None:
            saved = cls.config_class.from_dict(json.loads(saved_config))
            if saved != config:
                raise ValueError(_config_mismatch(cfg_path, w_path, config.to_dict(), saved.to_dict()))
        model = cls(config)
        floats = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(floats) == 1 and floats != {torch.float32}:  # a float64 or bf16 model comes back as it was saved
            model = model.to(floats.pop())
        if config.decoder_only:  # saved before decoder-only models dropped their unused encoder and latent levels
            state = {k: v for k, v in state.items() if not k.startswith(_NOT_IN_DECODER_ONLY)}
        missing, unexpected = sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict()))
        if missing or unexpected:
            raise ValueError(f"{w_path} does not match {cfg_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{w_path} does not match {cfg_path}: {e}") from None
        return model.to(map_location).eval()


#: the weights a decoder-only model once saved unused (:class:`hvae.HierarchicalVAE` no longer builds them)
_NOT_IN_DECODER_ONLY = ("token_encoder.", "encoder.", "layers.", "depth_attn.")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's dict with its sections' keys dotted: ``{"vq": {"codes": 8}}`` -> ``{"vq.codes": 8}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config_mismatch(cfg_path: Path, w_path: Path, now: dict[str, Any], saved: dict[str, Any]) -> str:
    """What is wrong when ``config.json`` no longer holds the config the weights were saved with: the keys that
    differ, with both values, and the two ways out."""
    now, saved = _flat(now), _flat(saved)
    keys = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
    shown = "; ".join(f"{k} is {now.get(k)!r} there but {saved.get(k)!r} in the weights' own config" for k in keys[:5])
    more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
    return (
        f"{cfg_path} no longer matches the config saved inside {w_path} with the weights: {shown}{more}. "
        f"{cfg_path.name} was changed after the save (edited by hand or replaced; or a save stopped between the "
        f"two files), and a model's settings cannot change under trained weights. Restore {cfg_path.name} "
        "to those values, or load another copy of the model (a run's checkpoints/*/model); to change a setting, "
        "load the model, change model.config in Python and save it, or train a new model"
    )
