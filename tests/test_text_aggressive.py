"""Aggressive encoder updates early in training (He et al. 2019; hvae.aggressive, train.aggressive_encoder)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import hvae.aggressive as aggressive
from hvae.aggressive import AggressiveEncoder, converged, inference_parameters, mutual_information
from hvae.cli import main
from hvae.configbase import ConfigError
from hvae.data.text import ByteTokenizer
from hvae.runconfig import TrainConfig
from hvae.train import train_step
from tests.test_text import _token_batch, _token_model

_SENTENCES = ["hello there", "a", "padding is ignored", "the quick brown fox", "of mice and men", "xyz"]


def _setup(**kw):
    model = _token_model(T=24).train()
    x = _token_batch(ByteTokenizer(), _SENTENCES, 24)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    agg = AggressiveEncoder(model, opt, itertools.repeat(x), x, lr=1e-2, log=lambda m: None, **kw)
    return model, x, opt, agg


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(params, before):
    return [not torch.equal(p, b) for p, b in zip(params, before)]


def test_inner_steps_move_the_encoder_only_and_the_phase_step_moves_the_decoder_only():
    model, x, opt, agg = _setup(max_inner=4, mi_every=1000)
    enc = inference_parameters(model)
    enc_ids = {id(p) for p in enc}
    gen = [p for p in model.parameters() if id(p) not in enc_ids]
    assert enc and gen and any(id(p) in enc_ids for p in model.token_encoder.parameters())
    assert all(id(p) not in enc_ids for p in model.likelihood.parameters())  # the decoder is generative
    e0, g0, step0 = _snapshot(enc), _snapshot(gen), model.step.clone()
    agg.before_step(1, beta=1.0)  # not a check step (1 % 1000): the inner loop only
    assert agg.inner == [4] and agg.mi == []
    assert sum(_changed(enc, e0)) >= len(enc) // 2 and not any(_changed(gen, g0))
    assert torch.equal(model.step, step0)  # inner passes do not advance the KL or relaxation schedules
    assert all(p.grad is None for p in model.parameters())
    # the training step of the phase: the generative model moves, the encoder does not
    e1, g1 = _snapshot(enc), _snapshot(gen)
    assert train_step(model, opt, x, step=1).applied
    assert not any(_changed(enc, e1)) and any(_changed(gen, g1))
    # after the phase the trainer's step moves both
    agg.active = False
    e2 = _snapshot(enc)
    assert train_step(model, opt, x, step=2).applied
    assert any(_changed(enc, e2))


def test_inner_loop_stops_when_a_window_of_losses_does_not_fall_or_at_the_limit():
    assert not converged([5.0, 4.0, 3.0, 2.0], window=2)  # still falling
    assert converged([1.0, 1.0, 2.0, 2.0], window=2)  # the last window is not below the one before
    assert not converged([1.0, 1.0, 2.0], window=2) and not converged([1.0, 2.0, 3.0], window=2)  # between checks
    assert not converged([1.0, 1.0, 2.0, 2.0, 2.0], window=2)
    tok = ByteTokenizer()
    # batches whose loss rises (longer and longer texts): the rule stops at the first check, after 2 windows
    rising = [_token_batch(tok, ["ab" * n] * 4, 24) for n in range(1, 12)]
    model, _, _, agg = _setup(max_inner=8, mi_every=1000, window=2)
    agg.batches = iter(rising)
    agg.before_step(1)
    assert agg.inner == [4]
    # batches whose loss falls: no check stops it, the limit does
    model, _, _, agg = _setup(max_inner=7, mi_every=1000, window=2)
    agg.batches = iter(rising[::-1])
    agg.before_step(1)
    assert agg.inner == [7]


def test_the_phase_ends_at_the_first_check_where_the_mutual_information_did_not_rise(monkeypatch):
    values = iter([1.0, 2.0, 1.5])
    monkeypatch.setattr(aggressive, "mutual_information", lambda model, x: next(values))
    model, x, opt, agg = _setup(max_inner=1, mi_every=2)
    for step in range(8):
        agg.before_step(step)
    assert agg.mi == [(0, 1.0), (2, 2.0), (4, 1.5)] and agg.ended_at == 4 and not agg.active
    assert agg.inner == [1, 1, 1, 1]  # steps 0 to 3; none from step 4 on
    e0 = _snapshot(inference_parameters(model))
    assert train_step(model, opt, x, step=8).applied
    assert any(_changed(inference_parameters(model), e0))  # the hook no longer holds the encoder


def _distinct_posteriors(inference: str):
    """A model whose batch statistics are those of ``x`` (so the encoder's features differ across examples),
    its posterior heads scaled by 10: sharp posteriors far apart."""
    model = _token_model(T=24)
    model = type(model)(model.config.replace(inference=inference))
    x = _token_batch(ByteTokenizer(), _SENTENCES, 24)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean: after one pass, the running statistics are the batch's
    with torch.no_grad():
        model.train()._bottom_up(x)
        for layer in model.layers:
            layer.posterior_head.weight.mul_(10.0)
    return model.eval(), x


@pytest.mark.parametrize("inference", ["ladder", "bottom_up"])
def test_mutual_information_is_log_batch_for_distinct_posteriors_and_zero_when_q_ignores_x(inference):
    model, x = _distinct_posteriors(inference)
    log_b = math.log(len(_SENTENCES))
    torch.manual_seed(0)
    # each z^j is likely under its own posterior only: q(z^j) = q(z^j | x_j) / B, the estimate's ceiling
    assert mutual_information(model, x) == pytest.approx(log_b, abs=1e-4)
    with torch.no_grad():  # every level's context is its bias: q(z | x) is the same for every x
        for layer in model.layers:
            layer.posterior_head.weight.zero_()
    assert mutual_information(model, x) == pytest.approx(0.0, abs=1e-5)


def test_train_option_runs_through_hvae_train_and_is_checked(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(60)) + "\n")
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/text_fortunes.yaml", "data.source=text", f"data.path={text}",
        "data.max_length=48", "train.epochs=1", "train.batch_size=16", "train.max_steps=3",
        "train.aggressive_encoder=true", "train.aggressive_inner_steps=2", "train.aggressive_mi_every=2",
        "train.progress=false", "--out", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    assert "train.aggressive_encoder: I_q(x; z) = " in said and "nats at step 2" in said  # checks at 0 and 2
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())][-1] == 3
    with pytest.raises(ConfigError, match="train.aggressive_inner_steps: must be >= 1"):
        TrainConfig(aggressive_inner_steps=0)
