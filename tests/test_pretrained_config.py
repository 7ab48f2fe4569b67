"""A model folder whose config.json no longer holds the config its weights were saved with (hvae.pretrained)."""

import json

import pytest

import hvae
from hvae.config import ModelConfig


def _saved(tmp_path):
    cfg = ModelConfig(data_shape=[12], latent_dims=[4, 2], hidden_dims=[16, 8], depth=1)
    hvae.build_model(cfg).save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text())


def test_a_hand_edited_config_names_the_fields_and_both_values_and_the_fixes(tmp_path):
    cfg = _saved(tmp_path)
    edited = {**cfg, "latent_dims": [8, 2], "beta": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError) as e:
        hvae.load(tmp_path)
    said = str(e.value)
    assert "beta is 0.5 there but 1.0 in the weights' own config" in said
    assert "latent_dims is [8, 2] there but [4, 2] in the weights' own config" in said
    assert said.index("beta") < said.index("latent_dims")  # in name order
    assert "edited by hand" in said and "Restore config.json to those values" in said
    assert "checkpoints/*/model" in said
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # restored: loads again
    assert hvae.load(tmp_path).config.latent_dims == [4, 2]


def test_a_field_of_a_section_is_named_by_its_dotted_key(tmp_path):
    cfg = _saved(tmp_path)
    section = next(k for k, v in cfg.items() if isinstance(v, dict) and v)
    key, value = next(iter(cfg[section].items()))
    changed = value + 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else not value
    (tmp_path / "config.json").write_text(json.dumps({**cfg, section: {**cfg[section], key: changed}}))
    with pytest.raises(ValueError, match=rf"{section}\.{key} is {changed!r} there but {value!r}"):
        hvae.load(tmp_path)
