"""The training job: run directories, exact resume, kill-and-resume, guarded updates, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hvae
from hvae.checkpoint import CheckpointError, latest_checkpoint
from hvae.config import ConfigError
from hvae.data import DataError
from hvae.evaluate import write_result
from hvae.report.html import write_report
from hvae.runconfig import load_run_config
from hvae.train import RunDirError, TrainingDiverged, train

TINY = [
    "model.preset=small",
    "model.latent_dims=[4,2]",
    "model.hidden_dims=[16,8]",
    "data.source=digits",
    "data.flatten=true",
    "data.binarize=dynamic",
    "data.max_examples=200",
    "train.epochs=2",
    "train.batch_size=32",
    "train.progress=false",
    "train.log_every=2",
    "train.eval_every=4",
    "train.checkpoint_every=3",
    "eval.num_samples=10",
]


def tiny(*overrides):
    return load_run_config(None, TINY + list(overrides))


def run(out, *overrides, **kw):
    cfg, raw = tiny(*overrides)
    return train(cfg, out, raw=raw, log=lambda m: None, **kw)


def weights(run_dir):
    return hvae.load(Path(run_dir) / "model").state_dict()


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k
        else:
            assert torch.equal(a[k], b[k]), k


def test_training_writes_a_complete_run_directory(tmp_path):
    out = run(tmp_path / "r")
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "model/config.json",
        "model/model.safetensors",
        "checkpoints/latest.json",
    ):
        assert (out / name).exists(), name
    saved = hvae.runconfig.RunConfig.from_yaml(out / "config.yaml")
    assert saved.model.data_shape == [64]  # filled in from the data
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["split"] == "train"]
    val_lines = [r for r in lines if r["split"] == "val"]
    assert train_lines and val_lines
    assert len(train_lines[0]["kl"]) == 2 and all(np.isfinite(r["loss"]) for r in train_lines)
    assert any((out / "tb").iterdir())
    model = hvae.load(out / "model")
    assert int(model.step) == 12  # 200 // 32 = 6 steps per epoch, 2 epochs


def test_kl_warmup_epochs_become_steps(tmp_path):
    out = run(tmp_path / "r", "train.kl_warmup_epochs=1.5")
    saved = hvae.runconfig.RunConfig.from_yaml(out / "config.yaml")
    assert saved.model.kl_warmup_steps == 9
    betas = [json.loads(line)["beta"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert betas == sorted(betas) and betas[0] < 1.0 and betas[-1] == 1.0


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full", "train.ema_decay=0.9")
    part = run(tmp_path / "part", "train.ema_decay=0.9", "train.max_steps=5")
    assert int(hvae.load(part / "model").step) == 5
    run(part, "train.ema_decay=0.9", resume=True)
    assert_same_weights(weights(full), weights(part))

    # the metrics of the resumed run are those of the uninterrupted one (past the first logging window,
    # which straddles the interruption)
    def train_lines(d):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time"} for r in rows if r["split"] == "train" and r["step"] > 6]

    assert train_lines(full) == train_lines(part)


def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable,
        "-m",
        "hvae",
        "train",
        *TINY,
        "train.epochs=40",
        "train.checkpoint_every=2",
        "train.eval_every=1000",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            ptr = out / "checkpoints" / "latest.json"
            if ptr.exists() and json.loads(ptr.read_text())["step"] >= 8:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the training process wrote no checkpoint in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = latest_checkpoint(out)
    model = hvae.load(ckpt / "model")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    # resume to the end of epoch 3 and compare with a run that was never interrupted
    run(out, "train.epochs=3", "train.checkpoint_every=2", "train.eval_every=1000", resume=True)
    ref = run(tmp_path / "ref", "train.epochs=3", "train.checkpoint_every=2", "train.eval_every=1000")
    assert_same_weights(weights(ref), weights(out), atol=1e-6)


def test_non_finite_updates_are_skipped_and_counted(tmp_path, monkeypatch):
    real_forward = hvae.HierarchicalVAE.forward

    def flaky_forward(self, x, beta=None):
        out = real_forward(self, x, beta)
        if self.training and int(self.step) in (3, 4):
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(hvae.HierarchicalVAE, "forward", flaky_forward)
    out = run(tmp_path / "r", "train.log_every=1")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("skipped", 0) for r in lines) == 2
    assert all(torch.isfinite(v).all() for v in weights(out).values() if v.is_floating_point())


def test_a_long_run_of_skips_stops_training_with_a_clear_error(tmp_path, monkeypatch):
    real_forward = hvae.HierarchicalVAE.forward

    def broken_forward(self, x, beta=None):
        out = real_forward(self, x, beta)
        if self.training and int(self.step) > 2:
            out.loss = out.loss * float("inf")
        return out

    monkeypatch.setattr(hvae.HierarchicalVAE, "forward", broken_forward)
    with pytest.raises(TrainingDiverged, match="consecutive updates"):
        run(tmp_path / "r", "train.max_consecutive_skips=4")
    model = hvae.load(latest_checkpoint(tmp_path / "r") / "model")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_updates_whose_gradient_norm_passes_skip_threshold_are_skipped(tmp_path):
    notes = []
    cfg, raw = tiny("train.log_every=1", "train.epochs=1")
    out = train(cfg, tmp_path / "free", raw=raw, log=notes.append)
    norms = [
        r["grad_norm"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "grad_norm" in r
    ]
    threshold = sorted(norms)[len(norms) // 2]  # about half of these steps' norms lie above it
    cfg, raw = tiny("train.log_every=1", "train.epochs=1", f"train.skip_threshold={threshold}")
    notes = []
    out = train(cfg, tmp_path / "guarded", raw=raw, log=notes.append)
    skipped = [n for n in notes if "above train.skip_threshold" in n]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert skipped and 0 < max(r.get("skipped", 0) for r in rows) <= len(skipped)  # rows at kept steps only
    assert all(r["grad_norm"] <= threshold for r in rows if "grad_norm" in r)  # only the kept updates are logged
    with pytest.raises(ConfigError, match="skip_threshold"):
        tiny("train.skip_threshold=0")


def test_output_directory_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--resume"):
        run(out, "train.epochs=1")
    run(out, "train.epochs=1", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # nothing of the user's is touched
    with pytest.raises(RunDirError, match="no run to resume"):
        run(tmp_path / "empty", resume=True)


def test_resume_with_a_different_model_or_data_is_refused(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    with pytest.raises(ConfigError, match="cannot resume.*model.latent_dims"):
        run(out, "model.latent_dims=[5,2]", resume=True)
    with pytest.raises(ConfigError, match="cannot resume.*data.binarize"):
        run(out, "data.binarize=static", resume=True)


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    weights_file = latest_checkpoint(out) / "model" / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        run(out, "train.epochs=2", resume=True)


def test_stale_temporary_checkpoint_folders_are_ignored(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    junk = out / "checkpoints" / ".tmp-abandoned"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"\x00garbage")
    run(out, "train.epochs=2", resume=True)
    assert int(hvae.load(out / "model").step) == 12


def test_explicit_data_shape_that_does_not_match_the_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="data_shape"):
        run(tmp_path / "r", "model.data_shape=[1,8,8]")


def test_non_binary_data_for_a_bernoulli_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="binarize"):
        run(tmp_path / "r", "data.binarize=none")


def test_nan_in_the_data_is_refused(tmp_path):
    arr = np.random.rand(50, 64).astype(np.float32)
    arr[3, 5] = np.nan
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(DataError, match="NaN"):
        run(tmp_path / "r", "data.source=npy", f"data.path={tmp_path / 'x.npy'}", "data.binarize=static")


def test_missing_data_file_is_refused(tmp_path):
    with pytest.raises(DataError):
        run(tmp_path / "r", "data.source=npy", f"data.path={tmp_path / 'missing.npy'}")


def test_gaussian_model_trains_on_dequantized_digits(tmp_path):
    out = run(
        tmp_path / "r", "model.likelihood=gaussian", "data.binarize=none", "data.dequantize=true", "train.epochs=1"
    )
    assert hvae.load(out / "model").config.likelihood == "gaussian"


@pytest.mark.parametrize(
    "likelihood, model", [("discretized_logistic_mixture", ["model.preset=conv_small", "data.flatten=false"]),
                          ("bernoulli", [])]
)  # fmt: skip
def test_dequantized_data_need_a_density(tmp_path, likelihood, model):
    # the discretised likelihoods score the discrete values: a dequantisation Jacobian would shift bits/dim
    with pytest.raises(ConfigError, match=f"data.dequantize: true .* likelihood {likelihood} scores discrete"):
        run(tmp_path / "r", *model, f"model.likelihood={likelihood}", "data.binarize=none", "data.dequantize=true")
    assert not (tmp_path / "r").exists()


def test_discretized_logistic_bins_must_sit_on_the_datas_levels(tmp_path):
    conv = ["model.preset=conv_small", "data.flatten=false", "model.likelihood=discretized_logistic_mixture"]
    with pytest.raises(ConfigError, match="17 levels but model.num_bits=8 gives 256 bins.*categorical.*17"):
        run(tmp_path / "r", *conv, "data.binarize=none")  # the 8x8 digits: 17 levels
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError, match="256 levels but model.num_bits=5 gives 32 bins.*num_bits=8"):
        run(tmp_path / "r", *conv, "model.num_bits=5", "data.source=npy", f"data.path={tmp_path / 'x.npy'}",
            "data.binarize=none")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_conv_model_trains_on_images(tmp_path):
    out = run(
        tmp_path / "r",
        "model.preset=conv_small",
        "model.latent_dims=[4,4]",
        "model.hidden_dims=[8,8]",
        "data.flatten=false",
        "train.epochs=1",
    )
    assert hvae.load(out / "model").data_shape == (1, 8, 8)


def tree(run_dir):
    """Every file under a run directory, with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(Path(run_dir).rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_run_when_the_new_config_or_data_are_bad(tmp_path):
    out = run(tmp_path / "keep", "train.epochs=1")
    before = tree(out)
    rows = np.random.rand(50, 64).round(3).astype(str)
    rows[3, 5] = "nan"
    (tmp_path / "x.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="NaN"):
        run(out, "data.source=csv", f"data.path={tmp_path / 'x.csv'}", "data.binarize=static", overwrite=True)
    with pytest.raises(DataError, match="fewer than one batch"):
        run(out, "train.batch_size=100000", overwrite=True)
    with pytest.raises(ConfigError, match="data_shape"):
        run(out, "model.data_shape=[1,8,8]", overwrite=True)
    assert tree(out) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_deletes_nothing(tmp_path):
    out = tmp_path / "mine"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "holiday.png").write_bytes(b"png")
    (out / "eval.json").write_text("{}")
    (out / "config.yaml").write_text("learning_rate: 0.1\n")  # someone else's config
    before = tree(out)
    with pytest.raises(RunDirError, match=f"{out} is not empty and holds no hvae run.*will not delete"):
        run(out, "train.epochs=1", overwrite=True)
    with pytest.raises(RunDirError, match="holds no hvae run"):
        run(out, "train.epochs=1")
    assert tree(out) == before
    (tmp_path / "empty").mkdir()
    assert (run(tmp_path / "empty", "train.epochs=1", overwrite=True) / "model").is_dir()


def test_resume_drops_a_metrics_line_cut_short_by_a_kill(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"split": "train", "step": 8, "epoch": 1, "loss": 12')  # what kill -9 leaves mid-write
    notes = []
    cfg, raw = tiny("train.epochs=2")
    train(cfg, out, raw=raw, resume=True, log=notes.append)
    assert any("metrics.jsonl line" in n and "cut short" in n for n in notes)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line reads
    assert max(r["step"] for r in rows) == 12


def test_a_damaged_metrics_line_before_the_last_is_named_and_nothing_is_changed(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:20]
    metrics.write_text("\n".join(lines) + "\n")
    before = tree(out)
    with pytest.raises(RunDirError, match=f"{metrics} line 2 is damaged"):
        run(out, "train.epochs=2", resume=True)
    assert tree(out) == before


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["022", "002"])
def test_run_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = run(tmp_path / "r", "train.epochs=1")
        write_result(out, {"elbo": -1.0})
        write_report(out, num_samples=4)
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    assert {"eval.json", "report.html", "model.safetensors", "optimizer.safetensors", "config.yaml"} <= {
        p.name for p in paths
    }
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o7777 == want, p


def test_resume_with_fewer_epochs_than_done_is_refused_and_leaves_the_run_alone(tmp_path):
    out = run(tmp_path / "r", "train.epochs=2")
    before = tree(out)
    with pytest.raises(ConfigError, match="already trained 12 steps.*train.epochs=1"):
        run(out, "train.epochs=1", resume=True)
    assert tree(out) == before
    run(out, "train.epochs=2", resume=True)  # a finished run resumed as it was asked for: nothing to do
    assert int(hvae.load(out / "model").step) == 12


def test_resuming_a_finished_run_without_checkpoints_never_advises_overwrite(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(CheckpointError, match="its trained model is in .*model; to train further") as e:
        run(out, "train.epochs=2", resume=True)
    assert "--overwrite" not in str(e.value) and (out / "model" / "model.safetensors").is_file()


def test_the_trainers_ema_update_is_torchs():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from hvae.train import _ema_update

    torch.manual_seed(0)
    model = hvae.build_model(hvae.presets.small())
    ours, theirs = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False) for _ in range(2))
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        _ema_update(ours, model, 0.9)
        theirs.update_parameters(model)
    assert int(ours.n_averaged) == int(theirs.n_averaged) == 4
    for a, b in zip(ours.module.parameters(), theirs.module.parameters()):
        assert torch.equal(a, b)


def _records(out, split):
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_the_runs_wall_time_parts_add_up_and_charge_validation_and_checkpoints_their_own_time(tmp_path, monkeypatch):
    import hvae.train as train_module

    real_validate, real_save = train_module._validate, train_module.save_checkpoint
    calls = {"val": 0, "ckpt": 0}

    def slow_validate(*a, **kw):  # known extra time in each part: the breakdown must put it there
        calls["val"] += 1
        time.sleep(0.2)
        return real_validate(*a, **kw)

    def slow_save(*a, **kw):
        calls["ckpt"] += 1
        time.sleep(0.1)
        return real_save(*a, **kw)

    monkeypatch.setattr(train_module, "_validate", slow_validate)
    monkeypatch.setattr(train_module, "save_checkpoint", slow_save)
    said = []
    cfg, raw = tiny()
    began = time.monotonic()
    out = train(cfg, tmp_path / "r", raw=raw, log=said.append, started_at=began)
    ended = time.monotonic()
    (rec,) = _records(out, "timing")
    seconds = rec["seconds"]
    assert set(seconds) == {
        "start-up", "data loading", "compiling and probing", "batches", "step", "validation", "checkpoints",
        "metrics and progress",
    }  # fmt: skip
    assert sum(seconds.values()) == pytest.approx(rec["wall_s"], abs=1e-3)
    assert ended - began - 0.5 < rec["wall_s"] <= ended - began  # only closing the files comes after the last lap
    assert sum(rec["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert calls["val"] >= 2 and calls["ckpt"] >= 3
    assert seconds["validation"] >= 0.2 * calls["val"]
    assert seconds["checkpoints"] >= 0.1 * calls["ckpt"]
    assert seconds["step"] > 0 and seconds["batches"] > 0
    assert rec["step"] == 12  # the last line of metrics.jsonl, at the run's last step
    assert _records(out, "train")[-1]["step"] <= rec["step"]
    assert any(m.startswith("wall time ") and "validation" in m and "%)" in m for m in said)


def test_validation_and_checkpoints_on_a_schedule_in_seconds(tmp_path, monkeypatch):
    import hvae.train as train_module

    saves = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(
        train_module, "save_checkpoint", lambda *a, **kw: saves.append(a[4]["step"]) or real_save(*a, **kw)
    )
    # an hour: neither the epochs' ends nor eval_every=4 / checkpoint_every=3 steps; the run's end always
    out = run(tmp_path / "hour", "train.eval_every_s=3600", "train.checkpoint_every_s=3600")
    assert [r["step"] for r in _records(out, "val")] == [12] and saves == [12]
    # due at once: at every log step (log_every=2), where a schedule in seconds is checked
    saves.clear()
    out = run(tmp_path / "now", "train.eval_every_s=1e-9")
    assert [r["step"] for r in _records(out, "val")] == [2, 4, 6, 8, 10, 12]
    assert saves == [2, 3, 4, 6, 8, 9, 10, 12]  # eval's checkpoints, and checkpoint_every=3 steps still


@pytest.mark.parametrize("key", ["eval_every_s", "checkpoint_every_s"])
def test_a_schedule_in_seconds_must_be_positive(key):
    with pytest.raises(ConfigError, match=f"train.{key}: must be > 0 seconds or null, got 0"):
        tiny(f"train.{key}=0")


def test_batches_prepared_ahead_are_the_same_batches_and_errors_arrive_in_turn():
    from hvae.train import _ahead

    def source():
        yield from (torch.full((2,), float(i)) for i in range(3))
        raise ValueError("bad batch 3")

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for x in _ahead(source()):
            got.append(x[0].item())
    assert got == [0.0, 1.0, 2.0]
