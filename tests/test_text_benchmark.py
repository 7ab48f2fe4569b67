"""benchmarks/text.py: its variants are valid configs and its table says what the runs measured."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import text as bench
from hvae.runconfig import load_run_config


def test_every_variant_is_a_config_hvae_train_accepts():
    table = bench.variants(cycle_steps=100)
    assert bench.YARDSTICK in table and {"preset", "all"} <= set(table)
    for name, (config, overrides) in table.items():
        cfg, _ = load_run_config(config, [*overrides, "train.max_time=120", "train.seed=1"])
        assert cfg.model.decoder_only == name.startswith(bench.YARDSTICK)
        assert cfg.model.latent_dims == [32, 16, 8] and cfg.model.decoder == "transformer" and cfg.train.seed == 1
    assert load_run_config(*table["decoder_only_dropout"])[0].model.seq_word_dropout == 0.3
    both = load_run_config(*table["seq_target_levels_every_layer"])[0].model
    assert both.seq_cond_every_layer and both.free_bits_levels == [6, 4, 2]
    assert load_run_config(*table["preset"])[0].model.seq_cond_every_layer  # as configs/text_fortunes.yaml ships
    assert not load_run_config(*table["embedding_only"])[0].model.seq_cond_every_layer
    cfg, _ = load_run_config(*table["all"])
    m = cfg.model
    assert (m.seq_word_dropout, m.seq_context, m.kl_cycles, m.kl_cycle_steps) == (0.3, 16, 4, 100)
    assert (m.free_bits_mode, m.bn_posterior_means, cfg.train.aggressive_encoder) == ("sequence", 0.6, True)


def _result(iw, step=40, nats=1.0):
    return {
        "step": step, "iw_bound": iw, "iw_bound_stderr": 2.0, "bits_per_byte_iw": 2.5, "kl": [1.0, 0.5, 0.0],
        "latent_nats": nats, "active_units": [3, 1, 0], "units": [32, 16, 8], "reconstruction_similarity": 0.25,
    }  # fmt: skip


def test_rows_and_table_compare_each_run_with_the_yardstick_of_its_seed():
    yard = {0: _result(-170.0, nats=0.0), 1: _result(-168.0, nats=0.0)}
    rows = [bench.row(bench.YARDSTICK, s, yard[s], yard[s]) for s in (0, 1)]
    rows += [bench.row("all", 0, _result(-165.0, nats=4.0), yard[0]), bench.row("all", 1, _result(-171.0), yard[1])]
    assert [r["vs_decoder_only"] for r in rows] == [0.0, 0.0, 5.0, -3.0]
    text = bench.table(rows)
    assert "| all | 0 | 40 | -165.0 ± 2.0 | 2.500 | +5.0 | 1.00, 0.50, 0.00 | 4.00 | 3/32, 1/16, 0/8 | 0.250 |" in text
    assert "| decoder_only | 0 | 40 | -170.0 ± 2.0 | 2.500 | - |" in text
    no_latents = {**_result(-170.0, nats=0.0), "kl": [], "active_units": [], "units": []}  # a decoder-only eval
    assert "| - | no latents | 0.00 | - | 0.250 |" in bench.table(
        [bench.row(bench.YARDSTICK, 0, no_latents, no_latents)]
    )
    # over seeds: the mean difference and its standard error (sd 5.657 / sqrt 2 = 4.0)
    assert "| all | 2 | -168.0 ± 4.2 | +1.0 ± 4.0 | 2.50 |" in text


def _fake_hvae(monkeypatch, calls):
    """subprocess.run of benchmarks.text replaced: records each hvae command with its environment and pinning,
    and writes the eval.json / keep_top.txt the real commands would."""
    import threading
    import time

    def run(cmd, *, env, preexec_fn, **_):
        args = cmd[3:]  # python -m hvae ARGS
        calls.append({"args": args, "threads": env.get("OMP_NUM_THREADS"), "pin": preexec_fn,
                      "thread": threading.get_ident()})  # fmt: skip
        if args[0] == "eval":
            (Path(args[1]) / "eval.json").write_text(json.dumps({**_result(-170.0), "step": 7}))
        elif args[0] == "train":
            Path(args[args.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
            time.sleep(0.2)  # two runs at once overlap here
        elif args[0] == "sample":
            (Path(args[1]) / "samples").mkdir(exist_ok=True)
            (Path(args[1]) / "samples" / "keep_top.txt").write_text("x")

    monkeypatch.setattr(bench.subprocess, "run", run)  # (the subprocess module: also what commit() would run)
    monkeypatch.setattr(bench, "commit", lambda: "abc1234")


def test_cores_pin_each_run_to_one_core_with_one_thread_and_append_adds_pairs(tmp_path, monkeypatch, capsys):
    calls: list[dict] = []
    _fake_hvae(monkeypatch, calls)
    monkeypatch.setattr(bench, "_affinity", lambda: [0, 1])
    out = tmp_path / "text.json"
    common = ["--runs", str(tmp_path / "runs"), "--out", str(out), "--max-time", "5"]
    assert bench.main(["--cores", "0", "1", "--variants", "decoder_only", "preset", *common]) == 0
    record = json.loads(out.read_text())
    runs = record["runs"]
    assert sorted(runs) == ["decoder_only-0", "preset-0"]
    assert sorted(r["cores"][0] for r in runs.values()) == [0, 1] and all(len(r["cores"]) == 1 for r in runs.values())
    assert {r["threads"] for r in runs.values()} == {1} and {c["threads"] for c in calls} == {"1"}
    assert len({c["thread"] for c in calls if c["args"][0] == "train"}) == 2  # side by side
    assert "no latents" in record["reconstructions"]["decoder_only-0"]  # hvae sample --from-data refuses it
    assert not any(c["args"][0] == "sample" and "decoder_only" in c["args"][1] for c in calls)
    # each run's process pins itself, before it starts, to the core its record names
    on_0 = next(c for c in calls if c["args"][0] == "train" and runs[Path(c["args"][-3]).name]["cores"] == [0])
    before = os.sched_getaffinity(0)
    try:
        on_0["pin"]()
        assert os.sched_getaffinity(0) == {0}
    finally:
        os.sched_setaffinity(0, before)
    # the next pair, without the yardstick: its rows still compare with the first pair's yardstick
    calls.clear()
    assert bench.main(["--cores", "0", "1", "--append", "--no-yardstick", "--variants", "word_dropout", *common]) == 0
    assert [c["args"][0] for c in calls] == ["train", "eval", "sample"]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"decoder_only", "preset", "word_dropout"} and rows["word_dropout"]["vs_decoder_only"] == 0.0
    assert rows["word_dropout"]["cores"] in ([0], [1]) and rows["word_dropout"]["threads"] == 1
    with pytest.raises(SystemExit):
        bench.main(["--cores", "0", "5", *common])
    assert "--cores 0 5: give distinct cores of [0, 1]" in capsys.readouterr().err
