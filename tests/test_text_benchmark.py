"""benchmarks/text.py: its variants are valid configs and its table says what the runs measured."""

from __future__ import annotations

from benchmarks import text as bench
from hvae.runconfig import load_run_config


def test_every_variant_is_a_config_hvae_train_accepts():
    table = bench.variants(cycle_steps=100)
    assert bench.YARDSTICK in table and {"preset", "all"} <= set(table)
    for name, (config, overrides) in table.items():
        cfg, _ = load_run_config(config, [*overrides, "train.max_time=120", "train.seed=1"])
        assert cfg.model.decoder_only == (name == bench.YARDSTICK)
        assert cfg.model.latent_dims == [32, 16, 8] and cfg.model.decoder == "transformer" and cfg.train.seed == 1
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
    # over seeds: the mean difference and its standard error (sd 5.657 / sqrt 2 = 4.0)
    assert "| all | 2 | -168.0 ± 4.2 | +1.0 ± 4.0 | 2.50 |" in text
