"""Issue #32, second round: the decoder-only yardstick builds its decoder alone and is scored exactly; the
aggressive phase survives a checkpoint; benchmarks/text.py runs its variants on chosen cores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import hvae
import hvae.aggressive as aggressive
from hvae.cli import main
from hvae.configbase import ConfigError
from hvae.data.text import ByteTokenizer
from hvae.evaluate import evaluate, format_table
from tests.test_text import _token_batch, _token_model

_SENTENCES = ["hello there", "a", "padding is ignored", "the quick brown fox"]


def _count(modules) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_decoder_only_has_the_full_models_parameters_less_the_encoder_and_the_latent_levels(decoder):
    full = _token_model(T=12, decoder=decoder)
    only = hvae.build_model(full.config.replace(decoder_only=True))
    inference_and_levels = _count([full.token_encoder, full.encoder, full.layers, full.depth_attn])
    assert inference_and_levels > 0
    assert _count([only]) == _count([full]) - inference_and_levels
    # what is left is the decoder, its head and the likelihood's network, shaped as the full model's
    assert {k: v.shape for k, v in only.state_dict().items()} == {
        k: v.shape
        for k, v in full.state_dict().items()
        if not k.startswith(("token_encoder.", "encoder.", "layers.", "depth_attn."))
    }


def test_decoder_only_leaves_no_parameter_without_a_gradient_after_a_step():
    model = hvae.build_model(_token_model(T=12, decoder="transformer").config.replace(decoder_only=True)).train()
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    model(x, beta=1.0).loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_decoder_only_refuses_what_needs_latents_and_loads_weights_saved_with_the_unused_parts(tmp_path):
    full = _token_model(T=12)
    only = hvae.build_model(full.config.replace(decoder_only=True)).eval()
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    for call in (
        lambda: only.encode(x),
        lambda: only.sample_conditional(x, keep_top=1),
        lambda: only.generate([None, None, torch.zeros(4, 2)]),
        lambda: only.decode([torch.zeros(4, 8), torch.zeros(4, 4), torch.zeros(4, 2)]),
    ):
        with pytest.raises(ValueError, match="decoder-only.*no latents"):
            call()
    assert only.sample(3, decode="greedy").shape == (3, 12)  # unconditional text still works
    from hvae.ood import scores

    with pytest.raises(ValueError, match="decoder-only.*LLR>k.*has none"):
        scores(only, x)
    from hvae.codec import compress

    with pytest.raises(ValueError, match="bits-back through the latents.*decoder-only"):
        compress(only, x)
    # weights saved before the encoder and levels were dropped from decoder-only models still load
    only.save_pretrained(tmp_path / "m")
    from hvae.files import load_tensors, save_tensors

    state, meta = load_tensors(tmp_path / "m" / "model.safetensors")
    unused = {k: v for k, v in full.state_dict().items() if k.startswith(("encoder.", "layers.", "token_encoder."))}
    save_tensors({**state, **unused}, tmp_path / "m" / "model.safetensors", metadata=meta)
    back = hvae.load(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(back(x).elbo, only(x).elbo)


def test_decoder_only_eval_reports_the_exact_log_likelihood_from_one_pass(monkeypatch):
    model = hvae.build_model(_token_model(T=12).config.replace(decoder_only=True)).eval()
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    passes = []
    real = type(model)._decode_state
    monkeypatch.setattr(type(model), "_decode_state", lambda self, *a: passes.append(1) or real(self, *a))
    result = evaluate(model, x, num_samples=50, batch_size=4)
    # the ELBO's pass alone, not 50 more for the bound: the bound is log p(x) itself
    assert len(passes) == 1
    assert result["exact"] and result["num_samples"] == 1 and result["kl"] == [] and result["units"] == []
    with torch.no_grad():
        assert result["iw_bound"] == pytest.approx(float(model(x).log_px.mean()), abs=1e-4)
    assert result["iw_bound"] == result["elbo"] and result["iw_bound_stderr"] == result["elbo_stderr"]
    table = format_table(result)
    assert "exact log-likelihood" in table and "IW bound (K=" not in table
    assert "no latents (a decoder-only model)" in table


def _text(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(60)) + "\n")
    return text


def test_hvae_sample_of_a_decoder_only_run_refuses_latent_pictures_naming_why(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/text_fortunes_decoder_only.yaml", "data.source=text",
        f"data.path={_text(tmp_path)}", "data.max_length=48", "train.batch_size=16", "train.max_steps=2",
        "--out", str(run), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    for flags, name in (
        (["--interpolate"], "--interpolate"),
        (["--from-data"], "--from-data"),
        (["--from-data", "--keep-top", "1"], "--from-data --keep-top"),
    ):
        capsys.readouterr()
        assert main(["sample", str(run), *flags, "--n", "2", "--overwrite"]) != 0
        assert re.search(f"error: {name}: .* is a decoder-only model .* no latents", capsys.readouterr().err)
    assert main(["sample", str(run), "--n", "2", "--overwrite"]) == 0


def _aggressive_run(tmp_path, name, *extra, resume=False):
    run = tmp_path / name
    args = [
        "train", "--config", "configs/text_fortunes.yaml", "data.source=text", f"data.path={_text(tmp_path)}",
        "data.max_length=48", "train.epochs=3", "train.batch_size=16", "train.aggressive_encoder=true",
        "train.aggressive_inner_steps=3", "train.aggressive_mi_every=2", "train.checkpoint_every=2",
        "train.eval_every=1000", "train.log_every=1", "train.progress=false", "train.compile=never",
        # the latents read once: on this text the phase is then still under way at step 3 (see the test below)
        "model.seq_cond_every_layer=false", *extra, "--out", str(run),
    ]  # fmt: skip
    assert main(args + (["--resume"] if resume else [])) == 0
    return run


def _last_state(run):
    ckpt = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    return json.loads((ckpt / "state.json").read_text())


def test_a_resumed_run_takes_the_aggressive_phases_decisions_of_an_unbroken_run(tmp_path, capsys):
    full = _aggressive_run(tmp_path, "full", "train.max_steps=7")
    part = _aggressive_run(tmp_path, "part", "train.max_steps=3")
    stopped = _last_state(part)["aggressive"]
    assert stopped["active"] and stopped["inner"] and stopped["batches"]["batch"] > 0  # the phase under way
    assert (part / "checkpoints" / "step-000000003" / aggressive.STATE_FILE).is_file()
    capsys.readouterr()
    _aggressive_run(tmp_path, "part", "train.max_steps=7", resume=True)
    said = capsys.readouterr()
    assert "resumed with the aggressive phase under way" in said.out + said.err
    a, b = _last_state(full)["aggressive"], _last_state(part)["aggressive"]
    assert len(a["mi"]) == 4 and len(a["inner"]) >= 4  # checks at steps 0, 2, 4, 6
    assert a == b  # the same checks of I_q, the same inner steps, the same end (or none)
    wa, wb = hvae.load(full / "model").state_dict(), hvae.load(part / "model").state_dict()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5), k


def _job(**kw):
    cfg = SimpleNamespace(train=SimpleNamespace(aggressive_encoder=True))
    return SimpleNamespace(config=cfg, model=_token_model(T=12), state={"step": 0}, log=print, **kw)


def test_the_aggressive_phase_refuses_several_processes_and_a_decoder_only_model():
    with pytest.raises(ConfigError, match="runs in one process.*train without torchrun"):
        aggressive.start(_job(ctx=SimpleNamespace(distributed=True)))
    job = _job(ctx=SimpleNamespace(distributed=False))
    job.model = hvae.build_model(job.model.config.replace(decoder_only=True))
    with pytest.raises(ConfigError, match="decoder-only .* has none"):
        aggressive.start(job)


@pytest.mark.slow
def test_two_processes_train_the_decoder_only_model_with_no_unused_parameters(tmp_path):
    """DDP (gloo) waits for a gradient of every parameter: the encoder and levels a decoder-only model once
    built but never used made the second step fail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hvae"]
    args = [
        "train", "--config", "configs/text_fortunes_decoder_only.yaml", "data.source=text",
        f"data.path={_text(tmp_path)}", "data.max_length=48", "train.batch_size=16", "train.max_steps=3",
        "train.dist_timeout=60", "train.compile=never", "--out", str(tmp_path / "ddp"), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(hvae.load(tmp_path / "ddp" / "model").step) == 3


def test_building_a_decoder_only_model_leaves_the_random_stream_and_the_decoders_initial_weights_alone():
    cfg = _token_model(T=12).config
    torch.manual_seed(3)
    full = hvae.build_model(cfg)
    after_full = torch.rand(4)
    torch.manual_seed(3)
    only = hvae.build_model(cfg.replace(decoder_only=True))
    assert torch.equal(torch.rand(4), after_full)  # the shape probe drew nothing from the caller's stream
    kept = only.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in full.state_dict().items() if k in kept)


def test_a_decoder_only_model_scores_in_evaluation_what_it_scored_in_training():
    """The yardstick's state is a constant zero, so its decoder's batch norms see identical rows in training (their
    output: the bias). Evaluated with running statistics that lag behind that constant, a trained yardstick scored
    -324 nats per text against -98 in training mode. Evaluation now computes what training did, for any batch
    size, and leaves the running statistics alone."""
    torch.manual_seed(0)
    model = hvae.build_model(_token_model(T=12, decoder="transformer").config.replace(decoder_only=True)).train()
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.decoder.modules())
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):  # the weights move faster than the running means follow
        opt.zero_grad()
        model(x, beta=1.0).loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model(x, beta=1.0).log_px
        running = {n: b.clone() for n, b in model.named_buffers() if n != "step"}
        model.eval()
        scored = model(x).log_px
        one = model(x[:1]).log_px
    assert torch.allclose(scored, trained, rtol=1e-5, atol=1e-4)
    assert torch.allclose(one, trained[:1], rtol=1e-5, atol=1e-4)
    assert all(torch.equal(running[n], b) for n, b in model.named_buffers() if n != "step")
    assert all(not m.training for m in model.modules())
