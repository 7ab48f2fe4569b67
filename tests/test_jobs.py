"""The jobs around a run directory: time budgets, signals, damaged files, other data, refused outputs, and
advice that works when followed."""

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
import yaml

import hvae
from hvae.checkpoint import latest_checkpoint
from hvae.cli import main
from hvae.config import ConfigError
from hvae.data import DataConfig, DataError, load_dataset
from hvae.report import write_report
from hvae.runconfig import parse_duration
from hvae.rundir import RunDir
from hvae.train import RunDirError, TrainingInterrupted, train, train_step
from tests.test_train import TINY, assert_same_weights, run, tiny, weights


def logged(out, *overrides, **kw):
    """``run`` that returns the run directory and what training said."""
    notes = []
    cfg, raw = tiny(*overrides)
    train(cfg, out, raw=raw, log=notes.append, **kw)
    return out, notes


@pytest.mark.parametrize(
    "text, seconds",
    [("15m", 900), ("2h", 7200), ("1d12h", 129600), ("00:12:00:00", 43200), (90, 90), ("1h30m15s", 5415)],
)
def test_max_time_reads_lightnings_spellings(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0", "-5m", "1h15", "2x"])
def test_a_max_time_that_is_not_a_duration_is_refused_with_the_spellings(text):
    with pytest.raises(ConfigError, match=r"train.max_time: .*DD:HH:MM:SS"):
        tiny(f"train.max_time={text}")


def test_max_time_stops_after_the_step_under_way_with_a_checkpoint_and_the_model(tmp_path):
    # the budget counts from the start of hvae train: a start 10 s ago leaves none of a 1 s budget
    out, notes = logged(tmp_path / "r", "train.epochs=40", "train.max_time=1s", started_at=time.monotonic() - 10)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 1
    assert int(hvae.load(out / "model").step) == 1  # the final model written, at the step reached
    assert any("train.max_time=1s reached at step 1" in n for n in notes)
    # the run goes on from there with a new budget
    _, notes = logged(out, "train.epochs=1", resume=True)
    assert any("resuming" in n and "at step 1 " in n for n in notes)
    assert int(hvae.load(out / "model").step) == 6


def test_sigint_finishes_the_step_writes_a_checkpoint_and_the_resume_is_exact(tmp_path, monkeypatch):
    import hvae.train as train_module

    real = train_module.learning_rate

    def lr_then_ctrl_c(cfg, step, *a):
        if step == 2:  # Ctrl-C arrives during the third step
            os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, step, *a)

    monkeypatch.setattr(train_module, "learning_rate", lr_then_ctrl_c)
    with pytest.raises(TrainingInterrupted, match="SIGINT received: stopped after step 3") as e:
        run(tmp_path / "r", "train.checkpoint_every=100", "train.eval_every=100")
    assert e.value.exit_code == 130
    assert json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())["step"] == 3
    monkeypatch.setattr(train_module, "learning_rate", real)
    _, notes = logged(tmp_path / "r", "train.checkpoint_every=100", "train.eval_every=100", resume=True)
    assert not any("trained again" in n for n in notes)  # nothing was lost
    ref = run(tmp_path / "ref", "train.checkpoint_every=100", "train.eval_every=100")
    assert_same_weights(weights(ref), weights(tmp_path / "r"), atol=1e-6)


def test_sigterm_to_hvae_train_writes_a_checkpoint_exits_143_and_resumes(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "hvae", "train", *TINY, "train.epochs=400", "train.log_every=1"]
    cmd += ["train.checkpoint_every=1000", "train.eval_every=1000", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().count("\n") >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    step = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert step >= 3 and f"SIGTERM received: stopped after step {step}" in err
    assert f"hvae train --resume {out}" in err
    _, notes = logged(out, f"train.max_steps={step + 2}", "train.epochs=400", resume=True)
    assert any(f"at step {step} " in n for n in notes) and not any("trained again" in n for n in notes)
    assert int(hvae.load(out / "model").step) == step + 2


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _run_with_an_older_best_checkpoint(tmp_path):
    """A finished 12-step run whose ``best`` pointer names an intact checkpoint of step 6."""
    out = run(tmp_path / "r", "train.epochs=1")  # 6 steps
    older = tmp_path / "step-6"
    shutil.copytree(latest_checkpoint(out), older)
    run(out, "train.epochs=2", resume=True)  # 12 steps
    ckpts = out / "checkpoints"
    shutil.copytree(older, ckpts / "step-000000006", dirs_exist_ok=True)
    (ckpts / "best.json").write_text(json.dumps({"dir": "step-000000006", "step": 6, "val_elbo": 0.0}))
    return out


class DamagedFileError(ValueError):  # the interface of hvae.files.DamagedFileError: the damaged file in .path
    def __init__(self, message, path):
        super().__init__(message)
        self.path = path


def test_a_damaged_file_error_from_load_makes_resume_fall_back(tmp_path, monkeypatch):
    out = _run_with_an_older_best_checkpoint(tmp_path)
    flipped = latest_checkpoint(out) / "model"
    real = hvae.model.load

    def load_checking_a_digest(directory, *a, **kw):
        if Path(directory) == flipped:  # bytes flipped inside a tensor: only a digest of the tensors sees it
            raise DamagedFileError(f"{flipped / 'model.safetensors'} does not match its digest", flipped)
        return real(directory, *a, **kw)

    monkeypatch.setattr(hvae.model, "load", load_checking_a_digest)
    _, notes = logged(out, "train.epochs=2", resume=True)
    assert any("does not match its digest" in n and "step-000000006" in n for n in notes)


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_what_is_redone(tmp_path):
    out = _run_with_an_older_best_checkpoint(tmp_path)
    damaged = latest_checkpoint(out) / "model" / "model.safetensors"
    _truncate(damaged)
    _, notes = logged(out, "train.epochs=2", resume=True)
    said = "\n".join(notes)
    assert f"{damaged} cannot be read" in said and "newest intact checkpoint" in said and "step-000000006" in said
    assert "the 6 steps after the checkpoint are trained again" in said
    assert_same_weights(weights(run(tmp_path / "ref", "train.epochs=2")), weights(out), atol=1e-6)


def test_eval_of_a_damaged_model_names_it_and_the_intact_checkpoint_and_that_advice_works(tmp_path, capsys):
    out = run(tmp_path / "r", "train.epochs=1")
    damaged = out / "model" / "model.safetensors"
    _truncate(damaged)
    for cmd in (["eval", str(out)], ["sample", str(out), "--out", str(tmp_path / "s.png")], ["report", str(out)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"{damaged}" in err and "step-000000006 (step 6)" in err and f"--resume {out}" in err, err
        assert "train it again" not in err
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # rewrites model/ from the checkpoint
    assert main(["eval", str(out), "--num-samples", "2"]) == 0


def test_eval_and_resume_give_one_advice_for_a_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    out = run(tmp_path / "r", "train.epochs=1")
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.jsonl").unlink()
    assert main(["eval", str(out)]) == 2
    advice = capsys.readouterr().err.split("no trained model yet: ")[1].strip()
    assert main(["train", "--resume", str(out)]) == 2
    assert advice in capsys.readouterr().err
    cmd = advice.split("start it again with hvae ")[1].split()  # the advice, followed, works
    assert main([*cmd, "--quiet", *TINY[-5:]]) == 0


def test_resume_after_a_hand_edited_config_names_the_model_setting(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["model"]["latent_dims"] = [6, 2]
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match=r"model.latent_dims is \[6, 2\] but was \[4, 2\]"):
        train(hvae.runconfig.RunConfig.from_yaml(out / "config.yaml"), out, resume=True, log=lambda m: None)


def test_report_and_resume_say_the_same_about_a_damaged_metrics_line(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:20]
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError) as e:
        run(out, "train.epochs=2", resume=True)
    page = write_report(out, num_samples=4).read_text()
    assert str(e.value) in page and f"{metrics} line 2 is damaged" in str(e.value)


def test_binarizing_0_to_255_floats_advises_dividing_by_255(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(0, 255, (50, 8)).astype(np.float32))
    with pytest.raises(DataError, match="divide them by 255, or save them as uint8"):
        load_dataset(DataConfig.from_dict({"source": "npy", "path": str(path), "binarize": "dynamic"}))


def test_sample_refuses_an_existing_out_file_unless_overwrite(tmp_path, capsys):
    out = run(tmp_path / "r", "train.epochs=1")
    png = tmp_path / "mine.png"
    png.write_bytes(b"not written by hvae")
    assert main(["sample", str(out), "--n", "4", "--out", str(png)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert png.read_bytes() == b"not written by hvae"
    assert main(["sample", str(out), "--n", "4", "--out", str(png), "--overwrite"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_on_other_data_uses_the_runs_preprocessing_and_its_own_file(tmp_path, capsys):
    out = run(tmp_path / "r", "train.epochs=1")
    cfg = RunDir(out).read_config()
    x = load_dataset(cfg.data).eval_tensor("test")  # 0/1 already: binarising them again changes nothing
    np.save(tmp_path / "held out.npy", x.numpy())
    assert main(["eval", str(out), "--num-samples", "4"]) == 0
    own = json.loads((out / "eval.json").read_text())
    assert main(["eval", str(out), "--num-samples", "4", "--data", str(tmp_path / "held out.npy")]) == 0
    other = json.loads((out / "eval-held_out.json").read_text())
    assert json.loads((out / "eval.json").read_text()) == own  # never over eval.json
    assert other["data"] == str(tmp_path / "held out.npy") and "split" not in other
    assert other["num_examples"] == own["num_examples"] and other["elbo"] == pytest.approx(own["elbo"], abs=1e-5)
    bad = tmp_path / "wide.npy"
    np.save(bad, np.zeros((3, 65), np.float32))
    assert main(["eval", str(out), "--data", str(bad)]) == 2
    assert "65" in capsys.readouterr().err


def test_sample_from_other_data(tmp_path):
    out = run(tmp_path / "r", "train.epochs=1")
    np.save(tmp_path / "x.npy", np.ones((3, 64), np.float32))
    png = tmp_path / "keep.png"
    assert main(["sample", str(out), "--from-data", "--data", str(tmp_path / "x.npy"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_run_directory_names_its_files():
    rd = RunDir("runs/a")
    assert rd.eval_path() == rd.path / "eval.json"
    assert rd.eval_path("data/test set.npz") == rd.path / "eval-test_set.json"
    assert rd.eval_path("data/holdout/") == rd.path / "eval-holdout.json"


def test_train_step_is_the_plain_step_and_skips_a_non_finite_update():
    x = torch.bernoulli(torch.full((16, 64), 0.3), generator=torch.Generator().manual_seed(0))
    cfg = hvae.presets.small().replace(data_shape=[64], latent_dims=[4, 2], hidden_dims=[16, 8])
    torch.manual_seed(0)
    a, b = hvae.build_model(cfg), hvae.build_model(cfg)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = hvae.make_optimizer(a, lr=1e-2), hvae.make_optimizer(b, lr=1e-2)
    torch.manual_seed(1)
    a(x, beta=a.beta_at(0)).loss.backward()
    opt_a.step()
    torch.manual_seed(1)
    r = train_step(b, opt_b, x, step=0)
    assert r.applied and r.skipped is None and not r.stop and torch.isfinite(r.grad_norm)
    assert_same_weights(a.state_dict(), b.state_dict())
    assert all(p.grad is None for p in b.parameters())  # cleared for the next step
    before = {k: v.clone() for k, v in b.named_parameters()}
    r = train_step(b, opt_b, x.clone().fill_(float("nan")), step=1)
    assert not r.applied and r.skipped == "a non-finite loss"
    assert all(torch.equal(before[k], v) for k, v in b.named_parameters())  # the weights untouched


def _ten_seconds_a_step(monkeypatch):
    """Every step takes 10 s more on the clock the trainer reads: a 400 s budget holds about 40 steps,
    however busy the machine (start-up takes real seconds only)."""
    import hvae.train as train_module

    extra, real_monotonic, real_step = [0.0], time.monotonic, train_module.train_step

    def slow_step(*a, **kw):
        extra[0] += 10.0
        return real_step(*a, **kw)

    monkeypatch.setattr(train_module, "train_step", slow_step)
    monkeypatch.setattr(train_module.time, "monotonic", lambda: real_monotonic() + extra[0])


def _train_records(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_under_max_time_a_cosine_decay_reaches_lr_min_at_the_end_of_the_budget(tmp_path, monkeypatch):
    # 1000 epochs would take far longer than the budget: the cosine decays over the ~40 steps that fit in it
    _ten_seconds_a_step(monkeypatch)
    out, notes = logged(
        tmp_path / "r", "train.epochs=1000", "train.max_time=400s", "train.lr_decay=cosine", "train.lr=0.01",
        "train.lr_min=0.001", "train.log_every=1", "train.eval_every=1000", "train.checkpoint_every=1000",
    )  # fmt: skip
    lrs = [r["lr"] for r in _train_records(out)]
    assert any("train.max_time=400s reached" in n for n in notes)
    assert 20 <= len(lrs) <= 41 and lrs[0] == pytest.approx(0.01, rel=1e-3)
    assert lrs[-1] < 0.0015  # lr_min (0.001) at the last step, give or take the pace's last estimate
    assert lrs[len(lrs) // 2] < 0.008  # past the middle of the budget; a decay over 1000 epochs: above 0.0099


def test_under_max_time_kl_warmup_fraction_is_a_fraction_of_the_budget(tmp_path, monkeypatch):
    _ten_seconds_a_step(monkeypatch)
    out, _ = logged(
        tmp_path / "r", "train.epochs=1000", "train.max_time=400s", "train.kl_warmup_fraction=0.5",
        "train.log_every=1", "train.eval_every=1000", "train.checkpoint_every=1000",
    )  # fmt: skip
    betas = [r["beta"] for r in _train_records(out)]
    assert 20 <= len(betas) <= 41 and betas[0] < 0.1 and betas[-1] == 1.0
    assert betas == sorted(betas)
    full = betas.index(1.0) / len(betas)  # where the warm-up ended, as a fraction of the steps run
    assert 0.3 <= full <= 0.7  # half the budget; over 1000 epochs' steps it would still be near 0


def test_under_max_time_compiling_minutes_do_not_shorten_the_kl_warmup(tmp_path, monkeypatch):
    # the first step compiles for 200 s of the 600 s budget: the ~40 steps that fit after it, not the ~3 that the
    # pace including it would predict, are the horizon, so the warm-up over half of it ends near the middle
    import hvae.train as train_module

    _ten_seconds_a_step(monkeypatch)
    real_step, calls = train_module.train_step, [0]
    clock = train_module.time.monotonic

    def compiling_first(model, *a, **kw):
        calls[0] += 1
        if calls[0] == 1:
            model.compiler.events.append("compiled (a test's stand-in, 200 s)")
            offset = 200.0
            monkeypatch.setattr(train_module.time, "monotonic", lambda: clock() + offset)
        return real_step(model, *a, **kw)

    monkeypatch.setattr(train_module, "train_step", compiling_first)
    out, _ = logged(
        tmp_path / "r", "train.epochs=1000", "train.max_time=600s", "train.kl_warmup_fraction=0.5",
        "train.compile=never", "train.log_every=1", "train.eval_every=1000", "train.checkpoint_every=1000",
    )  # fmt: skip
    betas = [r["beta"] for r in _train_records(out)]
    assert 20 <= len(betas) <= 41 and betas[-1] == 1.0
    full = betas.index(1.0) / len(betas)
    assert 0.3 <= full <= 0.7  # counting the 200 s as a step's, the warm-up ended after the first few steps
