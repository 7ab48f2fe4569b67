"""The decoder-only yardstick of text models (issue #32): the same autoregressive decoder with no latents,
trained and scored by the same code, whose ELBO and IW bound are its exact log-likelihood."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import hvae
from hvae.cli import main
from hvae.config import ConfigError
from hvae.data.text import ByteTokenizer
from tests.test_text import _token_batch, _token_model

_SENTENCES = ["hello there", "a", "padding is ignored", "the quick brown fox"]


def _decoder_only(decoder="gru"):
    base = _token_model(T=12, decoder=decoder)
    torch.manual_seed(0)
    return hvae.build_model(base.config.replace(decoder_only=True))  # free_bits=2 from the preset


def _teacher_forced_nll(model, x):
    """-log p(x) of the decoder given its constant features, by hand: cross-entropy of the net's logits at the
    real tokens (padding excluded), (B,) nats."""
    lik = model.likelihood
    cond = model.decoder_head(model.decoder(torch.zeros(x.shape[0], *model._state_shape)))
    cond = cond.view(x.shape[0], lik.num_params, -1)[..., : x.shape[1]]  # (B, P_c, T)
    logits = lik.net((x.float() / (lik.levels - 1)).unsqueeze(1), cond)  # (B, K, T): position t reads x_<t
    nll = F.cross_entropy(logits, x, ignore_index=model.config.pad_id, reduction="none")  # (B, T)
    return nll.sum(1)


@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_decoder_only_loss_is_the_decoders_nll_and_its_bounds_are_exact(decoder):
    model = _decoder_only(decoder).train()
    x = _token_batch(ByteTokenizer(), _SENTENCES, 12)
    out = model(x, beta=1.0)
    nll = _teacher_forced_nll(model, x)
    assert torch.allclose(-out.log_px, nll, atol=1e-4)
    # no KL and no free-bits floor (the preset's 2 nats per level): the loss is the mean NLL, nothing added
    assert all(bool((k == 0).all()) for k in out.kl)
    assert torch.equal(out.elbo, out.log_px) and torch.allclose(out.loss, nll.mean(), atol=1e-4)
    out.loss.backward()
    # only the decoder is built, and all of it learns: no parameter is left without a gradient
    assert model.token_encoder is None and len(model.encoder) == 0 and len(model.layers) == 0
    assert all(p.grad is not None for p in model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.likelihood.parameters())
    model.eval()
    with torch.no_grad():
        elbo = model(x).elbo
        for k in (1, 7):  # every importance weight is p(x | .) itself: the bound is exact for any K
            assert torch.allclose(model.log_likelihood(x, num_samples=k), elbo, atol=1e-5)
        # the latents reach nothing: other draws of z give the same p(x)
        torch.manual_seed(123)
        assert torch.equal(model(x).elbo, elbo)


def test_decoder_only_needs_an_autoregressive_decoder():
    with pytest.raises(ConfigError, match="decoder_only: needs an autoregressive decoder"):
        hvae.presets.small(decoder_only=True)


def test_decoder_only_config_trains_and_eval_reports_its_exact_bound(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(60)) + "\n")
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/text_fortunes_decoder_only.yaml", "data.source=text", f"data.path={text}",
        "data.max_length=48", "train.epochs=1", "train.batch_size=16", "train.max_steps=3", "--out", str(run),
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    model = hvae.load(run / "model")
    assert model.config.decoder_only and model.config.decoder == "transformer"
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in train if r.get("split") == "val"][-1]
    assert val["elbo"] == pytest.approx(val["log_px"]) and val["kl"] == []
    capsys.readouterr()
    assert main(["eval", str(run), "--num-samples", "3", "--max-examples", "8"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["iw_bound"] == pytest.approx(result["elbo"], abs=1e-4)
    assert result["kl"] == [] and result["active_units"] == [] and result["exact"] and result["num_samples"] == 1
    assert result["latent_nats"] == 0.0  # the decoder reads no latents
    # the exact log-likelihood of the decoder, recomputed by hand on the same examples
    from hvae.data import load_dataset
    from hvae.runconfig import load_run_config

    cfg, _ = load_run_config(run / "config.yaml")
    x = load_dataset(cfg.data).eval_tensor("test")[:8]
    model.eval()
    with torch.no_grad():
        assert -_teacher_forced_nll(model, x).mean().item() == pytest.approx(result["elbo"], abs=1e-3)
