"""The report job and the image helpers: a tiny run directory, its report.html, and a headless render."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import hvae
from hvae.data import DataConfig, load_dataset
from hvae.report import make_grid, png_data_uri, save_grid, to_images, write_report
from tests.browser import HAVE_CHROMIUM, SKIP_REASON, chromium

DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def _make_run(run: Path, model_cfg: hvae.ModelConfig, flatten: bool, steps: int = 20, eval_json: dict | None = None):
    """Train ``steps`` Adam steps on dynamically binarised digits and write a run directory like ``hvae train``."""
    torch.manual_seed(0)
    data = {"source": "digits", "binarize": "dynamic", "flatten": flatten}
    ds = load_dataset(DataConfig.from_dict(data))
    model = hvae.build_model(model_cfg)
    opt = hvae.make_optimizer(model, lr=1e-3)
    lines = []
    for step, x in enumerate(ds.batches("train", 64)):
        if step == steps:
            break
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        kl = [k.mean().item() for k in out.kl]
        lines.append(
            {
                "split": "train",
                "step": step + 1,
                "epoch": 0,
                "loss": out.loss.item(),
                "elbo": out.elbo.mean().item(),
                "log_px": out.log_px.mean().item(),
                "kl": kl,
                "beta": 1.0,
                "lr": 1e-3,
            }
        )
        if (step + 1) % 10 == 0:
            lines.append(
                {
                    "split": "val",
                    "step": step + 1,
                    "elbo": out.elbo.mean().item() - 1.0,
                    "log_px": out.log_px.mean().item(),
                    "kl": kl,
                }
            )
    model.save_pretrained(run / "model")
    cfg = {
        "model": model_cfg.to_dict(),
        "data": data,
        "train": {"steps": steps, "batch_size": 64, "lr": 1e-3},
        "eval": {"iw_samples": 10},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if eval_json is not None:
        (run / "eval.json").write_text(json.dumps(eval_json))
    return run


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    L = 3
    # the keys of hvae.evaluate's eval.json, plus a nested mapping (shown with dotted keys)
    ev = {
        "split": "test",
        "num_examples": 180,
        "elbo": -40.5,
        "iw": {"k": 10, "log_px": -39.9},
        "kl": [5.0, 2.0, 0.5],
        "active_units": [9, 3, 1],
        "units": [16, 8, 4],
    }
    assert len(ev["kl"]) == L
    return _make_run(tmp_path_factory.mktemp("run_mlp"), hvae.presets.small(), flatten=True, eval_json=ev)


@pytest.fixture(scope="module")
def mlp_report(mlp_run) -> str:
    return write_report(mlp_run, num_samples=16).read_text()


# ---------------------------------------------------------------------------------------------------- images


def test_to_images_reshapes_square_vectors_and_keeps_images():
    assert to_images(torch.rand(5, 64), (64,)).shape == (5, 1, 8, 8)
    assert to_images(torch.rand(2, 784), (784,)).shape == (2, 1, 28, 28)
    assert to_images(torch.rand(3, 3, 4, 6), (3, 4, 6)).shape == (3, 3, 4, 6)
    img = to_images(torch.randn(4, 1, 8, 8) * 3, (1, 8, 8))
    assert img.min() >= 0 and img.max() <= 1


def test_to_images_returns_none_for_tabular_data():
    assert to_images(torch.rand(5, 10), (10,)) is None
    assert to_images(torch.rand(5, 7, 4, 4), (7, 4, 4)) is None


def test_make_grid_shape_upscales_small_images():
    grid = make_grid(torch.rand(10, 1, 8, 8), nrow=4, pad=1)  # 8x8 upscaled x4 -> 32 px, 3 rows of 4
    assert grid.dtype == np.uint8 and grid.shape == (3 * 33 + 1, 4 * 33 + 1, 3)
    assert make_grid(torch.rand(2, 3, 28, 28), nrow=2, pad=0).shape == (28, 56, 3)
    assert make_grid(torch.rand(2, 1, 8, 8), nrow=2, pad=0, upscale=1).shape == (8, 16, 3)


def test_make_grid_is_nearest_neighbour_and_exact():
    img = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    grid = make_grid(img, nrow=1, pad=0, upscale=2)
    assert grid[:2, :2].max() == 0 and grid[:2, 2:].min() == 255 and grid[2:, :2].min() == 255


def test_save_grid_and_data_uri(tmp_path):
    path = save_grid(torch.rand(6, 1, 8, 8), tmp_path / "g.png", nrow=3)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (3 * 33 + 1, 2 * 33 + 1)
    uri = png_data_uri(np.zeros((4, 4, 3), np.uint8))
    assert uri.startswith("data:image/png;base64,")


# ---------------------------------------------------------------------------------------------------- report


def test_report_has_every_section_and_embedded_pngs(mlp_run, mlp_report):
    page = mlp_report
    for heading in ("Run", "Learning curves", "Evaluation", "Samples", "Reconstructions", "What each level holds"):
        assert f">{heading}" in page, heading
    assert "source: digits" in page and "binarize: dynamic" in page  # the config YAML
    assert "active_units" in page and "iw.log_px" in page  # scalars and per-level table from eval.json
    L = hvae.presets.small().num_layers
    for k in range(L + 1):
        assert f"k = {k}:" in page
    # 2 curve plots + active units + 4 temperatures + reconstructions + inputs and L+1 keep-top rows
    assert len(DATA_URI.findall(page)) == 2 + 1 + 4 + 1 + (L + 2)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert not list(mlp_run.glob(".tmp-*"))  # atomic write left no temporary file


def test_report_puts_results_first_and_folds_the_config(mlp_report):
    page = mlp_report
    evaluation, curves, config = (page.index(f'<section id="{a}">') for a in ("evaluation", "curves", "config"))
    assert evaluation < curves < config  # the numbers before the long column of settings
    folded = page[config:]
    assert folded.index("<details>") < folded.index("source: digits") < folded.index("</details>")


def test_report_is_deterministic_in_seed(mlp_run, mlp_report):
    assert write_report(mlp_run, num_samples=16).read_text() == mlp_report


def test_report_without_eval_or_metrics_says_so(mlp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    (run / "eval.json").unlink()
    (run / "metrics.jsonl").unlink()
    page = write_report(run, num_samples=4).read_text()
    assert f"run `hvae eval {run}`" in page
    assert "no metrics.jsonl" in page
    assert len(DATA_URI.findall(page)) == 4 + 1 + (hvae.presets.small().num_layers + 2)


def test_report_says_when_eval_json_measured_another_step(mlp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    ev = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**ev, "step": 20}))  # the model's own step
    assert "Run `hvae eval" not in write_report(run, num_samples=4).read_text()
    (run / "eval.json").write_text(json.dumps({**ev, "step": 7}))  # trained on after the evaluation
    page = write_report(run, num_samples=4).read_text()
    assert "These numbers are of the model at step 7; the model reported here is at step 20" in page


def test_report_names_what_is_missing(tmp_path, mlp_run):
    with pytest.raises(FileNotFoundError, match="does not exist.*hvae train"):
        write_report(tmp_path / "nope")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mlp_run / "config.yaml", run / "config.yaml")
    # the advice eval and --resume give too (one that works: --resume has no checkpoint to continue from)
    with pytest.raises(FileNotFoundError, match="no trained model yet.*before its first checkpoint.*--overwrite"):
        write_report(run)


def test_report_for_conv_model(tmp_path):
    run = _make_run(tmp_path / "conv", hvae.presets.conv_small(), flatten=False, steps=5)
    page = write_report(run, num_samples=9).read_text()
    L = hvae.presets.conv_small().num_layers
    assert len(DATA_URI.findall(page)) == 2 + 4 + 1 + (L + 2)
    assert "hvae eval" in page


# ---------------------------------------------------------------------------------------------------- browser


@pytest.mark.skipif(not HAVE_CHROMIUM, reason=SKIP_REASON)
def test_report_renders_in_headlesschromium(mlp_run, mlp_report, tmp_path):
    url = (mlp_run / "report.html").resolve().as_uri()
    dom = chromium(["--dump-dom", url], tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == len(DATA_URI.findall(mlp_report))
    for heading in ("Learning curves", "Evaluation", "Samples", "Reconstructions"):
        assert heading in dom.stdout
    shot = tmp_path / "shot.png"
    res = chromium([f"--screenshot={shot}", "--window-size=1200,3000", url], tmp_path / "p2")
    assert shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.shape == (3000, 1200)
    assert px.std() > 10  # not a blank page
    assert (px < 100).mean() > 0.01  # dark pixels: text, plots and image grids were drawn


def test_report_for_tabular_data_skips_pictures(tmp_path):
    run = tmp_path / "tab"
    hvae.build_model(hvae.presets.small(data_shape=[10])).save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {}, "train": {}, "eval": {}}))
    page = write_report(run).read_text()
    assert "are not images" in page and "config.yaml has no data section" in page
    assert "no metrics.jsonl" in page and len(DATA_URI.findall(page)) == 0
