"""benchmarks/fidelity_budget.py: its "before" runs build the small presets as they were, its "after" runs the
configs as shipped, and one tiny run of each side goes through hvae train and hvae eval."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import fidelity_budget as bench
from hvae import presets
from hvae.data import write_idx
from hvae.runconfig import load_run_config


def test_before_is_the_old_presets_and_after_the_configs_as_shipped():
    table = bench.variants()
    assert set(table) == {"nvae_before", "nvae_after", "vdvae_before", "vdvae_after"}
    for name, (config, overrides) in table.items():
        cfg, _ = load_run_config(config, [*overrides, "train.max_time=60", "train.seed=3"])
        assert cfg.data.source == "fashion_mnist" and cfg.train.seed == 3 and cfg.model.data_shape == [1, 28, 28]
        before = name.endswith("before")
        assert (cfg.train.grad_clip == 200.0) == before or name.startswith("vdvae")
        if name == "nvae_before":
            assert cfg.model == presets.nvae_small(**presets.NVAE_SMALL_BEFORE)
            assert (cfg.train.optimizer, cfg.train.lr, cfg.train.kl_warmup_epochs) == ("adamax", 0.005, 0.5)
            assert cfg.train.compile == "auto"  # as it trained; the configs now run eagerly (inductor, RESULTS.md)
        if name == "nvae_after":
            assert cfg.model == presets.nvae_small()
            assert (cfg.train.adam_eps, cfg.train.weight_decay, cfg.train.kl_warmup_fraction) == (1e-3, 3e-4, 0.3)
            assert cfg.train.compile == "never"
        if name == "vdvae_before":
            assert cfg.model == presets.vdvae_small(**presets.VDVAE_SMALL_BEFORE, data_shape=[1, 28, 28],
                                                    likelihood="bernoulli")  # fmt: skip
            assert (cfg.train.optimizer, cfg.train.grad_norm_per, cfg.train.skip_threshold) == (
                "adamax",
                "example",
                None,
            )
        if name == "vdvae_after":
            assert cfg.model == presets.vdvae_small(data_shape=[1, 28, 28], likelihood="bernoulli")
            assert (cfg.train.optimizer, cfg.train.adam_beta2, cfg.train.grad_norm_per) == ("adamw", 0.9, "dim")


def _result(iw, step=40):
    return {
        "step": step, "iw_bound": iw, "iw_bound_stderr": 0.5, "elbo": iw - 2.0, "kl": [1.0, 2.0],
        "active_units": [3, 1], "units": [8, 8],
    }  # fmt: skip


def test_table_gives_each_run_and_the_gain_of_after_over_before_per_seed():
    rows = [bench.row("nvae_before", 0, _result(-250.0), 20.0), bench.row("nvae_after", 0, _result(-245.5, 30), 20.0)]
    assert rows[1]["steps_per_s"] == 1.5 and rows[0]["kl"] == 3.0
    text = bench.table(rows)
    assert "| nvae_after | 0 | 30 | 1.5 | -245.50 ± 0.50 | -247.50 | 3.00 | 4/16 |" in text
    assert "| nvae | 0 | +4.50 |" in text


def test_a_tiny_run_through_hvae_train_and_eval(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "fashion"
    data.mkdir()
    for split, n in (("train", 48), ("t10k", 8)):
        write_idx(data / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(data / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    out = tmp_path / "result.json"
    args = ["--budget", "1", "--num-samples", "2", "--max-examples", "4", "--only", "nvae_after"]
    assert bench.main([*args, "--data-path", str(data), "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["variant"] for r in record["rows"]] == ["nvae_after"]
    assert record["max_examples"] == 4 and record["num_samples"] == 2 and record["budget"] == "1"
    r = record["rows"][0]
    assert r["steps"] >= 1 and np.isfinite(r["iw_bound"]) and r["iw_bound"] < 0
    assert record["results"]["nvae_after-0"]["iw_bound"] == r["iw_bound"]
    assert f"| nvae_after | 0 | {r['steps']} |" in capsys.readouterr().out
