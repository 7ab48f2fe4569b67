"""The command line: train -> eval -> sample -> report, help, and errors users can act on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hvae.cli import main

TINY = [
    "model.preset=small",
    "model.latent_dims=[4,2]",
    "model.hidden_dims=[16,8]",
    "data.max_examples=200",
    "train.epochs=2",
    "train.batch_size=32",
    "train.log_every=2",
    "eval.num_samples=8",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", "configs/default.yaml", *TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_python_dash_m_hvae_is_the_hvae_command():
    res = subprocess.run([sys.executable, "-m", "hvae", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("train", "eval", "sample", "report"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "hvae", "eval", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--num-samples" in res.stdout


def test_eval_prints_and_writes_all_numbers(run_dir, capsys):
    assert main(["eval", str(run_dir), "--num-samples", "16", "--max-examples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "IW bound (K=16)" in printed and "active units" in printed and "50 examples" in printed
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["split"] == "test" and result["num_examples"] == 50 and result["num_samples"] == 16
    assert result["step"] == 12  # the model evaluated: 2 epochs of the 200 examples less the held-out ones
    assert result["iw_bound"] >= result["elbo"] - 0.5  # the IW bound is the tighter one (up to MC error)
    assert len(result["kl"]) == len(result["active_units"]) == len(result["units"]) == 2
    assert result["bits_per_dim_iw"] == pytest.approx(-result["iw_bound"] / (64 * 0.6931471805599453))


def test_sample_writes_grids(run_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "16", "--temperature", "0.8", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 0
    out2 = tmp_path / "keep.png"
    assert main(["sample", str(run_dir), "--from-data", "--n", "5", "--out", str(out2)]) == 0
    w, h = Image.open(out2).size
    assert h > w / 5 * 3  # inputs + one row per k = 2, 1, 0
    assert main(["sample", str(run_dir), "--temperature", "1,0.5", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["sample", str(run_dir), "--interpolate", "--n", "2", "--out", str(tmp_path / "i.png")]) == 0


def test_report_is_written(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert "report.html" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "configs/default.yaml", "model.bogus=1", "--out", "{tmp}/a"], "valid keys are"),
        (["train", "--config", "configs/default.yaml", "model.inference=sideways", "--out", "{tmp}/a"], "ladder"),
        (["train", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/a"], "does not exist"),
        (["train", "--config", "configs/default.yaml"], "--out"),
        (["eval", "{tmp}/nothing"], "not a run directory"),
        (["sample", "{run}", "--temperature", "hot"], "--temperature"),
        (["sample", "{run}", "--temperature", "1,1,1,1"], "one per layer"),
        (["sample", "{run}", "--from-data", "--keep-top", "7"], "0..2"),
        (["train", "--resume", "{tmp}/nothing"], "no run to resume"),
        (["sample", "{run}", "--out", "{tmp}/data.csv"], "ending in .png"),
        (["sample", "{run}", "--out", "{tmp}"], "is a folder"),
        (["sample", "{run}", "--from-data", "--interpolate"], "give one of them"),
        (["sample", "{run}", "--keep-top", "1"], "add --from-data"),
        (["sample", "{run}", "--steps", "4"], "add --interpolate"),
        (["sample", "{run}", "--interpolate", "--temperature", "5"], "drop --temperature"),
        (["sample", "{run}", "--temperature", "nan"], "temperatures must be finite"),
        (["sample", "{run}", "--temperature", "1,inf"], "temperatures must be finite"),
        (["sample", "{run}", "--device", "gpu0"], "--device gpu0: not a device"),
        (["eval", "{run}", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["eval", "{run}", "--max-examples", "0"], "--max-examples must be >= 1"),
        (["train", "--config", "configs/default.yaml", "model=3", "--out", "{tmp}/a"], "model must be a section"),
    ],
)
def test_user_errors_exit_2_with_a_message(argv, message, run_dir, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_file_given_to_sample_out_with_another_suffix_is_left_alone(run_dir, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("1,2,3\n")
    assert main(["sample", str(run_dir), "--out", str(data)]) == 2
    assert data.read_text() == "1,2,3\n"


def test_overrides_may_follow_the_options_and_floats_may_be_written_1e_3(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("hvae.train.train", lambda cfg, out, **kw: seen.update(cfg=cfg, out=out) or Path(out))
    out = str(tmp_path / "r")
    argv = ["train", "--config", "configs/default.yaml", "train.lr=1e-3", "--out", out, "train.epochs=3"]
    assert main(argv) == 0
    assert seen["cfg"].train.lr == 0.001 and seen["cfg"].train.epochs == 3


def test_the_run_keeps_an_absolute_data_path_with_the_home_folder_expanded(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("hvae.train.train", lambda cfg, out, **kw: seen.update(cfg=cfg) or Path(out))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    base = ["train", "--config", str(Path(__file__).resolve().parents[1] / "configs/default.yaml"), "data.source=csv"]
    assert main([*base, "data.path=~/rows.csv", "--out", "r1"]) == 0
    assert seen["cfg"].data.path == str(tmp_path / "rows.csv")
    assert main([*base, "data.path=sub/rows.csv", "--out", "r2"]) == 0
    assert seen["cfg"].data.path == str(tmp_path / "sub" / "rows.csv")


def test_eval_reads_a_checkpoint_newer_than_the_final_model(run_dir, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from hvae.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    ckpt = latest_checkpoint(run) / "model" / "model.safetensors"
    final = run / "model" / "model.safetensors"
    # as a resumed run that stopped early leaves them: model/ from before the resume, a newer checkpoint
    tensors = load_file(ckpt)
    step = int(load_file(final)["step"])
    tensors["step"] = torch.tensor(step + 5)
    tensors = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in tensors.items()}
    save_file(tensors, ckpt)
    capsys.readouterr()
    assert main(["eval", str(run), "--num-samples", "2", "--max-examples", "10"]) == 0
    assert "is newer than model/" in capsys.readouterr().err
    shutil.copytree(run_dir / "checkpoints", run / "checkpoints", dirs_exist_ok=True)  # as the run finished
    assert main(["eval", str(run), "--num-samples", "2", "--max-examples", "10"]) == 0
    assert "newer" not in capsys.readouterr().err


def test_eval_of_standardized_data_gives_the_bound_of_the_values_as_read(tmp_path):
    import numpy as np
    import torch

    from hvae.data import load_dataset
    from hvae.runconfig import RunConfig

    rows = np.random.default_rng(0).normal(0, 100.0, (120, 6))
    (tmp_path / "t.csv").write_text("\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    data = [f"data.path={tmp_path / 't.csv'}", "data.source=csv", "data.standardize=true", "data.binarize=none"]
    model = ["model.likelihood=gaussian", "model.batch_norm=false"]
    out = tmp_path / "run"
    assert main(["train", *TINY, *data, *model, "data.flatten=false", "--out", str(out), "--quiet"]) == 0
    assert main(["eval", str(out), "--num-samples", "4"]) == 0
    result = json.loads((out / "eval.json").read_text())
    std = load_dataset(RunConfig.from_yaml(out / "config.yaml").data).std
    assert result["log_jacobian"] == pytest.approx(float(torch.log(std.double()).sum()))
    assert result["log_jacobian"] > 6 * 4  # std ~ 100 per column: the bound in the data's own units is far lower


def test_report_reads_the_checkpoint_when_training_did_not_finish(run_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "model")  # as a run stopped before its end leaves it
    assert main(["report", str(run)]) == 0
    assert "training did not finish; using the latest checkpoint" in (run / "report.html").read_text()
    assert main(["sample", str(run), "--readjust-bn", "2", "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert "re-estimated 4 batch-norm layers" in capsys.readouterr().err  # the folded ones of its MLP decoder


def test_train_refuses_an_occupied_directory(run_dir, capsys):
    assert main(["train", "--config", "configs/default.yaml", *TINY, "--out", str(run_dir), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


SHIPPED_CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_shipped_configs_are_found():
    assert len(SHIPPED_CONFIGS) >= 5  # the test below has a case for each


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: Path(p).name)
def test_every_shipped_config_is_valid_and_builds(path):
    import hvae
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config(path)
    if cfg.model.block in ("mlp", "conv") or "small" in path:  # the paper-size models are GPU-sized: config only
        hvae.build_model(cfg.model)


def test_bench_forwards_the_quality_options(monkeypatch):
    import benchmarks.run

    seen = []
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # hvae bench runs a source checkout's benchmarks/
    monkeypatch.setattr(benchmarks.run, "main", seen.append)
    models = ["lvae_mnist", "lvae_mnist bf16 @1024"]
    assert main(["bench", "--quality", "--no-write", "--models", *models, "--test-examples", "2000"]) == 0
    argv = seen[0]
    assert argv[:2] == ["--quality", "--no-write"]
    assert argv[argv.index("--models") + 1 :] == models
    assert argv[argv.index("--test-examples") + 1] == "2000" and argv[argv.index("--num-samples") + 1] == "1000"
