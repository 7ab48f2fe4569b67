"""Extension points: a toy latent family, a toy likelihood, a toy data source and a toy cell family, added
through the public registries alone, then read and trained with through the ordinary job; KL dispatch along
class hierarchies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

import hvae
from hvae.config import ConfigError
from hvae.data import DataConfig, load_dataset, load_like
from hvae.data.sources import SOURCES, RawData, Source, modality
from hvae.distributions import Gaussian, LatentFamily, StandardNormal, kl_divergence, register_kl
from hvae.likelihoods import ObservationDistribution, ObservationModel
from hvae.nets import FAMILIES, CellFamily
from hvae.nets.common import Sequential
from hvae.registry import LATENT_FAMILIES, LIKELIHOODS
from hvae.runconfig import RunConfig, TrainConfig
from hvae.train import train as train_run

# ------------------------------------------------------------------------------------------------ the toys


class UnitGaussian(Gaussian):
    """N(mu, 1): no KL of its own is registered; the Gaussian pairs serve it through the class hierarchy."""

    def __init__(self, mu: Tensor):
        super().__init__(mu, torch.ones_like(mu))


class UnitGaussianFamily(LatentFamily):
    """A latent whose heads emit only the mean."""

    params_per_channel = 1

    def from_raw(self, raw: Tensor) -> UnitGaussian:
        return UnitGaussian(raw)

    def prior_top(self, shape, device, dtype) -> StandardNormal:
        return StandardNormal(shape, device=device, dtype=dtype)

    def merge(self, bottom_up: Gaussian, prior: Gaussian) -> Gaussian:
        return bottom_up.merge(prior)


class LaplaceDistribution(ObservationDistribution):
    def __init__(self, model, loc: Tensor):
        super().__init__(model)
        self.loc = loc

    def _log_prob_layout(self, x: Tensor) -> Tensor:
        return -(x - self.loc).abs() - math.log(2.0)  # Laplace(loc, 1)

    def _mean_layout(self) -> Tensor:
        return self.loc

    def _sample_layout(self) -> Tensor:
        return self.loc + torch.distributions.Laplace(0.0, 1.0).sample(self.loc.shape)


class Laplace(ObservationModel):
    def forward(self, params: Tensor) -> LaplaceDistribution:
        return LaplaceDistribution(self, params)


class JsonTable(Source):
    """A JSON file holding a list of rows of numbers; train.json / val.json / test.json in a folder too."""

    modality = "table"
    path_hint = "JSON file of rows"
    split_suffixes = (".json",)

    def read(self, config, train_rows) -> RawData:
        rows = json.loads(Path(config.path).read_text())
        return RawData(torch.tensor(rows, dtype=torch.float32), levels=None)


@pytest.fixture
def toys():
    """The three toys registered for one test, removed after it."""
    added = [
        (LATENT_FAMILIES, "unit_gaussian", UnitGaussianFamily),
        (LIKELIHOODS, "laplace", Laplace),
        (SOURCES, "json_table", JsonTable),
    ]
    for registry, name, cls in added:
        registry.register(name)(cls)
    yield
    for registry, name, _ in added:
        del registry[name]


def _table(path: Path, n: int, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 1, generator=g)
    rows = torch.cat([t, 2 * t, 1 - t, t**2], 1) + 0.05 * torch.randn(n, 4, generator=g)  # near a 1-d curve
    path.write_text(json.dumps(rows.tolist()))
    return path


class ToyCells(CellFamily):
    """One strided (or upsampling) convolution and a tanh per cell: only ``block`` and ``pointwise`` given,
    so the bottom-up and top-down paths both come from ``block`` (the base class's defaults)."""

    built: list[int] = []  # the resample factor of every cell built

    @staticmethod
    def block(in_ch, hidden, depth, resample=1, **kw):
        ToyCells.built.append(resample)
        if resample > 1:
            layers = [torch.nn.Conv2d(in_ch, hidden, resample, stride=resample)]
        else:
            up = [torch.nn.Upsample(scale_factor=-resample)] if resample < -1 else []
            layers = [*up, torch.nn.Conv2d(in_ch, hidden, 1)]
        return Sequential(hidden, *layers, torch.nn.Tanh())

    @staticmethod
    def pointwise(in_ch, out_ch):
        return torch.nn.Conv2d(in_ch, out_ch, 1)


# ------------------------------------------------------------------------------------------------ tests


def test_toy_cell_family_builds_the_model_and_round_trips(tmp_path):
    FAMILIES.register("toy_cells")(ToyCells)
    try:
        ToyCells.built.clear()
        cfg = hvae.ModelConfig(data_shape=[1, 8, 8], latent_dims=[2, 2], hidden_dims=[8, 8], block="toy_cells")
        torch.manual_seed(0)
        model = hvae.build_model(cfg).eval()
        # two bottom-up cells (stride 2 each), the prior net of z_1 and the decoder (upsampling by 2)
        assert sorted(ToyCells.built) == [-2, -2, 2, 2]
        assert model.decoder_head.kernel_size == (1, 1) and not ToyCells.residual_state
        x = (torch.rand(3, 1, 8, 8) > 0.5).float()
        out = model(x)
        assert out.elbo.shape == (3,) and torch.isfinite(out.elbo).all()
        model.save_pretrained(tmp_path / "m")
        again = hvae.load(tmp_path / "m").eval()
        assert again.config.block == "toy_cells"
        torch.manual_seed(1)
        a = model(x).elbo
        torch.manual_seed(1)
        assert torch.equal(again(x).elbo, a)
    finally:
        del FAMILIES["toy_cells"]
    with pytest.raises(ConfigError, match=r"block: 'toy_cells' is not accepted; use one of .*'vdvae'"):
        hvae.ModelConfig(data_shape=[1, 8, 8], block="toy_cells")


def test_toy_family_likelihood_and_source_train_through_the_job(toys, tmp_path):
    data = DataConfig(source="json_table", path=str(_table(tmp_path / "t.json", 200)))
    model = hvae.ModelConfig(
        latent_dims=[2, 2],
        hidden_dims=[16, 16],
        data_shape=[4],
        latent_types=["unit_gaussian", "gaussian"],
        likelihood="laplace",
    )
    train = TrainConfig(epochs=30, batch_size=32, lr=3e-3, compile="never", progress=False, device="cpu")
    cfg = RunConfig(model=model, data=data, train=train)
    x = load_dataset(data).eval_tensor("val")
    torch.manual_seed(cfg.train.seed)
    fresh = hvae.build_model(model).eval()
    run = train_run(cfg, tmp_path / "run", log=lambda _: None)
    trained = hvae.load(run / "model")
    assert isinstance(trained.layers[0].family, UnitGaussianFamily)
    assert isinstance(trained.likelihood, Laplace)
    with torch.no_grad():
        before, after = fresh(x).elbo.mean(), trained(x).elbo.mean()
        # the bottom level's KL: its q is a UnitGaussian, its p a Gaussian -- the (Gaussian, Gaussian) pair
        kl = trained(x).kl[0]
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    assert after > before + 1.0, (before, after)  # nats per example: it learned
    assert modality("json_table") == "table"


def test_toy_source_reads_predefined_splits_and_load_like(toys, tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    for name, n in (("train", 30), ("valid", 7), ("test", 5)):
        _table(folder / f"{name}.json", n, seed=n)
    d = load_dataset(DataConfig(source="json_table", path=str(folder)))
    assert (len(d.train), len(d.val), len(d.test)) == (30, 7, 5)
    assert d.splits_from == {
        "train": str(folder / "train.json"),
        "val": str(folder / "valid.json"),
        "test": str(folder / "test.json"),
    }
    assert torch.equal(d.test.x, torch.tensor(json.loads((folder / "test.json").read_text())))
    got = load_like(DataConfig(source="json_table", path=str(folder)), folder / "test.json", source="json_table")
    assert torch.equal(got, d.test.x)


def test_config_names_follow_the_registries(toys):
    cfg = hvae.ModelConfig(
        latent_dims=[4, 2], hidden_dims=[8, 8], likelihood="laplace", latent_types=["unit_gaussian", "vq"]
    )
    assert cfg.likelihood == "laplace"
    with pytest.raises(ConfigError, match=r"likelihood: 'laplac' is not accepted; use one of .*'laplace'"):
        hvae.ModelConfig(likelihood="laplac")
    with pytest.raises(ConfigError, match=r"source: 'json' is not accepted; use one of .*'json_table'"):
        DataConfig(source="json")
    with pytest.raises(ValueError, match="already registered"):
        LIKELIHOODS.register("laplace")(ObservationModel)


def test_the_builtin_names_are_registered_in_order():
    assert list(FAMILIES) == ["mlp", "conv", "nvae", "vdvae", "temporal"]
    assert FAMILIES["nvae"].residual_state and FAMILIES["vdvae"].residual_state
    assert FAMILIES["vdvae"].official_init is not CellFamily.official_init
    assert FAMILIES["mlp"].encoder_block(4, 8, 2).out_ch == 8 and not FAMILIES["mlp"].residual_state
    assert list(LATENT_FAMILIES) == ["gaussian", "categorical", "bernoulli", "vq"]
    assert list(LIKELIHOODS) == ["bernoulli", "gaussian", "categorical", "discretized_logistic_mixture"]
    assert {n: modality(n) for n in SOURCES} == {
        "digits": "image",
        "fashion_mnist": "image",
        "mnist": "image",
        "npz": "table",
        "npy": "table",
        "csv": "table",
        "images": "image",
        "cifar10": "image",
        "text": "text",
        "fortunes": "text",
        "audio": "audio",
    }
    assert modality("npy", [3, 8, 8]) == "image" and modality("npz", [64]) == "table"


def test_kl_dispatch_follows_the_class_hierarchy():
    mu_q, mu_p = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0])
    q, p = UnitGaussian(mu_q), UnitGaussian(mu_p)
    assert torch.allclose(kl_divergence(q, p), 0.5 * (mu_q - mu_p) ** 2)  # KL of unit Gaussians, closed form
    # (Gaussian, StandardNormal) is nearer to (UnitGaussian, StandardNormal) than (Gaussian, Gaussian)
    calls = []

    class Marked(StandardNormal):
        pass

    @register_kl(UnitGaussian, StandardNormal)
    def _kl(q, p):
        calls.append("unit")
        return 0.5 * q.mu**2

    try:
        assert torch.allclose(kl_divergence(q, Marked((2,))), 0.5 * mu_q**2) and calls == ["unit"]
        assert torch.allclose(kl_divergence(Gaussian(mu_q, torch.ones(2)), Marked((2,))), 0.5 * mu_q**2)
        assert calls == ["unit"]  # a plain Gaussian q takes (Gaussian, StandardNormal)
    finally:
        from hvae import distributions

        del distributions._KL_REGISTRY[(UnitGaussian, StandardNormal)]
        distributions._KL_MEMO.clear()
    with pytest.raises(NotImplementedError, match="no analytic KL registered for .*use kl: mc"):
        kl_divergence(q, object())
