"""The text measures of `hvae eval` (issue #32): teacher-forced next-token accuracy with z ~ q and z ~ p, and the
reconstruction similarity of sampled decodings, over all inputs and over short ones."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from hvae.cli import main
from hvae.data.text import ByteTokenizer
from hvae.evaluate import SHORT_ENTRY_TOKENS, _latent_lines, latent_information
from hvae.likelihoods import Categorical
from tests.test_text import _blind_decoder, _token_batch, _write


class _Conditionals:
    """p(x_i | x_<i, z) of a decoder that puts all its mass on one id per position (the id its z names)."""

    def __init__(self, ids: torch.Tensor, K: int, pad_id: int):  # ids (B, T)
        self.ids = ids
        # -inf off the named id: greedy, sampling and teacher forcing all give that id, with log-probability 0
        logits = torch.full((ids.shape[0], K, 1, ids.shape[1]), -math.inf)
        logits.scatter_(1, ids.view(ids.shape[0], 1, 1, -1), 0.0)
        self.categorical = Categorical((ids.shape[1],), num_classes=K, pad_id=pad_id, tokens=True)(logits.squeeze(2))

    def conditionals(self, x):
        return self.categorical

    @property
    def mean(self):
        return self.ids

    def decode(self, decoding):
        return decoding.pick(self.categorical.logits, dim=1).view_as(self.ids)


class _CopyModel:
    """A toy token model whose z ~ q(z | x) is x itself and whose decoder copies z; z ~ p(z) names ``prior_id``
    at every position. Only what `latent_information` reads."""

    def __init__(self, tok: ByteTokenizer, prior_id: int):
        self.tok, self.prior_id = tok, prior_id
        self.config = SimpleNamespace(pad_id=tok.pad_id)

    def eval(self):
        return self

    def trim_padding(self, x):
        return x

    def _infer(self, x):
        self.T = x.shape[1]
        return SimpleNamespace(state=x)

    def _top_down(self, B):
        return SimpleNamespace(state=torch.full((B, self.T), self.prior_id))

    def _decode_state(self, state, length=None):
        return _Conditionals(state, self.tok.vocab_size, self.tok.pad_id)


def _texts():
    # input lengths in bytes 3, 40, 41, 60: the first two are short entries
    return ["abc", "x" * SHORT_ENTRY_TOKENS, "y" * (SHORT_ENTRY_TOKENS + 1), "z" * 60]


def test_a_decoder_that_copies_its_latents_is_exact_given_q_and_right_only_at_its_guess_given_p():
    tok = ByteTokenizer()
    x = _token_batch(tok, _texts(), 64)  # every row ends with end-of-sequence, then padding
    # z ~ p names end-of-sequence everywhere: right once per row, at its end
    info = latent_information(_CopyModel(tok, tok.eos_id), x, tok.eos_id, batch_size=3, tokenizer=tok)
    targets = sum(len(t) + 1 for t in _texts())  # the bytes and the end-of-sequence; padding never counts
    assert info["token_accuracy_q"] == 1.0
    assert info["token_accuracy_p"] == pytest.approx(4 / targets)
    assert info["token_accuracy_gain"] == pytest.approx(1 - 4 / targets)
    assert info["latent_nats"] == math.inf  # log p(x | z ~ p) = -inf: the prior's guess leaves no mass on x
    for key in ("reconstruction_similarity", "reconstruction_similarity_sampled"):
        assert info[key] == 1.0 and info[key + "_short"] == 1.0
    assert info["short_entries"] == 2 and info["latent_info_examples"] == 4
    assert info["reconstruction_examples"] == [{"input": t, "sampled": t, "greedy": t} for t in _texts()[:2]]


def test_a_decoder_that_ignores_its_latents_has_the_same_accuracy_given_q_and_p():
    model, tok, x = _blind_decoder()
    info = latent_information(model, x, tok.eos_id, batch_size=3)
    assert info["token_accuracy_q"] == info["token_accuracy_p"] and info["token_accuracy_gain"] == 0.0
    # the teacher-forced accuracy by hand, from the decoder's conditionals (the same for any z)
    px = model._decode_state(model._top_down(4).state, 12)
    right = (px.conditionals(x).logits.argmax(1).view_as(x) == x) & (x != tok.pad_id)
    assert info["token_accuracy_q"] == pytest.approx(float(right.sum()) / float((x != tok.pad_id).sum()))
    # inputs of 12 tokens at most: every one is short; ids (no tokeniser) in the examples
    assert info["short_entries"] == 4 and len(info["reconstruction_examples"]) == 4
    assert info["reconstruction_similarity_short"] == pytest.approx(info["reconstruction_similarity"])
    assert info["reconstruction_examples"][1]["input"] == list(b"a")
    # its own greedy text: each id is the most probable given the ones before, so teacher forcing gets every one
    greedy = model.sample(4, decode="greedy")
    assert latent_information(model, greedy, tok.eos_id)["token_accuracy_q"] == 1.0


def test_no_short_entry_leaves_the_short_means_empty_and_says_so():
    tok = ByteTokenizer()
    long = ["w" * (SHORT_ENTRY_TOKENS + 5)]
    info = latent_information(_CopyModel(tok, 0), _token_batch(tok, long, 64), tok.eos_id)
    assert info["short_entries"] == 0 and info["reconstruction_examples"] == []
    assert info["reconstruction_similarity_short"] is None and info["reconstruction_similarity_sampled_short"] is None
    assert f"(no input of <= {SHORT_ENTRY_TOKENS} tokens)" in "\n".join(_latent_lines(info))


def test_hvae_eval_prints_and_writes_the_accuracies_and_the_sampled_similarities(tmp_path, capsys):
    # short lines (under 40 bytes) and long ones (over 40), so that the test split holds both
    lines = [(f"fox {i}" if i % 2 else f"the quick brown fox {i} jumps over the lazy dog").encode() for i in range(80)]
    text = _write(tmp_path / "a.txt", lines)
    run = tmp_path / "run"
    args = [
        "train", "--config", "configs/text_fortunes.yaml", "data.source=text", f"data.path={text}",
        "data.max_length=48", "train.epochs=1", "train.batch_size=16", "train.max_steps=2", "--out", str(run),
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--num-samples", "2", "--max-examples", "12"]) == 0
    printed = capsys.readouterr().out
    assert "next-token accuracy z~q" in printed and "sample, decoder temperature 1" in printed
    assert "short entries" in printed
    result = json.loads((run / "eval.json").read_text())
    for key in ("token_accuracy_q", "token_accuracy_p", "reconstruction_similarity_sampled"):
        assert 0 <= result[key] <= 1
    assert result["token_accuracy_gain"] == pytest.approx(result["token_accuracy_q"] - result["token_accuracy_p"])
    assert result["short_entry_tokens"] == SHORT_ENTRY_TOKENS and 0 < result["short_entries"] < 12
    examples = result["reconstruction_examples"]
    assert len(examples) == min(result["short_entries"], 5)
    assert all(e["input"].startswith("fox ") and isinstance(e["sampled"], str) for e in examples)
    assert 0 <= result["reconstruction_similarity_sampled_short"] <= 1
    # the report: the new numbers in its evaluation table, and reconstructions sampled beside the greedy ones
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "token_accuracy_gain" in page and "reconstruction_similarity_sampled_short" in page
    assert "k = 3: all levels from q(z | x) (a reconstruction), x ~ p(x | z)" in page


def test_benchmark_rows_carry_the_accuracies_and_sampled_similarities_and_old_results_show_none():
    from benchmarks import text as bench

    old = {
        "step": 40, "iw_bound": -165.0, "iw_bound_stderr": 2.0, "bits_per_byte_iw": 2.5, "kl": [1.0, 0.5, 0.0],
        "latent_nats": 4.0, "active_units": [3, 1, 0], "units": [32, 16, 8], "reconstruction_similarity": 0.25,
    }  # fmt: skip
    new = {
        **old, "token_accuracy_q": 0.5, "token_accuracy_p": 0.375, "token_accuracy_gain": 0.125,
        "reconstruction_similarity_sampled": 0.2, "reconstruction_similarity_short": 0.3,
        "reconstruction_similarity_sampled_short": 0.4, "short_entries": 17,
    }  # fmt: skip
    rows = [bench.row("all", 0, new, None), bench.row("all", 1, old, None)]
    assert rows[0]["token_accuracy_gain"] == 0.125 and rows[1]["token_accuracy_q"] is None
    text = bench.table(rows)
    assert "| 0.250 | 0.500 / 0.375 (+0.125) | 0.200 / 0.400 (0.300, 17) |" in text
    assert "| 0.250 | - | - |" in text
    # over seeds: the means of the runs that have them
    assert "| 4.00 | +0.125 | 0.400 |" in text
    none_short = {**new, "short_entries": 0, "reconstruction_similarity_sampled_short": None}
    assert "0.200 / - (no short entry)" in bench.table([bench.row("all", 0, none_short, None)])
