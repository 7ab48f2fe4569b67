"""ModelConfig: JSON/YAML round trip, presets, and the errors a user sees for a bad config."""

import dataclasses

import pytest

import hvae
from hvae import ConfigError, ModelConfig
from hvae.configbase import apply_overrides, parse_override


@pytest.mark.parametrize("preset", ["lvae_mnist", "small", "conv_small"])
def test_presets_round_trip_through_json_and_yaml(preset):
    cfg = getattr(hvae.presets, preset)()
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert ModelConfig.from_yaml(cfg.to_yaml()) == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_file_path_is_read(tmp_path):
    cfg = hvae.presets.small(likelihood_scale=None, beta=0.5)
    path = tmp_path / "model.yaml"
    path.write_text(cfg.to_yaml())
    assert ModelConfig.from_yaml(path) == cfg
    assert ModelConfig.from_yaml(str(path)) == cfg


def test_lvae_mnist_is_the_papers_architecture():
    cfg = hvae.presets.lvae_mnist()
    assert cfg.data_shape == [784]
    assert cfg.latent_dims == [64, 32, 16, 8, 4]
    assert cfg.hidden_dims == [512, 256, 128, 64, 32]
    assert (cfg.inference, cfg.activation, cfg.leaky_slope, cfg.batch_norm) == ("ladder", "leaky_relu", 0.1, True)
    assert cfg.scale_param == "variance"  # sigma^2 = softplus(Linear(d)), as in the paper
    assert hvae.presets.lvae_mnist(inference="bottom_up").inference == "bottom_up"


def test_a_config_saved_before_scale_param_existed_reads_as_std():
    """Saved models and runs from before the option keep the parametrisation they were trained with."""
    old = hvae.presets.lvae_mnist().to_dict()
    del old["scale_param"]
    assert ModelConfig.from_dict(old).scale_param == "std"


def test_lvae_discrete_keeps_the_ladder_vaes_variance_parametrisation():
    assert hvae.presets.lvae_discrete().scale_param == "variance"


def test_conv_preset_fills_default_strides():
    cfg = ModelConfig(data_shape=[1, 8, 8], latent_dims=[4, 4], hidden_dims=[8, 8], block="conv")
    assert cfg.strides == [2, 2]
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(ConfigError, match="unknown key latent_dim;") as e:
        ModelConfig.from_dict({"latent_dim": [4]})
    assert "latent_dims" in str(e.value) and "valid keys" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key"):
        hvae.presets.small(lattent_dims=[4, 2, 1])
    with pytest.raises(TypeError):  # direct construction: Python itself rejects the keyword
        ModelConfig(latent_dim=[4])


@pytest.mark.parametrize(
    "key, value, accepted",
    [
        ("inference", "ladderr", "'ladder' | 'top_down' | 'bottom_up'"),
        ("block", "resnet", "'mlp' | 'conv'"),
        ("likelihood", "poisson", "'bernoulli' | 'gaussian'"),
        ("kl", "exact", "'analytic' | 'mc'"),
        ("free_bits_mode", "group", "'layer' | 'channel'"),
        ("activation", "sigmoid", "'leaky_relu'"),
        ("scale_param", "logvar", "'std' | 'variance'"),
    ],
)
def test_bad_literal_names_the_key_and_the_accepted_values(key, value, accepted):
    for make in (lambda: ModelConfig.from_dict({key: value}), lambda: ModelConfig(**{key: value})):
        with pytest.raises(ConfigError) as e:
            make()
        msg = str(e.value)
        assert msg.startswith(key + ":") and repr(value) in msg and accepted in msg


@pytest.mark.parametrize(
    "changes, key",
    [
        (dict(depth=1.5), "depth"),
        (dict(depth=True), "depth"),
        (dict(beta="1"), "beta"),
        (dict(batch_norm="yes"), "batch_norm"),
        (dict(latent_dims=[4, "2"]), r"latent_dims\[1\]"),
        (dict(latent_dims=4), "latent_dims"),
        (dict(likelihood_scale="fixed"), "likelihood_scale"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(changes, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        ModelConfig.from_dict(changes)
    with pytest.raises(ConfigError, match=f"^{key}"):
        ModelConfig(**changes)


def test_numbers_are_coerced_losslessly():
    cfg = ModelConfig(beta=1, likelihood_scale=1, data_shape=(64,))
    assert isinstance(cfg.beta, float) and isinstance(cfg.likelihood_scale, float)
    assert cfg.data_shape == [64]


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(hidden_dims=[8, 8]), r"hidden_dims: needs one width per latent layer \(3\), got 2"),
        (dict(latent_dims=[]), "latent_dims: a hierarchy needs at least one"),
        (dict(latent_dims=[4, 0, 2]), "latent_dims: every entry must be a positive"),
        (dict(strides=[2, 2, 2]), "strides: only used by block: conv"),
        (dict(data_shape=[1, 2, 3, 4]), "data_shape: expected"),
        (dict(beta=-1.0), "beta: must be >= 0"),
        (dict(free_bits=-0.5), "free_bits: must be >= 0"),
        (dict(min_scale=0.0), "min_scale: must be > 0"),
        (dict(num_bits=0), "num_bits: must be in 1..16"),
        (dict(likelihood_scale=0.0), "likelihood_scale: must be > 0"),
        (dict(residual_posterior=True), "residual_posterior: only defined for inference: top_down"),
        (dict(likelihood="discretized_logistic_mixture"), "likelihood: discretized_logistic_mixture models images"),
    ],
)
def test_invalid_values_raise_a_message_naming_the_key(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ModelConfig.from_dict({**hvae.presets.small().to_dict(), **changes})


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(strides=[2]), r"strides: needs one entry per latent layer \(2\)"),
        (dict(strides=[3, 1]), "each 1 or 2"),
        (dict(data_shape=[1, 6, 6]), "must divide by the total downsampling 4"),
        (dict(data_shape=[64]), "block: conv needs images"),
    ],
)
def test_conv_geometry_is_checked(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        hvae.presets.conv_small(**changes)


def test_replace_validates_and_leaves_the_original_alone():
    cfg = hvae.presets.small()
    other = cfg.replace(beta=0.5)
    assert other.beta == 0.5 and cfg.beta == 1.0
    with pytest.raises(ConfigError, match="inference"):
        cfg.replace(inference="nope")


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        ModelConfig(depth=-1)


def test_defaults_form_a_valid_config_that_serialises_every_field():
    data = ModelConfig().to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_overrides_are_parsed_as_yaml_and_validated_on_build():
    data = apply_overrides(hvae.presets.small().to_dict(), ["beta=0.25", "latent_dims=[8, 4, 2]", "inference=top_down"])
    cfg = ModelConfig.from_dict(data)
    assert (cfg.beta, cfg.latent_dims, cfg.inference) == (0.25, [8, 4, 2], "top_down")
    assert parse_override("a.b=true") == (["a", "b"], True)
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("beta")
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict(apply_overrides(data, ["betta=1"]))


def test_floats_in_exponent_form_are_numbers_in_files_and_overrides(tmp_path):
    from hvae.runconfig import load_run_config

    assert parse_override("train.lr=1e-3") == (["train", "lr"], 0.001)
    assert parse_override("train.lr=5E+4")[1] == 50000.0 and parse_override("x=.5e-1")[1] == 0.05
    assert parse_override("x='1e-3'")[1] == "1e-3" and parse_override("x=1e3x")[1] == "1e3x"
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: small\ntrain:\n  lr: 2e-4\n")
    cfg, _ = load_run_config(path)
    assert cfg.train.lr == 0.0002
    path.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model must be a section"):
        load_run_config(path)


def test_a_yaml_boolean_for_a_word_says_to_quote_it():
    from hvae.runconfig import load_run_config

    with pytest.raises(ConfigError, match="binarize: True is not accepted.*quote the word"):
        load_run_config(None, ["data.binarize=yes"])


# ------------------------------------------------------------------------------------------- sections


def _flat(data: dict) -> dict:
    """``data`` with every section's keys written flat, as configs and saved models were before the sections
    (``vq.codes`` -> ``vq_codes``, ``attention.depth`` -> ``depth_attention``, ...)."""
    out = dict(data)
    for old, new in ModelConfig.RENAMED.items():
        section, key = new.split(".")
        out[old] = data[section][key]
    for section in {new.split(".")[0] for new in ModelConfig.RENAMED.values()}:
        del out[section]
    return out


def test_a_model_saved_with_the_flat_keys_still_loads(tmp_path):
    import json

    import torch

    cfg = ModelConfig(
        data_shape=[1, 8, 8], latent_dims=[2, 2], hidden_dims=[8, 8], depth=1, block="conv",
        latent_types=["gaussian", "vq"], vq={"codes": 8, "dim": 3, "commitment": 0.5, "top_prior": "uniform"},
        gumbel={"temperature": 0.7}, spectral={"reg": 0.1, "reg_init": 1.0, "iterations": 2},
        attention={"levels": [0], "heads": 2, "depth": True, "depth_dim": 8},
        decoder="pixelcnn", ar_cond_channels=3, pixelcnn={"layers": 2, "channels": 8, "kernel": 3},
    )  # fmt: skip
    torch.manual_seed(0)
    model = hvae.build_model(cfg).train()
    model(torch.rand(16, 1, 8, 8).round())  # the codebook is initialised from a training pass
    path = model.save_pretrained(tmp_path / "m")
    config_json = tmp_path / "m" / "config.json"
    saved = json.loads(config_json.read_text())
    flat = _flat(saved)
    assert {"vq_codes", "spectral_reg", "depth_attention_dim", "pixelcnn_kernel"} <= set(flat)
    config_json.write_text(json.dumps(flat))
    with pytest.warns(FutureWarning, match=r"old config keys read in their new place: .*vq_codes -> vq\.codes"):
        again = hvae.load(path)
    assert again.config == cfg
    assert (again.config.spectral.iterations, again.config.attention.depth_dim, again.config.pixelcnn.kernel) == (
        2,
        8,
        3,
    )
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_flat_keys_in_yaml_overrides_and_presets_are_read_in_their_section():
    from hvae.runconfig import RunConfig

    with pytest.warns(FutureWarning, match=r"model\.vq_codes -> model\.vq\.codes, model\.vq_dim -> model\.vq\.dim"):
        run = RunConfig.from_dict(apply_overrides({"model": {"vq_codes": 4}}, ["model.vq_dim=2"]))
    assert (run.model.vq.codes, run.model.vq.dim) == (4, 2)
    with pytest.raises(
        ConfigError, match=r"model\.vq_codes and model\.vq\.codes are both set; .* keep only model\.vq\.codes"
    ):
        RunConfig.from_dict({"model": {"vq": {"codes": 4}, "vq_codes": 8}})
    with pytest.raises(ConfigError, match=r"^model\.vq\.codes: must be >= 2, got 1$"):
        RunConfig.from_dict(apply_overrides({}, ["model.vq.codes=1"]))
    cfg = ModelConfig(vq={"codes": 8})
    assert cfg.replace(vq={"dim": 4}).vq == dataclasses.replace(cfg.vq, dim=4)  # a section changes key by key
    assert ModelConfig.from_yaml("vq:\n  codes: 8\n") == cfg
    # a preset's section keeps the keys a config does not give, old flat keys included
    from hvae.runconfig import load_run_config

    want = dataclasses.replace(hvae.presets.nvae_small().spectral, reg=0.5)
    assert (want.iterations, want.seed_iterations, want.over) == (4, 40, "conv")  # the preset's own, not the defaults
    with pytest.warns(FutureWarning, match=r"model\.spectral_reg -> model\.spectral\.reg"):
        old, _ = load_run_config(None, ["model.preset=nvae_small", "model.spectral_reg=0.5"])
    new, _ = load_run_config(None, ["model.preset=nvae_small", "model.spectral.reg=0.5"])
    assert old.model.spectral == new.model.spectral == want
